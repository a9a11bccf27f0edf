"""Issue 10, part 5, without the emulation: who adopts a lost host's flows
(controller.adoptions), what the plans say of it ("adopt", "also"), the
plan contract and compiler, the replica's encoding (contracts.replica), and
the real fast path sending flows pinned to a lost host to its heir.
The emulation's test: tests/test_failover_state.py."""
import pytest

from contracts import replica
from contracts.plan import PlanError, check_plan
from contracts.store import MemoryStore
from controller.adoptions import ALIAS_SECONDS, Adoptions, pick
from controller.placement import place
from controller.plans import host_plans, nat_slices
from host_agent import tables
from nflib.api import make_nf
import test_fastpath_pins as pins
from test_drain import spread, topo  # noqa: F401  (fixtures: symmetric.yaml with a spare h5)
from test_fastpath_pins import harnesses  # noqa: F401  (a fixture)
from test_fastpath import harnesses as fp_harnesses  # noqa: F401  (a fixture)


def lose_host_of(topo, nf):
    """(placement before, after losing the host of the first `nf`, that host)."""
    before = place(topo, say=False)
    lost = next(i.host for _, i in sorted(before.instances.items()) if i.nf == nf)
    after = place(topo, previous=before, exclude_hosts=(lost,), say=False)
    return before, after, lost


def test_each_lost_stateful_instance_gets_one_heir_of_its_type_and_hops(topo):
    before, after, lost = lose_host_of(topo, "nat")
    heirs = pick(before, after, {lost})
    gone = {k: i for k, i in before.instances.items() if i.host == lost}
    replicated = {k for k, i in gone.items() if i.nf in replica.REPLICATED_NFS}
    assert replicated and set(heirs.values()) == replicated, (gone, heirs)
    for new, old in heirs.items():
        assert new not in before.instances and new[0] != lost
        assert after.instances[new].nf == before.instances[old].nf
        assert set(after.instances[new].users) & set(before.instances[old].users)
    assert len(set(heirs)) == len(heirs)
    # the ids instance of the lost host (no replica) has no heir
    assert not {k for k, i in gone.items() if i.nf == "ids"} & set(heirs.values())
    assert pick(before, after, set()) == {}, "no host lost: nobody adopts"


def test_plans_carry_adopt_until_applied_and_also_until_the_lost_host_is_back(topo):
    before, after, lost = lose_host_of(topo, "nat")
    store = MemoryStore()
    adopter = Adoptions(store)
    handed = adopter.pick(before, after, {lost}, now=100.0)
    slices = nat_slices(topo, after, nat_slices(topo, before), handed)
    old_nat = next(k for k in handed if before.instances[k].nf == "nat")
    assert slices[handed[old_nat]] == nat_slices(topo, before)[old_nat], \
        "the nat's heir keeps its port slice"
    alive = {h.name for h in topo.hosts} - {lost}

    def plans(gen):
        return adopter.mark(host_plans(topo, after, gen, slices=slices), topo, 101.0, alive)
    first = plans(5)
    for old, new in handed.items():
        entry = pins_instance(first[new[0]], new[1])
        assert entry["adopt"] == {"host": old[0], "instance": old[1]}
    label = topo.host(lost).label
    also = {p["host"] for plan in first.values() for h in plan["hops"]
            for field in ("remote", "pinned", "kept") for p in h.get(field, ())
            if label in p.get("also", ())}
    assert also and also <= {new[0] for new in handed.values()}, also
    for plan in first.values():
        check_plan(plan)
        tables.compile_plan(plan)
    # applied by the heirs: "adopt" goes, "also" stays
    for host in {new[0] for new in handed.values()}:
        store.put_plan(host, first[host])
        store.put_applied(host, 5)
    second = plans(6)
    assert not any("adopt" in i for p in second.values() for i in p["instances"])
    assert any("also" in p for plan in second.values() for h in plan["hops"]
               for p in h.get("remote", []) + h.get("pinned", []))
    # the lost host back, or the pins' idle life over: "also" goes
    for now, up in ((101.0, alive | {lost}), (100.0 + ALIAS_SECONDS, alive)):
        again = Adoptions(store)
        again.pick(before, after, {lost}, now=100.0)
        marked = again.mark(host_plans(topo, after, 7, slices=slices), topo, now, up)
        assert not any("also" in p for plan in marked.values() for h in plan["hops"]
                       for p in h.get("remote", []) + h.get("pinned", []))


def pins_instance(plan, iid):
    return next(i for i in plan["instances"] if i["id"] == iid)


def test_the_plan_contract_checks_adopt_and_also():
    p = pins.plan_a(None)
    p["instances"][0]["adopt"] = {"host": "h9", "instance": 3}
    check_plan(p)
    for bad, where in (({"host": "", "instance": 3}, "adopt.host"),
                       ({"host": "h9", "instance": 0}, "adopt.instance"),
                       ("h9", "adopt")):
        p["instances"][0]["adopt"] = bad
        with pytest.raises(PlanError) as err:
            check_plan(p)
        assert f"plan.instances[0].{where}" in str(err.value)
    p["instances"][0]["adopt"] = {"host": "h9", "instance": 3}
    p["instances"][0]["state"] = None
    with pytest.raises(PlanError, match="cannot both adopt"):
        check_plan(p)
    p = pins.plan_a(None)
    p["hops"][3]["remote"][0]["also"] = [pins.C["label"]]      # C is listed itself
    with pytest.raises(PlanError, match=r"hops\[3\].remote\[0\].also\[0\]: duplicate label"):
        check_plan(p)


