"""The agent's replicas of NF flow state in the store (contracts.replica),
and the adoption of a lost host's replica by a new instance.

`Replicator.tick()` (every `interval` seconds, in a thread of its own):
for each inline instance of a replicated NF type (contracts.replica.
REPLICATED_NFS) it reads the NF's flow state in chunks of CHUNK entries
(`export_chunk`), the fast path's loop standing still between two of its
iterations for each chunk (`Manager.hold`: NFs' tables are read without
locks; microseconds a chunk, so a ring of 4096 packets never fills at
line rate), and puts it in /onvm/replica/<host>/<id> under the replicas'
own lease (REPLICA_TTL).  Entries that come or go during the sweep may be
missed until the next one.  A snapshot is skipped when the NF's flow table saw no
insert since the last one, unless REFRESH_S passed (the remaining
lifetimes then stay close to the truth).  Replicas of instances the plan
no longer has are deleted.  A replica over contracts.replica.MAX_BYTES
is not put (counted, logged once).

`adopt(store, inst, nf)`: a new instance whose plan entry says
`"adopt": {"host": A, "instance": ID}` imports A's replica of ID before
its first packet; a replica missing or unreadable leaves it empty,
logged and counted, never a refused plan.

What it costs the fast path: the loop stands still while the chunks are
read (the rest, the encoding and the put happen with the loop running):
`pause_ms` (last and most) and `paused_s` in the counters.  The next
snapshot waits `interval`, or longer when the last pause was long, so the
loop stands still at most MAX_PAUSE_SHARE of the time: many flows are
replicated less often, never at more cost; and the agent's own work on
replicas (reading, encoding, putting) takes at most MAX_WORK_SHARE of its
thread's time, and a host puts at most STORE_BYTES_PER_S of replicas into
the store (its history is compacted every few minutes).  `onvm bench fastpath
--replicate-interval S` measures it.

Not here: choosing who adopts (controller.adoptions), what an NF's state
is (its export_state/import_state), the store client.
"""
from __future__ import annotations

import logging
import threading
import time

from contracts import replica
from contracts.store import REPLICA, StoreError
from nflib.eal import FastPathError

log = logging.getLogger("onvm.agent")

INTERVAL_S = 1.0        # how often replicas are taken
CHUNK = 64              # entries read while the loop stands still once
REFRESH_S = 10.0        # a replica is taken again after this even without new flows


def _inserts(nf):
    """The flow table inserts an NF's counters report (None: unknown)."""
    try:
        counters = nf.counters()
    except Exception:       # an NF whose counters fail still replicates
        return None
    for field in ("flow_table", "reply_table"):
        table = counters.get(field)
        if isinstance(table, dict) and "inserts" in table:
            return table["inserts"], counters.get("allocated")
    return None


MAX_PAUSE_SHARE = 0.02  # the loop stands still for snapshots at most this share of the time


MAX_WORK_SHARE = 0.2    # the agent's thread spends at most this share on replicas
STORE_BYTES_PER_S = 32 * 1024   # a host writes replicas at most this fast (etcd's history)


def next_wait(interval, paused_s, work_s=0.0, put_bytes=0):
    """Seconds to the next snapshot: `interval`, or longer when the last
    one was long, so that the loop stands still at most MAX_PAUSE_SHARE of
    the time, the agent works on replicas (reading, encoding, putting:
    `work_s`) at most MAX_WORK_SHARE of it, and the host puts at most
    STORE_BYTES_PER_S into the store (`put_bytes` the last time): a host
    with many flows is replicated less often."""
    return max(interval, paused_s / MAX_PAUSE_SHARE, work_s / MAX_WORK_SHARE,
               put_bytes / STORE_BYTES_PER_S)


