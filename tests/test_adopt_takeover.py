"""A new leader adopts the placement the stored plans run
(controller.takeover) and moves only what ran on a host that is down:
two ClusterCores on one memory:// store, a leader and a standby that
places in the shadows, driven step by step as the chain manager's loop
drives them."""
import dataclasses
import logging

import pytest

from contracts.store import MemoryStore
from controller import takeover, topogen
from controller.adoptions import Adoptions
from controller.plans import host_plans
from controller.placement import move_instance, place
from test_adoptions import lose_host_of
from test_core import Loop
from test_drain import topo as sym_topo  # noqa: F401  (a fixture: symmetric.yaml)

HOSTS = ("h1", "h2", "h3", "h4")


@pytest.fixture
def topo():
    generated = topogen.leaf_spine(2, 2, 2, chains=2)
    return generated.with_chains([dataclasses.replace(c, mpps=0.5)
                                  for c in generated.chains])


def running(store):
    """{(host, id, nf)} of every instance the stored plans run."""
    return {(h, i["id"], i["nf"]) for h, p in store.plans().items() for i in p["instances"]}


def pair(topo):
    """A leader and a standby on one store, every host registered with both."""
    leader = Loop(topo)
    standby = Loop(topo, store=leader.store)
    leader.register(*HOSTS)
    standby.core.store_changed("/onvm/hosts/h1")
    leader.step()
    standby.step(leading=False)
    return leader, standby


def both_step(leader, standby):
    leader.step()
    standby.step(leading=False)


def test_a_new_leader_keeps_what_the_old_one_moved_by_a_drain_it_never_saw(topo, caplog):
    # The chaos suite's host_drained then leader_killed on one emulation:
    # the drain (kept in the old leader only) moved the chain's first NF;
    # the standby still had it where it was, and once leading moved it
    # back: 19 packets lost.
    leader, standby = pair(topo)
    first = sorted(leader.first_nf_hosts("web1"))[0]
    assert leader.core.drain_host(first)
    both_step(leader, standby)
    leader.now += 60.0                      # the drains are over
    both_step(leader, standby)
    assert leader.core.undrain_host(first)
    both_step(leader, standby)
    moved = leader.first_nf_hosts("web1")
    assert first not in moved
    assert standby.first_nf_hosts("web1") != moved, "the standby never saw the drain"
    before = running(leader.store)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        decisions = standby.step(leading=True)
    assert running(standby.store) == before, "no instance of a healthy host moves"
    assert standby.first_nf_hosts("web1") == moved
    assert decisions.written == {} and decisions.deleted == []
    assert "taking over the placement the stored plans run" in caplog.text
    assert "standing by I had placed otherwise" in caplog.text
    assert not [r for r in caplog.records
                if r.getMessage().startswith(("placed ", "removed ", "taking over: chain"))]


def test_a_new_leader_moves_only_what_ran_on_a_host_that_is_down(topo, caplog):
    leader, standby = pair(topo)
    victim = sorted(leader.first_nf_hosts("web1"))[0]
    before = running(leader.store)
    # the leader dies; then the victim's key goes, which the standby believes
    leader.leases.pop(victim).stop(revoke=True)
    standby.core.store_changed("/onvm/hosts/" + victim)
    standby.step(leading=False)
    standby.now += standby.core.liveness.grace_s + standby.core.liveness.settle_s
    standby.step(leading=False)
    assert victim not in standby.core.alive
    caplog.clear()
    with caplog.at_level(logging.INFO):
        decisions = standby.step(leading=True)
    after = running(standby.store)
    assert {k for k in before if k[0] != victim} <= after, "the others stay"
    assert decisions.deleted == [victim]
    assert victim not in standby.first_nf_hosts("web1")
    gone = sorted(k for k in before if k[0] == victim)
    assert gone
    for host, ident, nf in gone:
        assert (f"removed {nf}#{ident} from {host}: taking over as leader; {host} is "
                f"not serving") in caplog.text
    assert not [r for r in caplog.records if r.getMessage().startswith("removed ")
                and f" from {victim}: " not in r.getMessage()]


