"""controller.core.ClusterCore driven step by step, as the chain manager's
loop drives it, with a memory:// store and a fake clock: leadership, hosts
registering and lost, plans and generations, the stats throttle, switches
connecting and their rule diffs, fabric events, and the rules it decides
checked by pushing a chain's packets through them (controller.ofsim)."""
import dataclasses
import logging
import re

import pytest

from contracts.store import Election, StoreError, open_store
from controller import flows, topogen
from controller.core import STATS_DECIDE_SECONDS, STATS_REPLAN_SECONDS, ClusterCore
from controller.moves import DRAIN_SECONDS, MIN_DRAIN_SECONDS, MoveError
from controller.ofsim import FabricSim, rule_kinds
from controller.placement import place
from controller.plans import ingress_groups
from controller.view import chain_to_json


@pytest.fixture
def topo():
    generated = topogen.leaf_spine(2, 2, 2, chains=2)
    # light chains: any one host can carry them all
    return generated.with_chains([dataclasses.replace(c, mpps=0.5)
                                  for c in generated.chains])


class Loop:
    """The chain manager's loop without Ryu: a core, its store, a clock."""

    def __init__(self, topo, store=None, leader=None, **core_args):
        self.topo = topo
        self.store = store or open_store("memory://")
        self.core = ClusterCore(topo, self.store, leader=leader, **core_args)
        self.now = 100.0
        self.leases = {}

    def step(self, leading=True, dt=0.25):
        self.now += dt
        return self.core.step(self.now, leading)

    def register(self, *hosts):
        for name in hosts:
            self.leases[name] = self.store.register_host(name, {"version": "t"}, ttl=60,
                                                         keepalive=False)
            self.core.store_changed("/onvm/hosts/" + name)

    def lose(self, name):
        """Its key goes; the next step believes it (controller.liveness):
        one step sees the key gone and holds the host, then the clock moves
        past the leadership grace and the settle time."""
        self.leases.pop(name).stop(revoke=True)
        self.core.store_changed("/onvm/hosts/" + name)
        self.step()
        assert name in self.core.held
        self.now += self.core.liveness.grace_s + self.core.liveness.settle_s

    def first_nf_hosts(self, chain):
        return {h for (h, _), _ in self.core.current.hops[chain][0]}


@pytest.fixture
def loop(topo):
    return Loop(topo)


def web_packet(chain, sport=40000):
    return {"eth_src": "02:aa:00:00:00:01", "eth_dst": "02:aa:00:00:00:02",
            "eth_type": 0x0800, "ipv4_src": "192.0.2.7",
            "ipv4_dst": chain.match["ipv4_dst"].split("/")[0], "ip_ttl": 30,
            "ip_proto": 6, "tcp_src": sport, "tcp_dst": chain.match["tcp_dst"]}


def test_a_standby_places_in_the_shadows_and_writes_nothing(loop):
    loop.store.put_chain(chain_to_json(loop.topo.chains[0]))    # the leader's doing
    loop.register("h1", "h3")
    loop.core.switch_connected(loop.topo.switches[0].dpid)
    decisions = loop.step(leading=False)
    assert decisions.replaced == ["chains", "hosts"]
    # it places the stored chains (not the file's) as the leader does
    assert set(loop.core.placement()["chains"]) == {"web1"}
    assert (decisions.written, decisions.deleted, decisions.sync) == ({}, [], {})
    assert loop.store.plans() == {}


def test_the_leader_seeds_the_file_chains_and_writes_a_plan_per_alive_host(loop, topo):
    loop.register("h1", "h3")
    decisions = loop.step()
    assert set(loop.store.chains()) == {c.name for c in topo.chains}
    assert set(decisions.written) == {"h1", "h3"} == set(loop.store.plans())
    assert set(decisions.written.values()) == {1}
    placed = loop.core.placement()
    assert set(placed["chains"]) == {"web1", "tls2"}
    assert {i["host"] for c in placed["chains"].values() for hop in c
            for i in hop["instances"]} <= {"h1", "h3"}
    assert loop.core.solve_ms > 0
    # nothing changed: the next turn neither re-places nor writes
    assert loop.step() == type(decisions)()


