"""The NF library's Python side, in the spirit of OpenNetVM's NF library.

An NF type is a class made from its config dict: `cls(config)`.  It gets
packets in batches and gives each one a verdict:

* written in Python: subclass `PythonNF` and write `handle(self, batch)`;
  `batch` (nflib.nf.Batch) has `len(batch)`, `batch.data(i)` (the frame,
  a writable memoryview, no copy), `batch.key(i)` (5-tuple),
  `batch.flow_id(i)`, `batch.l4_offset(i)`, and the verdicts
  `batch.drop(i)`, `batch.next(i)` (the default), `batch.out(i, port)`,
  `batch.to_nf(i, instance)`.
* written in Cython: subclass `nflib.nf.NativeNF` (cimport it from
  nflib/nf.pxd, the library's one interface) and fill its `handlers`
  with a per-packet or a per-batch C function (see nfs/basic.pyx and
  docs/nfs.md, "Writing an NF").

Either kind runs inside the manager's loop (run to completion) or as its own
DPDK secondary process (`onvm nf run`); the library owns both loops.  Every
NF may offer `counters()` (a JSON-able dict) which the agent publishes with
its stats.

NF types are found through the entry point group `onvm.nfs`; the built-in
ones are registered there too (setup.cfg), so a third-party package adds an
NF the same way.  This module finds and builds NFs; it does not run them.
"""
from importlib.metadata import entry_points

GROUP = "onvm.nfs"


class NFConfigError(ValueError):
    """An NF's config or rule file is wrong; the message names where."""


def rule_text(config, missing):
    """(text, source) of a rule-file NF's config: {"rules_text": TEXT} or
    {"rules": PATH}; `missing` is the error when it has neither.  Errors
    name the file."""
    if "rules_text" in config:
        return config["rules_text"], "<rules_text>"
    path = config.get("rules")
    if not path:
        raise NFConfigError(missing)
    try:
        with open(path) as f:
            return f.read(), path
    except OSError as err:
        raise NFConfigError(f"{path}: cannot read rule file: {err.strerror}") from None


class PythonNF:
    """Base of NFs written in Python: a subclass defines handle(batch) (the
    fast path refuses an NF without one, naming it)."""

    def __init__(self, config=None):
        self.config = dict(config or {})

    def counters(self):
        return {}

    def __repr__(self):
        return f"<{type(self).__name__}>"


def nf_types():
    """{name: class} of every NF type installed."""
    out = {}
    for ep in entry_points(group=GROUP):
        out[ep.name] = ep
    return out


def nf_class(name):
    eps = nf_types()
    if name not in eps:
        raise NFConfigError(
            f"unknown NF type {name!r}; installed: {', '.join(sorted(eps)) or 'none'}"
            " (NF types are registered in the entry point group onvm.nfs)")
    return eps[name].load()


def make_nf(instance):
    """Build the NF object of a plan instance {"nf": TYPE, "config": {...}}."""
    return nf_class(instance["nf"])(instance.get("config") or {})


def cli_list(args):
    types = sorted(nf_types().items())
    width = max((len(name) for name, _ in types), default=0)
    for name, ep in types:
        print(f"{name:{width}s}  {ep.value}")
    return 0
