"""Worker cores: one host's fast path as N run-to-completion loops, one
per rx/tx queue pair of its ports, each on a core of its own.

Each worker is a Manager (host_agent.manager) that polls queue q of every
port, with its own flow table, pin table, counters and NF instances (a
flow stays on one worker, so per-flow NF state needs no sharing): nothing
is shared between workers but the ports, the packet pool and the handoff
rings.  A flow's worker is a symmetric hash of its (inner) 5-tuple
(host_agent/handoff.pxd: both directions of a flow on one worker).  The
port's receive-side spreading puts most packets on their worker already
(a NIC by RSS, the ports in memory of the benches and tests by
`queue_of`, the same hash as the loop's); what lands elsewhere (all the
MPLS-tagged traffic from other hosts, which a NIC cannot hash below its
labels; untagged packets where the NIC's RSS hash differs) is handed to
its worker through that worker's handoff ring, in order, counted
(`handoffs`; a full ring drops, counted `handoff_full`).  A plan is
applied to each worker in turn, each swap passing that worker's quiescent
point (Manager.apply_plan); `stats()` sums the workers'.

The agent runs them with `--workers N`: each NF instance of the plan
then has N objects, one per worker.  `nf_object` gives them as one
(WorkerNFs): its exported state is the union of theirs (each flow is in
one), which is what a move carries and a replica holds; a moved or
adopted state is imported into each worker's object (a flow's entry is
then also in the workers that never see the flow, where it ages out;
nat's objects each take the mappings of their own ports whole, nfs/nat.pyx).
NF processes (their rings are one Manager's) are one-worker only: a plan
with process-mode instances is refused.  The bench's flow rewriting (more
flows than the ring holds) is one-worker only too.  State that is not
per flow (a ratelimit budget, ddos sketches) the agent shares among an
instance's N objects as among a chain's instances (host_agent.sharer).

NFs that rewrite addresses (`Steering`, host_agent/handoff.pxd): a nat
instance's range is cut again among its N objects (each hands out ports
of its own share only) and a packet to or from its external address goes
to the worker whose share holds its port; an lb backend's address hashes
as its lb's VIP, so a backend's reply lands where the client's packet
did.  What steering cannot make right is refused before any worker takes
the plan (FastPathError naming the instance and the worker count): an lb
without a vip (or vip6) for its IPv4 (IPv6) backends, a backend of two
lbs with different VIPs, a nat range with fewer ports than workers.

Each worker runs on a DPDK lcore, so it takes and frees mbufs through
its own cache of the packet pool (nflib.eal) instead of the pool's
shared ring: on one of the EAL's worker lcores where the EAL's core list
has one on the worker's core (`-l 0-1`: worker 1 on lcore 1, launched
there by rte_eal_remote_launch), else on a thread pinned to the core and
registered as an lcore for the run (rte_thread_register: the EAL's main
lcore is the agent's control thread; `-l 0`, the default, has no worker
lcores).  Registering turns DPDK's multi-process off for the process,
which is why only more than one worker registers: those refuse NF
processes anyway (a single worker runs on a plain thread where no EAL
lcore is free; the agent runs one worker as a Manager on its own thread).
`placement` says after each run where each worker ran.  A worker flushes
its cache into the pool when its run ends.

Not here: the loop (host_agent.manager), ports (host_agent.ports).
"""
import copy
import functools
import ipaddress
import itertools
import logging
import os
import struct
import threading
import time

from host_agent import fastpath as fp
from host_agent import lcores
from host_agent.ports import start_port, valid_ports
from nflib import eal
from nfs.configs import check_config, nat_worker_ports

log = logging.getLogger("onvm.workers")


def _crc_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc_table()


def crc32c(data, crc=0):
    """DPDK's rte_hash_crc(data, len(data), crc): CRC32C, not inverted."""
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


_L4_PORTS = (6, 17, 132)
_IPV6_EXT = (0, 43, 44, 51, 60)


