"""`onvm bench autoscale`: on an emulation, a step of offered traffic up
and back down on a chain with an autoscale policy (controller.autoscale),
its declared rate untouched: how long until the chain runs more
instances, how long until it runs fewer again, the packets lost, and the
instance counts over time.

`measure_autoscale` serves the bench and tests/test_emulate_autoscale.py.
The figures are BENCHMARKS.md's: speed is measured here, never asserted
in tests.

Not here: the decisions (controller.autoscale), the emulation (emulate.py).
"""
from __future__ import annotations

import json
import sys
import time

from onvm.errors import EmulationError
from onvm.failover import bench_emulation
from onvm.services import wait_for

# The policy the bench gives its chain when the topology's has none.
BENCH_POLICY = {"min": 1, "max": 2, "hot_s": 2, "cold_s": 8, "cooldown_s": 4}


def instances(emu, chain):
    """Instances per hop of `chain` in the stored plans."""
    return [len(hosts) for _, hosts in emu.placement()[chain]]


def _applied(emu):
    plans = emu.store.plans()
    return all(emu.store.get_applied(h) == p["generation"] for h, p in plans.items())


def measure_autoscale(emu, chain, base, high, timeout=90.0, settle=3.0):
    """Offer `base` Mpps on `chain`, then `high` until it runs more
    instances (every agent applied their plans), then `base` until it runs
    as few as before.  Returns the times, counts and packets lost; raises
    TimeoutError when a step is not followed within `timeout`."""
    emu.set_rate(chain, base)
    time.sleep(settle)
    start = instances(emu, chain)
    timeline = [(0.0, start)]
    t0 = time.time()
    sent0 = emu.sent(chain).get("sent", 0)
    received0 = emu.received(chain).get("received", 0)

    def grew():
        now = instances(emu, chain)
        if now != timeline[-1][1]:
            timeline.append((round(time.time() - t0, 2), now))
        return sum(now) > sum(start) and _applied(emu)
    emu.set_rate(chain, high)
    wait_for(grew, timeout, f"{chain} to scale out on {high} Mpps offered", 0.2)
    out_s = time.time() - t0
    peak = max(sum(n) for _, n in timeline)
    time.sleep(settle)
    t1 = time.time()

    def shrank():
        now = instances(emu, chain)
        if now != timeline[-1][1]:
            timeline.append((round(time.time() - t0, 2), now))
        return sum(now) <= sum(start) and _applied(emu)
    emu.set_rate(chain, base)
    wait_for(shrank, timeout, f"{chain} to scale back in on {base} Mpps offered", 0.2)
    in_s = time.time() - t1
    time.sleep(settle)              # what is in flight reaches the sink
    emu.set_rate(chain, 0)
    time.sleep(2.0)
    sent = emu.sent(chain).get("sent", 0) - sent0
    received = emu.received(chain).get("received", 0) - received0
    return {"chain": chain, "offered_mpps": [base, high, base],
            "scale_out_s": round(out_s, 2), "scale_in_s": round(in_s, 2),
            "instances_start": start, "instances_peak": peak,
            "instances_final": instances(emu, chain),
            "sent": sent, "received": received, "lost": max(0, sent - received),
            "timeline": timeline}


def cli_bench_autoscale(args):
    """`onvm bench autoscale [--topology FILE] [--chain C] [--step X] [--json]`."""
    from controller.topology import load_topology
    topo = load_topology(args.topology)
    chain = args.chain or next((c.name for c in topo.chains if c.autoscale is not None),
                               None) or topo.chains[0].name
    try:
        with bench_emulation(args.topology) as (emu, quiet):
            declared = emu.topo.chain(chain)
            if declared.autoscale is None:
                body = dict(emu.rest("GET", f"/chains/{chain}"), autoscale=BENCH_POLICY)
                emu.rest("PUT", f"/chains/{chain}", body)
                quiet(f"autoscale: chain {chain} has no policy; using {BENCH_POLICY}")
            quiet(f"autoscale: {chain} offered {declared.mpps} Mpps, then "
                  f"{args.step * declared.mpps}, then {declared.mpps} again")
            result = measure_autoscale(emu, chain, declared.mpps, args.step * declared.mpps)
            result["topology"] = emu.topo.name
    except (EmulationError, TimeoutError) as err:
        print(f"onvm bench autoscale: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{chain} on {result['topology']}: offered x{args.step}: more instances after "
          f"{result['scale_out_s']} s (per hop {result['instances_start']} -> peak "
          f"{result['instances_peak']} in all), back in after {result['scale_in_s']} s "
          f"({result['instances_final']}); {result['lost']} of {result['sent']} packets lost")
    return 0
