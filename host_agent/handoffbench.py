"""`onvm bench handoff`: what the worker handoff (host_agent/handoff.pxd)
costs.  The same frames go through a chain on N worker cores three ways:
untagged and spread over the queues as a NIC's symmetric RSS would
("spread": no handoff), and MPLS-tagged as another host sends them, all
on queue 0 as a NIC puts them ("tagged": each worker's share handed
over), and untagged all on queue 0 ("one_queue": handed over the same
way, without the labels).  Each round fills the rx rings, runs the
workers until they are idle (IDLE_S, taken off the time), and drains the
tx rings; only the runs are timed, and only the packets sent count (a
full handoff ring drops: the frames are all there at once, faster than
any port brings them, so the worker that hands over outruns the one that
runs the chain; those drops are reported).

Not here: the looped bench (host_agent.bench), the loop (manager.pyx).
"""
import json
import os
import struct
import time

from host_agent import fastpath as fp
from host_agent import lcores
from host_agent.bench import BENCH_CONFIGS
from host_agent.harness import HOST_MAC, NODE_LABEL, SPI, chain_plan
from host_agent.workers import Workers, queue_of
from nflib.api import make_nf

FRAMES = 49152      # per round: fits the rings (65536) and the packet pool with room
POOL = (1 << 17) - 1
IDLE_S = 0.002


def frames(flows, count):
    """`count` 64-byte UDP frames of `flows` flows, interleaved."""
    dst = bytes.fromhex(HOST_MAC.replace(":", ""))
    out = []
    for i in range(count):
        f = i % flows
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 0, 0, 64, 17, 0,
                         bytes((10, 1, f >> 8 & 0xFF, f & 0xFF)), bytes((10, 2, 0, 1)))
        udp = struct.pack("!HHHH", 1000 + f, 5000, 26, 0) + bytes(18)
        out.append(dst + bytes.fromhex("020000000009") + b"\x08\x00" + ip + udp)
    return out


def tagged(frame):
    labels = struct.pack("!III", (NODE_LABEL << 12) | 64, (SPI << 12) | 64,
                         (255 << 12) | 0x100 | 64)
    return frame[:12] + b"\x88\x47" + labels + frame[14:]


def run_handoff_bench(chain, cores, rounds=40, flows=1024, log=print):
    lcores.check_core_count(cores, f"--cores {cores}")
    if cores < 2:
        raise ValueError(f"--cores {cores}: a handoff needs 2 workers or more")
    eal = fp.default_eal_args(f"hbench{os.getpid()}", memory_mb=768,
                              hugepages=fp.hugepages_available() >= 768)
    fp.eal_init(eal, pool_size=POOL)
    port, rxs, txs = fp.ring_queues_port("hbench", cores, loop=False, count=65536)
    w = Workers("hbench", [port], cores, flow_entries=1 << 16)
    plan = chain_plan([(nf, BENCH_CONFIGS.get(nf, {})) for nf in chain], port, port)
    plan["host"] = "hbench"
    w.apply_plan(plan, make_nf)
    plain = frames(flows, FRAMES)
    ways = {"spread": [[f for f in plain if queue_of(f, cores) == q] for q in range(cores)],
            "tagged": [[tagged(f) for f in plain]] + [[]] * (cores - 1),
            "one_queue": [plain] + [[]] * (cores - 1)}
    result = {"chain": chain, "cores": cores, "flows": flows, "rounds": rounds,
              "packets": rounds * FRAMES, "mpps": {}, "machine": f"{os.cpu_count()} cores"}
    try:
        for way, shares in ways.items():
            before = w.stats()
            seconds = 0.0
            for _ in range(rounds):
                for rx, share in zip(rxs, shares):
                    if share:
                        rx.fill(share, len(share))
                start = time.perf_counter()
                w.run(idle_seconds=IDLE_S)
                seconds += time.perf_counter() - start - IDLE_S
                for tx in txs:
                    tx.drain()
            after = w.stats()
            sent = after["processed"] - before["processed"]
            result["mpps"][way] = round(sent / seconds / 1e6, 3)
            result.setdefault("handoffs", {})[way] = (after["handoffs"]["sent"]
                                                      - before["handoffs"]["sent"])
            result.setdefault("handoff_full", {})[way] = (
                after["drops"]["handoff_full"] - before["drops"]["handoff_full"])
            log(f"bench handoff: {way}: {result['mpps'][way]} Mpps")
        result["drops"] = {k: v for k, v in w.stats()["drops"].items() if v}
    finally:
        w.close()
        fp.eal_cleanup()        # its huge page files and /var/run/dpdk/ dir too
    return result


def cli_bench_handoff(args):
    chain = [c for c in args.chain.split(",") if c]
    try:
        result = run_handoff_bench(chain, args.cores, args.rounds,
                                   log=lambda m: print(m, file=os.sys.stderr))
    except (ValueError, fp.FastPathError) as err:      # lcores.CoresError too
        print(f"onvm bench handoff: {err}", file=os.sys.stderr)
        return 1
    print(json.dumps(result) if args.json else
          "  ".join(f"{k}: {v} Mpps" for k, v in result["mpps"].items()))
    return 0
