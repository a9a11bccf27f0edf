"""onvm-cluster: the `onvm` command and what the parts share."""
__version__ = "0.1.0"
