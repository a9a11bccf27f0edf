"""`onvm bench placement`: how good and how fast `controller.placement` is.

  (a) quality: fat-tree k=4 with 24 chains, the heuristic's cost against
      the exact optimum of a MILP (scipy.optimize.milp, HiGHS);
  (b) speed: fat-tree k=16 (1024 hosts) with 2000 chains;
  (c) re-placement after losing the busiest host on (b): time, and how many
      instances were touched.

The MILP is a reference for measuring, never used at run time.  Its model
(hosts h, NF types t, chains c with rate r_c and NFs t_c1..t_ck):

  n[t,h]   integer >= 0   instances of type t on host h
  x[c,j,h] in [0, 1]      share of chain c's hop j served on host h
  f[c,j,h,g] >= 0         share of chain c going from hop j on h to hop
                          j+1 on g (a transportation between hops)

  sum_h x[c,j,h] = 1                                   every hop fully served
  sum_g f[c,j,h,g] = x[c,j,h],  sum_h f[c,j,h,g] = x[c,j+1,g]   flow conservation
  sum_{(c,j): t_cj = t} r_c x[c,j,h] <= mpps_t n[t,h]  capacity
  sum_t cores_t n[t,h] <= cores_h                      cores
  min sum_c r_c ( sum_h d(in_c,h) x[c,1,h] + sum_j sum_{h,g} d(h,g) f[c,j,h,g]
                  + sum_h d(h,out_c) x[c,k,h] )

This is `placement.cost` with two freedoms the heuristic and the plans do
not have: one chain hop may use several instances on one host (a plan's hop
names one local instance), and a host running two consecutive hops may
still send part of its traffic away (plans keep it local).  So
the MILP optimum is a lower bound of the heuristic's feasible set and the
reported gap is an upper bound of the true gap.  If HiGHS stops at its time
limit the report says so and gives its proven bound.
"""
from __future__ import annotations

import gc
import json
import time

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from contracts.statsum import PUBLISH_S, summarize
from contracts.wire import DROP_REASONS
from controller import fabric, placement, topogen

MILP_SECONDS = 60.0


class _Columns:
    """Variable index bookkeeping for the MILP."""

    def __init__(self):
        self.n = 0
        self.cost: list = []
        self.integer: list = []
        self.upper: list = []

    def add(self, cost, integer=False, upper=np.inf):
        self.cost.append(cost)
        self.integer.append(1 if integer else 0)
        self.upper.append(upper)
        self.n += 1
        return self.n - 1


class _Rows:
    def __init__(self):
        self.rows, self.cols, self.vals, self.lo, self.hi = [], [], [], [], []

    def add(self, terms, lo, hi):
        r = len(self.lo)
        for col, val in terms:
            self.rows.append(r)
            self.cols.append(col)
            self.vals.append(val)
        self.lo.append(lo)
        self.hi.append(hi)


def exact_placement(topo, seconds=MILP_SECONDS):
    """Solve the MILP above. Returns {"cost", "optimal", "bound", "seconds",
    "message", "shares": {chain: [{host: share} per hop]},
    "instances": {(nf, host): count}}."""
    graph = fabric.build_graph(topo)
    table = fabric.DistanceTable(graph, [h.name for h in topo.hosts] +
                                 [e.name for e in topo.edges])
    hosts = [h.name for h in topo.hosts]
    cols, rows = _Columns(), _Rows()
    n = {(t, h): cols.add(0.0, integer=True) for t in topo.nfs for h in hosts}
    cap_terms = {(t, h): [(n[t, h], -topo.nfs[t].mpps)] for t in topo.nfs for h in hosts}
    xs = {}
    for c in topo.chains:
        k = len(c.nfs)
        x = [{h: cols.add(0.0, upper=1.0) for h in hosts} for _ in range(k)]
        xs[c.name] = x
        for h in hosts:
            cols.cost[x[0][h]] += c.mpps * table.d(c.ingress, h)
            cols.cost[x[k - 1][h]] += c.mpps * table.d(h, c.egress)
        for j in range(k):
            rows.add([(x[j][h], 1.0) for h in hosts], 1.0, 1.0)
            for h in hosts:
                cap_terms[c.nfs[j], h].append((x[j][h], c.mpps))
        for j in range(k - 1):
            f = {(h, g): cols.add(c.mpps * table.d(h, g)) for h in hosts for g in hosts}
            for h in hosts:
                rows.add([(f[h, g], 1.0) for g in hosts] + [(x[j][h], -1.0)], 0.0, 0.0)
                rows.add([(f[g, h], 1.0) for g in hosts] + [(x[j + 1][h], -1.0)], 0.0, 0.0)
    for terms in cap_terms.values():
        rows.add(terms, -np.inf, 0.0)
    for host in topo.hosts:
        rows.add([(n[t, host.name], topo.nfs[t].cores) for t in topo.nfs], -np.inf,
                 host.cores)
    a = coo_matrix((rows.vals, (rows.rows, rows.cols)), shape=(len(rows.lo), cols.n))
    start = time.perf_counter()
    res = milp(np.array(cols.cost), constraints=LinearConstraint(a.tocsr(), rows.lo, rows.hi),
               integrality=np.array(cols.integer), bounds=Bounds(0, np.array(cols.upper)),
               options={"time_limit": seconds, "disp": False})
    took = time.perf_counter() - start
    if res.x is None:
        return {"cost": None, "optimal": False, "bound": None, "seconds": took,
                "message": res.message}
    shares = {name: [{h: float(res.x[col]) for h, col in hop.items() if res.x[col] > 1e-7}
                     for hop in x] for name, x in xs.items()}
    counts = {key: int(round(res.x[col])) for key, col in n.items() if res.x[col] > 0.5}
    return {"cost": float(res.fun), "optimal": res.status == 0,
            "bound": float(getattr(res, "mip_dual_bound", res.fun)),
            "seconds": took, "message": res.message, "shares": shares,
            "instances": counts}


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - start) * 1000


