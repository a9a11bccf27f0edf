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
    # Security (controller.apiauth; docs/deploy.md, "Security")
    cfg.StrOpt("api_token_file", default=None,
               help="file with the REST API's bearer token (mode 0600); none: "
                    "a random one is made in state_dir/api-token"),
    cfg.StrOpt("api_read_token_file", default=None,
               help="file with read-only tokens (GET only), one a line"),
    cfg.StrOpt("state_dir", default=None,
               help="where a generated token goes (default $ONVM_STATE_DIR, "
                    "$STATE_DIRECTORY, ~/.onvm)"),
    cfg.StrOpt("api_cert", default=None, help="REST API over HTTPS: certificate (PEM)"),
    cfg.StrOpt("api_key", default=None, help="REST API over HTTPS: private key (PEM)"),
    cfg.StrOpt("store_ca", default=None, help="https etcd: CA that signed its certificate"),
    cfg.StrOpt("store_cert", default=None, help="https etcd: client certificate"),
    cfg.StrOpt("store_key", default=None, help="https etcd: client key"),
    cfg.StrOpt("store_user", default=None, help="etcd auth: user (e.g. root)"),
    cfg.StrOpt("store_password_file", default=None,
               help="etcd auth: file with the user's password (mode 0600)"),
    cfg.FloatOpt("pps_per_mpps", default=1e6,
                 help="packets a second the agents measure for one declared Mpps "
                      "(the emulation runs scaled: its own figure); autoscaling "
                      "compares measured load with the catalog's mpps in this scale"),
    cfg.FloatOpt("drain_seconds", default=30.0,
                 help="seconds an instance moved away or scaled in keeps serving the "
                      "flows pinned to it (0: it stops at once; controller/moves.py)"),
]


def register(conf=CONF):
    """Register the [onvm] options on `conf` (idempotent)."""
    conf.register_opts(OPTS, group=GROUP)
    return conf


def store_tls(conf=CONF):
    """The [onvm] store_ca/store_cert/store_key as a contracts.store.StoreTLS
    (None when none is set: then open_store reads $ONVM_STORE_CA...)."""
    from contracts.store import StoreTLS
    group = conf[GROUP]
    if not (group.store_ca or group.store_cert or group.store_key):
        return None
    return StoreTLS(group.store_ca, group.store_cert, group.store_key)


def store_auth(conf=CONF):
    """The [onvm] store_user/store_password_file as a contracts.store.StoreAuth
    (None when neither is set: then open_store reads $ONVM_STORE_USER...)."""
    from contracts.store import StoreAuth
    group = conf[GROUP]
    if not (group.store_user or group.store_password_file):
        return None
    return StoreAuth(group.store_user, group.store_password_file)


register()
