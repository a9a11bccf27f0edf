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

from contracts.store_api import (APPLIED, CHAINS, HOSTS, LEADER, PLAN, PREFIX,  # noqa: F401
                                 REQUEST_TIMEOUT, STATS, Election, Lease, NotLeader,
                                 Store, StoreError, StoreFull, Watch,
                                 WatchCompacted)
from contracts.store_memory import MemoryStore


def open_store(url):
    """A store for `url`: "http://host:port" (etcd; several members
    separated by commas) or "memory://"."""
    if url.startswith("memory://"):
        return MemoryStore()
    from contracts.store_etcd import EtcdStore      # needs etcd3gw and requests
    return EtcdStore(url)
