"""Hosts that join (controller.joins): the pure admission rules, and
controller.core taking a joining host into its model when a probe answer
shows where it is plugged in, placing on it, refusing a colliding one with
nothing changed, and re-placing when a joined host is lost.  Driven with a
memory:// store and a fake clock like tests/test_core.py."""
import dataclasses
import logging

import pytest

from contracts.store import open_store
from controller import joins, topogen
from controller.core import ClusterCore
from controller.probing import Prober, probe_frame
from contracts.wire import PROBE_ANSWER, PROBE_KIND_OFFSET
from controller.view import chain_to_json

FREE = ("leaf2", 9)             # a port of leaf2 nobody has in the topology
JOINER = {"mac": "02:00:00:00:09:09", "ip": "10.0.9.9/8", "cores": 4}


@pytest.fixture
def topo():
    generated = topogen.leaf_spine(2, 2, 2, chains=2)
    return generated.with_chains([dataclasses.replace(c, mpps=0.5)
                                  for c in generated.chains])


def dpid(topo, name):
    return topo.switch(name).dpid


# ------------------------------------------------------------ pure rules
def test_a_host_joins_with_the_lowest_free_label(topo):
    host = joins.admit(topo, "h9", JOINER, *FREE)
    assert (host.switch, host.port, host.mac, host.ip, host.cores) == \
        ("leaf2", 9, "02:00:00:00:09:09", "10.0.9.9/8", 4)
    assert host.label == 20         # h1..h4 hold 16..19
    bigger = joins.with_host(topo, host)
    assert bigger.host("h9") == host and joins.free_label(bigger) == 21


def test_a_host_may_ask_for_a_free_label(topo):
    assert joins.admit(topo, "h9", dict(JOINER, label=100), *FREE).label == 100


@pytest.mark.parametrize("name, body, where, message", [
    ("leaf1", JOINER, FREE, "name: 'leaf1' is already a switch's name"),
    ("internet", JOINER, FREE, "name: 'internet' is already an edge's name"),
    ("h9", dict(JOINER, mac="02:00:00:00:00:01"), FREE,
     "mac: 02:00:00:00:00:01 is already host h1's"),
    ("h9", dict(JOINER, mac="nope"), FREE, "mac: 'nope' is no MAC address (six hex pairs with colons)"),
    ("h9", dict(JOINER, ip="10.0.1.1/8"), FREE, "ip: 10.0.1.1 is already host h1's"),
    ("h9", dict(JOINER, ip="10.0.9.9"), FREE, None),
    ("h9", dict(JOINER, ip=None), FREE, "ip: None is no address with prefix length (like 10.0.0.9/24)"),
    ("h9", dict(JOINER, cores=0), FREE, "cores: 0 is not a whole number of 1 or more"),
    ("h9", dict(JOINER, label=17), FREE, "label: 17 is already host h2's"),
    ("h9", dict(JOINER, label=3), FREE, "label: 3 is not a node label (16..1048575)"),
    ("h9", JOINER, ("leaf1", 1), "port: leaf1 port 1 is host h1's"),
    ("h9", JOINER, ("leaf1", 3), "port: leaf1 port 3 is the link leaf1:3-spine1:1's"),
])
def test_a_colliding_or_malformed_join_is_refused_naming_the_field(
        topo, name, body, where, message):
    if message is None:             # a bare address takes a /32: allowed
        assert joins.admit(topo, name, body, *where).ip == "10.0.9.9/32"
        return
    with pytest.raises(joins.JoinRefused) as err:
        joins.admit(topo, name, body, *where)
    assert str(err.value) == f"host {name} (seen at {where[0]} port {where[1]}): {message}"


def test_waiting_hosts_and_pairing_an_answer(topo):
    registered = {"h1": {"version": "t"}, "h9": JOINER, "h8": {"cores": 2}}
    assert joins.joining(topo, registered) == {"h9": "02:00:00:00:09:09"}
    assert joins.pair({"h9": "02:00:00:00:09:09"}, "02:00:00:00:09:09") == "h9"
    assert joins.pair({"h9": "02:00:00:00:09:09"}, "02:00:00:00:09:0a") is None
    # any fast path answers any probe: with two waiting, an answer tells nothing
    assert joins.pair({"h9": "02:00:00:00:09:09", "h8": "02:00:00:00:08:08"},
                      "02:00:00:00:09:09") is None