def bench_quality(k=4, chains=24, seconds=MILP_SECONDS):
    topo = topogen.fat_tree(k, chains=chains)
    plan, ms = _timed(placement.place, topo)
    heuristic = placement.cost(topo, plan)
    exact = exact_placement(topo, seconds)
    gap = None
    if exact["cost"]:
        gap = 100.0 * (heuristic - exact["cost"]) / exact["cost"]
    return {"topology": f"fat-tree k={k}", "chains": chains, "heuristic_cost": heuristic,
            "heuristic_ms": ms, "exact_cost": exact["cost"],
            "exact_proven_optimal": exact["optimal"], "exact_bound": exact["bound"],
            "exact_seconds": exact["seconds"], "gap_percent": gap}


def _touched(before, after, lost):
    """Instances removed, added, or whose load changed; and moved ones
    (same host and id but a different NF: never expected)."""
    old, new = before.instances, after.instances
    removed = [k for k in old if k not in new]
    added = [k for k in new if k not in old]
    changed = [k for k in new if k in old and abs(new[k].load - old[k].load) > 1e-9]
    outside = [k for k in removed if k[0] != lost]
    return {"lost_instances": sum(1 for k in old if k[0] == lost),
            "removed": len(removed), "added": len(added), "load_changed": len(changed),
            "removed_elsewhere": len(outside)}


def bench_scale(k=16, chains=2000):
    topo = topogen.fat_tree(k, chains=chains)
    plan, ms = _timed(placement.place, topo)
    busiest = max(plan.cores_used().items(), key=lambda kv: (kv[1], kv[0]))[0]
    again, re_ms = _timed(placement.replace_after_host_loss, topo, plan, busiest)
    return {"topology": f"fat-tree k={k}", "hosts": len(topo.hosts), "chains": chains,
            "solve_ms": ms, "cost": placement.cost(topo, plan),
            "instances": len(plan.instances),
            "replace": dict({"lost_host": busiest, "solve_ms": re_ms},
                            **_touched(plan, again, busiest))}


def cli_bench_placement(args):
    """`onvm bench placement [--json]`."""
    quality = bench_quality()
    scale = bench_scale()
    if args.json:
        print(json.dumps({"quality": quality, "scale": scale}, indent=2))
        return 0
    q, s, r = quality, scale, scale["replace"]
    proven = "proven optimal" if q["exact_proven_optimal"] else \
        f"time limit hit, bound {q['exact_bound']}"
    print(f"{'benchmark':<44} {'result':>16}")
    print(f"{'(a) ' + q['topology'] + ', ' + str(q['chains']) + ' chains: heuristic cost':<44}"
          f" {q['heuristic_cost']:>16.3f}")
    print(f"{'    exact MILP cost (' + proven + ')':<44} {q['exact_cost'] or float('nan'):>16.3f}")
    print(f"{'    gap':<44} {q['gap_percent'] if q['gap_percent'] is not None else float('nan'):>15.2f}%")
    print(f"{'    heuristic / MILP time':<44} {q['heuristic_ms']:>10.1f} ms / {q['exact_seconds']:.1f} s")
    print(f"{'(b) ' + s['topology'] + ', ' + str(s['chains']) + ' chains: solve':<44}"
          f" {s['solve_ms']:>13.1f} ms")
    print(f"{'(c) re-place after losing ' + r['lost_host']:<44} {r['solve_ms']:>13.1f} ms")
    print(f"{'    instances lost / added / load changed':<44} "
          f"{r['lost_instances']:>6} / {r['added']} / {r['load_changed']}")
    print(f"{'    instances removed elsewhere (must be 0)':<44} {r['removed_elsewhere']:>16}")
    return 0