def _flow_key(frame):
    """(family, src, dst, sport, dport, proto, ICMP echo identifier or
    None) as the fast path's parser keys the frame (host_agent/parser.pxd;
    an SFC label stack skipped, IPv6 addresses as their CRC digests), None
    if it would not parse."""
    etype, off = frame[12:14], 14
    if etype in (b"\x88\x47", b"\x88\x48") and len(frame) > 26:
        off = 26
        etype = {4: b"\x08\x00", 6: b"\x86\xdd"}.get(frame[26] >> 4)
    elif etype == b"\x81\x00" and len(frame) >= 18:
        etype, off = frame[16:18], 18
    if etype == b"\x08\x00" and len(frame) >= off + 20:
        proto = frame[off + 9]
        src, dst = struct.unpack_from("<II", frame, off + 12)
        l4 = off + (frame[off] & 0x0F) * 4
        first = struct.unpack_from("!H", frame, off + 6)[0] & 0x1FFF == 0
        family = 4
    elif etype == b"\x86\xdd" and len(frame) >= off + 40:
        family = 6
        src, dst = crc32c(frame[off + 8:off + 24]), crc32c(frame[off + 24:off + 40])
        proto, l4, first = frame[off + 6], off + 40, True
        for _ in range(9):
            if proto not in _IPV6_EXT or len(frame) < l4 + 8:
                break
            if proto == 44:
                if struct.unpack_from("!H", frame, l4 + 2)[0] & 0xFFF8:
                    proto, first = frame[l4], False     # a later fragment: no ports
                    break
                size = 8
            else:
                size = (frame[l4 + 1] + 2) * 4 if proto == 51 else (frame[l4 + 1] + 1) * 8
            proto, l4 = frame[l4], l4 + size
    else:
        return None
    sport = dport = 0
    if proto in _L4_PORTS and first and len(frame) >= l4 + 4:
        sport, dport = struct.unpack_from("<HH", frame, l4)
    echo = None
    if family == 4 and proto == 1 and first and len(frame) >= l4 + 8 and frame[l4] in (0, 8):
        echo = struct.unpack_from("!H", frame, l4 + 4)[0]
    return family, src, dst, sport, dport, proto, echo


def _swap16(p):
    return ((p & 0xFF) << 8) | (p >> 8)


def queue_of(frame, queues, steering=None):
    """The queue (worker) of a frame's flow, of `queues`: the loop's
    (host_agent/handoff.pxd, steered_worker) symmetric hash of its
    5-tuple, or of the inner one below an SFC label stack, so a flow's
    replies land on the same worker, with the host's `steering` (Steering:
    a nat's external port's share, lb backends as their VIP); frames that
    are not IP on queue 0."""
    key = _flow_key(bytes(frame)) if queues > 1 else None
    if key is None:
        return 0
    family, src, dst, sport, dport, proto, echo = key
    if steering is not None:
        w = steering.nat_worker(key, queues)
        if w is not None:
            return w
        src, dst = steering.alias.get((family, src), src), steering.alias.get((family, dst), dst)
    sym = struct.pack("<IIHHI", min(src, dst), max(src, dst), min(sport, dport),
                      max(sport, dport), proto)
    return crc32c(sym) % queues


def spread(frames, queues, steering=None):
    """Frames by queue: [[frames of queue 0], ...], in their order."""
    out = [[] for _ in range(queues)]
    for f in frames:
        out[queue_of(bytes(f), queues, steering)].append(f)
    return out


def _key_of(family, address):
    """An address as the parser's key holds it (host_agent/parser.pxd)."""
    packed = ipaddress.ip_address(address).packed
    return int.from_bytes(packed, "little") if family == 4 else crc32c(packed)


