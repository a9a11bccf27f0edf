"""controller.placement: exact on tiny cases (brute force), feasible and
fast on big ones, minimal re-placement, deterministic."""
import itertools
import json
import math
import os
import random
import subprocess
import sys

import pytest

from controller import bench, placecost, placement, topogen
from contracts.model import Chain, Edge, Host, Link, NFType, Switch, Topology
from controller.placement import PlacementError, cost, place
from controller.topology import load_topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATALOG = {"fw": NFType("fw", 1, 8.0), "ids": NFType("ids", 2, 3.0),
           "lb": NFType("lb", 1, 10.0)}


def tiny(cores, chains, catalog=CATALOG):
    """Two leaves under one spine; hosts alternate between the leaves; the
    edge `internet` hangs off the spine.  d(internet, h) = 3, same leaf 2,
    other leaf 4."""
    switches = (Switch("spine", 1), Switch("leaf1", 2), Switch("leaf2", 3))
    links = (Link("leaf1", 9, "spine", 1, 10.0), Link("leaf2", 9, "spine", 2, 10.0))
    hosts = tuple(Host(f"h{i + 1}", f"leaf{i % 2 + 1}", i + 1, f"02:00:00:00:00:{i + 1:02x}",
                       f"10.0.0.{i + 1}/24", c, 16 + i) for i, c in enumerate(cores))
    made = tuple(Chain(f"c{i + 1}", "internet", egress, {"ipv4_dst": f"10.0.1.{i}/32"},
                       tuple(nfs), rate, 16 + i)
                 for i, (egress, nfs, rate) in enumerate(chains))
    return Topology("tiny", switches, hosts, links, (Edge("internet", "spine", 10),),
                    dict(catalog), made)


def min_bins(sizes, capacity):
    """Fewest bins of `capacity` holding `sizes` (exact; few items)."""
    sizes = sorted(sizes, reverse=True)
    for n in range(1, len(sizes) + 1):
        def fit(i, bins):
            if i == len(sizes):
                return True
            for b in range(n):
                if bins[b] + sizes[i] <= capacity + 1e-9:
                    bins[b] += sizes[i]
                    if fit(i + 1, bins):
                        return True
                    bins[b] -= sizes[i]
                    if bins[b] == 0:
                        break   # empty bins are alike
            return False
        if fit(0, [0.0] * n):
            return n
    return 0


def brute_force(topo):
    """Cheapest assignment of every (chain, hop) to one host, by enumeration."""
    d = placecost.distance_fn(topo)
    items = [(c.name, j, c.nfs[j], c.mpps) for c in topo.chains for j in range(len(c.nfs))]
    names = [h.name for h in topo.hosts]
    best = math.inf
    for choice in itertools.product(names, repeat=len(items)):
        loads = {}
        for (_, _, t, rate), h in zip(items, choice):
            loads.setdefault((h, t), []).append(rate)
        used = {h: 0 for h in names}
        for (h, t), rates in loads.items():
            used[h] += min_bins(rates, topo.nfs[t].mpps) * topo.nfs[t].cores
        if any(used[h.name] > h.cores for h in topo.hosts):
            continue
        at = {item[:2]: h for item, h in zip(items, choice)}
        total = 0.0
        for c in topo.chains:
            path = [c.ingress] + [at[(c.name, j)] for j in range(len(c.nfs))] + [c.egress]
            total += c.mpps * sum(d(a, b) for a, b in zip(path, path[1:]))
        best = min(best, total)
    return best


def random_tiny(seed):
    rng = random.Random(seed)
    n_hosts = rng.randint(2, 4)
    cores = [rng.randint(1, 4) for _ in range(n_hosts)]
    chains, items = [], 0
    for _ in range(rng.randint(1, 3)):
        nfs = rng.sample(sorted(CATALOG), rng.randint(1, 2))
        if items + len(nfs) > 6:
            break
        items += len(nfs)
        egress = rng.choice([f"h{i + 1}" for i in range(n_hosts)] + ["internet"])
        chains.append((egress, nfs, round(rng.uniform(0.2, 2.9), 2)))
    return tiny(cores, chains)


def check_valid(topo, plan):
    """Invariants every placement must hold."""
    used = plan.cores_used()
    for host in topo.hosts:
        assert used[host.name] <= host.cores, f"{host.name} over its cores"
    for inst in plan.instances.values():
        assert inst.load <= topo.nfs[inst.nf].mpps + 1e-6, f"{inst.key} over capacity"
        assert inst.users, f"{inst.key} serves nobody"
    for chain in topo.chains:
        hops = plan.hops[chain.name]
        assert len(hops) == len(chain.nfs)
        for j, hop in enumerate(hops):
            assert abs(sum(s for _, s in hop) - 1.0) < 1e-6, (chain.name, j)
            assert len({key[0] for key, _ in hop}) == len(hop), "one instance per host"
            for key, share in hop:
                inst = plan.instances[key]
                assert inst.nf == chain.nfs[j]
                assert abs(inst.users[(chain.name, j)] - share * chain.mpps) < 1e-6