# ------------------------------------------------- onvm bench controller

def _host_stats(topo, placed, rules=100):
    """{host: full stats} as 1024 agents sample them each second
    (host_agent: ports, instances with their rates and counters, drops; a
    firewall's counters carry each of its `rules` rules' text and hits)."""
    drops = {r: 0 for r in DROP_REASONS}
    fw_rules = [{"line": i + 1, "rule": f"allow tcp 10.{i // 256}.{i % 256}.0/24 any "
                 f"port {1000 + i}", "hits": 1000 + i} for i in range(rules)]
    out = {}
    for host in topo.hosts:
        instances = {}
        for inst in placed.instances.values():
            if inst.host == host.name:
                counters = {"packets": 123456789, "bytes": 8123456789}
                if inst.nf == "firewall":
                    counters = {"passed": 123456000, "dropped": 789, "default": 3,
                                "ipv6_default": 0, "rules": fw_rules}
                instances[str(inst.id)] = {
                    "nf": inst.nf, "mode": "inline", "rx": 123456789, "tx": 123456000,
                    "drops": 789, "ring_full": 0, "queue": 0, "mpps": round(inst.load, 6),
                    "counters": counters}
        out[host.name] = {
            "host": host.name, "time": 1.8e9, "plan_error": None,
            "generation": 7, "processed": 987654321, "flows": 4096, "flow_table_full": 0,
            "ports": {"net_af_packet0": {"port": 0, "rx": 123456789, "tx": 123456789,
                                         "tx_full": 0, "missed": 0, "errors": 0,
                                         "rx_mpps": 1.5, "tx_mpps": 1.5}},
            "pins": {"entries": 10, "inserts": 100, "expired": 90, "full": 0},
            "instances": instances, "drops": drops}
    return out


