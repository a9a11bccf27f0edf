"""Planned moves with state: placement.move_instance, controller.moves over a
memory:// store, the plan fields that carry them ("export", "state"), and
(test at the end) a move of a running lb in the emulation."""

import re

import pytest

from controller import plans
from contracts.model import Chain, Edge, Host, NFType, Switch, Topology
from controller.moves import MoveError, Moves, check_move
from controller.placement import Placement, PlacementError, move_instance, place
from contracts.store import open_store
from contracts.plan import PlanError, check_plan

CATALOG = {"fw": NFType("fw", 1, 8.0), "lb": NFType("lb", 1, 10.0)}


def topo(cores=(2, 2, 1)):
    """One switch, hosts h1.. with `cores`, the edge `internet`; chain
    `spread` (lb, egress h1) and `guard` (fw, lb, egress h2)."""
    hosts = tuple(Host(f"h{i + 1}", "s1", i + 1, f"02:00:00:00:00:0{i + 1}",
                       f"10.0.0.{i + 1}/24", c, 16 + i) for i, c in enumerate(cores))
    chains = (Chain("spread", "internet", "h1", {"ipv4_dst": "10.7.0.0/16"}, ("lb",), 1.0, 16),
              Chain("guard", "internet", "h2", {"ipv4_dst": "10.9.0.0/16"}, ("fw", "lb"), 1.0, 17))
    return Topology("movetest", (Switch("s1", 1),), hosts, (), (Edge("internet", "s1", 9),),
                    dict(CATALOG), chains)


def lb_of(placement, chain="spread"):
    (key, share), = placement.hops[chain][-1]
    return key, share


# --- placement.move_instance ---------------------------------------------------

def test_move_instance_moves_only_that_instance_with_its_shares(caplog):
    caplog.set_level("INFO", logger="onvm.placement")
    t = topo()
    before = place(t)
    (host, iid), share = lb_of(before)
    to = next(h.name for h in t.hosts if h.name != host and
              before.cores_used()[h.name] < h.cores)
    snapshot = {k: (v.nf, dict(v.users)) for k, v in before.instances.items()}
    after = move_instance(t, before, host, iid, to)
    assert {k: (v.nf, dict(v.users)) for k, v in before.instances.items()} == snapshot, \
        "move_instance changed the placement it was given"
    (new_host, new_id), new_share = lb_of(after)
    assert (new_host, new_share) == (to, share)
    taken = {i for (h, i) in before.instances if h == to}
    assert new_id == min(set(range(1, 10)) - taken)
    assert after.instances[(to, new_id)].nf == "lb"
    assert after.instances[(to, new_id)].users == before.instances[(host, iid)].users
    rest = lambda p, skip: {k: (v.nf, v.users) for k, v in p.instances.items() if k != skip}
    assert rest(after, (to, new_id)) == rest(before, (host, iid))
    assert after.cores_used()[to] == before.cores_used()[to] + 1
    # the plans follow: the lb runs on `to`, the ingress picks `to`, A lost it
    out = plans.host_plans(t, after, 2)
    assert {"spi": 16, "si": 255, "local": new_id} in out[to]["hops"]
    assert not any(h["spi"] == 16 and h["si"] == 255 for h in out[host]["hops"])
    assert (host, iid) == ("h1", 1) and out[host]["instances"] == []
    assert plans.ingress_groups(t, after)["spread"] == [(to, 1.0)]
    assert caplog.messages[-1] == (
        "moving lb#1 from h1 to h3, where it runs as lb#1: it serves chain spread "
        "hop 1 (1.000 Mpps) with the same shares; h3 now uses 1 of 1 cores, h1 0 of 2")
    move_instance(t, before, host, iid, to, say=False)
    assert len([m for m in caplog.messages if m.startswith("moving")]) == 1


