"""Draining (issue 9's planned-move race): an instance moved away or scaled
in keeps the flows pinned to it with weight 0 while new flows go to the
others.  The model (placecost/placement), the plans, the slices, the
decisions (controller.moves.Drains), the plan contract and compiler, the
ingress slots, and the real fast path with a weight-0 peer."""
import logging
import os

import pytest

from contracts.plan import PlanError, check_plan
from controller import flows, natslices
from controller.moves import (DRAIN_SECONDS, MIN_DRAIN_SECONDS, RETIRE_SECONDS, Drains,
                              flow_count)
from controller.placement import move_instance, place
from controller.plans import host_plans, ingress_groups, nat_slices
from controller.topology import load_topology
from host_agent import fastpath as fp
from host_agent import tables
from host_agent.harness import Harness
from scapy.all import Ether
from nflib.api import make_nf
import test_fastpath_pins as pins

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H4 = '  - {name: h4, switch: leaf2, port: 2, mac: "02:00:00:00:00:04", ip: 10.0.2.2/16, cores: 2}'
H5 = '  - {name: h5, switch: leaf2, port: 5, mac: "02:00:00:00:00:05", ip: 10.0.2.3/16, cores: 2}'


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    """topologies/symmetric.yaml with a spare host h5 (as test_symmetric_moves)."""
    work = tmp_path_factory.mktemp("drain")
    with open(os.path.join(REPO, "topologies", "symmetric.yaml")) as f:
        text = f.read()
    (work / "t.yaml").write_text(text.replace(H4, H4 + "\n" + H5).replace(
        "nat: {cores: 1, mpps: 1.5,", "nat: {cores: 1, mpps: 1.2,"))
    (work / "rules").symlink_to(os.path.join(REPO, "topologies", "rules"))
    return load_topology(str(work / "t.yaml"))


def first(placement, nf):
    return next(k for k, i in sorted(placement.instances.items()) if i.nf == nf)


def spare_host(topo, placement):
    used = placement.cores_used()
    return next(h.name for h in topo.hosts if used[h.name] < h.cores)


def moved_and_draining(topo, nf):
    """(placement before, after the move with the old instance draining,
    old key, new key), drained by Drains.begin as the core does."""
    before = place(topo, say=False)
    old = first(before, nf)
    to = spare_host(topo, before)
    after = move_instance(topo, before, *old, to, say=False)
    new, = set(after.instances) - set(before.instances)
    drains = Drains()
    after = drains.begin(before, after, 0.0, {h.name for h in topo.hosts}, {}, {old: new})
    return before, after, old, new, drains


# --- the model and the solver -------------------------------------------------

def test_a_draining_instance_holds_its_cores_and_its_id(topo):
    before, after, old, new, _ = moved_and_draining(topo, "nat")
    assert old in after.draining and old not in after.instances
    assert after.cores_used()[old[0]] == before.cores_used()[old[0]]
    again = place(topo, previous=after, say=False)
    assert again.draining.keys() == {old}, "a re-placement carries the drain on"
    assert old not in again.instances, "its id is not given to anyone else"
    for host, cores in again.cores_used().items():
        assert cores <= topo.host(host).cores, f"{host} over-committed"


def test_a_drain_on_a_lost_host_is_gone_with_it(topo):
    _, after, old, _, drains = moved_and_draining(topo, "nat")
    again = place(topo, previous=after, exclude_hosts=(old[0],), say=False)
    assert again.draining == {}
    alive = {h.name for h in topo.hosts} - {old[0]}
    assert drains.begin(after, again, 1.0, alive, {}).draining == {}
    assert drains.active == {}


# --- the plans ------------------------------------------------------------------

