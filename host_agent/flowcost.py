"""`onvm bench flowcost`: what a chain's fast path pays for many flows,
measured against few flows in the same process and the same minutes.

A machine whose speed drifts (a VM beside busy neighbours: this one's
drifts by up to 2x within minutes) makes two runs of `onvm bench
fastpath` a few seconds apart differ by more than the change one wants to
see.  Here two managers, each with its own ring port, chain and flow table
(`--flows` and `--against` flows, every packet rewritten to the next
flow as it comes round, host_agent/benchflows.pxd), take turns of
`--turn-packets` packets, the order flipped every turn, so both see the
same minutes.  Reported: each one's CPU cycles a packet (median over the
turns), the same without the bench's rewriting (measured apart,
host_agent.ports.rewrite_cycles, as `onvm bench fastpath` does), the
median of the turn-by-turn differences, and what the many-flow figure is
as a share of the few-flow one.

Not here: the single run with its many options (host_agent.bench).
"""
import json
import os
import statistics
import sys
import time

from host_agent import fastpath as fp
from host_agent.bench import BENCH_CONFIGS, bench_frames
from host_agent.harness import chain_plan
from nflib.api import NFConfigError, make_nf, nf_types

IN_FLIGHT = 4096        # packets going round each manager's ring
FLOW_ENTRIES = fp.FLOW_ENTRIES  # each manager's flow table: the agent's default


def _manager(chain, flows, tag):
    port, ring = fp.ring_port(f"fc{tag}")
    mgr = fp.Manager("bench", ports=[port])
    plan = chain_plan([(n, BENCH_CONFIGS.get(n, {})) for n in chain], port, port)
    plan["host"] = "bench"
    mgr.apply_plan(plan, make_nf)
    frames = bench_frames(IN_FLIGHT)
    ring.fill(frames, IN_FLIGHT)
    mgr.set_bench(flows)
    return mgr, frames


def run_flowcost(chain, flows=1_000_000, against=1024, turns=20,
                 turn_packets=2_000_000, log=print):
    unknown = [n for n in chain if n not in nf_types()]
    if unknown:
        raise NFConfigError(f"no NF type {', '.join(unknown)}")
    if not 1 <= against < flows <= FLOW_ENTRIES:
        raise ValueError(f"--against ({against}) must be at least 1 and below --flows "
                         f"({flows}), which is at most the flow table's {FLOW_ENTRIES}")
    if turns < 2 or turn_packets < 100_000:
        raise ValueError("--turns must be at least 2 and --turn-packets at least 100000")
    fp.eal_init(fp.default_eal_args(f"flowcost{os.getpid()}", memory_mb=512))
    try:
        runs = {}
        for n in (flows, against):
            mgr, frames = _manager(chain, n, n)
            log(f"flowcost: {n} flows: filling the flow table")
            mgr.run(max_packets=max(n, 1_000_000))
            runs[n] = {"mgr": mgr, "turns": [],
                       "generator": fp.rewrite_cycles(frames, n)}
        hz = fp.tsc_hz()
        for t in range(turns):
            for n in ((flows, against) if t % 2 == 0 else (against, flows)):
                mgr = runs[n]["mgr"]
                done0, cpu0 = mgr.stats()["processed"], time.thread_time()
                mgr.run(max_packets=turn_packets)
                done = mgr.stats()["processed"] - done0
                runs[n]["turns"].append((time.thread_time() - cpu0) * hz / max(done, 1))
            if (t + 1) % 5 == 0:
                log(f"flowcost: turn {t + 1} of {turns}")
        result = {"chain": list(chain), "turns": turns, "turn_packets": turn_packets,
                  "tsc_hz": hz, "flows": {}}
        for n, r in runs.items():
            cycles = statistics.median(r["turns"])
            own = cycles - r["generator"]
            drops = {k: v for k, v in r["mgr"].stats()["drops"].items() if v}
            result["flows"][str(n)] = {
                "cpu_cycles_per_packet": round(cycles, 1),
                "generator_cycles_per_packet": round(r["generator"], 1),
                "fastpath_cycles_per_packet": round(own, 1),
                "fastpath_mpps": round(hz / own / 1e6, 3), "drops": drops}
            r["mgr"].close()
        diffs = [a - b for a, b in zip(runs[flows]["turns"], runs[against]["turns"])]
        result["extra_cycles_per_packet"] = round(statistics.median(diffs), 1)
        many, few = (result["flows"][str(n)]["fastpath_cycles_per_packet"]
                     for n in (flows, against))
        result["many_over_few_speed"] = round(few / many, 3)
        return result
    finally:
        fp.eal_cleanup()


def cli_bench_flowcost(args):
    chain = [c for c in args.chain.split(",") if c]
    try:
        result = run_flowcost(chain, args.flows, args.against, args.turns, args.turn_packets,
                              log=(lambda m: print(m, file=sys.stderr)) if args.json
                              else print)
    except (NFConfigError, ValueError) as err:
        print(f"onvm bench flowcost: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    for n, r in result["flows"].items():
        print(f"{n:>9} flows: {r['cpu_cycles_per_packet']} CPU cycles a packet (median of "
              f"{args.turns} turns), {r['fastpath_cycles_per_packet']} without the bench's "
              f"rewriting: the fast path at {r['fastpath_mpps']} Mpps"
              f"{', drops ' + str(r['drops']) if r['drops'] else ''}")
    print(f"{args.flows} flows cost {result['extra_cycles_per_packet']} cycles a packet more "
          f"than {args.against} (median of the turns' differences); they run at "
          f"{result['many_over_few_speed'] * 100:.0f} % of its speed")
    return 0
