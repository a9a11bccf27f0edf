"""controller.liveness: which hosts the controller believes lost, with a
fake clock: the data plane's word, grace after our own store outage and
after leadership, settling, large disruption, probes; the issue's
scenario (the store paused, every lease expired at once) evicts nobody."""
import random

import pytest

from controller.liveness import Liveness

HOSTS = [f"h{i}" for i in range(1, 7)]
HEALTHY = "its key expired or was deleted while the store and this controller were healthy"


def registered(hosts=HOSTS, now=0.0, **kw):
    live = Liveness(**kw)
    for h in hosts:
        live.key_put(h, now)
        live.port(h, True, now)
    assert live.decide(now).alive == frozenset(hosts)
    return live


def test_one_agent_that_dies_is_lost_once_its_key_has_settled():
    live = registered()
    live.key_gone("h2", 10.0)
    d = live.decide(10.5)
    assert "h2" in d.alive and "waiting to tell one host's loss from many" in d.held["h2"]
    d = live.decide(12.0)
    assert d.lost == {"h2": HEALTHY} and "h2" not in d.alive
    assert d.notes == [f"host h2 lost: {HEALTHY}"]
    assert live.decide(13.0).notes == [], "a verdict is noted once"


def test_the_issue_case_every_lease_expires_at_once_and_nobody_is_evicted():
    """etcd paused 2.5 s: the controller saw no error of its own, then all
    six keys vanished together.  No port went down, so this is the
    observer's fault: none is evicted, the log says why, and the agents
    registering again end it."""
    live = registered()
    for h in HOSTS:
        live.key_gone(h, 20.0)
    for t in (20.1, 23.0, 60.0):
        d = live.decide(t)
        assert d.lost == {} and d.alive == frozenset(HOSTS), t
    live2 = registered()
    for h in HOSTS:
        live2.key_gone(h, 20.0)
    d = live2.decide(22.5)
    big = [n for n in d.notes if n.startswith("large disruption:")]
    assert big == ["large disruption: 6 of 6 known hosts lost their keys within 5 s "
                   "with no data-plane evidence (switch port down, failed probes); "
                   "more likely a fault of the store or of this controller than of "
                   "the hosts: evicting none of them until they come back or the "
                   "data plane says they are down"]
    assert d.held == {h: "large disruption: 6 of 6 known hosts lost their keys "
                         "together without data-plane evidence; nothing is evicted"
                      for h in HOSTS}
    assert live2.decide(60.0).notes == [], "nothing new to say while it lasts"
    for h in HOSTS:
        live2.key_put(h, 23.0)
    d = live2.decide(23.1)
    assert d.alive == frozenset(HOSTS) and not d.held and not d.lost
    assert "large disruption over: 0 of 6 known hosts without keys and without " \
           "data-plane evidence" in d.notes
    assert "host h1 alive again (key present, port up)" in d.notes


def test_a_port_down_is_believed_at_once_even_in_grace_and_disruption():
    live = registered()
    live.leadership_gained(5.0)
    live.key_gone("h1", 5.1)
    live.port("h1", False, 5.1)
    assert live.decide(5.2).lost == {"h1": "its switch port is down"}
    for h in HOSTS[1:5]:
        live.key_gone(h, 30.0)
    live.port("h5", False, 30.0)
    d = live.decide(33.0)
    assert d.lost == {"h1": "its switch port is down", "h5": "its switch port is down"}
    assert set(d.held) == {"h2", "h3", "h4"} and live.disrupted


def test_failed_probes_are_evidence_and_answered_probes_hold_a_host():
    live = registered()
    live.key_gone("h1", 1.0)
    live.probe("h1", True, 1.0)
    d = live.decide(4.0)
    assert d.held == {"h1": "its key is gone but its fast path answers probes"}
    d = live.decide(7.0)                    # the probe is 6 s old: no word any more
    assert d.lost == {"h1": HEALTHY}
    live.probe("h2", False, 8.0)            # key present, its fast path does not answer
    assert live.decide(8.0).lost["h2"] == "probes fail"


def test_a_probe_verdict_is_final_at_once_says_why_and_can_be_taken_back():
    """An agent that crashed with its link up: its key and port are still
    there, the probes' word loses it at once; the prober's words are in
    the reason; its verdict repeated without words keeps them; answered
    probes again (key still there) make it alive again."""
    live = registered()
    live.probe("h3", True, 1.0)
    assert "h3" in live.decide(1.0).alive
    live.probe("h3", False, 2.0, why="its fast path answered none of 3 probes")
    d = live.decide(2.0)
    assert d.lost == {"h3": "probes fail: its fast path answered none of 3 probes"}
    assert d.notes == ["host h3 lost: probes fail: its fast path answered none of 3 probes"]
    live.probe("h3", False, 2.05)
    assert live.decide(2.05).lost["h3"].endswith("none of 3 probes") and \
        live.decide(2.1).notes == []
    live.probe("h3", True, 3.0, why="answered 3 in a row again")
    d = live.decide(3.0)
    assert "h3" in d.alive and d.lost == {}
    assert d.notes == ["host h3 alive again (key present, port up)"]