def test_a_lost_host_is_re_placed_and_its_plan_deleted(loop, caplog):
    loop.register("h1", "h3")
    loop.step()
    before = loop.store.plans()
    victim = sorted(loop.first_nf_hosts("web1"))[0]
    survivor = ({"h1", "h3"} - {victim}).pop()
    with caplog.at_level(logging.INFO):
        loop.lose(victim)
        decisions = loop.step()
    assert decisions.deleted == [victim] and victim not in loop.store.plans()
    assert loop.first_nf_hosts("web1") == {survivor}
    assert decisions.written[survivor] == before[survivor]["generation"] + 1
    assert (f"host {victim} lost: its key expired or was deleted while the store "
            "and this controller were healthy") in caplog.text
    assert f"on {survivor}: {victim} lost;" in caplog.text


def test_stats_re_weigh_at_most_once_a_period_and_never_re_place(loop, monkeypatch):
    """Stats summaries are kept as they come (one key each, never the whole
    prefix again) and decided on at most once a period (the agents'
    publish period): plans re-weighed from them, no re-placement."""
    loop.register("h1")
    loop.step()
    reads = []
    plans = loop.store.plans
    monkeypatch.setattr(loop.store, "plans", lambda: reads.append(1) or plans())
    replaced, weighed = [], []
    steps = int(STATS_DECIDE_SECONDS / 0.25)
    for _ in range(2 * steps):          # stats every 0.25 s for two periods
        loop.store.put_stats("h1", {"instances": {}})
        loop.core.store_changed("/onvm/stats/h1", {"instances": {}})
        before = len(reads)
        replaced.append(bool(loop.step().replaced))
        weighed.append(len(reads) > before)
        monkeypatch.setattr(loop.store, "stats", None)   # the aggregate, not a range read
    assert not any(replaced), replaced
    assert sum(weighed) == 2 and weighed.index(True) == steps - 1, weighed
    assert loop.core.stats_seen == {"h1": {"instances": {}}}
    assert STATS_REPLAN_SECONDS == 1.0 and STATS_DECIDE_SECONDS == 5.0


def test_a_step_that_fails_keeps_its_inputs_pending(loop, monkeypatch):
    loop.register("h1")

    def broken():
        raise RuntimeError("store says no")
    monkeypatch.setattr(loop.store, "plans", broken)
    with pytest.raises(RuntimeError):
        loop.step()
    monkeypatch.undo()
    assert loop.step().written == {"h1": 1}


def test_switches_get_their_rules_once_and_again_after_a_failure(loop, topo):
    leaf1 = topo.switch("leaf1").dpid
    assert loop.core.switch_connected(leaf1)
    assert not loop.core.switch_connected(0x9999), "a switch the file lacks"
    assert loop.step(leading=False).sync == {}, "a standby programs nothing"
    sync = loop.step().sync
    assert list(sync) == [leaf1]
    assert loop.step().sync == {}, "handed out once"
    loop.core.sync_failed(leaf1, OSError("gone"))
    assert list(loop.step().sync) == [leaf1]
    # a diff against an empty switch adds everything; against itself nothing
    rules = sync[leaf1]
    diff = loop.core.switch_diff(leaf1, rules, [], [])
    assert (len(diff.flows.adds), diff.flows.deletes) == (len(rules.flows), [])
    held = [flows.ActualFlow(f.table, f.priority, f.cookie, f.match) for f in rules.flows]
    diff = loop.core.switch_diff(leaf1, rules, held, [g.group_id for g in rules.groups])
    assert diff.flows == ([], [])
    # a group's buckets are not read back: groups there are modified, none added
    assert diff.groups == ([], rules.groups, [])
    # reconnecting resyncs
    loop.core.switch_left(leaf1)
    assert loop.step().sync == {}
    loop.core.switch_connected(leaf1)
    assert list(loop.step().sync) == [leaf1]


