"""The store of record: the keys of DESIGN.md in etcd (one member or a
cluster), or in this process's memory for unit tests.

    store = open_store("http://127.0.0.1:2379")   # or "http://a:2379,http://b:2379,..."
    reg = store.register_host("h1", {"mac": ...}, ttl=1)   # kept alive, granted again
    gen = store.put_plan("h1", plan, leader=election)      # fenced by the store
    for key, value in store.watch("/onvm/plan/"):           # value None: deleted
        ...

Values are JSON.  Both backends offer the same API and pass the same tests;
the API and its fault handling are documented in `contracts.store_api`,
the cluster handling in `contracts.store_etcd`.

Concurrency: nothing here needs a particular runtime.  Keep-alives and
callback watches run in `threading.Thread`s, which ryu-manager's eventlet
monkey-patching turns into green threads, so the same code serves the Ryu
process and the agent's plain threads.  A watch without a callback is a
blocking iterator: the caller picks where it blocks.

Leases: etcd raises a lease's TTL to its minimum (about 1.5 x its election
timeout: 2 s with etcd's defaults; `onvm.services.EtcdServer` runs with
0.5 s so that 1 s leases hold).  A key under a lease is gone at most one
expiry check (0.5 s in etcd) after its TTL runs out.

This module knows keys and their JSON, not what a plan or a chain means:
checking them belongs to `contracts.plan` and `controller.topology`.
"""
from __future__ import annotations

from contracts.store_api import (APPLIED, CHAINS, HOSTS, JOINED, LEADER, PLAN,  # noqa: F401
                                 PREFIX, REPLICA,
                                 REQUEST_TIMEOUT, STATS, Election, Lease, NotLeader,
                                 Store, StoreError, StoreFull, Watch,
                                 WatchCompacted)
from contracts.store_memory import MemoryStore

import collections
import os

# TLS to etcd: the CA that signed the members' certificates and this
# client's certificate and key (PEM files; etcd --client-cert-auth wants both).
StoreTLS = collections.namedtuple("StoreTLS", "ca cert key")
TLS_ENV = StoreTLS("ONVM_STORE_CA", "ONVM_STORE_CERT", "ONVM_STORE_KEY")


def tls_from_env(env=os.environ):
    """StoreTLS from $ONVM_STORE_CA, $ONVM_STORE_CERT, $ONVM_STORE_KEY (as
    etcdctl's ETCDCTL_CACERT...), or None when none is set."""
    values = StoreTLS(*(env.get(name) or None for name in TLS_ENV))
    return values if any(values) else None


# etcd's user/password auth: the user and the file holding its password
# (one line, mode 0600: never on a command line).  The client authenticates
# for a token and again when etcd says the token is no longer valid.
StoreAuth = collections.namedtuple("StoreAuth", "user password_file")
AUTH_ENV = StoreAuth("ONVM_STORE_USER", "ONVM_STORE_PASSWORD_FILE")


def auth_from_env(env=os.environ):
    """StoreAuth from $ONVM_STORE_USER and $ONVM_STORE_PASSWORD_FILE, or
    None when neither is set."""
    values = StoreAuth(*(env.get(name) or None for name in AUTH_ENV))
    return values if any(values) else None


def open_store(url, tls=None, auth=None):
    """A store for `url`: "http://host:port" or "https://host:port" (etcd;
    several members separated by commas) or "memory://".  `tls`: a
    StoreTLS for https (default: tls_from_env()); `auth`: a StoreAuth
    (default: auth_from_env())."""
    if url.startswith("memory://"):
        return MemoryStore()
    from contracts.store_etcd import EtcdStore      # needs etcd3gw and requests
    return EtcdStore(url, tls=tls if tls is not None else tls_from_env(),
                     auth=auth if auth is not None else auth_from_env())