def test_plans_keep_a_draining_nat_with_its_slice_and_weight_0(topo):
    before, after, old, new, _ = moved_and_draining(topo, "nat")
    slices = nat_slices(topo, after, nat_slices(topo, before), {old: new})
    assert slices[old] == nat_slices(topo, before)[old], "the draining nat keeps its slice"
    assert slices[new] not in {n for k, n in slices.items() if k != new}
    plans = host_plans(topo, after, 7, slices=slices)      # each passes check_plan
    entry = {i["id"]: i for i in plans[old[0]]["instances"]}[old[1]]
    assert entry["draining"] is True and entry["config"]["slice"] == slices[old]
    chain = topo.chain("web")
    j = chain.nfs.index("nat")
    si = 255 - j
    label = topo.host(old[0]).label
    # where it ran it still serves its hop (pinned flows) ...
    hops = {(h["spi"], h["si"]): h for h in plans[old[0]]["hops"]}
    assert hops[(chain.spi, si)]["local"] == old[1]
    # ... every remote hop toward the nat lists it with weight 0 ...
    toward = [p for plan in plans.values() for h in plan["hops"]
              if h["spi"] == chain.spi and h["si"] == si and "remote" in h
              for p in h["remote"]]
    assert {p["weight"] for p in toward if p["label"] == label} == {0.0}
    assert all(p["weight"] > 0 for p in toward if p["label"] != label)
    assert any(p["host"] == new[0] for p in toward)
    # ... and replies of its flows may come back to it (reverse `pinned`)
    rspi = chain.spi | (1 << 19)
    pinned = [p["label"] for plan in plans.values() for h in plan["hops"]
              if h["spi"] == rspi and "pinned" in h and h["si"] == 255 - (len(chain.nfs) - 1 - j)
              for p in h["pinned"]]
    assert label in pinned


def test_compiled_a_weight_0_peer_gets_no_slot(topo):
    _, after, old, _, _ = moved_and_draining(topo, "nat")
    chain = topo.chain("web")
    si = 255 - chain.nfs.index("nat")       # the hop toward the nat
    checked = 0
    for host, plan in host_plans(topo, after, 7).items():
        t = tables.compile_plan(plan)
        i = t.hop_of(chain.spi, si)
        if i is None or t.hop_kind[i] != tables.HOP_REMOTE:
            continue
        off, n = t.hop_peer_off[i], t.hop_npeers[i]
        zero = {off + k for k in range(n) if t.peer_label[off + k] == topo.host(old[0]).label}
        slots = t.remote[t.hop_remote_off[i]:t.hop_remote_off[i] + tables.SLOTS]
        assert zero and not zero & set(slots), f"{host}: a draining peer got slots"
        checked += 1
    assert checked


def test_a_draining_first_nf_has_weight_0_at_the_ingress(topo):
    before, after, old, _, _ = moved_and_draining(topo, "firewall-stateful")
    members = dict(ingress_groups(topo, after)["web"])
    assert members[old[0]] == 0.0 and sum(members.values()) == pytest.approx(1.0)
    slots = flows.slot_hosts(sorted(members.items()))
    assert old[0] not in slots and len(slots) == flows.SLOTS
    assert len(flows.slot_hosts([("a", 1.0), ("b", 0.0), ("c", 3.0)])) == flows.SLOTS


def test_a_moved_nat_hands_its_slice_on_only_when_it_is_gone():
    prev = {("h1", 1): 0, ("h2", 1): 1}
    moved = {("h2", 1): ("h3", 1)}
    assert natslices.assign(prev, [("h1", 1), ("h2", 1), ("h3", 1)], moved) == \
        {("h1", 1): 0, ("h2", 1): 1, ("h3", 1): 2}
    assert natslices.assign(prev, [("h1", 1), ("h3", 1)], moved) == \
        {("h1", 1): 0, ("h3", 1): 1}
    with pytest.raises(natslices.SlicesExhausted):
        natslices.assign(prev, [("h1", 1), ("h2", 1), ("h3", 1)], moved, slices=2)


# --- the decisions ----------------------------------------------------------------

def test_a_move_drains_and_logs_it(topo, caplog):
    before = place(topo, say=False)
    old = first(before, "lb")
    to = spare_host(topo, before)
    after = move_instance(topo, before, *old, to, say=False)
    new, = set(after.instances) - set(before.instances)
    stats = {old[0]: {"instances": {str(old[1]): {"counters": {"flows": 14}}}}}
    drains = Drains(30)
    with caplog.at_level(logging.INFO, logger="onvm.moves"):
        out = drains.begin(before, after, 5.0, {h.name for h in topo.hosts}, stats,
                           {old: new})
    assert out.draining.keys() == {old}
    assert (f"move lb#{old[1]} {old[0]}->{to}: draining lb#{old[1]} on {old[0]} for 30 s, "
            f"14 pinned flows; new flows go to {new[0]}#{new[1]}") in caplog.text
    assert drains.due(5.0 + 29, stats) == {}
    assert drains.due(5.0 + 30, stats) == {old: "after 30 s, 14 flows left"}
    with caplog.at_level(logging.INFO, logger="onvm.moves"):
        done = drains.end(out, drains.due(35.0, stats))
    assert done.draining == {} and drains.active == {}
    assert f"drain of lb#{old[1]} on {old[0]} over (after 30 s, 14 flows left): removed" \
        in caplog.text