def test_a_switch_that_left_costs_its_hosts_nothing_for_its_grace(loop, topo, caplog):
    """A dropped OpenFlow connection is no word from the data plane
    (controller.switchgrace): the hosts of a switch that left keep what
    they run for SWITCH_GRACE_S, then are re-placed; while every switch is
    gone (the controller's own fault, likelier) nobody is, however long;
    the switches still gone when one comes back get a fresh grace."""
    for sw in topo.switches:
        loop.core.switch_connected(sw.dpid)
    loop.register(*[h.name for h in topo.hosts])
    loop.step()
    host = sorted(loop.first_nf_hosts("web1"))[0]
    leaf = topo.switch(topo.host(host).switch)
    with caplog.at_level(logging.WARNING):
        loop.core.switch_left(leaf.dpid)
        loop.step()
    assert host in loop.first_nf_hosts("web1"), "kept through the grace"
    assert f"host {host} cut off but not believed lost: its switch {leaf.name} left" in caplog.text
    loop.step(dt=loop.core.grace.grace_s)
    assert host not in loop.first_nf_hosts("web1"), "re-placed once the grace is over"
    loop.core.switch_connected(leaf.dpid)
    loop.step()
    # every switch gone: nobody lost, however long
    placed = loop.core.placement()["chains"]
    for sw in topo.switches:
        loop.core.switch_left(sw.dpid)
    for _ in range(4):
        loop.step(dt=loop.core.grace.grace_s)
    assert loop.core.placement()["chains"] == placed
    assert "every switch's connection to this controller dropped" in caplog.text
    # one back: the others get a fresh grace, then their hosts are lost
    everyone = set(loop.core.alive)
    loop.core.switch_connected(leaf.dpid)
    loop.step()
    assert loop.core.placement()["chains"] == placed and loop.core.alive == everyone
    loop.step(dt=loop.core.grace.grace_s)
    assert loop.core.alive == {h.name for h in topo.hosts if h.switch == leaf.name}


def test_chain_packets_follow_the_placement_through_the_decided_rules(loop, topo):
    for sw in topo.switches:
        loop.core.switch_connected(sw.dpid)
    loop.register("h1", "h3")
    loop.step()
    chain = topo.chain("web1")
    fabric = FabricSim(topo, loop.core.desired)
    first = loop.first_nf_hosts("web1")
    exits = fabric.from_edge(chain.ingress, web_packet(chain))
    assert [(e.kind, e.name in first) for e in exits] == [("host", True)]
    host = topo.host(exits[0].name)
    assert exits[0].labels == [host.label, chain.spi, 255]
    assert rule_kinds(exits[0].trace)[:2] == ["classifier", "miss"]   # no pin yet

    # the first-NF host is lost: new flows and pinned ones go to the survivor
    loop.lose(host.name)
    loop.step()
    survivor = loop.first_nf_hosts("web1")
    assert host.name not in survivor
    fabric.reprogram(loop.core.desired)
    exits = fabric.from_edge(chain.ingress, web_packet(chain))
    assert [(e.kind, e.name) for e in exits] == [("host", survivor.pop())]


def test_a_cut_host_port_loses_the_host_at_once(loop, topo, caplog):
    loop.register("h1", "h3")
    loop.step()
    h1 = topo.host("h1")
    with caplog.at_level(logging.INFO):
        loop.core.port_status(topo.switch(h1.switch).dpid, h1.port, False, "link down")
        decisions = loop.step()
    assert decisions.replaced == ["hosts"] and decisions.deleted == ["h1"]
    assert "host h1 unreachable: no switch reaches it now; re-placing" in caplog.text
    assert "host h1 lost: no switch reaches it (its link is down)" in caplog.text
    assert loop.first_nf_hosts("web1") == {"h3"}
    loop.core.port_status(topo.switch(h1.switch).dpid, h1.port, True, "up")
    assert "h1" in loop.step().written