class Replicator:
    """Puts the replicas of one agent's stateful instances in the store.
    `agent` has `host`, `store` (None until connected), `plan`, `manager`
    (`nf_object(id)`, `generation`), `apply_lock` and `loop_paused()`."""

    def __init__(self, agent, interval=INTERVAL_S, refresh=REFRESH_S):
        self.agent = agent
        self.interval = interval
        self.refresh = refresh
        self.lease = None
        self.put = {}           # instance id -> (inserts seen, monotonic time put)
        self.counters = {"replicas_put": 0, "bytes_put": 0, "too_big": 0,
                         "failures": 0, "pause_ms": 0.0, "pause_ms_max": 0.0,
                         "paused_s": 0.0, "work_s": 0.0, "adopted": 0, "adopted_entries": 0,
                         "adopt_failures": 0}
        self._big_logged = set()
        self._failing = False
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._run, name="replicas", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop taking replicas; those in the store stay until their lease's
        TTL runs out (a host that leaves may still be adopted from)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.lease is not None:
            self.lease.stop(revoke=False)

    def _run(self):
        work, put = 0.0, 0
        while not self._stop.wait(next_wait(self.interval, self.counters["pause_ms"] / 1000,
                                            work, put)):
            start, before = time.perf_counter(), self.counters["bytes_put"]
            try:
                self.tick()
                if self._failing:
                    log.warning("%s: replicas are put in the store again", self.agent.host)
                    self._failing = False
            except (StoreError, FastPathError) as err:
                self.counters["failures"] += 1
                if not self._failing:
                    log.warning("%s: replicas not put: %s (forwarding goes on; "
                                "retrying every %g s, logged once)", self.agent.host,
                                err, self.interval)
                    self._failing = True
            work = time.perf_counter() - start
            put = self.counters["bytes_put"] - before
            self.counters["work_s"] = round(self.counters["work_s"] + work, 6)

    def _due(self, plan):
        """[(instance entry, nf, inserts)] whose replica is due now."""
        now = time.monotonic()
        due = []
        for inst in plan.get("instances", ()):
            if inst.get("nf") not in replica.REPLICATED_NFS or inst.get("mode") == "process":
                continue
            try:
                nf = self.agent.manager.nf_object(inst["id"])
            except KeyError:
                continue
            if nf is None or not hasattr(nf, "export_state"):
                continue
            seen = _inserts(nf)
            last = self.put.get(inst["id"])
            if last is not None and seen is not None and seen == last[0] \
                    and now - last[1] < self.refresh:
                continue
            due.append((inst, nf, seen))
        return due

    def tick(self):
        """Take and put the replicas that are due; returns how many were put."""
        store, plan = self.agent.store, self.agent.plan
        if store is None or plan is None:
            return 0
        if self.lease is None or self.lease.lost:
            self.lease = store.lease(replica.REPLICA_TTL, regrant=True)
        self._forget_gone(store, plan)
        with self.agent.apply_lock:
            due = self._due(plan)
        if not due:
            return 0
        generation = plan.get("generation")
        put, paused = 0, 0.0
        for inst, nf, seen in due:
            state, held = self._take(nf)
            paused += held
            text = replica.encode(state)        # the loop runs meanwhile
            iid = inst["id"]
            if len(text) > replica.MAX_BYTES:
                self.counters["too_big"] += 1
                if iid not in self._big_logged:
                    log.error("%s: the replica of %s#%d is %d bytes, over the %d the "
                              "store takes: not replicated (its flows start anew if "
                              "this host fails; logged once)", self.agent.host,
                              inst["nf"], iid, len(text), replica.MAX_BYTES)
                    self._big_logged.add(iid)
                continue
            self._big_logged.discard(iid)
            size = store.put_replica(self.agent.host, iid, {
                "host": self.agent.host, "instance": iid, "nf": inst["nf"],
                "generation": generation, "time": time.time(),
                "entries": replica.entries(state), "encoding": replica.ENCODING,
                "state": text}, self.lease)
            self.put[iid] = (seen, time.monotonic())
            self.counters["replicas_put"] += 1
            self.counters["bytes_put"] += size
            put += 1
        self._count_pause(paused)
        return put

    def _take(self, nf):
        """(state, seconds the loop stood still) of `nf`: read in chunks of
        CHUNK entries, the loop standing still for each (microseconds; a
        plan is not applied meanwhile), running between them."""
        if not hasattr(nf, "export_chunk"):
            start = time.perf_counter()
            with self.agent.apply_lock, self.agent.loop_paused():
                state = nf.export_state()
            return state, time.perf_counter() - start
        entries, cursor, paused = [], 0, 0.0
        while cursor is not None:
            with self.agent.apply_lock:
                start = time.perf_counter()
                with self.agent.held():
                    cursor, chunk = nf.export_chunk(cursor, CHUNK)
                paused += time.perf_counter() - start
            entries += chunk
        return nf.state_of(entries), paused

    def _count_pause(self, seconds):
        ms = round(seconds * 1000, 3)
        self.counters["pause_ms"] = ms
        self.counters["pause_ms_max"] = max(self.counters["pause_ms_max"], ms)
        self.counters["paused_s"] = round(self.counters["paused_s"] + seconds, 6)

    def _forget_gone(self, store, plan):
        ids = {i["id"] for i in plan.get("instances", ())}
        for iid in [i for i in self.put if i not in ids]:
            store.delete_replica(self.agent.host, iid, self.lease)
            del self.put[iid]

    # -- adopting --------------------------------------------------------------
    def adopt(self, store, inst, nf):
        """Import into `nf` (the new instance `inst` of a plan) the replica
        its "adopt" names; returns the entries taken (0 when it starts empty)."""
        src = inst["adopt"]
        what = (f"{self.agent.host}: {inst['nf']}#{inst['id']} adopting the flows of "
                f"{inst['nf']}#{src['instance']} of {src['host']}")
        try:
            if store is None:
                raise replica.ReplicaError("the store is not reached yet")
            value = store.get_replica(src["host"], src["instance"])
            if value is None:
                raise replica.ReplicaError("no replica in the store (never taken, or "
                                           f"older than {replica.REPLICA_TTL:g} s)")
            if value.get("nf") != inst["nf"]:
                raise replica.ReplicaError(f"the replica is of a {value.get('nf')!r}")
            state = replica.decode(value, f"{REPLICA}{src['host']}/{src['instance']}")
            taken = nf.import_state(state)
        except (StoreError, replica.ReplicaError, ValueError, KeyError, TypeError) as err:
            self.counters["adopt_failures"] += 1
            log.error("%s: %s; it starts empty", what, err)
            return 0
        self.counters["adopted"] += 1
        self.counters["adopted_entries"] += taken or 0
        log.info("%s: took %s of %d entries (replica taken %.1f s ago, at plan "
                 "generation %s of %s)", what, taken, value.get("entries", 0),
                 max(0.0, time.time() - value.get("time", time.time())),
                 value.get("generation"), src["host"])
        return taken