def _hand_placed(t):
    """spread's lb on h1 (#1), guard's fw on h1 (#2) and its lb split over
    h2 (#1) and h1 (#1: the one lb serves both chains)."""
    from controller.placement import Instance
    lb1 = Instance("h1", 1, "lb", {("spread", 0): 1.0, ("guard", 1): 0.5})
    fw = Instance("h1", 2, "fw", {("guard", 0): 1.0})
    lb2 = Instance("h2", 1, "lb", {("guard", 1): 0.5})
    hops = {"spread": [[(("h1", 1), 1.0)]],
            "guard": [[(("h1", 2), 1.0)], [(("h1", 1), 0.5), (("h2", 1), 0.5)]]}
    return Placement(t, {i.key: i for i in (lb1, fw, lb2)}, hops)


@pytest.mark.parametrize("host, iid, to, message", [
    ("h1", 9, "h2", "host h1 runs no instance 9"),
    ("h1", 1, "h1", "lb#1 already runs on h1"),
    ("h1", 1, "h7", "h7 is not a host of topology movetest"),
    ("h1", 1, "h2", "h2 already serves a hop of lb#1 with instance 1"),
    ("h1", 2, "h3", None),
    ("h2", 1, "h1", "h1 has 0 free cores; lb needs 1"),
])
def test_move_instance_refuses_with_reasons(host, iid, to, message):
    t = topo()
    placed = _hand_placed(t)
    if message is None:
        moved = move_instance(t, placed, host, iid, to)
        assert moved.hops["guard"][0] == [(("h3", 1), 1.0)]
        return
    with pytest.raises(PlacementError) as err:
        move_instance(t, placed, host, iid, to)
    assert str(err.value) == message


# --- controller.moves -------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _write(store, plan_by_host):
    """What the chain manager does with marked plans: store them."""
    return {h: store.put_plan(h, p) for h, p in plan_by_host.items()}


def _setup():
    t = topo()
    store = open_store("memory://")
    placed = place(t)
    for h in t.hosts:
        store.register_host(h.name, {}, ttl=30, keepalive=False)
    clock = Clock()
    return t, store, placed, Moves(store, clock=clock, timeout=5.0), clock


def test_move_marks_export_waits_for_the_snapshot_then_lands_with_state(caplog):
    t, store, placed, moves, clock = _setup()
    (a, iid), _ = lb_of(placed)
    b = "h3" if a != "h3" else "h2"
    caplog.set_level("INFO", logger="onvm.moves")
    assert moves.request(t, placed, set(store.hosts()), a, iid, b)["to"] == b
    marked = moves.mark(plans.host_plans(t, placed, 1))
    assert _inst(marked[a], iid)["export"] is True
    check_plan(marked[a])
    gen = _write(store, marked)[a]
    assert moves.land(t, placed) is placed, "landed before any snapshot"
    # a snapshot of an older plan is not the one asked for
    snap = {"nf": "lb", "version": 1, "flows": [{"key": [6, "192.0.2.1", "10.7.0.1", 1, 80],
                                                  "backend": "web1", "ttl": 30.0}]}
    store.put_stats(a, {"instances": {str(iid): {"state": {"old": 1},
                                                  "state_generation": gen - 1}}})
    assert moves.land(t, placed) is placed
    store.put_stats(a, {"instances": {str(iid): {"state": snap, "state_generation": gen}}})
    moved = moves.land(t, placed)
    (to, new_id), _ = lb_of(moved)
    assert to == b and moves.pending == {}
    out = moves.mark(plans.host_plans(t, moved, 2))
    assert _inst(out[b], new_id)["state"] == snap
    assert _inst(out[a], iid) is None
    check_plan(out[b])
    written = _write(store, out)[b]
    # until b applied the plan with the state, later plans still carry it
    assert _inst(moves.mark(plans.host_plans(t, moved, 3))[b], new_id)["state"] == snap
    store.put_applied(b, written)
    later = moves.mark(plans.host_plans(t, moved, 4))
    assert "state" not in _inst(later[b], new_id) and moves.landing == {}
    assert f"move asked: lb#{iid} from {a} to {b}" in caplog.text
    assert f"snapshot of plan generation {gen} in after" in caplog.text