def test_keys_vanishing_in_our_own_store_outage_are_held_then_come_back():
    live = registered()
    live.store_unreachable(10.0)
    for h in ("h1", "h2"):
        live.key_gone(h, 11.0)
    d = live.decide(11.0)
    assert d.held == {h: "its key vanished while the store is out of reach"
                      for h in ("h1", "h2")}
    assert d.notes[0].startswith("the store is out of reach: hosts whose keys vanish "
                                 "are held, not lost")
    live.store_reachable(13.0)
    d = live.decide(13.5)
    assert d.held["h1"] == ("its key vanished within 5 s of: the store answers again "
                            "after 3.0 s")
    live.key_put("h1", 14.0)                # the agent registered again
    d = live.decide(17.9)
    assert "h1" not in d.held and "h1" in d.alive and not d.lost
    d = live.decide(18.1)                   # grace over; h2 never came back
    assert d.lost == {"h2": HEALTHY}


def test_leadership_gained_starts_a_grace_period():
    live = registered(grace_s=4.0)
    live.leadership_gained(100.0)
    live.key_gone("h3", 100.5)
    assert live.decide(103.9).held["h3"] == ("its key vanished within 4 s of: this "
                                             "controller gained leadership")
    assert live.decide(104.1).lost == {"h3": HEALTHY}


@pytest.mark.parametrize("count,total,evicted", [
    (2, 6, True),       # fewer than min_hosts: two hosts can really die together
    (3, 9, True),       # exactly a third: not more than a third
    (4, 9, False),
    (1, 2, True),       # a small cluster still loses a dead host
    (2, 2, True),
    (3, 3, False),
])
def test_large_disruption_threshold(count, total, evicted):
    hosts = [f"h{i}" for i in range(total)]
    live = registered(hosts)
    for h in hosts[:count]:
        live.key_gone(h, 10.0)
    d = live.decide(20.0)
    assert (set(d.lost) == set(hosts[:count])) == evicted
    assert (set(d.held) == set(hosts[:count])) != evicted


def test_hosts_vanishing_far_apart_are_each_evicted():
    live = registered()
    for i, h in enumerate(HOSTS[:4]):
        live.key_gone(h, 10.0 + 10 * i)
        assert h in live.decide(10.0 + 10 * i + 3).lost
    assert not live.disrupted


def test_a_lost_host_stays_lost_until_its_key_is_back_and_its_port_up():
    live = registered()
    live.port("h1", False, 1.0)
    live.key_gone("h1", 2.0)
    assert "h1" in live.decide(2.0).lost
    live.port("h1", True, 3.0)
    assert live.decide(3.0).lost == {"h1": "its switch port is down"}
    live.port("h1", False, 3.5)
    live.key_put("h1", 4.0)
    assert "h1" in live.decide(4.0).lost
    live.port("h1", True, 5.0)
    d = live.decide(5.0)
    assert "h1" in d.alive and d.notes == ["host h1 alive again (key present, port up)"]


def test_hosts_never_registered_are_neither_alive_nor_lost():
    live = Liveness()
    live.port("h9", False, 0.0)
    live.key_gone("h9", 0.0)
    d = live.decide(10.0)
    assert d.alive == frozenset() and d.lost == {} and d.held == {} and d.notes == []


def test_disruption_ends_and_a_later_single_loss_is_evicted():
    live = registered()
    for h in HOSTS[:3]:
        live.key_gone(h, 10.0)
    assert set(live.decide(13.0).held) == set(HOSTS[:3])
    live.key_put("h1", 14.0)                # 2 left: not above the threshold
    d = live.decide(14.0)
    assert not live.disrupted and set(d.lost) == {"h2", "h3"}
    live.key_gone("h4", 30.0)
    assert live.decide(33.0).lost["h4"] == HEALTHY


def test_random_event_sequences_keep_the_promises():
    """Whatever happens: a known host whose port is down is never served;
    one with its key and port up and no failed probe always is; during
    our own store outage nobody is lost without data-plane evidence."""
    rng = random.Random(7)
    for _ in range(200):
        live, now, outage = registered(), 0.0, False
        for _ in range(40):
            now += rng.choice([0.1, 0.5, 1.0, 3.0])
            h = rng.choice(HOSTS)
            event = rng.randrange(6)
            if event == 0:
                live.key_gone(h, now)
            elif event == 1:
                live.key_put(h, now)
            elif event == 2:
                live.port(h, rng.random() < 0.7, now)
            elif event == 3:
                live.probe(h, rng.random() < 0.7, now)
            elif event == 4:
                outage = not outage
                (live.store_unreachable if outage else live.store_reachable)(now)
            before = {n for n, s in live.hosts.items() if s.state == "lost"}
            d = live.decide(now)
            for name, s in live.hosts.items():
                failed = s.probe is not None and not s.probe[0] and \
                    now - s.probe[1] <= live.probe_max_age_s
                if s.port_up is False:
                    assert name not in d.alive
                elif s.key and not failed:
                    assert name in d.alive
                if outage and name in d.lost and name not in before:
                    assert s.port_up is False or failed, (name, d.lost[name])


def test_keys_now_diffs_a_polled_host_list():
    live = Liveness()
    live.keys_now({"h1", "h2", "h3"}, 0.0)
    assert live.decide(0.0).alive == {"h1", "h2", "h3"}
    live.keys_now({"h1", "h3"}, 1.0)
    live.keys_now({"h1", "h3"}, 2.0)        # a repeat does not restart the clock
    assert live.hosts["h2"].gone_at == 1.0
    assert live.decide(3.5).lost == {"h2": HEALTHY}
    live.keys_now({"h1", "h2", "h3"}, 4.0)
    assert live.decide(4.0).alive == {"h1", "h2", "h3"}