class Steering:
    """What the workers of a host steer by, for the NFs of its plan that
    rewrite addresses (host_agent/handoff.pxd says how): `nat` [(external
    address as the key holds it, lo, hi, ports per worker)] and `alias`
    {(family, backend address as the key holds it): VIP as the key holds
    it}.  `Steering.of_plan` refuses (FastPathError) what steering cannot
    make right with `workers` > 1."""

    def __init__(self, nat=(), alias=None):
        self.nat = list(nat)
        self.alias = dict(alias or {})

    @classmethod
    def of_plan(cls, plan, workers):
        nat, alias, owner = [], {}, {}
        for inst in plan["instances"]:
            if inst["nf"] not in ("nat", "lb") or inst.get("mode", "inline") != "inline":
                continue
            what = f"instance {inst['id']} ({inst['nf']})"
            parsed = check_config(inst["nf"], inst.get("config"))
            if inst["nf"] == "nat":
                nat.append(cls._nat_rule(what, parsed, workers, nat))
                continue
            v, backends = parsed
            for family, vip, at in ((4, v["vip"], 1), (6, v["vip6"], 2)):
                addrs = [b[at] for b in backends if b[at] is not None]
                if addrs and vip is None:
                    raise fp.FastPathError(
                        f"{what}: IPv{family} backends and no {'vip' if family == 4 else 'vip6'}: "
                        f"the host cannot tell which worker a backend's reply belongs to; "
                        f"this host runs {workers} workers (--workers): give the lb a "
                        f"{'vip' if family == 4 else 'vip6'} or run one worker")
                for a in addrs:
                    k, to = (family, _key_of(family, a)), _key_of(family, vip)
                    if alias.get(k, to) != to:
                        raise fp.FastPathError(
                            f"{what}: backend {a} is also a backend of {owner[k]} with another "
                            f"VIP: its replies cannot be steered to one worker; this host runs "
                            f"{workers} workers (--workers)")
                    alias[k] = to
                    owner.setdefault(k, what)
        return cls(nat, alias)

    @staticmethod
    def _nat_rule(what, v, workers, rules):
        lo, hi = v["port_range"]
        per = nat_worker_ports(v["port_range"], workers)
        if per < 1:
            raise fp.FastPathError(
                f"{what}: port_range [{lo}, {hi}] has {hi - lo + 1} ports, fewer than this "
                f"host's {workers} workers (--workers), each of which needs its own")
        ext = _key_of(4, v["external_ip"])
        for e, l, h, _ in rules:
            if e == ext and l <= hi and lo <= h:
                raise fp.FastPathError(
                    f"{what}: port_range [{lo}, {hi}] of {v['external_ip']} overlaps another "
                    f"nat instance's [{l}, {h}] on this host: a reply's port would not name "
                    f"one worker ({workers} workers, --workers)")
        return ext, lo, hi, per

    def nat_worker(self, key, workers):
        """queue_of's twin of handoff.pxd's nat steering: the worker whose
        share holds the frame's nat port, None if not a nat's."""
        family, src, dst, sport, dport, proto, echo = key
        if family != 4 or not self.nat:
            return None
        if proto in (6, 17):
            ends = ((dst, _swap16(dport)), (src, _swap16(sport)))
        elif proto == 1 and echo is not None:
            ends = ((dst, echo), (src, echo))
        else:
            return None
        for addr, port in ends:
            w = self._share(addr, port, workers)
            if w is not None:
                return w
        return None

    def _share(self, addr, port, workers):
        for ext, lo, hi, per in self.nat:
            if ext == addr and lo <= port <= hi:
                w = (port - lo) // per
                return w if w < workers else None
        return None

    def tables(self):
        """(nat, alias) as Manager.set_steering takes them."""
        return self.nat, sorted(((f << 32) | a, to) for (f, a), to in self.alias.items())


def _worker_factory(nf_factory, worker, workers):
    """nf_factory for worker `worker` of `workers`: a nat instance's config
    gets `_worker` (nfs/nat.pyx: which share of its ports it hands out)."""
    if workers == 1:
        return nf_factory

    def make(inst):
        if inst.get("nf") == "nat" and inst.get("mode", "inline") == "inline":
            inst = dict(inst, config=dict(inst.get("config") or {}, _worker=[worker, workers]))
        return nf_factory(inst)
    return make


def _every_worker(name):
    """A Manager setting all workers take alike (read from the first)."""
    def put(self, value):
        for m in self.managers:
            setattr(m, name, value)
    return property(lambda self: getattr(self.managers[0], name), put)


class WorkerNFs:
    """The N worker objects of one NF instance as one, for its state:
    export_state (and export_chunk, state_of, counters, as replicas read
    them) gives the union of theirs; import_state puts the state into
    each.  Call its methods while the workers stand still."""

    _METHODS = frozenset(("export_state", "export_chunk", "state_of", "import_state",
                          "counters"))

    def __init__(self, objs):
        self.objs = objs

    def __getattr__(self, name):
        # only what the first object has: the agent and replicas ask hasattr
        if name in self._METHODS and hasattr(self.objs[0], name):
            return getattr(self, "_" + name)
        raise AttributeError(name)

    def _export_state(self):
        """The first object's state with every list (flows, mappings,
        connections) the concatenation of all the objects' lists."""
        states = [o.export_state() for o in self.objs]
        out = copy.deepcopy(states[0])
        for st in states[1:]:
            for k, v in st.items():
                if isinstance(v, list) and isinstance(out.get(k), list):
                    out[k].extend(v)
        return out

    def _export_chunk(self, cursor, count):
        """(cursor, entries) over each object in turn; cursor 0 starts,
        None ends."""
        w, inner = cursor if cursor else (0, 0)
        nxt, chunk = self.objs[w].export_chunk(inner, count)
        if nxt is None:
            return ((w + 1, 0) if w + 1 < len(self.objs) else None), chunk
        return (w, nxt), chunk

    def _state_of(self, entries):
        return self.objs[0].state_of(entries)

    def _import_state(self, state):
        """Into each object; returns how many entries the first took, or
        for an NF whose workers each take their share (nat: the mappings
        of their ports), the sum."""
        taken = [o.import_state(state) for o in self.objs]
        return sum(taken) if getattr(self.objs[0], "IMPORTS_BY_SHARE", False) else taken[0]

    def _counters(self):
        total = copy.deepcopy(self.objs[0].counters())
        for o in self.objs[1:]:
            _add(total, o.counters())
        return total