def test_a_spine_link_down_changes_rules_not_placement(loop, topo, caplog):
    for sw in topo.switches:
        loop.core.switch_connected(sw.dpid)
    loop.register("h1", "h3")
    loop.step()
    placement = loop.core.current
    link = next(l for l in topo.links if (l.a, l.b) == ("leaf1", "spine1"))
    with caplog.at_level(logging.WARNING):
        loop.core.port_status(topo.switch("spine1").dpid, link.b_port, False, "deleted")
    assert (f"link leaf1:{link.a_port} - spine1:{link.b_port} down (port "
            f"spine1:{link.b_port} deleted): routing around it") in caplog.text
    decisions = loop.step()
    assert decisions.replaced == [] and loop.core.current is placement
    assert {topo.switch("leaf1").dpid, topo.switch("spine1").dpid} <= set(decisions.sync)


def test_a_move_is_marked_then_lands_with_its_state(loop):
    loop.register("h1", "h3")
    loop.step()
    (host, iid), = [key for key, _ in loop.core.current.hops["web1"][0]]
    to = "h3" if host == "h1" else "h1"
    loop.core.request_move(host, iid, to)
    assert loop.step().replaced == ["moves"]
    plan = loop.store.get_plan(host)
    assert [i["id"] for i in plan["instances"] if i.get("export")] == [iid]
    for _ in range(4):                  # no snapshot yet: it waits
        loop.step()
    assert [m["host"] for m in loop.core.moves()["moving"]] == [host]
    loop.store.put_stats(host, {"instances": {str(iid): {
        "state": {"n": 1}, "state_generation": plan["generation"]}}})
    loop.core.store_changed("/onvm/stats/" + host)
    loop.step(dt=STATS_REPLAN_SECONDS)
    (new_host, new_id), = [key for key, _ in loop.core.current.hops["web1"][0]]
    assert new_host == to
    given = [i for i in loop.store.get_plan(to)["instances"] if i["id"] == new_id]
    assert given[0]["state"] == {"n": 1}


def test_plan_writes_are_guarded_by_leadership(topo, caplog):
    store = open_store("memory://")
    mine, theirs = Election(store, "a", keepalive=False), Election(store, "b",
                                                                   keepalive=False)
    loop = Loop(topo, store, leader=mine)
    loop.register("h1")
    assert theirs.campaign() and not mine.campaign()
    with caplog.at_level(logging.WARNING):
        decisions = loop.step(leading=True)     # it believes it leads; the store knows
    assert decisions.written == {} and store.plans() == {}
    assert "stopped writing plans" in caplog.text


def test_place_logs_its_decisions_once_not_its_trial_steps(topo, caplog):
    with caplog.at_level(logging.INFO, logger="onvm.placement"):
        place(topo)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == len(topo.chains) + 1, lines
    assert lines[0].startswith("chain web1 (0.5 Mpps): firewall on h")
    assert lines[-1].startswith("placement cost ")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="onvm.placement"):
        place(topo, say=False)
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_chains_not_placed_are_dropped_at_their_ingress_never_forwarded(loop, topo):
    """Fail-closed: a chain asked for but not placed (no host alive, then no
    room) has its chain_drop rule, so its packets never skip its NFs."""
    chain = topo.chain("web1")
    loop.step()                                 # seeds the chains; no host alive
    fabric = FabricSim(topo, loop.core.desired)
    assert fabric.from_edge(chain.ingress, web_packet(chain)) == []
    ingress = topo.edge(chain.ingress)
    trace = []
    assert fabric.switches[ingress.switch].process(web_packet(chain), ingress.port,
                                                   trace) == []
    assert trace == [(ingress.switch, 0, "chain_drop")]
    loop.register("h1")
    loop.step()
    fabric.reprogram(loop.core.desired)
    assert [e.name for e in fabric.from_edge(chain.ingress, web_packet(chain))] == ["h1"]
    # web1 grows beyond what h1 alone can serve: it is left out, and dropped
    grown = dataclasses.replace(chain, mpps=100.0)
    loop.store.put_chain(chain_to_json(grown))
    loop.core.store_changed("/onvm/chains/web1")
    loop.step()
    assert set(loop.core.placement()["chains"]) == {"tls2"}
    fabric.reprogram(loop.core.desired)
    trace = []
    assert fabric.switches[ingress.switch].process(web_packet(chain), ingress.port,
                                                   trace) == []
    assert trace == [(ingress.switch, 0, "chain_drop")]