def test_no_flow_left_ends_a_drain_early_but_not_before_fresh_stats(topo):
    before, after, old, _, drains = moved_and_draining(topo, "lb")
    empty = {old[0]: {"instances": {str(old[1]): {"counters": {"flows": 0}}}}}
    assert drains.due(MIN_DRAIN_SECONDS / 2, empty) == {}
    assert old in drains.due(MIN_DRAIN_SECONDS, empty)


def test_scale_in_drains_stateful_instances_and_retires_the_others(topo, caplog):
    before = place(topo, say=False)
    lb, fw = first(before, "lb"), first(before, "firewall-stateful")
    forward = before.instances[fw]
    forward.nf = "firewall"         # as if a stateless NF: stops at once
    after = place(topo, previous=before, say=False)
    for key in (lb, fw):
        after.instances.pop(key)
    drains = Drains()
    with caplog.at_level(logging.INFO, logger="onvm.moves"):
        out = drains.begin(before, after, 0.0, {h.name for h in topo.hosts}, {})
    assert out.draining.keys() == {lb, fw}
    assert f"scale-in: draining lb#{lb[1]} on {lb[0]} for {DRAIN_SECONDS:g} s, ? pinned " \
        "flows" in caplog.text
    assert f"firewall#{fw[1]} on {fw[0]} retires: firewall holds no flow state" in caplog.text
    # the retiring one stops after RETIRE_SECONDS whatever its stats say;
    # the lb drains on (tests/test_hostdrain.py: no hop lists a retiring one)
    forward.nf = "firewall-stateful"
    assert set(drains.due(RETIRE_SECONDS, {})) == {fw}


def test_drain_seconds_0_stops_at_once(topo):
    before = place(topo, say=False)
    old = first(before, "nat")
    after = move_instance(topo, before, *old, spare_host(topo, before), say=False)
    out = Drains(0).begin(before, after, 0.0, {h.name for h in topo.hosts}, {})
    assert out.draining == {}


def test_flow_count_reads_each_nf_s_counters():
    assert flow_count({"counters": {"connections": 3}}) == 3        # firewall-stateful
    assert flow_count({"counters": {"flows": 4, "balanced": 9}}) == 4   # lb, ids
    assert flow_count({"counters": {"tcp": {"mappings": 2}, "udp": {"mappings": 1},
                                    "port_range": [1, 2]}}) == 3   # nat
    assert flow_count({"counters": {"passed": 1}}) is None
    assert flow_count(None) is None and flow_count({"rx": 1}) is None


# --- the plan contract --------------------------------------------------------------

def plan(remote, draining=True):
    return {"host": "h1", "generation": 1, "node_label": 16, "mac": "02:00:00:00:00:01",
            "instances": [{"id": 1, "nf": "nat", "draining": draining}],
            "hops": [{"spi": 20, "si": 255, "local": 1},
                     {"spi": 20, "si": 254, "remote": remote}]}


def peer(label, weight):
    return {"host": f"h{label}", "label": label, "mac": f"02:00:00:00:00:{label:02x}",
            "weight": weight}


def test_weight_0_is_a_draining_peer_and_a_list_needs_one_positive():
    check_plan(plan([peer(17, 0), peer(18, 1.0)]))
    with pytest.raises(PlanError) as err:
        check_plan(plan([peer(17, 0), peer(18, 0.0)]))
    assert "plan.hops[1].remote: needs a peer with a positive weight" in str(err.value)
    with pytest.raises(PlanError) as err:
        check_plan(plan([peer(17, -1), peer(18, 1.0)]))
    assert "plan.hops[1].remote[0].weight: must be a number >= 0" in str(err.value)
    with pytest.raises(PlanError) as err:
        check_plan(plan([peer(18, 1.0)], draining="yes"))
    assert "plan.instances[0].draining: must be true or false, not 'yes'" in str(err.value)


def test_consistent_slots_never_give_a_weight_0_peer_a_slot():
    with_zero = tables.consistent_slots([peer(17, 1.0), peer(18, 0), peer(19, 2.0)])
    assert 1 not in with_zero and {0, 2} == set(with_zero)
    # the others keep the slots they had without it
    without = tables.consistent_slots([peer(17, 1.0), peer(19, 2.0)])
    assert [0 if p == 0 else 2 for p in without] == with_zero


# --- the fast path: weight 0 serves pinned flows, never new ones ------------------

