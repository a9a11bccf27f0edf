"""onvm-cluster: the `onvm` command and the emulation (the top layer)."""
from contracts import __version__  # noqa: F401
