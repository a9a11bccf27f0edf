"""One host's fast path in memory, for tests, benchmarks and the demo:
packets in through a ring-backed port, through a plan, out through another.

DPDK's EAL starts once per process (`ensure_eal`); each Harness gets its own
ports and Manager, so many can be made in one test run.  This is not the
agent: no store, no threads, no Prometheus.
"""
import atexit
import itertools
import os

from host_agent import fastpath as fp
from contracts.plan import check_plan
from contracts.wire import SI_FIRST
from nflib.api import make_nf

_seq = itertools.count(1)
SPI = 16
OUT_MAC = "02:00:00:00:00:fe"
HOST_MAC = "02:00:00:00:00:01"
NODE_LABEL = 16
# Many harnesses share one EAL's memory: a smaller flow table than the agent's.
FLOW_ENTRIES = 1 << 16


def ensure_eal(hugepages=False):
    """Start the EAL for this process if nothing did yet."""
    if not fp.eal_running():
        args = fp.default_eal_args(f"t{os.getpid()}", hugepages=hugepages)
        fp.eal_init(args)
        # DPDK stays up until the process ends; then remove its files.
        atexit.register(fp.remove_runtime_files, args[args.index("--file-prefix") + 1])


def chain_plan(nfs, in_port, out_port, match=None, generation=1, spi=SPI,
               first_id=1, mode="inline"):
    """A plan that runs `nfs` ([(type, config)]) as one chain on this host:
    untagged packets matching `match` (default: all IPv4) enter at SI 255,
    leave out of `out_port` to OUT_MAC."""
    instances, hops = [], []
    for i, (nf, config) in enumerate(nfs):
        iid = first_id + i
        instances.append({"id": iid, "nf": nf, "config": config or {}, "mode": mode})
        hops.append({"spi": spi, "si": SI_FIRST - i, "local": iid})
    hops.append({"spi": spi, "si": SI_FIRST - len(nfs),
                 "end": {"port": out_port, "dst_mac": OUT_MAC}})
    return check_plan({
        "host": "harness", "generation": generation, "node_label": NODE_LABEL,
        "mac": HOST_MAC, "instances": instances, "uplink": out_port,
        "classifiers": [{"spi": spi, "match": match or {"ipv4_dst": "0.0.0.0/0"}}],
        "hops": hops,
    })


class Harness:
    """`Harness([("firewall", {...}), ("monitor", None)])`, then
    `send(frames)` returns the frames that came out."""

    def __init__(self, nfs=None, plan=None, nf_factory=make_nf, hugepages=False,
                 flow_entries=FLOW_ENTRIES):
        ensure_eal(hugepages)
        n = next(_seq)
        self.in_port, self.rx, _unused = fp.ring_pair_port(f"hin{n}")
        self.out_port, _unused2, self.tx = fp.ring_pair_port(f"hout{n}")
        self.manager = fp.Manager(f"h{n}", ports=[self.in_port, self.out_port],
                                  flow_entries=flow_entries)
        if plan is None:
            plan = chain_plan(nfs, self.in_port, self.out_port)
        self.manager.apply_plan(plan, nf_factory)

    def send(self, frames, idle_seconds=0.05):
        """Put frames in, run until the host is idle, return what came out."""
        frames = [bytes(f) for f in frames]
        put = self.rx.fill(frames, len(frames))
        if put != len(frames):
            raise RuntimeError(f"only {put} of {len(frames)} frames fit in the ring")
        self.manager.run(idle_seconds=idle_seconds)
        return self.tx.drain(keep=True)

    def stats(self):
        return self.manager.stats()

    def nf(self, instance_id):
        return self.manager.nf_object(instance_id)

    def close(self):
        self.manager.close()