@pytest.fixture
def spread():
    """A Harness as host A whose remote hop spread 64 running flows over B
    and C (pinned): (harness, the flows' frames, {sport: label picked})."""
    h = Harness(nfs=[("forward", None)])
    h.manager.apply_plan(pins.remote_plan(h, [pins.peer(pins.B, 1.0), pins.peer(pins.C, 1.0)],
                                          2), make_nf)
    running = [pins.request(i) for i in range(64)]
    before = pins.picks(h, running)
    assert set(before.values()) == {pins.B["label"], pins.C["label"]}
    yield h, running, before
    h.close()
    assert fp.pool_counts()[1] == 0, "mbufs leaked"


def test_the_fast_path_keeps_pinned_flows_on_a_weight_0_host_and_sends_it_no_new_one(spread):
    h, running, before = spread
    B, C = pins.B, pins.C
    # C drains: weight 0
    h.manager.apply_plan(pins.remote_plan(h, [pins.peer(B, 1.0), pins.peer(C, 0)], 3),
                         make_nf)
    assert pins.picks(h, running) == before, "pinned flows stay, on C too"
    fresh = pins.picks(h, [pins.request(1000 + i) for i in range(128)])
    assert set(fresh.values()) == {B["label"]}, "no new flow goes to a draining host"
    # the drain is over: C leaves the list, its flows pick B
    h.manager.apply_plan(pins.remote_plan(h, [pins.peer(B, 1.0)], 4), make_nf)
    after = pins.picks(h, running)
    assert set(after.values()) == {B["label"]}


def test_a_hop_that_turned_local_keeps_sending_pinned_flows_where_they_were(spread):
    """The lb moved next to the nat that fed it remotely: its new local hop
    lists the hop's other hosts as `kept`, so the flows this host had pinned
    to them (the draining one's and the other instance's) stay there and
    only new flows take the local instance."""
    h, running, before = spread
    B, C = pins.B, pins.C
    edge = "02:00:00:00:00:e1"
    turned = pins.plan_of(pins.A, h, [1, 2], [
        {"spi": pins.S, "si": 255, "local": 1},
        {"spi": pins.S, "si": 254, "local": 2, "kept": [pins.peer(B), pins.peer(C)]},
        {"spi": pins.S, "si": 253, "end": {"dst_mac": edge}},
    ], 3)
    h.manager.apply_plan(turned, make_nf)
    assert pins.picks(h, running) == before, "pinned flows go on where they were"
    fresh = h.send([pins.request(1000 + i) for i in range(32)])
    assert len(fresh) == 32
    assert all(Ether(f).type == 0x0800 and Ether(f).dst == edge for f in fresh), \
        "new flows take the local instance (then the end)"
    # without `kept` the turned hop would take the pinned flows too
    turned["hops"][1].pop("kept")
    turned["generation"] = 4
    h.manager.apply_plan(turned, make_nf)
    assert all(Ether(f).type == 0x0800 for f in h.send(running))


def test_kept_only_on_a_local_hop():
    p = plan([peer(18, 1.0)])
    p["hops"][0]["kept"] = [{"host": "h17", "label": 17, "mac": "02:00:00:00:00:11"}]
    check_plan(p)
    p["hops"][1]["kept"] = []
    with pytest.raises(PlanError) as err:
        check_plan(p)
    assert "plan.hops[1].kept: only a local hop keeps flows pinned elsewhere" in str(err.value)


def test_plans_give_a_hop_that_drains_kept_hosts(topo):
    before = place(topo, say=False)
    old = first(before, "lb")
    nat_hosts = {h for (h, _), _ in before.hops["web"][topo.chain("web").nfs.index("nat")]}
    lb_hosts = {h for (h, _), _ in before.hops["web"][topo.chain("web").nfs.index("lb")]}
    used = before.cores_used()
    to = next((h for h in sorted(nat_hosts - lb_hosts) if used[h] < topo.host(h).cores),
              spare_host(topo, before))
    after = move_instance(topo, before, *old, to, say=False)
    new, = set(after.instances) - set(before.instances)
    after = Drains().begin(before, after, 0.0, {h.name for h in topo.hosts}, {}, {old: new})
    chain = topo.chain("web")
    si = 255 - chain.nfs.index("lb")
    plans = host_plans(topo, after, 7)
    serving = {h for (h, _), _ in after.hops["web"][chain.nfs.index("lb")]} | {old[0]}
    for host in (to, old[0]):
        hop = next(h for h in plans[host]["hops"] if (h["spi"], h["si"]) == (chain.spi, si))
        assert "local" in hop, hop
        assert [p["host"] for p in hop["kept"]] == sorted(serving - {host}), hop
    # no drain, no `kept`
    assert not any("kept" in h for p in host_plans(topo, before, 7).values() for h in p["hops"])