def test_no_snapshot_in_time_moves_without_state(caplog):
    t, store, placed, moves, clock = _setup()
    (a, iid), _ = lb_of(placed)
    b = "h3" if a != "h3" else "h2"
    moves.request(t, placed, set(store.hosts()), a, iid, b)
    _write(store, moves.mark(plans.host_plans(t, placed, 1)))
    clock.now += 4.9
    assert moves.land(t, placed) is placed
    clock.now += 0.2
    moved = moves.land(t, placed)
    (to, new_id), _ = lb_of(moved)
    assert to == b
    assert _inst(moves.mark(plans.host_plans(t, moved, 2))[b], new_id)["state"] is None
    assert "no snapshot from" in caplog.text and "moving without state" in caplog.text


def test_null_snapshot_moves_on_without_state(caplog):
    t, store, placed, moves, clock = _setup()
    (a, iid), _ = lb_of(placed)
    b = "h3" if a != "h3" else "h2"
    moves.request(t, placed, set(store.hosts()), a, iid, b)
    gen = _write(store, moves.mark(plans.host_plans(t, placed, 1)))[a]
    store.put_stats(a, {"instances": {str(iid): {"state": None, "state_generation": gen}}})
    moved = moves.land(t, placed)
    assert lb_of(moved)[0][0] == b
    assert "its NF exports no state; moving without" in caplog.text


def test_check_move_errors_have_status_and_field():
    t, store, placed, moves, _ = _setup()
    (a, iid), _ = lb_of(placed)
    alive = set(store.hosts())
    cases = [
        (("h9", iid, "h2"), 404, "move.host: 'h9' is not a host of topology movetest"),
        ((a, iid, "h9"), 404, "move.to: 'h9' is not a host of topology movetest"),
        ((a, 77, "h2"), 404, f"move.instance: {a} runs no instance 77 (it runs: "),
        ((a, iid, a), 400, f"move.to: instance {iid} already runs on {a}"),
    ]
    other = "h3" if a != "h3" else "h2"
    for args, status, message in cases:
        with pytest.raises(MoveError) as err:
            check_move(t, placed, alive, *args)
        assert err.value.status == status and err.value.message.startswith(message), \
            err.value.message
    with pytest.raises(MoveError) as err:
        check_move(t, placed, alive - {other}, a, iid, other)
    assert (err.value.status, err.value.message) == \
        (409, f"move.to: {other} is not alive (no agent registered)")
    moves.request(t, placed, alive, a, iid, other)
    with pytest.raises(MoveError) as err:
        moves.request(t, placed, alive, a, iid, other)
    assert err.value.status == 409 and "is moving already" in err.value.message


def test_no_free_cores_is_409():
    t = topo(cores=(2, 2, 1))
    placed = _hand_placed(t)
    with pytest.raises(MoveError) as err:
        check_move(t, placed, {"h1", "h2", "h3"}, "h2", 1, "h1")
    assert (err.value.status, err.value.message) == \
        (409, "move.to: h1 has 0 free cores; lb needs 1")


def _inst(plan, iid):
    return next((i for i in plan["instances"] if i["id"] == iid), None)


# --- the plan fields -------------------------------------------------------------

def _plan(**fields):
    inst = {"id": 1, "nf": "lb", **fields}
    return {"host": "h1", "generation": 1, "node_label": 16, "mac": "02:00:00:00:00:01",
            "instances": [inst], "hops": [{"spi": 16, "si": 255, "local": 1}]}


@pytest.mark.parametrize("fields, message", [
    ({"export": "yes"}, "plan.instances[0].export: must be true or false, not 'yes'"),
    ({"state": [1, 2]}, "plan.instances[0].state: must be a JSON object (an NF's "
                        "exported state) or null, not list"),
    ({"export": True, "state": {"flows": []}},
     "plan.instances[0]: cannot both export state and take imported state"),
])
def test_plan_checks_the_move_fields(fields, message):
    with pytest.raises(PlanError) as err:
        check_plan(_plan(**fields))
    assert str(err.value) == message