def ingress_trace(fabric, topo, chain):
    """The rules a chain's packet runs on its ingress switch (ofsim)."""
    ingress, trace = topo.edge(chain.ingress), []
    fabric.switches[ingress.switch].process(web_packet(chain), ingress.port, trace)
    return [kind for sw, _, kind in trace if sw == ingress.switch]


def test_a_retired_chain_is_dropped_at_its_ingress_until_deleted(loop, topo, caplog):
    """A chain deleted with its traffic held (retired): its record stays in
    the store marked retired, it is placed nowhere and uses no cores, its
    match is dropped at its ingress, also by a controller that starts (or
    takes over) afterwards; deleting it for good lets its traffic go."""
    caplog.set_level(logging.INFO, logger="onvm.core")
    chain = topo.chain("web1")
    loop.register("h1")
    loop.step()
    fabric = FabricSim(topo, loop.core.desired)
    assert ingress_trace(fabric, topo, chain)[0] == "classifier"
    cores = loop.core.current.cores_used()["h1"]
    assert loop.core.retire_chain("web1") is True
    assert loop.store.get_chain("web1") == dict(chain_to_json(chain), retired=True)
    loop.step()
    assert set(loop.core.chains()) == {"tls2"} and set(loop.core.retired_chains()) == {"web1"}
    assert "web1" not in loop.core.placement()["chains"]
    assert loop.core.current.cores_used()["h1"] < cores
    assert not any(h.get("spi") == chain.spi for p in loop.store.plans().values()
                   for h in p["hops"])
    fabric.reprogram(loop.core.desired)
    assert fabric.from_edge(chain.ingress, web_packet(chain)) == []
    assert ingress_trace(fabric, topo, chain) == ["chain_drop"]
    assert "chain web1 retired: placed nowhere from now on; its traffic (ingress " \
        in caplog.text
    assert loop.core.retire_chain("web1") is False      # already: nothing changes
    assert loop.store.get_chain("web1")["retired"] is True

    standby = Loop(topo, store=loop.store)              # restart, or a new leader
    standby.step()
    assert FabricSim(topo, standby.core.desired).from_edge(
        chain.ingress, web_packet(chain)) == []
    assert ingress_trace(FabricSim(topo, standby.core.desired), topo, chain) == \
        ["chain_drop"]

    assert loop.core.delete_chain("web1") is True
    loop.step()
    assert loop.store.get_chain("web1") is None
    fabric.reprogram(loop.core.desired)
    assert ingress_trace(fabric, topo, chain)[0] == "next"  # plain forwarding
    assert "chain_drop" not in ingress_trace(fabric, topo, chain)
    assert "chain web1 deleted (it was retired): its traffic takes plain " \
        "forwarding" in caplog.text


def test_all_keys_vanishing_at_once_evicts_nobody(loop, caplog):
    """A store hiccup that ends every lease (issue 10): the hosts' keys all
    go within a second, with no data-plane evidence; nobody is evicted, no
    plan is deleted, and the log says why."""
    loop.register("h1", "h2", "h3", "h4")
    loop.step()
    loop.now += loop.core.liveness.grace_s + 1        # past the leadership grace
    plans = loop.store.plans()
    with caplog.at_level(logging.INFO):
        for name in ("h1", "h2", "h3", "h4"):
            loop.leases.pop(name).stop(revoke=True)
            loop.core.store_changed("/onvm/hosts/" + name)
        for _ in range(40):                            # 10 s of steps
            decisions = loop.step()
            assert not decisions.deleted
    assert loop.core.alive == {"h1", "h2", "h3", "h4"}
    assert loop.store.plans() == plans
    assert "nothing is evicted" in caplog.text
    assert not re.search(r"host h\d lost:", caplog.text)
    loop.register("h1", "h2", "h3", "h4")             # they register again
    loop.step()
    assert loop.core.held == {}


