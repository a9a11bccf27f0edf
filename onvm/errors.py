"""The errors onvm's own commands raise for people to read; `onvm.cli`
turns them (and a few of the lower layers', see cli.EXPECTED) into
`onvm COMMAND: message` and exit code 1.

Not here: errors of the lower layers (contracts.store.StoreError,
controller.topology.TopologyError, ...), which their modules define.
"""


class EmulationError(RuntimeError):
    """A part of an emulation failed to start or died; the message says
    which and why, and where its log is."""


class UsageError(ValueError):
    """Options that do not fit: a malformed value, or a host or chain the
    topology does not have.  The message names the option."""
