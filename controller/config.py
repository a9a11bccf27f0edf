"""The controller's settings in Ryu's (oslo.config) CONF, group [onvm].

Registering them here, in a module with no Ryu app in it, lets the chain
manager, the REST API and `onvm controller` agree on the names, and lets
plain `ryu-manager ... --config-file F` read them.  The file format is in
`controller.run` and `controller/onvm.conf.example`.

Read them as `CONF.onvm.topology`, `CONF.onvm.store`, ... after importing
this module.  This module does not read the topology or open the store.
"""
import os
import socket

from ryu import cfg

CONF = cfg.CONF
GROUP = "onvm"

OPTS = [
    cfg.StrOpt("topology", default=None,
               help="topology file (DESIGN.md's YAML) the controller runs with"),
    cfg.StrOpt("store", default=None,
               help="store of record: http://HOST:PORT (etcd) or memory://"),
    cfg.StrOpt("name", default=f"{socket.gethostname()}-{os.getpid()}",
               help="this controller's name in /onvm/leader"),
    cfg.FloatOpt("leader_ttl", default=1.0,
                 help="seconds the leader's lease lasts without keep-alive"),
    cfg.FloatOpt("drain_seconds", default=30.0,
                 help="seconds an instance moved away or scaled in keeps serving the "
                      "flows pinned to it (0: it stops at once; controller/moves.py)"),
]


def register(conf=CONF):
    """Register the [onvm] options on `conf` (idempotent)."""
    conf.register_opts(OPTS, group=GROUP)
    return conf


register()
