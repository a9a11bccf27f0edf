"""A compile that yields to the eventlet hub (controller.livegraph's
LiveFabric.pause, controller.rulebook's Stretches): a newer compile
supersedes one in flight, two never interleave on the rule book, and every
caller gets the rules a compile without yielding gives for its inputs.
And a switch synced from what it confirmed (controller.flows.diff_programmed)
gets the same messages as one synced from a faithful dump of its tables."""
import eventlet
import pytest

from controller import flows, ofmsgs, placement, plans, topogen
from controller.livegraph import LiveFabric
from controller.rulebook import RuleBook, Stretches


@pytest.fixture(scope="module")
def topo():
    return topogen.fat_tree(4, chains=12)


@pytest.fixture(scope="module")
def groups(topo):
    return plans.ingress_groups(topo, placement.place(topo))


def reference(topo, groups, events=()):
    """The rules of a LiveFabric that never yields, after `events`."""
    fab = LiveFabric(topo)
    for event in events:
        event(fab)
    return fab.rules(topo, groups)


def link_down(topo):
    link = topo.links[0]
    return lambda fab: fab.port_status(link.a, link.a_port, False, "link down")


class OneAtATime(RuleBook):
    """A rule book that fails the test if two compiles run in it at once."""

    def __init__(self):
        super().__init__()
        self.running = 0
        self.compiles = 0

    def compile(self, *args, **kwargs):
        assert self.running == 0, "two compiles interleaved on the rule book"
        self.running += 1
        try:
            self.compiles += 1
            return super().compile(*args, **kwargs)
        finally:
            self.running -= 1


def yielding_fabric(topo):
    fab = LiveFabric(topo)
    fab.book = OneAtATime()
    fab.pause = Stretches(lambda: eventlet.sleep(0))
    return fab


def test_a_newer_compile_supersedes_the_one_in_flight(topo, groups):
    fab = yielding_fabric(topo)
    got, order = {}, []

    def older():
        got["older"] = fab.rules(topo, groups)
        order.append("older")

    def newer():
        link_down(topo)(fab)
        got["newer"] = fab.rules(topo, groups)
        order.append("newer")

    first = eventlet.spawn(older)
    for _ in range(3):              # the older one is a few switches in
        eventlet.sleep(0)
    assert fab.book.compiles == 1 and "older" not in got
    second = eventlet.spawn(newer)
    first.wait()
    second.wait()
    assert order == ["newer", "older"]          # the newest finished first
    want = reference(topo, groups, [link_down(topo)])
    assert got["newer"] == want
    assert got["older"] == want     # compiled again, over the fabric as it is now
    assert fab.book.compiles == 3   # older stopped, newer, older again
    assert fab.pause.count > len(topo.switches)


def test_callers_with_other_inputs_each_get_their_own_rules(topo, groups):
    fab = yielding_fabric(topo)
    fewer = dict(list(groups.items())[: len(groups) // 2])
    got = {}
    a = eventlet.spawn(lambda: got.setdefault("all", fab.rules(topo, groups)))
    eventlet.sleep(0)
    b = eventlet.spawn(lambda: got.setdefault("fewer", fab.rules(topo, fewer)))
    c = eventlet.spawn(lambda: got.setdefault("again", fab.rules(topo, groups)))
    for thread in (a, b, c):
        thread.wait()
    assert got["all"] == got["again"] == reference(topo, groups)
    assert got["fewer"] == reference(topo, fewer)
    assert got["fewer"] != got["all"]


def test_without_pause_nothing_yields(topo, groups):
    fab = LiveFabric(topo)
    fab.book = OneAtATime()
    assert fab.rules(topo, groups) == reference(topo, groups)


def test_stretches_count_calls_and_the_longest_stretch():
    calls = []
    clock = Stretches(lambda: calls.append(1))
    clock.last -= 0.5               # as if half a second went by unserved
    clock()
    clock()
    clock.finish()
    assert clock.count == 2 and calls == [1, 1]
    assert 0.5 <= clock.longest < 5


def apply(held, flow_diff, group_diff):
    """A switch holding `held` (flows by key, group ids) after the diffs."""
    flows_by_key, group_ids = held
    flows_by_key = dict(flows_by_key)
    for entry in flow_diff.deletes:
        assert flows_by_key.pop(entry.key) == entry.cookie
    for spec in flow_diff.adds:
        flows_by_key[spec.key] = spec.cookie
    ids = (set(group_ids) - set(group_diff.deletes)) | {g.group_id for g in group_diff.adds}
    assert {g.group_id for g in group_diff.modifies} <= ids
    return flows_by_key, ids


def holding(rules):
    return {f.key: f.cookie for f in rules.flows}, {g.group_id for g in rules.groups}


def test_diff_from_what_was_confirmed_reaches_the_desired_rules(topo, groups):
    """Every switch, from the rules before a link went down and a host was
    lost to the rules after, and back: the confirmed diff brings it to
    exactly the desired rules, sends no more than a faithful dump's diff
    would, and its deletes become OpenFlow messages."""
    before = reference(topo, groups)
    lost = sorted({h for members in groups.values() for h, _ in members})[0]
    fewer = {c: [(h, w) for h, w in m if h != lost] for c, m in groups.items()}
    after = reference(topo, fewer, [link_down(topo)])
    changed = 0
    for old, new in [(before, after), (after, before)]:
        for dpid in old:
            flow_diff, group_diff = flows.diff_programmed(new[dpid], old[dpid])
            assert apply(holding(old[dpid]), flow_diff, group_diff) == holding(new[dpid])
            dumped = [flows.ActualFlow(f.table, f.priority, f.cookie, f.match)
                      for f in old[dpid].flows]
            faithful = flows.diff(new[dpid].flows, dumped)
            assert ({f.key for f in flow_diff.adds} == {f.key for f in faithful.adds})
            assert ({e.key for e in flow_diff.deletes}
                    == {e.key for e in faithful.deletes})
            assert len(group_diff.modifies) <= len(
                flows.diff_groups(new[dpid].groups, holding(old[dpid])[1]).modifies)
            msgs = ofmsgs.to_messages(ofmsgs.offline_datapath(), flow_diff, group_diff)
            for msg in msgs:
                msg.serialize()
            changed += bool(msgs)
    assert changed >= 2


def test_nothing_changed_sends_nothing(topo, groups):
    rules = reference(topo, groups)
    for dpid, r in rules.items():
        flow_diff, group_diff = flows.diff_programmed(r, r)
        assert not ofmsgs.to_messages(ofmsgs.offline_datapath(), flow_diff, group_diff)