HANDOFF_RING = 4096      # a worker's handoff ring (host_agent.handoff), packets
_RINGS = itertools.count()


class Workers:
    """`Workers(host, ports, n)`: n Managers on queues 0..n-1 of `ports`
    (started here with n queues each); apply_plan, run, stats, close as
    one Manager's."""

    def __init__(self, host, ports, n, flow_entries=fp.FLOW_ENTRIES, cores=None):
        lcores.check_core_count(n, f"{n} workers")
        self.cores = (cores or lcores.machine_cores())[:n]
        ports = valid_ports() if ports is None else ports
        for p in ports:
            start_port(p, n)
        self.placement = []             # where each worker ran last (run)
        self.managers = []
        self._applied = None            # (plan, nf_factory) every worker runs
        self.steering = Steering()      # what the workers steer by (the plan's nat, lb)
        for q in range(n):
            m = fp.Manager(f"{host}/w{q}", ports=ports,
                           flow_entries=max(1024, flow_entries // n))
            m.queue = q
            self.managers.append(m)
        if n > 1:
            run = next(_RINGS)
            inboxes = [m.open_inbox(f"ho{os.getpid() % 100000}_{run}_{q}", HANDOFF_RING)
                       for q, m in enumerate(self.managers)]
            for q, m in enumerate(self.managers):
                m.set_handoff(q, inboxes)

    def __len__(self):
        return len(self.managers)

    def apply_plan(self, plan, nf_factory):
        """Each worker gets the plan (and NF instances of its own); each
        swap waits for that worker's quiescent point.  A plan with
        process-mode instances is refused (FastPathError) before any
        worker takes it."""
        procs = [i["id"] for i in plan["instances"] if i.get("mode") == "process"]
        n = len(self.managers)
        if procs and n > 1:
            raise fp.FastPathError(
                f"instances {', '.join(map(str, procs))} run as NF processes, which "
                f"take one worker; this host runs {n} (--workers)")
        steering = Steering.of_plan(plan, n) if n > 1 else Steering()
        done = []
        try:
            self._apply_each(plan, nf_factory, steering, self.managers, done)
        except Exception:
            # The workers that took it go back to the plan they ran (their
            # NF objects made anew: their flows' NF state starts over), so
            # all run one plan; if that fails too, the error says so.
            old = self._applied or (None, None, Steering())
            for m in self.managers if n > 1 else ():
                m.set_steering(*old[2].tables())
            if old[0] is not None:
                self._apply_each(*old, done, [])
            raise
        self._applied = (plan, nf_factory, steering)
        self.steering = steering

    def _apply_each(self, plan, nf_factory, steering, managers, done):
        """Each of `managers` takes the steering, then the plan (and its
        own NF objects); appended to `done` once it did."""
        n = len(self.managers)
        for q, m in enumerate(self.managers):
            if m in managers:
                if n > 1:
                    m.set_steering(*steering.tables())
                m.apply_plan(plan, _worker_factory(nf_factory, q, n))
                done.append(m)

    @property
    def generation(self):
        """The plan generation every worker runs (the oldest, mid-swap)."""
        gens = [m.generation for m in self.managers]
        return None if None in gens else min(gens)

    def nf_object(self, iid):
        """The NF object of instance `iid` where one worker runs; with
        several, their objects as one (WorkerNFs), None for an NF process."""
        objs = self.nf_objects(iid)
        if len(objs) == 1 or objs[0] is None:
            return objs[0]
        return WorkerNFs(objs)

    def nf_objects(self, iid):
        """Every worker's NF object of instance `iid`."""
        return [m.nf_object(iid) for m in self.managers]

    def hold(self, timeout=1.0):
        held = []
        try:
            for m in self.managers:
                m.hold(timeout)
                held.append(m)
        except fp.FastPathError:
            for m in held:
                m.release()
            raise

    def release(self):
        for m in self.managers:
            m.release()

    answer_probes = _every_worker("answer_probes")
    idle_us = _every_worker("idle_us")

    def run(self, max_packets=0, seconds=0.0, idle_seconds=0.0):
        """Run every worker on its core, each on an lcore of its own (see
        the module's docstring), until each stops as Manager.run says
        (`max_packets` each); returns [(packets, CPU seconds)] per worker.
        `placement` then says where each ran.  What a worker raised is
        raised here once all have stopped."""
        n = len(self.managers)
        out, errors = [None] * n, []
        self.placement = [{"queue": q, "core": self.cores[q], "how": None, "lcore": None,
                           "cache": False, "flushed": 0} for q in range(n)]

        def work(q):
            where = self.placement[q]
            where["lcore"] = eal.lcore_id()
            where["cache"] = eal.cache_count() is not None
            m = self.managers[q]
            log.info("%s: on core %s, %s %s, %s", m.host, where["core"], where["how"],
                     where["lcore"], "with a mempool cache" if where["cache"] else
                     "without a mempool cache (no lcore)")
            c0 = time.thread_time()
            start = m.stats()["processed"]
            try:
                done = m.run(max_packets=max_packets, seconds=seconds,
                             idle_seconds=idle_seconds) - start
            finally:
                # what the worker freed last waits in its cache: back to
                # the pool, where any lcore can take it
                where["flushed"] = eal.flush_cache()
            out[q] = (done, time.thread_time() - c0)

        def guarded(q):
            try:
                work(q)
            except BaseException as err:
                errors.append(err)
                self.stop()                              # the others too

        def on_thread(q):
            registered = False
            try:
                os.sched_setaffinity(0, {self.cores[q]})     # this thread only
                # more than one worker refuses NF processes: registering (which
                # turns DPDK's multi-process off) is safe (nflib.eal.register_thread)
                registered = n > 1 and eal.register_thread() is not None
                self.placement[q]["how"] = "registered thread" if registered else "thread"
                guarded(q)
            except BaseException as err:
                errors.append(err)
            finally:
                if registered:
                    eal.unregister_thread()

        spare = eal_lcores_by_core()
        launched, threads = [], []
        for q in range(n):
            lcore = spare.pop(self.cores[q], None)
            self.placement[q]["how"] = "eal lcore"       # before it runs (and logs it)
            if lcore is not None and eal.launch(lcore, functools.partial(guarded, q)):
                launched.append(lcore)
            else:
                threads.append(threading.Thread(target=on_thread, args=(q,),
                                                name=f"worker{q}"))
        for t in threads:
            t.start()
        # a worker that fails stops the others, also one whose run begins
        # after the failure (Manager.run clears its stop flag as it starts)
        while any(t.is_alive() for t in threads) or any(map(eal.lcore_busy, launched)):
            if errors:
                self.stop()
            time.sleep(0.0005)
        for t in threads:
            t.join()
        for lcore in launched:
            eal.wait_lcore(lcore)
        if errors:
            raise errors[0]
        return out

    def stop(self):
        for m in self.managers:
            m.stop()

    def stats(self):
        """The workers' counters summed (per instance id, port, reason),
        with each worker's processed packets under "workers"."""
        each = [m.stats() for m in self.managers]
        workers = [{"queue": q, "core": self.cores[q], "processed": s["processed"]}
                   for q, s in enumerate(each)]
        total = each[0]
        for s in each[1:]:
            _add(total, s)
        total["workers"] = workers
        return total

    def close(self, timeout=5.0):
        """Stop every worker, wait until none runs (a running one could
        still hand packets to a closed worker's ring), then close each."""
        self.stop()
        deadline = time.monotonic() + timeout
        while any(m.running for m in self.managers) and time.monotonic() < deadline:
            time.sleep(0.001)
        for m in self.managers:
            m.close()


def eal_lcores_by_core():
    """{core: the lowest EAL worker lcore that runs on that core alone}."""
    out = {}
    for lcore, cpus in sorted(eal.worker_lcores().items(), reverse=True):
        if len(cpus) == 1:
            out[cpus[0]] = lcore
    return out


def _add(total, more):
    """Sum `more` into `total`: numbers add, dicts recurse, the rest stays."""
    for k, v in more.items():
        # a port's own counters (missed, errors) are the port's, not a queue's
        if isinstance(v, bool) or k in ("generation", "port", "missed", "errors"):
            continue
        if isinstance(v, (int, float)) and isinstance(total.get(k), (int, float)):
            total[k] += v
        elif isinstance(v, dict) and isinstance(total.get(k), dict):
            _add(total[k], v)
        elif k not in total:
            total[k] = v
