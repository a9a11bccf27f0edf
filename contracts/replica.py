"""Replicas of NF flow state: what an agent keeps in the store so that the
flows of a stateful instance survive the loss of its host.

Every `interval` seconds the agent of host A snapshots each replicated
instance it runs (lb: flow -> backend; nat: the mappings; firewall-stateful:
the connections; `export_state()`) and puts it in
`/onvm/replica/<A>/<instance id>` under a lease of its own (REPLICA_TTL:
the replicas of a host that died stay readable that long, then go by
themselves).  When A is lost, the controller gives each replacement of a
replicated instance `"adopt": {"host": A, "instance": ID}` in its plan;
the new host's agent reads the replica and imports it before the instance
gets its first packet (a nat replacement also keeps the lost instance's
port slice, so its mappings stay valid).

Why the store and not a hot standby on another host: the store is already
the replicated channel every agent reaches (three etcd members in a real
deployment), the replica outlives any one host (the primary and a
pre-chosen standby may share a rack), no host pair needs a connection of
its own, and the replacement is placed where the placement finds room.
What it costs: a put a second per instance whose flows changed (at most
MAX_BYTES, compressed), compacted away by etcd's auto-compaction.

The value (JSON): {"host", "instance", "nf", "generation" (of the plan
running when taken), "time" (UNIX), "entries", "encoding": "zlib+base64",
"state": TEXT}.

Not here: taking the snapshot (host_agent.replicas), choosing who adopts
(controller.adoptions), the store client (contracts.store_api).
"""
from __future__ import annotations

import base64
import json
import zlib

REPLICATED_NFS = frozenset(("firewall-stateful", "lb", "nat"))
REPLICA_TTL = 30.0          # seconds a dead host's replicas stay readable
MAX_BYTES = 512 * 1024      # a replica's encoded state at most (etcd takes 1.5 MiB a request)
ENCODING = "zlib+base64"


class ReplicaError(ValueError):
    """A replica that cannot be read back: the message says what is wrong."""


def encode(state):
    """The text of `state` (a JSON-able NF snapshot) for a replica."""
    raw = json.dumps(state, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def decode(replica, key="replica"):
    """The NF snapshot held by `replica` (a replica value as put in the
    store); raises ReplicaError naming `key` and the fault."""
    if not isinstance(replica, dict):
        raise ReplicaError(f"{key}: not a JSON object")
    if replica.get("encoding") != ENCODING:
        raise ReplicaError(f"{key}.encoding: {replica.get('encoding')!r}, "
                           f"expected {ENCODING!r}")
    text = replica.get("state")
    if not isinstance(text, str):
        raise ReplicaError(f"{key}.state: not a text")
    try:
        return json.loads(zlib.decompress(base64.b64decode(text, validate=True)))
    except (ValueError, zlib.error) as err:
        raise ReplicaError(f"{key}.state: cannot be decoded ({err})") from None


def entries(state):
    """How many flows (or mappings, connections) a snapshot holds."""
    if not isinstance(state, dict):
        return 0
    for field in ("flows", "mappings", "connections"):
        if isinstance(state.get(field), list):
            return len(state[field])
    return 0