def test_keys_that_vanish_during_a_store_outage_are_held(loop, monkeypatch):
    loop.register("h1", "h3")
    loop.step()
    loop.now += loop.core.liveness.grace_s + 1
    loop.step()
    real = loop.store.hosts

    def down():
        raise StoreError("memory://: etcd does not answer (test)")
    monkeypatch.setattr(loop.store, "hosts", down)
    loop.core.store_changed("/onvm/hosts/h1")
    with pytest.raises(StoreError):
        loop.step()
    loop.leases.pop("h1").stop(revoke=True)          # its lease ended meanwhile
    monkeypatch.setattr(loop.store, "hosts", real)
    loop.step()                                      # the store answers again
    assert "h1" in loop.core.held and "h1" in loop.core.alive
    loop.now += loop.core.liveness.grace_s + loop.core.liveness.settle_s
    decisions = loop.step()                          # grace over, one host gone: lost
    assert decisions.deleted == ["h1"] and loop.core.alive == {"h3"}


# --- NAT port slices kept by the core (issue 9) ------------------------------

NAT_TOPO = """\
name: natted
switches:
  - {name: s1, dpid: 0x1}
hosts:
  - {name: h1, switch: s1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.0.1/24, cores: 2}
  - {name: h2, switch: s1, port: 2, mac: "02:00:00:00:00:02", ip: 10.0.0.2/24, cores: 2}
  - {name: h3, switch: s1, port: 3, mac: "02:00:00:00:00:03", ip: 10.0.0.3/24, cores: 2}
edges:
  - {name: inside, switch: s1, port: 10}
  - {name: internet, switch: s1, port: 11}
nfs:
  nat: {cores: 1, mpps: 1, config: nat.yaml}
chains:
  - {name: out, ingress: inside, egress: internet, match: {ipv4_src: 10.9.0.0/16}, nfs: [nat], mpps: 1.5}
"""


@pytest.fixture
def nat_loop():
    from controller.topology import parse_topology
    loop = Loop(parse_topology(NAT_TOPO, "natted.yaml"))
    loop.register("h1", "h2", "h3")
    loop.step()
    return loop


def stored_slices(store):
    return {(h, i["id"]): i["config"]["slice"] for h, p in store.plans().items()
            for i in p["instances"] if i["nf"] == "nat"}


def test_nat_instances_keep_their_slices_and_a_new_one_takes_the_lowest_free(nat_loop):
    first = stored_slices(nat_loop.store)
    assert sorted(first.values()) == [0, 1]
    (gone, _), = [k for k, n in first.items() if n == 0]
    nat_loop.lose(gone)
    nat_loop.step()
    after = stored_slices(nat_loop.store)
    kept = {k: n for k, n in first.items() if k[0] != gone}
    assert kept.items() <= after.items(), "a living instance keeps its slice"
    assert sorted(after.values()) == [0, 1], "the new instance takes the freed slice 0"


def test_a_moved_nat_instance_hands_its_slice_on_when_it_does_not_drain(caplog):
    from controller.topology import parse_topology
    nat_loop = Loop(parse_topology(NAT_TOPO, "natted.yaml"), drain_seconds=0)
    nat_loop.register("h1", "h2", "h3")
    nat_loop.step()
    first = stored_slices(nat_loop.store)
    (host, iid), = [k for k, n in first.items() if n == 1]
    to = next(h for h in ("h1", "h2", "h3") if h not in {k[0] for k in first})
    nat_loop.core.request_move(host, iid, to)
    nat_loop.step()
    plan = nat_loop.store.get_plan(host)
    nat_loop.store.put_stats(host, {"instances": {str(iid): {
        "state": {"mappings": []}, "state_generation": plan["generation"]}}})
    nat_loop.core.store_changed("/onvm/stats/" + host)
    with caplog.at_level(logging.INFO, logger="onvm.core"):
        nat_loop.step(dt=STATS_REPLAN_SECONDS)
    after = stored_slices(nat_loop.store)
    assert (host, iid) not in after
    (new_key, n), = [(k, n) for k, n in after.items() if k[0] == to]
    assert n == 1 and new_key != (host, iid)
    assert f"nat#{iid} moved from {host} to {to}#{new_key[1]} keeps port slice 1" in caplog.text


