"""Worker cores: one host's fast path as N run-to-completion loops, one
per rx/tx queue pair of its ports, each on a core of its own.

Each worker is a Manager (host_agent.manager) that polls queue q of every
port, with its own flow table, pin table, counters and NF instances (a
flow stays on one worker, so per-flow NF state needs no sharing): nothing
is shared between workers but the ports and the packet pool.  What puts a
flow on a worker is the port's receive-side spreading; a NIC does it with
RSS, the ports in memory of the benches and tests with `queue_of`, a
symmetric hash of the 5-tuple (both directions of a flow on one worker).
A plan is applied to each worker in turn, each swap passing that worker's
quiescent point (Manager.apply_plan); `stats()` sums the workers'.

The agent runs them with `--workers N`: each NF instance of the plan
then has N objects, one per worker; NF processes (their rings are one
Manager's), state exports and replicas (a flow's state is in one of the
N objects) are one-worker only: a plan with process-mode instances is
refused, and `nf_object` gives None (the agent then moves an instance
without its state and replicates none).  A moved or adopted state is
imported into each worker's object.  The bench's flow rewriting (more
flows than the ring holds) is one-worker only too.  State that is not
per flow (a ratelimit budget, ddos sketches) the agent shares among an
instance's N objects as among a chain's instances (host_agent.sharer).

Not here: the loop (host_agent.manager), ports (host_agent.ports).
"""
import os
import struct
import threading
import time
import zlib

from host_agent import fastpath as fp
from host_agent import lcores
from host_agent.ports import start_port, valid_ports


def queue_of(frame, queues):
    """The queue (worker) of an untagged IPv4 frame: a hash of its
    addresses and ports taken in sorted order, so a flow's replies land
    on the same worker; other frames on queue 0."""
    if queues == 1 or len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return 0
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    a, b = sorted((frame[26:30], frame[30:34]))
    ports = (0, 0)
    if proto in (6, 17) and len(frame) >= 14 + ihl + 4:
        ports = tuple(sorted(struct.unpack_from("!HH", frame, 14 + ihl)))
    key = a + b + struct.pack("!HHB", *ports, proto)
    return zlib.crc32(key) % queues


def spread(frames, queues):
    """Frames by queue: [[frames of queue 0], ...], in their order."""
    out = [[] for _ in range(queues)]
    for f in frames:
        out[queue_of(bytes(f), queues)].append(f)
    return out


def _every_worker(name):
    """A Manager setting all workers take alike (read from the first)."""
    def put(self, value):
        for m in self.managers:
            setattr(m, name, value)
    return property(lambda self: getattr(self.managers[0], name), put)


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
        self.managers = []
        self._applied = None            # (plan, nf_factory) every worker runs
        for q in range(n):
            m = fp.Manager(f"{host}/w{q}", ports=ports,
                           flow_entries=max(1024, flow_entries // n))
            m.queue = q
            self.managers.append(m)

    def __len__(self):
        return len(self.managers)

    def apply_plan(self, plan, nf_factory):
        """Each worker gets the plan (and NF instances of its own); each
        swap waits for that worker's quiescent point.  A plan with
        process-mode instances is refused (FastPathError) before any
        worker takes it."""
        procs = [i["id"] for i in plan["instances"] if i.get("mode") == "process"]
        if procs and len(self.managers) > 1:
            raise fp.FastPathError(
                f"instances {', '.join(map(str, procs))} run as NF processes, which "
                f"take one worker; this host runs {len(self.managers)} (--workers)")
        done = []
        try:
            for m in self.managers:
                m.apply_plan(plan, nf_factory)
                done.append(m)
        except Exception:
            # The workers that took it go back to the plan they ran (their
            # NF objects made anew: their flows' NF state starts over), so
            # all run one plan; if that fails too, the error says so.
            if self._applied is not None:
                for m in done:
                    m.apply_plan(*self._applied)
            raise
        self._applied = (plan, nf_factory)

    @property
    def generation(self):
        """The plan generation every worker runs (the oldest, mid-swap)."""
        gens = [m.generation for m in self.managers]
        return None if None in gens else min(gens)

    def nf_object(self, iid):
        """The NF object of instance `iid` where one worker runs; None with
        several (its flows' state is spread over them: see nf_objects)."""
        return self.managers[0].nf_object(iid) if len(self.managers) == 1 else None

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
        """Run every worker on its core until each stops as Manager.run
        says (`max_packets` each); returns [(packets, CPU seconds)] per
        worker."""
        out = [None] * len(self.managers)

        def work(q):
            os.sched_setaffinity(0, {self.cores[q]})     # this thread only
            c0 = time.thread_time()
            m = self.managers[q]
            start = m.stats()["processed"]
            done = m.run(max_packets=max_packets, seconds=seconds,
                         idle_seconds=idle_seconds) - start
            out[q] = (done, time.thread_time() - c0)

        threads = [threading.Thread(target=work, args=(q,), name=f"worker{q}")
                   for q in range(len(self.managers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
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

    def close(self):
        for m in self.managers:
            m.close()


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
