"""The rule compile and plan building call their yield point (`pause`,
controller.pausing) often enough: on a k=8 fat tree no stretch between two
calls holds more than pausing.CHAINS chains' rules, one switch's fabric
rules, pausing.ROWS switches' ECMP next hops, pausing.PLAN_CHAINS chains'
plan hops or pausing.PLAN_HOSTS hosts' plan checks (counted, not timed),
and what they compute with a pause is what they compute without one, rule
for rule and plan for plan: after the first compile and after a host's
loss.  And pausing.FullCollections holds full collections off, then
freezes."""
import collections
import gc

import pytest

from controller import fabric, flows, placement, plans, pausing, topogen
from controller.rulebook import RuleBook


@pytest.fixture(scope="module")
def topo():
    return topogen.fat_tree(8, chains=64)


@pytest.fixture(scope="module")
def placed(topo):
    return placement.place(topo)


class Counting:
    """A yield point that remembers, per kind of work, the most units done
    between two of its calls (and after the last one: `finish`)."""

    def __init__(self):
        self.calls = 0
        self.since = collections.Counter()
        self.most = collections.Counter()
        self.total = collections.Counter()

    def work(self, kind):
        self.since[kind] += 1
        self.total[kind] += 1

    def __call__(self):
        self.calls += 1
        self.finish()
        self.since.clear()

    def finish(self):
        for kind, n in self.since.items():
            self.most[kind] = max(self.most[kind], n)


def counted(monkeypatch, module, name, clock, kind):
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        clock.work(kind)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapper)


@pytest.fixture
def clock(monkeypatch):
    clock = Counting()
    counted(monkeypatch, flows, "chain_rules", clock, "chains")
    counted(monkeypatch, flows, "transport_rules", clock, "switches")
    counted(monkeypatch, fabric, "_next_hops", clock, "rows")
    counted(monkeypatch, plans, "_chain_hops", clock, "plan chains")
    counted(monkeypatch, plans, "check_plan", clock, "plan hosts")
    return clock


def assert_fine_grained(clock):
    clock.finish()
    assert clock.most["chains"] <= pausing.CHAINS
    assert clock.most["switches"] <= 1
    assert clock.most["rows"] <= pausing.ROWS
    assert clock.most["plan chains"] <= pausing.PLAN_CHAINS
    assert clock.most["plan hosts"] <= pausing.PLAN_HOSTS


def test_compile_and_plans_yield_every_few_units_and_equal_the_plain_result(
        topo, placed, clock):
    graph = fabric.build_graph(topo)
    groups = plans.ingress_groups(topo, placed)
    got_plans = plans.host_plans(topo, placed, 1, pause=clock)
    got = RuleBook().compile(topo, graph, groups, pause=clock)
    assert_fine_grained(clock)
    # every kind of work was done, several stretches' worth of each
    assert clock.total["chains"] == len([c for c in topo.chains if c.nfs])
    assert clock.total["switches"] == len(topo.switches) > 1
    assert clock.total["rows"] > pausing.ROWS
    assert clock.total["plan chains"] > pausing.PLAN_CHAINS
    assert clock.total["plan hosts"] == len(topo.hosts) > pausing.PLAN_HOSTS
    assert clock.calls >= (clock.total["chains"] // pausing.CHAINS
                           + clock.total["switches"])
    assert got == flows.switch_rules(topo, graph, groups)
    assert got_plans == plans.host_plans(topo, placed, 1)


def test_a_host_loss_recompute_yields_too_and_equals_a_full_recompute(
        topo, placed, clock):
    graph = fabric.build_graph(topo)
    book = RuleBook()
    book.compile(topo, graph, plans.ingress_groups(topo, placed))
    lost = max(placed.cores_used().items(), key=lambda kv: (kv[1], kv[0]))[0]
    again = placement.replace_after_host_loss(topo, placed, lost)
    groups = plans.ingress_groups(topo, again)
    clock.since.clear()             # count from here: the recompute only
    clock.total.clear()
    got_plans = plans.host_plans(topo, again, 2, pause=clock)
    got = book.compile(topo, graph, groups, pause=clock)
    assert_fine_grained(clock)
    assert 0 < clock.total["chains"] < len(topo.chains)    # incremental
    assert got == flows.switch_rules(topo, graph, groups)
    assert got_plans == plans.host_plans(topo, again, 2)


@pytest.mark.parametrize("previous", [False, True], ids=["first", "after a host loss"])
def test_placement_yields_every_few_chains_and_equals_the_plain_result(
        topo, placed, monkeypatch, previous):
    clock = Counting()
    counted(monkeypatch, placement._Solver, "route_missing", clock, "routed")
    counted(monkeypatch, placement._Solver, "_ideal", clock, "weighed")
    lost = max(placed.cores_used().items(), key=lambda kv: (kv[1], kv[0]))[0]
    if previous:
        def run(pause=None):
            return placement.replace_after_host_loss(topo, placed, lost, pause=pause)
    else:
        def run(pause=None):
            return placement.place(topo, pause=pause)
    got = run(clock)
    clock.finish()
    monkeypatch.undo()
    plain = run()
    # a chain weighed for improvement computes its ideal host at most twice
    assert clock.most["routed"] <= pausing.PLACE_CHAINS
    assert clock.most["weighed"] <= 2 * pausing.PLACE_CHAINS
    assert clock.total["routed"] > pausing.PLACE_CHAINS
    assert got.instances == plain.instances and got.hops == plain.hops


def test_every_calls_its_pause_on_every_nth_call_and_none_is_free():
    calls = []
    tick = pausing.every(3, lambda: calls.append(1))
    for _ in range(10):
        tick()
    assert len(calls) == 3
    assert pausing.every(3, None) is pausing.no_pause


def test_full_collections_are_held_off_then_what_survived_is_frozen():
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    kept = []
    try:
        with pausing.FullCollections() as held:
            assert gc.get_threshold()[:2] == before[:2]
            assert gc.get_threshold()[2] > 10 ** 6
            kept.extend([i] for i in range(1000))
        assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
        with pausing.FullCollections() as held:
            held.freeze = True
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.unfreeze()


def test_a_newer_compile_stops_one_in_flight_among_the_chains(topo, placed, clock):
    """On k=8 the older compile, already computing chains' rules, stops at
    its next yield point; the newer one runs alone, then the older one
    again: never two at once (OneAtATime), both get the newest rules."""
    import eventlet
    from test_hub_compile import link_down, reference, yielding_fabric

    groups = plans.ingress_groups(topo, placed)
    fab = yielding_fabric(topo)
    got, order = {}, []

    def run(name, before=None):
        if before:
            before(fab)
        got[name] = fab.rules(topo, groups)
        order.append(name)

    first = eventlet.spawn(run, "older")
    while not clock.since["chains"]:     # in flight, computing chains' rules
        eventlet.sleep(0)
    assert "older" not in got and fab.book.running == 1
    second = eventlet.spawn(run, "newer", link_down(topo))
    first.wait()
    second.wait()
    assert order == ["newer", "older"]
    assert fab.book.compiles == 3       # older stopped, newer, older again
    want = reference(topo, groups, [link_down(topo)])
    assert got["newer"] == got["older"] == want
