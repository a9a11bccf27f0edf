"""controller.probing with a fake clock when the observer stalls: the
prober not running on time (a starved controller), answers held up on
the way and then read in a burst, one leaf's answers before another's,
in any order, evict nobody; a fast path that really stops answering is
still found after detect_mult + 1 intervals (its peer on the same switch
answering), later only when its whole switch goes silent.  The stalls
are noted once per episode."""
import itertools
import types

import pytest

from controller.probing import Prober
from controller.topology import load_topology
from test_probes_unit import I, answer_of

TOPO = "topologies/leaf-spine.yaml"


@pytest.fixture(scope="module")
def topo():
    return load_topology(TOPO)


def leaf_of(topo):
    return {h.name: h.switch for h in topo.hosts}


class Sim:
    """The prober's ticks at the times given, each probe's answer read at
    the time `deliver(host, seq, sent)` says (None: never), all events in
    time order as the controller's one thread would run them."""

    def __init__(self, topo, **kw):
        self.prober = Prober(topo, I, token=7, **kw)
        self.dpids = {sw.dpid for sw in topo.switches}
        self.pending = []               # (read at, host, dpid, port, frame)
        self.lost = []                  # (host, when, why)
        self.up_at = None

    def run(self, ticks, deliver):
        for now in ticks:
            due = sorted((p for p in self.pending if p[0] <= now), key=lambda p: p[0])
            self.pending = [p for p in self.pending if p[0] > now]
            for at, host, dpid, port, frame in due:
                self.prober.answer(dpid, port, frame, at)
                self._changes(at)
            for p in self.prober.tick(now, self.dpids):
                seq = int.from_bytes(p.frame[16:20], "big")
                at = deliver(p.host, seq, now)
                if at is not None:
                    self.pending.append((at, p.host, p.dpid, p.port, answer_of(p.frame)))
            self._changes(now)

    def _changes(self, now):
        for host, ok, why in self.prober.changes():
            if not ok:
                self.lost.append((host, round(now, 3), why))
            elif self.up_at is None:
                self.up_at = now


def on_time(start, stop):
    return [round(start + k * I, 6) for k in range(int(round((stop - start) / I)))]


def fine(host, seq, sent):
    return sent + 0.002


def come_up(sim):
    sim.run(on_time(I, 0.5), fine)
    assert sim.up_at is not None and sim.lost == []
    sim.prober.notes()


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_a_stalled_prober_then_a_burst_of_answers_in_any_leaf_order_evicts_nobody(topo, order):
    """The controller stops for 1 s (SIGSTOP, starved): no tick, nothing
    read; then the answers held up come in, a leaf's at a time, in
    `order`, 40 ms apart, the last leaf's 120 ms after the first's."""
    sim = Sim(topo)
    come_up(sim)
    leaves = sorted(set(leaf_of(topo).values()))
    rank = {leaf: order[i] for i, leaf in enumerate(leaves)}
    resume = 1.5

    def burst(host, seq, sent):
        if sent < resume:               # read only after the stall, leaf by leaf
            return resume + 0.001 + 0.04 * rank[leaf_of(topo)[host]]
        return max(sent, resume + 0.04 * rank[leaf_of(topo)[host]]) + 0.002

    sim.run(on_time(0.5, 0.55) + on_time(resume, 3.0), burst)
    assert sim.lost == []
    notes = sim.prober.notes()
    assert len(notes) == 1 and notes[0].startswith("this prober ran 950 ms late"), notes
    assert notes[0].endswith("(noted once per late episode)")
    assert sim.prober.counters["excused"] > 0
    assert all(sim.prober.verdicts().values())


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_answers_held_up_on_the_way_then_read_leaf_by_leaf_evict_nobody(topo, order):
    """The prober ticks on time but nothing comes back for 0.75 s (its
    switch connections or OVS stalled: the log's 'no host answered probes
    ...' then 14 probes in a row); then every answer held up is read, a
    leaf at a time in `order`, 40 ms apart."""
    sim = Sim(topo)
    come_up(sim)
    leaves = sorted(set(leaf_of(topo).values()))
    rank = {leaf: order[i] for i, leaf in enumerate(leaves)}
    start, resume = 0.5, 1.25

    def held(host, seq, sent):
        lag = 0.04 * rank[leaf_of(topo)[host]]
        if sent < resume:
            return resume + lag + 0.001
        return max(sent, resume + lag) + 0.002

    sim.run(on_time(start, 3.0), held)
    assert sim.lost == []
    notes = sim.prober.notes()
    assert len(notes) == 2, notes
    assert notes[0].startswith("no host answered probes")
    assert notes[1].startswith("probes are answered again; the misses of probes 10 to ")
    assert all(sim.prober.verdicts().values())