def test_plan_takes_the_move_fields_and_keeps_them_through_the_store():
    store = open_store("memory://")
    for fields in ({"export": True}, {"export": False}, {"state": None},
                   {"state": {"nf": "lb", "flows": []}}):
        plan = _plan(**fields)
        assert check_plan(plan) is plan
        generation = store.put_plan("h1", plan)
        got = check_plan(store.get_plan("h1"))
        assert got["generation"] == generation
        assert got["instances"] == [{"id": 1, "nf": "lb", **fields}], fields


# --- end to end: a running lb moves, its flows keep their backends -----------------

MOVE_TOPOLOGY = """\
name: emulate-move
switches:
  - {name: s1, dpid: 0x301}
hosts:
  - {name: h1, switch: s1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.1.1/16, cores: 1}
  - {name: h2, switch: s1, port: 2, mac: "02:00:00:00:00:02", ip: 10.0.1.2/16, cores: 1}
links: []
edges:
  - {name: internet, switch: s1, port: 3}
  - {name: wan, switch: s1, port: 4}
nfs:
  lb: {cores: 1, mpps: 10, config: lb.yaml}
chains:
  - {name: spread, ingress: internet, egress: wan, nfs: [lb], mpps: 0.002,
     match: {ipv4_dst: 10.7.0.0/16, ip_proto: 6, tcp_dst: 80}}
"""
MOVE_PPS = 100000               # emulated pps per Mpps: spread sends 200 pps
# The moved lb drains this long (its flows never end: they run on the old
# instance until then), not the users' 30 s: what is checked is that it
# drains, then that the flows keep their backends on the new one.
MOVE_DRAIN_S = 6.0
BACKEND_IPS = {f"b{i}": f"10.7.1.{i}" for i in range(1, 5)}


def _lb_yaml(names):
    return "backends:\n" + "".join(
        f'  - {{name: {n}, ip: {BACKEND_IPS[n]}, mac: "02:00:00:00:07:0{n[1]}"}}\n'
        for n in names)


@pytest.fixture(scope="module")
def move_emu(tmp_path_factory, run_prefix):
    from conftest import started_emulation
    workdir = tmp_path_factory.mktemp("emulate-move")
    (workdir / "lb.yaml").write_text(_lb_yaml(["b1", "b2", "b3"]))
    (workdir / "emulate-move.yaml").write_text(MOVE_TOPOLOGY)
    with started_emulation(workdir / "emulate-move.yaml", run_prefix + "m",
                           pps_per_mpps=MOVE_PPS, drain_seconds=MOVE_DRAIN_S) as emu:
        yield emu


def _lb_at(emu):
    """[(host, instance id)] running spread's lb, from the stored plans."""
    return sorted((host, hop["local"]) for host, plan in emu.store.plans().items()
                  for hop in plan["hops"] if hop["spi"] == 16 and "local" in hop)


def _sink(emu):
    return {k: dict(v) for k, v in emu.received("spread").get("flows", {}).items()}


