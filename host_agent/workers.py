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

Not here: the loop (host_agent.manager), ports (host_agent.ports).  The
agent still runs one worker (README, Known limits); NF processes, the
bench's flow rewriting (more flows than the ring holds) and snapshots are
one-worker only.
"""
import os
import struct
import threading
import time
import zlib

from host_agent import fastpath as fp
from host_agent import lcores
from host_agent.ports import start_port


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


class Workers:
    """`Workers(host, ports, n)`: n Managers on queues 0..n-1 of `ports`
    (started here with n queues each); apply_plan, run, stats, close as
    one Manager's."""

    def __init__(self, host, ports, n, flow_entries=fp.FLOW_ENTRIES, cores=None):
        lcores.check_core_count(n, f"{n} workers")
        self.cores = (cores or lcores.machine_cores())[:n]
        for p in ports:
            start_port(p, n)
        self.managers = []
        for q in range(n):
            m = fp.Manager(f"{host}/w{q}", ports=ports,
                           flow_entries=max(1024, flow_entries // n))
            m.queue = q
            self.managers.append(m)

    def __len__(self):
        return len(self.managers)

    def apply_plan(self, plan, nf_factory):
        """Each worker gets the plan (and NF instances of its own); each
        swap waits for that worker's quiescent point."""
        for m in self.managers:
            m.apply_plan(plan, nf_factory)

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
        if isinstance(v, bool) or k in ("generation", "port"):
            continue
        if isinstance(v, (int, float)) and isinstance(total.get(k), (int, float)):
            total[k] += v
        elif isinstance(v, dict) and isinstance(total.get(k), dict):
            _add(total[k], v)
        elif k not in total:
            total[k] = v