def test_from_plans_reads_back_instances_shares_and_drains(topo):
    chain = dataclasses.replace(topo.chains[0], mpps=9.0)   # several instances a hop
    topo = topo.with_chains([chain])
    placed = place(topo)
    plans = host_plans(topo, placed, 3)
    again, notes = takeover.from_plans(topo, plans)
    assert notes == []
    assert again.instances.keys() == placed.instances.keys()
    for j in range(len(chain.nfs)):
        want, got = placed.shares(chain.name, j), again.shares(chain.name, j)
        assert want.keys() == got.keys()
        assert sum(got.values()) == pytest.approx(1.0)
        if j:               # read back from the remote weights of the hop before
            assert got == pytest.approx(want, abs=1e-3)
    # the same placement, re-placed from what was read back, moves nothing
    assert place(topo, previous=again).instances.keys() == placed.instances.keys()

    # a moved instance drains where it was; its successor adopts flows
    (old, old_inst), = [(k, i) for k, i in placed.instances.items()
                        if (chain.name, 0) in i.users][:1]
    to = next(h for h in HOSTS if h not in placed.shares(chain.name, 0))
    moved = move_instance(topo, placed, old[0], old[1], to, say=False)
    moved = moved.with_draining({old: old_inst})
    plans = host_plans(topo, moved, 4)
    new, = set(moved.instances) - set(placed.instances)
    for inst in plans[new[0]]["instances"]:
        if inst["id"] == new[1]:
            inst["adopt"] = {"host": "h9", "instance": 7}
    again, _ = takeover.from_plans(topo, plans)
    assert again.instances.keys() == moved.instances.keys()
    assert again.draining.keys() == {old}
    assert (chain.name, 0) in again.draining[old].users
    assert takeover.adopting(plans) == {new: [("h9", 7), 4]}


def test_a_chain_not_whole_in_the_plans_is_placed_anew_and_said_so(topo):
    placed = place(topo)
    plans = host_plans(topo, placed, 1)
    web = topo.chains[0]
    for plan in plans.values():
        plan["hops"] = [h for h in plan["hops"]
                        if not (h["spi"] == web.spi and h["si"] == 254)]
    again, notes = takeover.from_plans(topo, plans)
    assert set(again.hops) == {c.name for c in topo.chains[1:]}
    assert notes == [f"chain {web.name}: not adopted (hop 2 ({web.nfs[1]}) has no "
                     f"instance serving it): placed anew"]
    assert takeover.from_plans(topo, {}) == (None, [f"chain {c.name}: in no stored plan: "
                                                    f"placed anew" for c in topo.chains])


def test_the_heirs_aliases_are_read_back_from_the_plans(sym_topo):
    # the lost host's stateful instances have heirs; the plans say "also"
    before, after, lost = lose_host_of(sym_topo, "nat")
    adopter = Adoptions(MemoryStore())
    adopter.pick(before, after, {lost}, now=100.0)
    alive = {h.name for h in sym_topo.hosts} - {lost}
    plans = adopter.mark(host_plans(sym_topo, after, 5), sym_topo, 101.0, alive)
    read = takeover.aliases(sym_topo, plans, 999.0)
    assert read and read.keys() <= adopter.aliases.keys()      # those that marked a hop
    assert set(read.values()) == {999.0}
    # carried on by a new leader's Adoptions, the same "also" labels
    again = Adoptions(MemoryStore())
    again.aliases = takeover.aliases(sym_topo, plans, 999.0)
    marked = again.mark(host_plans(sym_topo, after, 6), sym_topo, 102.0, alive)
    assert {h: p["hops"] for h, p in marked.items()} == \
        {h: p["hops"] for h, p in plans.items()}


def test_a_new_leader_drains_on_what_the_stored_plans_drain(topo, caplog):
    leader, standby = pair(topo)
    host = sorted(leader.first_nf_hosts("web1"))[0]
    leader.core.drain_host(host)        # its ids and lb drain (flow state), 30 s
    both_step(leader, standby)
    draining = {k: i.nf for k, i in leader.core.current.draining.items()}
    assert draining and {k[0] for k in draining} == {host}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        decisions = standby.step(leading=True)
    assert {k: i.nf for k, i in standby.core.current.draining.items()} == draining
    assert sorted((d["host"], d["instance"], d["why"])
                  for d in standby.core.moves()["draining"]) == \
        sorted((h, i, "taken over from the stored plans") for h, i in draining)
    assert decisions.written == {}, "it writes the plans it found"
    for (h, i), nf in draining.items():
        assert f"{nf}#{i} on {h} drains in the stored plans" in caplog.text


def test_a_move_in_progress_is_dropped_by_a_new_leader_and_said_so(topo, caplog):
    leader, standby = pair(topo)
    (host, iid), = [k for k, _ in leader.core.current.hops["web1"][0]]
    leader.core.request_move(host, iid, next(h for h in HOSTS if h != host))
    leader.step()
    assert any(i.get("export") for i in leader.store.get_plan(host)["instances"])
    before = running(leader.store)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        standby.step(leading=True)
    assert running(standby.store) == before
    assert not any(i.get("export") for i in standby.store.get_plan(host)["instances"])
    assert "the move is dropped (the instance stays): request it again" in caplog.text