@pytest.mark.parametrize("seed", range(40))
def test_tiny_cases_match_brute_force(seed):
    topo = random_tiny(seed)
    exact = brute_force(topo)
    try:
        plan = place(topo)
    except PlacementError:
        assert math.isinf(exact), "placement failed where an assignment exists"
        return
    check_valid(topo, plan)
    got = cost(topo, plan)
    # Splitting may beat the unsplit brute force; never worse than it.
    assert got <= exact + 1e-6, (seed, got, exact)


def test_exact_milp_agrees_with_brute_force_on_tiny_cases():
    for seed in (1, 2, 5):
        topo = random_tiny(seed)
        milp = bench.exact_placement(topo, seconds=20)
        assert milp["optimal"]
        # The MILP may split and pool; it is a lower bound of both.
        assert milp["cost"] <= brute_force(topo) + 1e-6
        assert milp["cost"] <= cost(topo, place(topo)) + 1e-6


def test_whole_chain_goes_on_the_egress_host_when_it_fits():
    topo = tiny([4, 4, 4], [("h3", ["fw", "lb"], 1.0)])
    plan = place(topo)
    assert plan.shares("c1", 0) == {"h3": 1.0} and plan.shares("c1", 1) == {"h3": 1.0}
    assert cost(topo, plan) == pytest.approx(3.0)


def test_chains_share_an_instance_when_cores_are_short():
    topo = tiny([1, 0], [("h1", ["fw"], 3.0), ("h1", ["fw"], 4.0)])
    plan = place(topo)
    check_valid(topo, plan)
    assert len(plan.instances) == 1
    (inst,) = plan.instances.values()
    assert inst.load == pytest.approx(7.0)


def test_a_fast_chain_is_split_over_instances():
    topo = tiny([2, 2, 2, 2], [("internet", ["fw"], 20.0)])
    plan = place(topo)
    check_valid(topo, plan)
    shares = plan.shares("c1", 0)
    assert len(plan.instances) == 3 and len(shares) == 3   # 8 + 8 + 4 Mpps
    assert sum(shares.values()) == pytest.approx(1.0)


def test_split_hops_cost_the_transportation():
    # 16 Mpps through fw (8 each): two hosts, then lb (10 each): two hosts.
    topo = tiny([2, 2, 2, 2], [("internet", ["fw", "lb"], 16.0)])
    plan = place(topo)
    check_valid(topo, plan)
    assert cost(topo, plan) == pytest.approx(16.0 * 6), "fw and lb co-located"


def test_error_names_chain_nf_and_shortage():
    topo = tiny([1, 1], [("h1", ["fw", "ids"], 1.0)])
    with pytest.raises(PlacementError) as err:
        place(topo)
    msg = str(err.value)
    assert "chain 'c1' hop 2 (ids)" in msg and "short by" in msg, msg


def test_error_when_free_cores_are_fragmented():
    topo = tiny([1, 1, 1], [("h1", ["ids"], 1.0)])
    with pytest.raises(PlacementError, match="3 cores are free but no host has 2 free"):
        place(topo)


def json_of(plan):
    out = plan.to_json(0.0)
    out.pop("solve_ms")
    return out


def test_placement_is_deterministic():
    topo = topogen.fat_tree(4, chains=24)
    assert json.dumps(json_of(place(topo))) == json.dumps(json_of(place(topo)))


def test_json_is_designs_object():
    topo = topogen.fat_tree(4, chains=8)
    plan = place(topo)
    out = plan.to_json(12.5)
    assert set(out) == {"chains", "cost", "hosts", "solve_ms"}
    assert out["solve_ms"] == 12.5
    assert out["cost"]["traffic_hops"] == pytest.approx(cost(topo, plan))
    chain = topo.chains[0]
    hops = out["chains"][chain.name]
    assert [h["nf"] for h in hops] == list(chain.nfs)
    assert set(hops[0]["instances"][0]) == {"host", "share"}
    assert out["hosts"]["h1"]["cores"] == 4
    assert sum(h["cores_used"] for h in out["hosts"].values()) == \
        sum(topo.nfs[i.nf].cores for i in plan.instances.values())


def test_within_five_percent_of_the_milp_on_k4():
    topo = topogen.fat_tree(4, chains=24)
    plan = place(topo)
    check_valid(topo, plan)
    exact = bench.exact_placement(topo, seconds=60)
    assert exact["cost"] is not None
    bound = exact["bound"] if not exact["optimal"] else exact["cost"]
    assert cost(topo, plan) <= 1.05 * exact["cost"], (cost(topo, plan), exact)
    assert cost(topo, plan) >= bound - 1e-6


# How fast these are is measured by `onvm bench placement` (BENCHMARKS.md),
# not asserted here: a timed unit test fails on a busy machine.
@pytest.fixture(scope="module")
def k16():
    topo = topogen.fat_tree(16, chains=2000)
    return topo, place(topo)