def test_a_moved_nat_drains_with_its_slice_and_its_successor_takes_a_free_one(nat_loop, caplog):
    first = stored_slices(nat_loop.store)
    (host, iid), = [k for k, n in first.items() if n == 1]
    to = next(h for h in ("h1", "h2", "h3") if h not in {k[0] for k in first})
    with caplog.at_level(logging.INFO):
        nat_loop.core.request_move(host, iid, to)
        nat_loop.step()         # a nat hands over no snapshot: it moves at once
    old = {i["id"]: i for i in nat_loop.store.get_plan(host)["instances"]}[iid]
    assert old["draining"] is True and old["config"]["slice"] == 1 and "export" not in old
    after = stored_slices(nat_loop.store)
    (new_key, n), = [(k, n) for k, n in after.items() if k[0] == to]
    assert after[(host, iid)] == 1 and n == 2, "both run: two slices, never one shared"
    assert f"move nat#{iid} {host}->{to}: draining nat#{iid} on {host} for 30 s" in caplog.text
    assert f"draining nat#{iid} keeps slice 1" in caplog.text
    # the ingress steers new flows to the others only, pinned ones stay
    groups = dict(ingress_groups(nat_loop.core.placed, nat_loop.core.current)["out"])
    assert groups[host] == 0.0 and groups[to] > 0
    assert nat_loop.core.moves()["draining"][0]["instance"] == iid
    with caplog.at_level(logging.INFO):
        nat_loop.step(dt=DRAIN_SECONDS)
    after = stored_slices(nat_loop.store)
    assert (host, iid) not in after and after[new_key] == 2
    assert f"drain of nat#{iid} on {host} over (after 30 s, ? flows left): removed, " \
           "port slice 1 free" in caplog.text
    assert nat_loop.core.moves()["draining"] == []


def test_a_drain_ends_when_its_agent_reports_no_flow_left(nat_loop, caplog):
    first = stored_slices(nat_loop.store)
    (host, iid), = [k for k, n in first.items() if n == 1]
    to = next(h for h in ("h1", "h2", "h3") if h not in {k[0] for k in first})
    nat_loop.core.request_move(host, iid, to)
    nat_loop.step()
    assert (host, iid) in stored_slices(nat_loop.store)
    mappings = lambda n: {"instances": {str(iid): {"counters": {
        "tcp": {"mappings": n}, "udp": {"mappings": 0}}}}}
    nat_loop.store.put_stats(host, mappings(3))
    nat_loop.core.store_changed("/onvm/stats/" + host)
    nat_loop.step(dt=MIN_DRAIN_SECONDS)
    assert (host, iid) in stored_slices(nat_loop.store), "3 flows left: it drains on"
    nat_loop.store.put_stats(host, mappings(0))
    nat_loop.core.store_changed("/onvm/stats/" + host)
    with caplog.at_level(logging.INFO):
        nat_loop.step(dt=STATS_REPLAN_SECONDS)
    assert (host, iid) not in stored_slices(nat_loop.store)
    assert f"drain of nat#{iid} on {host} over (no flow left after" in caplog.text