# ------------------------------------------------------- the core's join
class Loop:
    def __init__(self, topo):
        self.store = open_store("memory://")
        self.core = ClusterCore(topo, self.store)
        self.now = 100.0
        self.leases = {}

    def step(self):
        self.now += 0.25
        return self.core.step(self.now, True)

    def register(self, name, info):
        self.leases[name] = self.store.register_host(name, info, ttl=60, keepalive=False)
        self.core.store_changed("/onvm/hosts/" + name)


@pytest.fixture
def loop(topo):
    loop = Loop(topo)
    for sw in topo.switches:
        loop.core.switch_connected(sw.dpid)
    return loop


def kinds(rules):
    return {f.kind for r in rules.values() for f in r.flows}


def test_a_joined_host_receives_instances_and_its_transport_rules(loop, topo, caplog):
    caplog.set_level(logging.INFO, logger="onvm.core")
    loop.register("h9", dict(JOINER, version="t"))      # alone: every chain goes on it
    loop.step()
    assert loop.core.pending_joins == {"h9": "02:00:00:00:09:09"}
    assert "join" in kinds(loop.core.desired)           # answers from free ports punted
    assert loop.core.current is None and not loop.store.plans()
    host = loop.core.host_answered(dpid(topo, "leaf2"), 9, "02:00:00:00:09:09")
    assert (host.name, host.switch, host.port, host.label) == ("h9", "leaf2", 9, 20)
    decisions = loop.step()
    assert "host h9 joined at leaf2 port 9: mac 02:00:00:00:09:09, ip 10.0.9.9/8, " \
           "4 cores, node label 20 (the lowest free label)" in caplog.text
    assert loop.core.alive == {"h9"} and loop.core.pending_joins == {}
    assert {i.host for i in loop.core.current.instances.values()} == {"h9"}
    plan = loop.store.plans()["h9"]
    assert plan["node_label"] == 20 and plan["mac"] == "02:00:00:00:09:09"
    assert {i["nf"] for i in plan["instances"]} == {nf for c in topo.chains for nf in c.nfs}
    assert loop.core.unplaced == {}     # both chains run on it
    assert "join" not in kinds(loop.core.desired)       # nobody waits now
    # every switch forwards label 20 (toward leaf2 port 9 on leaf2)
    for sw in topo.switches:
        labelled = [f for f in loop.core.desired[sw.dpid].flows
                    if f.kind == "transport" and 20 in dict(f.match).values()]
        assert labelled, sw.name
    leaf2 = [f for f in loop.core.desired[dpid(topo, "leaf2")].flows
             if f.kind == "transport" and 20 in dict(f.match).values()]
    assert leaf2[0].actions == (("output", 9),)
    assert dpid(topo, "leaf2") in decisions.sync


def test_a_joined_host_that_leaves_is_re_placed_like_any_host(loop, topo, caplog):
    loop.register("h9", JOINER)
    loop.step()
    loop.core.host_answered(dpid(topo, "leaf2"), 9, "02:00:00:00:09:09")
    loop.step()
    loop.register("h1", {"version": "t"})
    loop.step()
    assert loop.core.alive == {"h1", "h9"}
    caplog.set_level(logging.INFO, logger="onvm.core")
    loop.core.port_status(dpid(topo, "leaf2"), 9, False, "link down")
    loop.step()
    assert "host h9 lost: no switch reaches it (its link is down)" in caplog.text
    assert loop.core.alive == {"h1"}
    assert {i.host for i in loop.core.current.instances.values()} == {"h1"}
    assert "h9" not in loop.store.plans()


def test_a_colliding_join_is_refused_and_nothing_changes(loop, topo, caplog):
    loop.store.put_chain(chain_to_json(topo.chains[0]))
    loop.register("h1", {"version": "t"})
    loop.step()
    before = (loop.core.topo, dict(loop.core.desired), loop.store.plans(),
              dict(loop.core.current.instances))
    caplog.set_level(logging.INFO, logger="onvm.core")
    loop.register("h9", dict(JOINER, mac="02:00:00:00:00:01"))     # h1's MAC
    loop.step()
    assert loop.core.pending_joins == {"h9": "02:00:00:00:00:01"}
    assert loop.core.host_answered(dpid(topo, "leaf2"), 9, "02:00:00:00:00:01") is None
    assert "join refused, nothing changed: host h9 (seen at leaf2 port 9): mac: " \
           "02:00:00:00:00:01 is already host h1's" in caplog.text
    loop.step()
    assert loop.core.pending_joins == {}    # not probed for again until it changes
    after = (loop.core.topo, dict(loop.core.desired), loop.store.plans(),
             dict(loop.core.current.instances))
    assert after == before and loop.core.alive == {"h1"}
    # a registration that changes is considered again
    loop.register("h9", JOINER)
    loop.step()
    assert loop.core.pending_joins == {"h9": "02:00:00:00:09:09"}