def test_a_dead_fast_path_is_found_as_fast_as_before_and_after_a_stall(topo):
    """h3 stops answering (h4, on its switch, answers): lost at the 4th
    tick after its last answered probe, as without the stall rules; the
    same after a stall of the prober, counting from the tick it resumed."""
    for stall in (False, True):
        sim = Sim(topo)
        come_up(sim)
        dead_from = 0.7

        def deliver(host, seq, sent):
            return None if host == "h3" and sent >= dead_from else sent + 0.002

        ticks = on_time(0.5, 0.6) + on_time(1.6 if stall else 0.6, 3.0)
        sim.run(ticks, deliver)
        assert [h for h, _, _ in sim.lost] == ["h3"]
        host, when, why = sim.lost[0]
        first = 1.6 if stall else dead_from    # the first probe whose miss counts
        assert when == round(first + 3 * I, 3), (stall, when)
        assert why == ("its fast path answered none of 3 probes in a row "
                       "(3 x 50 ms) while its peers answered")


def test_both_fast_paths_of_a_switch_dying_are_found_a_little_later(topo):
    """h3 and h4 (all of leaf2) stop answering: as a lagging connection of
    leaf2 would look; the others' answers count once detect_mult
    intervals old, so both are lost 3 intervals later than one alone."""
    sim = Sim(topo)
    come_up(sim)

    def deliver(host, seq, sent):
        return None if host in ("h3", "h4") and sent >= 0.7 else sent + 0.002

    sim.run(on_time(0.5, 2.0), deliver)
    assert sorted(h for h, _, _ in sim.lost) == ["h3", "h4"]
    assert {when for _, when, _ in sim.lost} == {round(0.7 + 6 * I, 3)}


def test_a_host_alone_on_its_switch_is_found_as_fast_as_before():
    """One host a switch: the other switches' answers count after half an
    interval, so a dead fast path is lost at the 4th tick."""
    topo = types.SimpleNamespace(
        switches=[types.SimpleNamespace(name=f"s{i}", dpid=i) for i in (1, 2, 3)],
        hosts=[types.SimpleNamespace(name=f"h{i}", switch=f"s{i}", port=1,
                                     mac=f"02:00:00:00:00:0{i}") for i in (1, 2, 3)])
    sim = Sim(topo)
    come_up(sim)

    def deliver(host, seq, sent):
        return None if host == "h2" and sent >= 0.7 else sent + 0.002

    sim.run(on_time(0.5, 1.5), deliver)
    assert [(h, when) for h, when, _ in sim.lost] == [("h2", round(0.7 + 3 * I, 3))]


def test_a_late_prober_is_noted_once_an_episode(topo):
    """Ticks 150 ms apart for a while: one note; on time, then late again:
    a second one."""
    sim = Sim(topo)
    come_up(sim)
    slow = [round(0.5 + 0.15 * k, 6) for k in range(6)]

    def deliver(host, seq, sent):     # read at the tick after next when late
        return sent + (0.151 if sent < 1.4 or sent > 1.9 else 0.002)

    sim.run(slow + on_time(1.4, 2.0) + [2.1, 2.25], deliver)
    notes = sim.prober.notes()
    assert len(notes) == 2 and all(n.startswith("this prober ran 100 ms late")
                                   for n in notes), notes
    assert sim.lost == []


@pytest.mark.parametrize("told", [True, False])
def test_a_switch_that_reconnected_is_no_evidence_until_its_rules_are_back(topo, told):
    """ovs-vswitchd restarted and leaf1 reconnected between two ticks (the
    prober never saw it disconnected) with its flows gone: its hosts'
    probes meet no rule until the controller has put them back (0.5 s
    later here) while the other leaves answer.  Told of the connection
    (the Ryu app's MAIN_DISPATCHER), the prober judges h1 and h2 again only
    once they answer; a fast path that dies after that is found as fast as
    ever (the 4th tick)."""
    sim = Sim(topo)
    come_up(sim)
    leaf1 = topo.switch("leaf1").dpid
    back, dead_from = 1.0, 1.5

    def deliver(host, seq, sent):
        if leaf_of(topo)[host] == "leaf1" and sent < back:
            return None                 # no probe rule on leaf1 yet
        if host == "h1" and sent >= dead_from:
            return None
        return sent + 0.002

    sim.run(on_time(0.5, 0.55), fine)
    if told:
        sim.prober.switch_connected(leaf1)
    sim.run(on_time(0.55, 2.5), deliver)
    if not told:                        # the rules' absence taken for the hosts' death
        assert sorted(h for h, _, _ in sim.lost[:2]) == ["h1", "h2"]
        return
    assert sim.lost == [("h1", round(dead_from + 3 * I, 3),
                         "its fast path answered none of 3 probes in a row "
                         "(3 x 50 ms) while its peers answered")]
    assert sim.prober.notes() == [
        f"host {h}: probe verdict dropped: its switch (re)connected: its rules may not "
        f"be back yet; judged again once it answers" for h in ("h1", "h2")]