def test_k16_with_2000_chains_is_feasible(k16):
    topo, plan = k16
    check_valid(topo, plan)


def test_host_loss_touches_only_what_the_host_ran(k16):
    topo, plan = k16
    lost = max(plan.cores_used().items(), key=lambda kv: (kv[1], kv[0]))[0]
    again = placement.replace_after_host_loss(topo, plan, lost)
    assert not any(i.host == lost for i in again.instances.values())
    for key, inst in plan.instances.items():
        if inst.host != lost:
            assert key in again.instances and again.instances[key].nf == inst.nf
    for chain in topo.chains:
        for j, hop in enumerate(plan.hops[chain.name]):
            if all(key[0] != lost for key, _ in hop):
                assert same_hops([again.hops[chain.name][j]], [hop]), chain.name
            else:
                kept = {k: s for k, s in hop if k[0] != lost}
                new = dict(again.hops[chain.name][j])
                for k, s in kept.items():
                    assert new[k] == pytest.approx(s), "survivors keep their share"
    used = again.cores_used()
    assert all(used[h.name] <= h.cores for h in topo.hosts if h.name != lost)


def same_hops(a, b):
    return len(a) == len(b) and all(
        [k for k, _ in x] == [k for k, _ in y] and
        all(abs(s - t) < 1e-9 for (_, s), (_, t) in zip(x, y)) for x, y in zip(a, b))


def test_chain_changes_replace_only_that_chain():
    topo = topogen.fat_tree(4, chains=12)
    plan = place(topo)
    extra = Chain("new", "internet", "h5", {"ipv4_dst": "10.9.9.9/32"},
                  ("firewall", "lb"), 0.5, 99)
    grown = topo.with_chains(topo.chains + (extra,))
    after = place(grown, previous=plan)
    check_valid(grown, after)
    for chain in topo.chains:
        assert same_hops(after.hops[chain.name], plan.hops[chain.name]), chain.name
    assert set(plan.instances) <= set(after.instances)
    # Removing it again frees what only it used and moves nothing else.
    back = place(topo, previous=after)
    assert set(back.instances) == set(plan.instances)
    # A rate change that still fits keeps the chain where it is.
    first = topo.chains[0]
    slower = topo.with_chains((Chain(first.name, first.ingress, first.egress, first.match,
                                     first.nfs, first.mpps / 2, first.spi),)
                              + topo.chains[1:])
    moved = place(slower, previous=plan)
    assert [[k for k, _ in hop] for hop in moved.hops[first.name]] == \
        [[k for k, _ in hop] for hop in plan.hops[first.name]]


def test_onvm_place_json_and_text():
    path = os.path.join(ROOT, "topologies", "fat-tree-k4.yaml")
    out = subprocess.run([sys.executable, "-m", "onvm.cli", "place", "--topology", path,
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == {"chains", "cost", "hosts", "solve_ms"}
    # the log says where each chain went, once: not the search's trial steps
    logged = out.stderr.splitlines()
    assert [line.split(" (")[0] for line in logged[:-1]] == \
        [f"onvm.placement: chain {name}" for name in data["chains"]], out.stderr
    assert logged[-1].startswith("onvm.placement: placement cost "), out.stderr
    text = subprocess.run([sys.executable, "-m", "onvm.cli", "place", "--topology", path],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "traffic hops" in text.stdout


def test_onvm_place_reports_a_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nswitches: []\nhosts: [{name: h1}]\n")
    out = subprocess.run([sys.executable, "-m", "onvm.cli", "place", "--topology", str(bad)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"{bad}:" in out.stderr


def test_chains_refused_with_few_hosts_are_placed_as_hosts_come(caplog):
    # One of four hosts up: only what fits on it is placed, the rest refused
    # with reasons; more hosts later: the refused chains are placed and the
    # log says they were not before.
    topo = load_topology(os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "topologies", "leaf-spine.yaml"))
    hosts = [h.name for h in topo.hosts]
    caplog.set_level("INFO", logger="onvm.placement")
    few, kept, refused = placement.place_what_fits(
        topo, list(topo.chains), exclude_hosts=[h for h in hosts if h != "h2"])
    assert [c.name for c in kept] == ["web"]
    assert set(refused) == {"vpn", "api", "transit"}
    assert "short by" in refused["vpn"]
    assert "chain vpn not placed" in caplog.text
    caplog.clear()
    more, kept, refused = placement.place_what_fits(
        topo, list(topo.chains), previous=few, exclude_hosts=hosts[4:], unplaced=refused)
    assert refused == {} and [c.name for c in kept] == [c.name for c in topo.chains]
    assert {i.host for i in more.instances.values()} <= set(hosts[:4])
    for name in ("vpn", "api", "transit"):
        assert f"chain {name} placed now (it was not: " in caplog.text
    assert "chain web placed now" not in caplog.text
    # web kept its instances on h2 (re-placement moves no unchanged chain)
    assert more.hops["web"] == few.hops["web"]
    assert placement.place_what_fits(topo, [], exclude_hosts=hosts) == (None, [], {})
