"""The agent's exchange of NF state that is not per flow: a chain's rate
budget (`ratelimit`) and per-source counts and blocks (`ddos`), shared
among the instances of a chain on every host and among the worker cores
of each instance (docs/nfs.md).

Every INTERVAL_S, in its own thread, never in the packet loop:
  1. read each instance's objects (one per worker core): ratelimit's
     per-chain demand, ddos's sparse sketch and block list;
  2. put the instance's figures in /onvm/share/<nf>/<host>/<instance>
     (under a lease: an agent that dies takes its keys away) and hear
     the peers' through a watch of /onvm/share/;
  3. work out, with nflib.sharing, each instance's share of every chain
     budget (its peers are the instances that limit the same SPI) and
     each worker's share of that, the peers' and the other workers'
     counts to add to each sketch, the sources any of them blocks;
  4. set them in the NF objects while the loop stands still
     (Manager.hold: microseconds).

Store away (a put fails): the instance keeps its last share of each
chain but no more than its plan's part of the budget (the parts sum to
the budget; the last shares, worked out from views of the demands taken
at different times, may not quite), and its workers go on splitting
that; peers' sketch
counts are dropped once PEER_STALE_S old (each instance then counts
alone), and blocks already taken stay for their hold.  Before the first
exchange an instance takes its plan's part of the budget (the plans
split it by placed share), so the instances never pass more than the
whole budget.

Not here: the split and merge arithmetic (nflib.sharing), the NFs'
tables (nfs/ratelimit.pyx, nfs/ddos.pyx), the host's registration
(host_agent.storelink).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time

from contracts.store_api import SHARE
from nflib import sharing

log = logging.getLogger("onvm.agent")

INTERVAL_S = 0.25
LEASE_TTL_S = 2.0
SHARED_NFS = ("ratelimit", "ddos")
SKETCH_CUTOFF = 32      # a counter under threshold/SKETCH_CUTOFF is not sent
REPUT_S = 1.0           # an unchanged value is put again this often (peers age out at 3 s)


def seed_digest(seed):
    """A ddos sketch seed's public name: instances whose digests differ
    hash sources to other columns, so their counts must not be added."""
    return hashlib.sha256(f"onvm ddos sketch seed {seed}".encode()).hexdigest()[:16]


def ddos_peers(mine, peers):
    """The peers whose ddos sketches add to this instance's: the same rows,
    columns and seed (`shape`), and a chain in common."""
    return [p for p in peers if p.get("shape") == mine["shape"]
            and set(p.get("spis", ())) & set(mine["spis"])]


class Sharer:
    """`Sharer(agent)`: `start()` runs `tick()` every INTERVAL_S in a
    thread; `tick(now, exchange=False)` sets workers' shares from the
    last figures without the store (after a plan is applied).  `agent`
    has `host`, `plan`, `store` (None until connected) and `manager`
    (a Manager or host_agent.workers.Workers)."""

    def __init__(self, agent, interval=INTERVAL_S):
        self.agent = agent
        self.interval = interval
        self.peers = sharing.Peers()
        self.demands = {}       # (instance, worker, spi) -> sharing.Demand
        self.shares = {}        # (instance, spi) -> (share, limiters) of the last exchange
        self.last_exchange = None
        self.exchanges = 0
        self.failures = 0
        self._lock = threading.Lock()         # the peers, written by the watch
        self._tick_lock = threading.Lock()
        self._store = None
        self._lease = None
        self._watch = None
        self._keys = set()
        self._put = {}          # key -> (value, when) last put
        self._failing = False
        self._stop = threading.Event()
        self._thread = None

    # -- thread ----------------------------------------------------------
    def start(self):
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sharer", daemon=True)
        self._thread.start()

    def stop(self, revoke=True):
        """End the thread; with `revoke`, the watch and the lease too
        (the keys go at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if not revoke:
            return
        if self._watch is not None:
            self._watch.cancel()
        if self._lease is not None:
            try:
                self._lease.stop()
            except Exception as err:        # its keys go when it expires
                log.warning("%s: share lease not revoked: %s", self.agent.host, err)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:       # the next tick tries again; forwarding goes on
                log.exception("%s: sharing NF state failed", self.agent.host)
            self._stop.wait(self.interval)

    # -- one exchange ----------------------------------------------------
    def instances(self):
        """[(instance, [NF object per worker], [SPIs it serves])] of the
        plan's inline ratelimit and ddos instances."""
        plan = self.agent.plan or {}
        manager = self.agent.manager
        objects = getattr(manager, "nf_objects", lambda i: [manager.nf_object(i)])
        out = []
        for inst in plan.get("instances", []):
            if inst["nf"] not in SHARED_NFS or inst.get("mode", "inline") != "inline":
                continue
            objs = [o for o in objects(inst["id"]) if o is not None]
            spis = sorted({h["spi"] for h in plan.get("hops", []) if h.get("local") == inst["id"]})
            if objs and (inst["nf"] != "ratelimit" or objs[0].config["chains"]):
                out.append((inst, objs, spis))       # no chain limit: nothing to share
        return out

    def tick(self, now=None, exchange=True):
        with self._tick_lock:       # the thread's and a plan's apply
            self._tick(time.monotonic() if now is None else now, exchange)

    def _tick(self, now, exchange):
        found = self.instances()
        if not found:
            return
        local = {inst["id"]: self._read(inst, objs, spis, now) for inst, objs, spis in found}
        online = exchange and self._exchange(found, local, now)
        if online:
            self.last_exchange = now
        age = None if self.last_exchange is None else round(now - self.last_exchange, 3)
        with self._lock:
            # Nobody ages while nobody can be heard (a rate share stays);
            # sketch counts are of a window: they go stale in real time.
            rate_peers = self.peers.fresh(now if online else (self.last_exchange or now),
                                          SHARE + "ratelimit/")
            ddos_peers = self.peers.fresh(now, SHARE + "ddos/")
        pushes = []
        for inst, objs, spis in found:
            mine = self._key(inst)
            if inst["nf"] == "ratelimit":
                peers = [v for k, v in rate_peers.items() if k != mine]
                pushes.append(self._rate_push(inst, objs, local[inst["id"]], peers, online, age))
            else:
                peers = [v for k, v in ddos_peers.items() if k != mine]
                pushes.append(self._ddos_push(objs, local[inst["id"]], peers, age))
        manager = self.agent.manager
        manager.hold()
        try:
            for push in pushes:
                push()
        finally:
            manager.release()

    def _key(self, inst):
        return f"{SHARE}{inst['nf']}/{self.agent.host}/{inst['id']}"

    def _read(self, inst, objs, spis, now):
        """What instance `inst` publishes, with its per-worker figures."""
        if inst["nf"] == "ratelimit":
            chains = objs[0].config["chains"]
            workers = []
            for w, o in enumerate(objs):
                counts = o.chain_demand()
                workers.append({spi: self.demands.setdefault((inst["id"], w, spi), sharing.Demand())
                                .update(counts[spi], now) for spi in chains})
            return {"chains": {str(spi): {"budget": float(limit["rate"]),
                                          "demand": round(sum(w[spi] for w in workers))}
                               for spi, limit in chains.items()},
                    "workers": workers}
        cfg = objs[0].config
        cutoff = max(1, min(cfg["syn_threshold"], cfg["packet_threshold"]) // SKETCH_CUTOFF)
        sketches = [o.sketch_sparse(cutoff) for o in objs]
        blocked = [[[src, round(left, 3), reason] for src, left, reason in o.blocked_raw()]
                   for o in objs]
        # Sketches add up only under one seed (their columns are the seed's
        # hash): the shape names it by a digest that does not give it away.
        return {"spis": spis, "shape": [cfg["depth"], cfg["width"], seed_digest(objs[0].seed)],
                "syn": sharing.sparse(sharing.add_sparse(s["syn"] for s in sketches)),
                "pkt": sharing.sparse(sharing.add_sparse(s["pkt"] for s in sketches)),
                "blocked": [[src, v[0], v[1]] for src, v in
                            sorted(sharing.union_blocked(blocked).items())],
                "workers": sketches, "workers_blocked": blocked}

    def _exchange(self, found, local, now):
        """Put this host's figures and make sure the watch runs; False
        (logged once until it works again) if the store is away."""
        store = self.agent.store
        if store is None:
            return False
        try:
            if self._store is not store:
                self._connect(store)
            keys = set()
            for inst, _objs, _spis in found:
                key = self._key(inst)
                value = {k: v for k, v in local[inst["id"]].items() if not k.startswith("workers")}
                last = self._put.get(key)
                # idle instances do not write to etcd four times a second
                if last is None or last[0] != value or now - last[1] >= REPUT_S:
                    store.put(key, value, lease=self._lease)
                    self._put[key] = (value, now)
                keys.add(key)
            for gone in self._keys - keys:
                store.delete(gone)
                self._put.pop(gone, None)
            self._keys = keys
        except Exception as err:
            self.failures += 1
            if not self._failing:
                log.warning("%s: NF state not shared (%s): each ratelimit instance keeps "
                            "its last share, each ddos instance counts alone once its "
                            "peers' counts are %g s old (logged once)", self.agent.host,
                            err, sharing.PEER_STALE_S)
            self._failing = True
            return False
        if self._failing:
            log.warning("%s: NF state shared again", self.agent.host)
        self._failing = False
        self.exchanges += 1
        return True

    def _connect(self, store):
        self._lease = store.lease(LEASE_TTL_S, keepalive=True, regrant=True)
        values, revision = store.snapshot(SHARE, skip_garbage=True)
        now = time.monotonic()
        with self._lock:
            for key, value in values.items():
                self.peers.heard(key, value, now)
        self._watch = store.watch(SHARE, self._heard, start_revision=revision + 1,
                                  known=values)
        self._store = store

    def _heard(self, key, value):
        with self._lock:
            self.peers.heard(key, value, time.monotonic())

    # -- what each NF object gets ----------------------------------------
    def _rate_push(self, inst, objs, mine, peers, online, age):
        chains = objs[0].config["chains"]
        figures = {int(s): v for s, v in mine["chains"].items()}
        peer_figures = [{int(s): v for s, v in p.get("chains", {}).items()} for p in peers]
        peer_figures = [p for p in peer_figures if set(p) & set(figures)]    # same chains
        if online:
            for spi, got in sharing.chain_shares(figures, peer_figures).items():
                self.shares[(inst["id"], spi)] = got
        sets = []
        for spi, limit in chains.items():
            # Before any exchange: the plan's part of the budget.  Store
            # away: the last share, but never over the plan's part (the
            # parts sum to the budget; the last shares, worked out from
            # views of the demands taken at different times, may not).
            part = float(limit["rate"])
            share, limiters = self.shares.get((inst["id"], spi), (part, 1))
            if not online:
                share = min(share, part)
            parts = sharing.split(share, [w[spi] for w in mine["workers"]])
            for o, part in zip(objs, parts):
                burst = limit["burst"] * part / limit["rate"]
                sets.append((o, spi, part, burst, share, limiters))

        def push():
            info = {}
            for o, spi, part, burst, share, limiters in sets:
                o.set_chain_share(spi, part, burst)
                info.setdefault(o, {})[str(spi)] = {
                    "share": round(part, 3), "instance_share": round(share, 3),
                    "limiters": limiters}
            for o in objs:
                o.sharing = {"chains": info.get(o, {}), "peers": len(peer_figures),
                             "online": online, "workers": len(objs), "last_exchange_age_s": age}
        return push

    def _ddos_push(self, objs, mine, peers, age):
        peers = ddos_peers(mine, peers)
        peer_syn = sharing.add_sparse(p["syn"] for p in peers)
        peer_pkt = sharing.add_sparse(p["pkt"] for p in peers)
        blocked = sharing.union_blocked([p["blocked"] for p in peers] + mine["workers_blocked"])
        remotes = []
        for w in range(len(objs)):
            others = [s for v, s in enumerate(mine["workers"]) if v != w]
            syn = sharing.add_sparse([list(peer_syn.items())] + [s["syn"] for s in others])
            pkt = sharing.add_sparse([list(peer_pkt.items())] + [s["pkt"] for s in others])
            remotes.append((syn, pkt))

        def push():
            for o, (syn, pkt) in zip(objs, remotes):
                o.set_remote(syn, pkt)
                for src, (left, reason) in blocked.items():
                    o.block(src, left, reason)
                o.sharing = {"peers": len(peers), "workers": len(objs),
                             "last_exchange_age_s": age}
        return push