def test_a_replica_round_trips_and_garbage_is_named():
    state = {"nf": "lb", "version": 1, "flows": [{"key": [6, 1, 2, 3, 4], "backend": "w",
                                                  "ttl": 9.5}] * 300}
    text = replica.encode(state)
    assert len(text) < len(str(state)) / 4, "compressed"
    value = {"encoding": replica.ENCODING, "state": text}
    assert replica.decode(value) == state and replica.entries(state) == 300
    for bad, why in (({"encoding": "gzip", "state": text}, "encoding"),
                     ({"encoding": replica.ENCODING, "state": "!!"}, "cannot be decoded"),
                     ({"encoding": replica.ENCODING, "state": 7}, "not a text"),
                     ([], "not a JSON object")):
        with pytest.raises(replica.ReplicaError, match=why):
            replica.decode(bad, "/onvm/replica/h1/2")


# --- the fast path ------------------------------------------------------------

def test_replies_pinned_to_a_lost_host_go_to_its_heir_and_stay_pinned_there(harnesses):
    """B pinned 5 flows' replies to A; A is lost and D adopted its flows:
    with D `also` A, the replies go to D (and stay pinned to D), where
    without it they were dropped as pin_lost."""
    a, b = harnesses(), harnesses()
    a.manager.apply_plan(pins.plan_a(a), make_nf)
    b.manager.apply_plan(pins.plan_b(b), make_nf)
    pins.forward_through(a, b, [pins.request(i) for i in range(5)])
    heir = dict(pins.D, also=[pins.A["label"]])
    plan = pins.plan_b(b, generation=2, pinned=(pins.C,))
    plan["hops"][4]["pinned"].append(heir)
    b.manager.apply_plan(check_plan(plan), make_nf)
    back = b.send([pins.reply(i) for i in range(5)])
    assert [pins.stack(f)[0] for f in back] == [pins.D["label"]] * 5
    assert b.stats()["drops"].get("pin_lost", 0) == 0
    # pinned to D now: D stays their host when the alias is gone
    b.manager.apply_plan(pins.plan_b(b, generation=3, pinned=(pins.C, pins.D)), make_nf)
    assert [pins.stack(f)[0] for f in b.send([pins.reply(i) for i in range(5)])] \
        == [pins.D["label"]] * 5


def test_forward_flows_pinned_to_a_lost_host_go_to_its_heir(spread):
    h, running, before = spread
    B, C, D = pins.B, pins.C, pins.D
    # C lost, D adopted its flows: C's flows go to D, B's stay on B
    h.manager.apply_plan(pins.remote_plan(h, [pins.peer(B, 1.0),
                                              dict(pins.peer(D, 1.0), also=[C["label"]])], 3),
                         make_nf)
    after = pins.picks(h, running)
    assert {s: (D["label"] if lab == C["label"] else lab) for s, lab in before.items()} == after


# --- the agents: a replica of a running lb, adopted by another agent ------------

def test_a_replica_of_a_running_lb_is_taken_in_chunks_and_adopted_elsewhere(fp_harnesses):
    import time
    from contracts.store import open_store
    from host_agent.agent import Agent
    from test_fastpath import LB_OTHER_POOL, backends, lb_flows, lb_plan
    store = open_store("memory://")
    old = fp_harnesses(nfs=[("forward", None)])
    a = Agent("harness", old.manager, store=store)
    assert a.apply(lb_plan(old, 2))
    frames = lb_flows(150)          # more than a chunk: three chunks
    before = backends(old.send(frames))
    a.start()
    try:
        old.rx.fill([bytes(f) for f in frames], len(frames))
        deadline = time.monotonic() + 5
        while old.manager.stats()["instances"][1]["rx"] < 2 * len(frames) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert a.replicator.tick() == 1, "the replica is taken while the loop runs"
        assert a._thread.is_alive() and old.manager.running
        assert a.replicator.tick() == 0, "no new flow: not taken again"
    finally:
        a.stop()
    old.tx.drain(keep=False)
    value = store.get_replica("harness", 1)
    assert value["nf"] == "lb" and value["entries"] == len(frames)
    assert a.replicator.counters["replicas_put"] == 1
    # another host adopts it: every flow keeps its backend, where a fresh lb
    # with this pool would move some (tests/test_fastpath.py shows it)
    new = fp_harnesses(nfs=[("forward", None)])
    b = Agent("harness", new.manager, store=store)
    assert b.apply(lb_plan(new, 4, LB_OTHER_POOL, adopt={"host": "harness", "instance": 1}))
    assert backends(new.send(frames)) == before
    assert b.replicator.counters["adopted_entries"] == len(frames)
    # an adoption whose replica is gone starts empty, counted, never refused
    store.delete_replica("harness", 1)
    c = Agent("harness", fp_harnesses(nfs=[("forward", None)]).manager, store=store)
    assert c.apply(lb_plan(new, 5, adopt={"host": "harness", "instance": 1}))
    assert c.replicator.counters["adopt_failures"] == 1