def test_two_hosts_waiting_at_once_do_not_join_on_one_answer(loop, topo, caplog):
    loop.register("h9", JOINER)
    loop.register("h8", dict(JOINER, mac="02:00:00:00:08:08", ip="10.0.8.8/8"))
    loop.step()
    assert loop.core.host_answered(dpid(topo, "leaf2"), 9, "02:00:00:00:09:09") is None
    assert "hosts h8, h9 wait to join at once" in caplog.text
    assert loop.core.topo is topo


def test_an_answer_from_a_port_the_topology_gives_someone_is_no_join(loop, topo):
    loop.register("h9", JOINER)
    loop.step()
    assert loop.core.host_answered(dpid(topo, "leaf1"), 3, "02:00:00:00:09:09") is None
    assert loop.core.pending_joins == {"h9": "02:00:00:00:09:09"}


def answer_frame(mac, seq, token):
    """What a fast path sends back for probe_frame(mac, ...): addresses swapped."""
    frame = bytearray(probe_frame(mac, seq, token, 0))
    frame[0:6], frame[6:12] = frame[6:12], frame[0:6]
    frame[PROBE_KIND_OFFSET] = PROBE_ANSWER
    return bytes(frame)


def test_a_joined_host_is_probed_like_the_others(topo):
    prober = Prober(topo, interval_s=0.05, token=7, up_mult=1)
    leaf2 = dpid(topo, "leaf2")
    assert not prober.is_host_port(leaf2, 9)
    prober.add_host(joins.admit(topo, "h9", JOINER, *FREE), leaf2)
    assert prober.is_host_port(leaf2, 9)
    sent = [p for p in prober.tick(1.0, {sw.dpid for sw in topo.switches}) if p.host == "h9"]
    assert [(p.dpid, p.port) for p in sent] == [(leaf2, 9)]
    assert prober.answer(leaf2, 9, answer_frame(JOINER["mac"], prober.seq, 7),
                         1.01) == "h9"
    assert prober.verdicts()["h9"] is True


def test_a_new_leader_knows_a_joined_host_without_probing_and_keeps_its_plan(loop, topo,
                                                                             caplog):
    """The join is written under /onvm/joined/: a controller that starts
    later on the same store (a new leader) takes the host in at its first
    step, before any probe answer, with the same label, and its placement
    keeps the host's instances (no plan deleted, nothing re-placed)."""
    loop.register("h9", JOINER)
    loop.step()
    loop.core.host_answered(dpid(topo, "leaf2"), 9, "02:00:00:00:09:09")
    loop.step()
    assert loop.store.joined() == {"h9": {"switch": "leaf2", "port": 9,
                                          "mac": "02:00:00:00:09:09", "ip": "10.0.9.9/8",
                                          "cores": 4, "label": 20}}
    plan = loop.store.plans()["h9"]
    caplog.set_level(logging.INFO, logger="onvm.core")
    heir = ClusterCore(topo, loop.store)
    for sw in topo.switches:
        heir.switch_connected(sw.dpid)
    heir.step(loop.now + 0.25, True)
    assert "host h9 joined earlier (/onvm/joined/h9): at leaf2 port 9, node label 20" \
        in caplog.text
    assert heir.alive == {"h9"} and heir.pending_joins == {}
    after = loop.store.plans()["h9"]
    assert [(i["id"], i["nf"]) for i in after["instances"]] == \
        [(i["id"], i["nf"]) for i in plan["instances"]]
    assert after["node_label"] == 20


def test_a_joined_record_that_no_longer_fits_is_left_alone(loop, topo, caplog):
    loop.store.put_joined("h9", {"switch": "leaf1", "port": 1, "mac": "02:00:00:00:09:09",
                                 "ip": "10.0.9.9/8", "cores": 4, "label": 20})
    caplog.set_level(logging.WARNING, logger="onvm.core")
    loop.step()
    assert "h9" not in loop.core.known
    assert "host h9 joined earlier (/onvm/joined/h9) but cannot be taken in now: " \
           "host h9 (seen at leaf1 port 1): port: leaf1 port 1 is host h1's" in caplog.text