def test_a_nat_move_with_no_free_slice_for_its_successor_is_refused(tmp_path):
    from controller.topology import parse_topology
    two = tmp_path / "nat2.yaml"
    two.write_text("external_ip: 198.51.100.1\ninternal: 10.0.0.0/8\n"
                   "port_range: [1024, 65535]\nslices: 2\n")
    topo = parse_topology(NAT_TOPO.replace("config: nat.yaml", f"config: {two}"),
                          "natted.yaml")
    loop = Loop(topo)
    loop.register("h1", "h2", "h3")
    loop.step()
    first = stored_slices(loop.store)
    (host, iid), = [k for k, n in first.items() if n == 1]
    to = next(h for h in ("h1", "h2", "h3") if h not in {k[0] for k in first})
    with pytest.raises(MoveError) as err:
        loop.core.request_move(host, iid, to)
    assert err.value.status == 409
    assert f"nat#{iid} keeps its port slice while it drains on {host}" in err.value.message


def test_a_new_leader_reads_the_slices_back_from_the_stored_plans(nat_loop, caplog):
    stored = nat_loop.store.plans()
    swapped = {}
    for host, plan in stored.items():       # a history that gave them the other way
        for inst in plan["instances"]:
            if inst["nf"] == "nat":
                inst["config"]["slice"] = 1 - inst["config"]["slice"]
                swapped[(host, inst["id"])] = inst["config"]["slice"]
        nat_loop.store.put_plan(host, plan)
    successor = Loop(nat_loop.topo, nat_loop.store)
    successor.register("h1", "h2", "h3")
    with caplog.at_level(logging.INFO, logger="onvm.core"):
        successor.step()
    assert successor.core.nat_slices == swapped
    assert stored_slices(successor.store) == swapped
    assert "NAT port slices read back from the stored plans" in caplog.text


def test_a_drain_ends_early_when_the_chains_need_its_core(caplog):
    from controller.topology import parse_topology
    h3 = '  - {name: h3, switch: s1, port: 3, mac: "02:00:00:00:00:03", ip: 10.0.0.3/24, cores: 2}'
    h4 = h3.replace("h3", "h4").replace("port: 3", "port: 4").replace(":03", ":04") \
        .replace("0.3/", "0.4/")
    loop = Loop(parse_topology(NAT_TOPO.replace(h3, h3 + "\n" + h4)
                               .replace("cores: 2", "cores: 1"), "natted.yaml"))
    loop.register("h1", "h2", "h3", "h4")
    loop.step()
    first = stored_slices(loop.store)
    (host, iid), = [k for k, n in first.items() if n == 1]
    to = next(h for h in ("h1", "h2", "h3", "h4") if h not in {k[0] for k in first})
    loop.core.request_move(host, iid, to)
    loop.step()
    assert loop.core.current.draining.keys() == {(host, iid)}
    # four nat instances need all four cores, the draining one's too
    chain = loop.core.chains()["out"]
    loop.store.put_chain(chain_to_json(dataclasses.replace(chain, mpps=3.5)))
    loop.core.store_changed("/onvm/chains/out")
    with caplog.at_level(logging.INFO):
        loop.step()
    assert set(loop.core.placement()["chains"]) == {"out"}, "the chain keeps its place"
    assert loop.core.current.draining == {}
    assert len(stored_slices(loop.store)) == 4
    assert f"drain of nat#{iid} on {host} over (cut short: its cores are needed)" in caplog.text


def test_plans_written_after_every_plan_was_deleted_go_above_what_agents_run(loop):
    # The chaos run (ovs_restarted, then host_drained, on one emulation):
    # every host lost with the switches, every plan deleted, the agents
    # kept theirs (fail-static); the next plans began at generation 1
    # again and the agents ignored them ("ignoring /onvm/plan/h5
    # generation 2: running 3 already"): the drained chain was steered to
    # a host that never ran it.
    loop.register("h1", "h3")
    loop.step()
    for host in ("h1", "h3"):
        loop.store.put_applied(host, 3)
        loop.store.delete_plan(host)
    loop.core.dirty.add("hosts")
    decisions = loop.step()
    assert set(decisions.written) == {"h1", "h3"}
    assert min(decisions.written.values()) > 3