@pytest.mark.ovs
@pytest.mark.etcd
@pytest.mark.netns
@pytest.mark.timeout(240)
def test_running_lb_moves_to_another_host_and_every_flow_keeps_its_backend(move_emu):
    import os
    from onvm.services import wait_for
    emu = move_emu
    flows = [{"src": f"192.0.2.{60 + i}", "sport": 33000 + i} for i in range(24)]
    keys = [f"{f['src']}:{f['sport']}" for f in flows]
    emu.set_flows("spread", flows)
    wait_for(lambda: all(sum(_sink(emu).get(k, {}).values()) >= 3 for k in keys), 20,
             "every flow of spread at the egress")
    before = _sink(emu)
    for k in keys:
        assert len(before[k]) == 1, f"flow {k} reached several backends: {before[k]}"
    backend = {k: next(iter(before[k])) for k in keys}
    assert len(set(backend.values())) >= 2, f"all flows on one backend: {backend}"
    (a, iid), = _lb_at(emu)
    b = "h2" if a == "h1" else "h1"
    # The pool grows before the move: the lb on b reads the file anew, so
    # without the moved state Maglev would send about a quarter of the
    # running flows to b4.  (a's lb keeps its pool: its config is unchanged.)
    with open(os.path.join(os.path.dirname(emu.topo_path), "lb.yaml"), "w") as f:
        f.write(_lb_yaml(["b1", "b2", "b3", "b4"]))
    reply = emu.rest("POST", "/moves", {"host": a, "instance": iid, "to": b})
    assert reply["move"]["nf"] == "lb" and reply["move"]["to"] == b
    # b takes new flows at once; a drains: it keeps serving the running
    # flows (pinned to it) with "draining": true until its drain is over
    wait_for(lambda: [h for h, _ in _lb_at(emu)] == sorted([a, b]), 20,
             f"the lb's hop on {b}, {a}'s draining")
    draining = [i for i in emu.store.plans()[a]["instances"] if i["id"] == iid]
    assert draining and draining[0].get("draining") is True, draining
    wait_for(lambda: [h for h, _ in _lb_at(emu)] == [b], MOVE_DRAIN_S + 20,
             f"the lb's hop on {b} only (the drain over)")
    # it ended for its time (the emulation's drain_seconds), not for its flows
    ctl_log = open(emu.file("controller.log")).read()
    over = re.findall(rf"drain of lb#{iid} on {a} over \(after (\d+) s", ctl_log)
    assert over and MOVE_DRAIN_S <= int(over[-1]) + 1 < 30, \
        [line for line in ctl_log.splitlines() if "drain" in line]
    wait_for(lambda: all(emu.store.get_applied(h) == p["generation"]
                         for h, p in emu.store.plans().items()), 10,
             "the agents to apply the plans of the move")
    (_, new_id), = _lb_at(emu)
    switched = _sink(emu)

    def rx_on_b():
        stats = emu.store.get_stats(b) or {}
        return (stats.get("instances", {}).get(str(new_id)) or {}).get("rx", 0)
    # The flows run on b now; its stats summary reaches the store within the
    # agents' publish period (1 s here).  Checked below, once both show (or not).
    def moved_and_flowing():
        now = _sink(emu)
        return rx_on_b() > 0 and all(sum(now.get(k, {}).values()) >
                                     sum(switched.get(k, {}).values()) for k in keys)
    try:
        wait_for(moved_and_flowing, 20, f"packets counted by the moved lb on {b}, "
                 "every flow growing at the egress")
    except TimeoutError:
        pass
    after = _sink(emu)
    rx_b = rx_on_b()
    print(f"lb {a}#{iid} -> {b}#{new_id}; b's instance rx {rx_b}\nbackends {backend}\n"
          f"after {after}")
    assert rx_b > 0, f"no packet reached the moved lb on {b}"
    for k in keys:
        grew = sum(after[k].values()) - sum(switched.get(k, {}).values())
        assert grew > 0, f"flow {k} stopped after the move: {switched.get(k)} -> {after[k]}"
        assert set(after[k]) == {backend[k]}, \
            f"flow {k} changed backend in the move: {before[k]} -> {after[k]}"
    log = open(emu.file(f"agent-{b}.log")).read()
    assert f"instance {new_id} (lb) imported the moved state" in log
    # new flows do use b4: the moved lb balances over the grown pool, so the
    # old flows above kept their backends because of the state, not by chance
    fresh = [{"src": f"198.51.100.{10 + i}", "sport": 36000 + i} for i in range(24)]
    emu.set_flows("spread", fresh)
    wait_for(lambda: any(BACKEND_IPS["b4"] in _sink(emu).get(f"{f['src']}:{f['sport']}", {})
                         for f in fresh), 15, "a new flow balanced to b4")