def stats_ingest(topo, placed, seconds=PUBLISH_S):
    """The controller's stats path for `seconds` (one period of every
    agent's summary, contracts.statsum) as controller.core runs it: each
    summary decoded as the watch does and kept by host, then once a second
    the hosts' load from what is kept, the plans it gives, and which of
    them changed.  Returns (CPU ms per second, summary bytes per host per
    second, full stats bytes per host per second as agents used to put them)."""
    from controller import plans
    from controller.core import STATS_DECIDE_SECONDS, same_plan
    full = _host_stats(topo, placed)
    texts = [(h, json.dumps(summarize(st)[0])) for h, st in full.items()]
    full_bytes = sum(len(json.dumps(st)) for st in full.values()) / len(full)
    written = plans.host_plans(topo, placed, 2)
    per_second = -(-len(texts) // int(seconds))
    seen = {}
    t0 = time.process_time()
    for second in range(int(seconds)):
        for host, text in texts[second * per_second:(second + 1) * per_second]:
            seen[host] = json.loads(text)
        if second % STATS_DECIDE_SECONDS:
            continue
        load = plans.host_load(seen, topo, placed)
        new = plans.host_plans(topo, placed, 3 + second, load)
        changed = [h for h, p in new.items() if not same_plan(written.get(h), p)]
        written.update((h, new[h]) for h in changed)
    ms = (time.process_time() - t0) * 1e3 / int(seconds)
    return ms, sum(len(t) for _, t in texts) / len(texts) / seconds, full_bytes


def bench_controller(topo, say=lambda text: None):
    """The controller's decisions on `topo` with no switches: the first
    full compile, then the loss of the busiest host, then a second of every
    host's stats.  Returns DESIGN.md's `onvm bench controller --json` object.

      compile_ms       per-host plans and every switch's rules from a
                       placement (placement's own time is place_ms)
      host_loss_ms     from the host's loss to its re-placement, the new
                       plans and the changed rules being ready (incremental:
                       controller.rulebook)
      switches_changed switches whose rules that loss changed
      rules_total, rules_max_switch   flow rules, all switches / the busiest
      stats_ingest_ms_per_s  CPU per second of the controller's stats path
                       (`stats_ingest`): every host's summary each PUBLISH_S
                       decoded and kept, and once a period the hosts'
                       load, the plans it gives and which changed
      stats_bytes_per_host_s  what one host puts in the store a second (its
                       summary every PUBLISH_S); full_stats_bytes_per_host_s:
                       its full stats, which it put every second before
      longest_pause_ms the longest stretch between two points where the
                       Ryu app yields to the eventlet hub (timed calls of the
                       yield point, a rulebook.Stretches) during compile_ms's
                       and host_loss_ms's work, placement and re-placement included, under
                       the app's garbage collection (pausing.FullCollections)
    """
    from controller import flows as _flows, plans
    from controller.rulebook import RuleBook, Stretches
    from controller.pausing import FullCollections

    graph = fabric.build_graph(topo)
    say(f"placing {len(topo.chains)} chains on {len(topo.hosts)} hosts")
    place_stretches = Stretches()
    placed, place_ms = _timed(placement.place, topo, pause=place_stretches)
    place_stretches.finish()
    book = RuleBook()
    say("compiling every host's plan and every switch's rules")
    t0 = time.perf_counter()
    stretches = Stretches()
    with FullCollections() as held:       # as the Ryu app steps
        host_plans = plans.host_plans(topo, placed, 1, pause=stretches)
        rules = book.compile(topo, graph, plans.ingress_groups(topo, placed),
                             pause=stretches)
        held.freeze = True
    compile_ms = (time.perf_counter() - t0) * 1e3
    stretches.finish()
    sizes = [len(r.flows) for r in rules.values()]

    lost = max(placed.cores_used().items(), key=lambda kv: (kv[1], kv[0]))[0]
    say(f"losing the busiest host, {lost}")
    t0 = time.perf_counter()
    loss_stretches = Stretches()
    with FullCollections() as held:
        again = placement.replace_after_host_loss(topo, placed, lost, pause=loss_stretches)
        new_plans = plans.host_plans(topo, again, 2, pause=loss_stretches)
        rules_after = book.compile(topo, graph, plans.ingress_groups(topo, again),
                                   pause=loss_stretches)
        held.freeze = True
    host_loss_ms = (time.perf_counter() - t0) * 1e3
    loss_stretches.finish()
    gc.unfreeze()       # the stats below as they were measured before
    changed = [d for d in rules_after if rules_after[d].flows != rules[d].flows
               or rules_after[d].groups != rules[d].groups]
    plans_changed = sum(1 for h, p in new_plans.items()
                        if dict(p, generation=0) != dict(host_plans.get(h, {}), generation=0))

    say(f"ingesting {PUBLISH_S:g} s of stats summaries from {len(topo.hosts)} hosts")
    ingest_ms, summary_bytes, full_bytes = stats_ingest(topo, again)
    full_ms = None
    if len(topo.hosts) <= 128:       # the full recompile, for comparison, where it is quick
        full_ms = _timed(_flows.switch_rules, topo, graph,
                         plans.ingress_groups(topo, again))[1]
    return {"topology": topo.name, "hosts": len(topo.hosts), "switches": len(topo.switches),
            "chains": len(topo.chains), "place_ms": round(place_ms, 1),
            "compile_ms": round(compile_ms, 1), "host_loss_ms": round(host_loss_ms, 1),
            "lost_host": lost, "switches_changed": len(changed),
            "plans_changed": plans_changed,
            "rules_total": sum(sizes), "rules_max_switch": max(sizes, default=0),
            "stats_ingest_ms_per_s": round(ingest_ms, 1),
            "stats_bytes_per_host_s": round(summary_bytes, 1),
            "full_stats_bytes_per_host_s": round(full_bytes, 1),
            "longest_pause_ms": round(max(place_stretches.longest, stretches.longest,
                                          loss_stretches.longest) * 1e3, 1),
            "full_recompile_ms": None if full_ms is None else round(full_ms, 1)}


def cli_bench_controller(args):
    """`onvm bench controller --topology FILE [--json]`."""
    import sys
    from controller.topology import load_topology
    topo = load_topology(args.topology)
    quiet = args.json
    result = bench_controller(
        topo, say=(lambda text: None) if quiet else
        (lambda text: print(f"... {text}", file=sys.stderr, flush=True)))
    if args.json:
        print(json.dumps(result))
        return 0
    for key, value in result.items():
        print(f"{key:<24} {value}")
    return 0
