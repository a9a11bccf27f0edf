"""The chain manager with real parts: `ryu-manager` running the onvm apps, a
private Open vSwitch (userspace datapath) holding a small leaf-spine as
netdev bridges joined by patch ports, and a real etcd.

It checks that the switches hold exactly what `controller.flows` asks for,
that agents registering and vanishing change the plans and the classifiers,
that a chain's packet runs its classifier, pick, learn and pin rules in OVS
(ofproto/trace) exactly as controller.ofsim predicts, that a reconnecting
switch loses stale rules, that a real restart of ovs-vswitchd (alone, or
with ovsdb-server) is followed by a resync with no stale rule, that a
spine-leaf link going away is routed around (and back when it returns),
that a chain deleted through the REST API is retired (its packets dropped
and counted by its chain_drop rule) until it is released, and that a
standby controller takes over when the leader is killed."""
import dataclasses
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from ryu.ofproto import ofproto_parser

from controller import flows, ofmsgs
from controller.fabric import build_graph
from controller.livegraph import lldp_punt
from controller.ofsim import FabricSim
from contracts.store import LEADER, open_store
from controller.topogen import leaf_spine
from controller.topology import dump_topology, load_topology, parse_topology
from contracts.model import Server
from onvm.services import free_port, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RYU_MANAGER = os.path.join(os.path.dirname(sys.executable), "ryu-manager")
COOKIE_RE = re.compile(r"cookie=(0x[0-9a-f]+), .*?table=(\d+), .*?priority=(\d+)")

pytestmark = pytest.mark.timeout(170)


@pytest.fixture(scope="module")
def topo_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cm") / "leaf-spine-2x2.yaml"
    generated = leaf_spine(2, 2, 2, chains=2)
    # light chains: two of the four hosts can carry them all
    light = [dataclasses.replace(c, mpps=0.5) for c in generated.chains]
    path.write_text(dump_topology(generated.with_chains(light)))
    return str(path)


@pytest.fixture(scope="module")
def topo(topo_file):
    return load_topology(topo_file)


@pytest.fixture(scope="module")
def store(etcd):
    s = open_store(etcd.url)
    yield s
    s.close()


def bridge_name(ovs, switch):
    return f"{ovs.prefix}{switch}"


@pytest.fixture(scope="module")
def bridges(ovs, topo):
    """One netdev bridge per switch, patch ports as the topology's links."""
    names = {}
    for sw in topo.switches:
        names[sw.name] = ovs.add_bridge(bridge_name(ovs, sw.name), dpid=sw.dpid)
    for i, link in enumerate(topo.links):
        a, b = f"{ovs.prefix}l{i}a", f"{ovs.prefix}l{i}b"
        ovs.vsctl("add-port", names[link.a], a, "--", "set", "Interface", a,
                  "type=patch", f"options:peer={b}", f"ofport_request={link.a_port}",
                  "--", "add-port", names[link.b], b, "--", "set", "Interface", b,
                  "type=patch", f"options:peer={a}", f"ofport_request={link.b_port}")
    return names


API_TOKEN = "test-api-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


class Controller:
    """One ryu-manager with the onvm apps, on its own ports; always stopped."""

    def __init__(self, workdir, topo_file, store_url, tag):
        self.of_port, self.ws_port = free_port(), free_port()
        self.conf = os.path.join(workdir, f"{tag}.conf")
        self.log_path = os.path.join(workdir, f"{tag}.log")
        token_file = os.path.join(workdir, f"{tag}.token")
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(API_TOKEN + "\n")
        with open(self.conf, "w") as f:
            f.write(f"[DEFAULT]\nofp_listen_host = 127.0.0.1\n"
                    f"ofp_tcp_listen_port = {self.of_port}\n"
                    f"wsapi_host = 127.0.0.1\nwsapi_port = {self.ws_port}\n"
                    f"[onvm]\ntopology = {topo_file}\nstore = {store_url}\n"
                    f"api_token_file = {token_file}\n")
        env = dict(os.environ, PYTHONPATH=REPO)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [RYU_MANAGER, "controller.apps.chain_manager",
                 "controller.apps.rest_api", "ryu.topology.switches",
                 "--observe-links", "--config-file", self.conf],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def target(self):
        return f"tcp:127.0.0.1:{self.of_port}"

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"ryu-manager exited with {self.proc.returncode}:\n"
                                 f"{self.log()[-3000:]}")
        return True

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def controllers(tmp_path_factory, topo_file, etcd):
    workdir = str(tmp_path_factory.mktemp("ryu"))
    made = []
    try:
        yield lambda tag: made.append(Controller(workdir, topo_file, etcd.url, tag)) or made[-1]
    finally:
        for c in made:
            c.stop()


@pytest.fixture(scope="module")
def leader(controllers, bridges, ovs, store):
    first = controllers("a")
    wait_for(lambda: first.alive() and store.get(LEADER) is not None, 20,
             "the first controller to lead")
    for name in bridges.values():
        ovs.vsctl("set-controller", name, first.target)
    return first


# ------------------------------------------------------------------ helpers

def dumped(ovs, bridge):
    """Multiset of (cookie, table, priority) of the bridge's flows."""
    out = ovs.ofctl("dump-flows", bridge)
    return Counter((int(c, 16), int(t), int(p)) for c, t, p in COOKIE_RE.findall(out))


def wanted(rules):
    return Counter((f.cookie, f.table, f.priority) for f in rules.flows)


def group_ids(ovs, bridge):
    return sorted(int(g) for g in re.findall(r"group_id=(\d+)", ovs.ofctl("dump-groups", bridge)))


def with_lldp(rules):
    """The controllers observe links (ryu.topology, LLDP): every switch also
    holds the LLDP punt."""
    return {dpid: flows.SwitchRules([lldp_punt()] + r.flows, r.groups)
            for dpid, r in rules.items()}


def desired_rules(topo, chains, groups):
    return with_lldp(flows.switch_rules(topo.with_chains(chains), build_graph(topo),
                                        groups))


def unplaced_rules(topo):
    """The rules while no agent serves: the leader has stored the file's
    chains, none is placed, so each has its chain_drop (fail-closed)."""
    return desired_rules(topo, topo.chains, {})


def fabric_matches(ovs, bridges, topo, rules):
    for sw in topo.switches:
        if dumped(ovs, bridges[sw.name]) != wanted(rules[sw.dpid]):
            return False
        if group_ids(ovs, bridges[sw.name]) != sorted(g.group_id for g in rules[sw.dpid].groups):
            return False
    return True


def explain(ovs, bridges, topo, rules):
    lines = []
    for sw in topo.switches:
        have, want = dumped(ovs, bridges[sw.name]), wanted(rules[sw.dpid])
        lines.append(f"{sw.name}: missing {dict(want - have)}, extra {dict(have - want)}")
    return "\n".join(lines)


def wait_fabric(ovs, bridges, topo, rules, leader, what, timeout=20):
    try:
        wait_for(lambda: leader.alive() and fabric_matches(ovs, bridges, topo, rules),
                 timeout, what)
    except Exception:
        raise AssertionError(f"{what}:\n{explain(ovs, bridges, topo, rules)}\n"
                             f"controller log tail:\n{leader.log()[-2500:]}") from None


def register(store, topo, name):
    host = topo.host(name)
    return store.register_host(name, {"mac": host.mac, "ip": host.ip,
                                      "cores": host.cores, "version": "test"}, ttl=1.0)


def disturb_synced_leaf(ovs, bridges, topo, rules, leader, stray_port):
    """Once the fabric is in sync, give a leaf a stale onvm rule, a foreign
    rule (matching `stray_port`) and take one wanted rule away."""
    wait_fabric(ovs, bridges, topo, rules, leader, "fabric in the desired state")
    leaf = bridges[topo.hosts[0].switch]
    stale_cookie = (flows.APP_ID << 48) | (flows.KINDS["transport"] << 40) | stray_port
    ovs.ofctl("add-flow", leaf, f"cookie={stale_cookie:#x},table=1,priority=3000,"
                                "mpls,mpls_label=999,actions=output:1")
    ovs.ofctl("add-flow", leaf, f"cookie=0x0,table=0,priority=7,in_port={stray_port},"
                                "actions=drop")
    ovs.ofctl("del-flows", leaf, "--strict", "table=2,priority=0")   # a wanted one
    assert not fabric_matches(ovs, bridges, topo, rules)
    return leaf


# -------------------------------------------------------------------- tests

def test_without_agents_chain_traffic_is_dropped_and_the_rest_forwarded(
        leader, ovs, bridges, topo):
    rules = unplaced_rules(topo)
    wait_fabric(ovs, bridges, topo, rules, leader, "fabric programmed without chains")
    for sw in topo.switches:
        kinds = Counter(flows.cookie_kind(c[0]) for c in dumped(ovs, bridges[sw.name]).elements())
        assert kinds["transport"] == len(topo.hosts) and kinds["classifier"] == 0
        ingress_of = [c for c in topo.chains if topo.edge(c.ingress).switch == sw.name]
        assert kinds["chain_drop"] == len(ingress_of), sw.name
    for chain in topo.chains:       # fail-closed: never around the NFs
        ingress = topo.edge(chain.ingress)
        path, labels, (_, port), text = ovs_trace(
            ovs, bridges, bridges[ingress.switch], chain_flow(chain, ingress))
        assert (path, labels, port) == ([(ingress.switch, 0, "chain_drop")], [], None), text


def test_agents_registering_and_vanishing_change_plans_and_classifiers(
        leader, ovs, bridges, topo, store):
    first, second = topo.hosts[0], topo.hosts[2]       # on different leaves
    leases = [register(store, topo, first.name), register(store, topo, second.name)]
    try:
        wait_for(lambda: leader.alive() and {first.name, second.name} <= set(store.plans()),
                 20, "plans for both registered hosts")
        chains = topo.chains
        ingress_switches = {topo.edge(c.ingress).switch for c in chains}

        def classifiers_point_at(labels):
            for sw in ingress_switches:
                br = bridges[sw]
                kinds = Counter(flows.cookie_kind(c[0]) for c in dumped(ovs, br).elements())
                want = sum(1 for c in chains if topo.edge(c.ingress).switch == sw)
                if kinds["classifier"] != want:
                    return False
                # Table SEND holds one rule per (chain, first-NF host),
                # matching the host's node label in reg0.
                used = {int(x, 16) for x in re.findall(r"reg0=0x([0-9a-f]+)", ovs.ofctl(
                    "dump-flows", br, f"table={flows.TABLE_SEND}"))}
                if not used & labels or used - labels:
                    return False
            return True

        wait_for(lambda: classifiers_point_at({first.label, second.label}), 20,
                 "classifiers toward the registered hosts")
        gen_before = store.get_plan(first.name)["generation"]
        leases.pop().stop(revoke=False)       # the agent dies: its lease runs out
        wait_for(lambda: second.name not in store.plans(), 10,
                 f"plan of lost host {second.name} removed")
        wait_for(lambda: classifiers_point_at({first.label}), 20,
                 "classifiers toward the surviving host only")
        plan = store.get_plan(first.name)
        assert plan["generation"] > gen_before, "survivor's plan not rewritten"
        assert f"{second.name} lost" in leader.log()
    finally:
        for lease in leases:
            lease.stop(revoke=True)
    wait_for(lambda: not store.plans(), 10, "plans gone with the hosts")
    wait_fabric(ovs, bridges, topo, unplaced_rules(topo), leader,
                "classifiers gone with the hosts")


def placement_groups(leader):
    """{chain: [(host, share)]} of the chains' first NFs, from the leader's
    GET /onvm/v1/placement (what controller.plans.ingress_groups gives)."""
    url = f"http://127.0.0.1:{leader.ws_port}/onvm/v1/placement"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH),
                                    timeout=2) as reply:
            placed = json.loads(reply.read())
    except urllib.error.HTTPError:
        return None                     # 503: no placement yet
    return {name: sorted((i["host"], round(i["share"], 6)) for i in hops[0]["instances"])
            for name, hops in placed["chains"].items()}


def chain_packet(chain):
    """A TCP packet the chain's classifier matches, as ofsim takes it."""
    return {"eth_src": "02:aa:00:00:00:01", "eth_dst": "02:aa:00:00:00:02",
            "eth_type": 0x0800, "ipv4_src": "192.0.2.7",
            "ipv4_dst": chain.match["ipv4_dst"].split("/")[0], "ip_ttl": 64,
            "ip_proto": 6, "tcp_src": 40000, "tcp_dst": chain.match["tcp_dst"]}


def chain_flow(chain, ingress):
    """The same packet entering at the chain's ingress, as ofproto/trace takes it."""
    p = chain_packet(chain)
    return (f"in_port={ingress.port},tcp,dl_src={p['eth_src']},dl_dst={p['eth_dst']},"
            f"nw_src={p['ipv4_src']},nw_dst={p['ipv4_dst']},nw_ttl={p['ip_ttl']},"
            f"tp_src={p['tcp_src']},tp_dst={p['tcp_dst']}")


TRACE_RULE = re.compile(r"^\s*(\d+)\. .*cookie (0x[0-9a-f]+)")
TRACE_BRIDGE = re.compile(r'bridge\("([^"]+)"\)')


def ovs_trace(ovs, bridges, bridge, flow, generate=False):
    """ofproto/trace of `flow` entering `bridge`: [(switch, table, rule
    kind)] in the order OVS ran the rules (through patch ports into the next
    bridges), the MPLS labels pushed (outermost first) and the last output
    port.  With `generate`, the trace's side effects happen (learn)."""
    text = ovs.appctl("ofproto/trace", bridge, flow, *(["-generate"] if generate else []))
    switch_of = {b: sw for sw, b in bridges.items()}
    path, pushed, out, switch = [], [], None, None
    for line in text.splitlines():
        bridge_seen = TRACE_BRIDGE.search(line)
        rule = TRACE_RULE.match(line)
        if bridge_seen:
            switch = switch_of[bridge_seen.group(1)]
        elif rule:
            path.append((switch, int(rule.group(1)),
                         flows.cookie_kind(int(rule.group(2), 16))))
        pushed += [int(v, 0) for v in re.findall(r"set_field:(\w+)->mpls_label", line)]
        out = next(iter(re.findall(r"^\s*output:(\d+)", line)), out)
    return path, pushed[::-1], (switch, int(out) if out else None), text


def test_a_chain_packet_takes_classifier_pick_and_pin_in_ovs_as_in_ofsim(
        leader, ovs, bridges, topo, store):
    """A chain's packet traced through real OVS (ofproto/trace) takes the
    classifier, steer, pick, learn and send rules, then the transport
    rules, and leaves at the host ofsim names with the labels ofsim pushes;
    its second packet takes the pin the first one learned, as in ofsim."""
    hosts = [topo.hosts[0], topo.hosts[2]]
    leases = [register(store, topo, h.name) for h in hosts]
    try:
        groups = wait_for(lambda: leader.alive() and placement_groups(leader), 20,
                          "a placement of the chains")
        assert {h for g in groups.values() for h, _ in g} <= {h.name for h in hosts}
        rules = desired_rules(topo, topo.chains, groups)
        wait_fabric(ovs, bridges, topo, rules, leader, "classifiers for the placement")
        # Each chain's first NF runs on one host (light chains), so the slot
        # OVS's multipath hash picks and the one ofsim's HRW picks agree on it.
        assert all(len(g) == 1 for g in groups.values()), groups
        sim = FabricSim(topo, rules)
        for chain in topo.chains:
            ingress = topo.edge(chain.ingress)
            packet = chain_packet(chain)
            flow = chain_flow(chain, ingress)
            kinds = []
            for generate in (True, False):      # the first packet learns the pin
                exit_, = sim.from_edge(chain.ingress, packet)
                path, labels, (switch, port), text = ovs_trace(
                    ovs, bridges, bridges[ingress.switch], flow, generate)
                assert path == exit_.trace, f"ovs {path}\nofsim {exit_.trace}\n{text}"
                where = topo.host(exit_.name)
                assert (switch, port) == (where.switch, where.port), text
                assert labels == exit_.labels == [where.label, chain.spi, 255], text
                kinds.append([k for sw, _, k in path if sw == ingress.switch])
            assert kinds == [["classifier", "miss", "steer", "pick", "learn", "send"],
                             ["classifier", "pin", "steer", "send"]], text
            pins = ovs.ofctl("dump-flows", bridges[ingress.switch],
                             f"table={flows.TABLE_PINS}")
            assert f"cookie={flows.pin_cookie():#x}" in pins and "tp_src=40000" in pins, pins
    finally:
        for lease in leases:
            lease.stop(revoke=True)
        for bridge in bridges.values():     # learned pins go by idle timeout only
            ovs.ofctl("del-flows", bridge,
                      f"table={flows.TABLE_PINS},cookie={flows.pin_cookie():#x}/-1")
    wait_fabric(ovs, bridges, topo, unplaced_rules(topo), leader,
                "classifiers gone with the hosts")


def test_reconnecting_switch_ends_without_stale_rules(leader, ovs, bridges, topo):
    rules = unplaced_rules(topo)
    leaf = disturb_synced_leaf(ovs, bridges, topo, rules, leader, stray_port=77)
    ovs.vsctl("del-controller", leaf)
    ovs.vsctl("set-controller", leaf, leader.target)
    wait_fabric(ovs, bridges, topo, rules, leader,
                "stale rules deleted, missing rule back after reconnect")


def connections(leader):
    """{switch name: times the controller logged it connecting}."""
    return Counter(re.findall(r"switch (\S+) \(dpid 0x[0-9a-f]+\) connected",
                              leader.log()))


@pytest.mark.parametrize("with_ovsdb", [False, True],
                         ids=["vswitchd", "vswitchd-and-ovsdb"])
def test_ovs_restart_is_followed_by_resync_without_stale_rules(
        leader, ovs, bridges, topo, with_ovsdb):
    """A real restart of ovs-vswitchd (and of ovsdb-server too).  The
    userspace datapath forgets every flow, stray ones included; the bridges
    come back from the database and reconnect, and the controller must put
    back exactly the desired rules.  (Saving and restoring the flows as
    `ovs-ctl restart` does would not keep the stray ones either: OVS 3.1
    flushes a bridge's flows when clearing flow-restore-wait gives it its
    controller back; see OvsServer.restart.)"""
    rules = unplaced_rules(topo)
    leaf = disturb_synced_leaf(ovs, bridges, topo, rules, leader, stray_port=99)
    before, (old_db, old_vswitchd) = connections(leader), ovs.pids

    ovs.restart(ovsdb=with_ovsdb)

    assert ovs.pids[1] != old_vswitchd
    assert (ovs.pids[0] != old_db) == with_ovsdb
    names = [sw.name for sw in topo.switches]
    try:
        wait_for(lambda: leader.alive() and all(
            connections(leader)[n] > before[n] for n in names), 30,
            "every switch reconnected to the controller")
    except TimeoutError as err:
        raise AssertionError(f"{err}\ncontroller log tail:\n{leader.log()[-2500:]}") \
            from None
    wait_fabric(ovs, bridges, topo, rules, leader,
                "stale rules deleted, missing rules back after an OVS restart",
                timeout=30)
    assert "in_port=99" not in ovs.ofctl("dump-flows", leaf)


def trace_labelled(ovs, bridge, label):
    """ovs-appctl ofproto/trace of a frame labelled `label` sent by the
    bridge itself; the trace follows patch ports into the next bridges."""
    return ovs.appctl("ofproto/trace", bridge,
                      f"in_port=LOCAL,mpls,mpls_label={label},mpls_bos=1")


def transport_ports(ovs, bridge):
    """Ports the bridge's transport rules and groups send to."""
    text = ovs.ofctl("dump-flows", bridge, f"table={flows.TABLE_TRANSPORT}")
    text += ovs.ofctl("dump-groups", bridge)
    return {int(p) for p in re.findall(r"output:(\d+)", text)}


def test_a_spine_link_down_is_routed_around_and_back(leader, ovs, bridges, topo):
    """Deleting one side of a leaf-spine patch pair makes OVS send a port
    status with OFPPR_DELETE (a patch port never reports LINK_DOWN, and
    ovs-ofctl mod-port down does nothing to it): the transport rules of both
    ends stop using the link, every host is reached over the other spine,
    and re-adding the port brings the original rules back."""
    assert len([s for s in topo.switches if s.name.startswith("spine")]) == 2
    original = unplaced_rules(topo)
    wait_fabric(ovs, bridges, topo, original, leader, "fabric in the desired state")
    i, link = next((i, l) for i, l in enumerate(topo.links)
                   if (l.a, l.b) == ("leaf1", "spine1"))
    spine_side = f"{ovs.prefix}l{i}b"
    log_start = len(leader.log())
    cut = dataclasses.replace(topo, links=tuple(l for l in topo.links if l != link))
    around = with_lldp(flows.switch_rules(topo, build_graph(cut), {}))
    assert around != original

    ovs.vsctl("del-port", bridges[link.b], spine_side)
    try:
        wait_fabric(ovs, bridges, topo, around, leader, "rules routed around the link")
        assert link.a_port not in transport_ports(ovs, bridges[link.a])
        assert link.b_port not in transport_ports(ovs, bridges[link.b])
        down = re.search(r"link leaf1:%d - spine1:%d down \(port spine1:%d deleted\): "
                         r"routing around it; (\d+) transport rules" % (
                             link.a_port, link.b_port, link.b_port), leader.log())
        assert down and int(down.group(1)) > 0, leader.log()[-2500:]
        for leaf in [s.name for s in topo.switches if s.name.startswith("leaf")]:
            for host in topo.hosts:
                trace = trace_labelled(ovs, bridges[leaf], host.label)
                assert f'bridge("{bridges[host.switch]}")' in trace or leaf == host.switch
                # the trace ends on the host's switch, sending to its port
                tail = trace.split(f"bridge(\"{bridges[host.switch]}\")")[-1]
                assert f"output:{host.port}" in tail, (leaf, host.name, trace)
                assert "spine2" in trace or leaf == host.switch, trace
                assert "spine1" not in trace or leaf != "leaf1", trace
    finally:
        ovs.vsctl("--may-exist", "add-port", bridges[link.b], spine_side, "--", "set",
                  "Interface", spine_side, "type=patch",
                  f"options:peer={ovs.prefix}l{i}a", f"ofport_request={link.b_port}")
    wait_fabric(ovs, bridges, topo, original, leader, "original rules after the link is back")
    log = leader.log()[log_start:]
    assert "routing over it again" in log
    # LLDP (ryu.topology) saw the link go and come back, and lost no other
    lost = set(re.findall(r"(link \S+ - \S+) lost by LLDP", log))
    assert lost == {f"link leaf1:{link.a_port} - spine1:{link.b_port}"}, log[-2500:]
    assert f"link leaf1:{link.a_port} - spine1:{link.b_port} seen again by LLDP" in log
    for name in bridges.values():
        punted = re.search(r"n_packets=(\d+),.*dl_type=0x88cc", ovs.ofctl(
            "dump-flows", name, "table=0"))
        assert punted and int(punted.group(1)) > 0, f"{name}: no LLDP reached Ryu"


def test_lldp_keeps_every_file_link_alive(leader, ovs, bridges, topo):
    """ryu.topology forgets a link LLDP has not confirmed for LINK_TIMEOUT
    seconds, and a lost link is routed around: the resync must keep the LLDP
    punt (Ryu's own has cookie 0 and would be deleted as foreign), or the
    fabric falls apart one timeout after the first sync."""
    from ryu.topology.switches import Switches
    rules = unplaced_rules(topo)
    wait_fabric(ovs, bridges, topo, rules, leader, "fabric in the desired state")
    log_start = len(leader.log())
    time.sleep(Switches.LINK_TIMEOUT + Switches.TIMEOUT_CHECK_PERIOD + 1)
    assert "lost by LLDP" not in leader.log()[log_start:], leader.log()[log_start:]
    assert fabric_matches(ovs, bridges, topo, rules), explain(ovs, bridges, topo, rules)


def rest(controller, method, path, body=None):
    """(status, JSON reply) of a request to `controller`'s REST API."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{controller.ws_port}/onvm/v1{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **AUTH})
    try:
        with urllib.request.urlopen(req, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def ingress_rules(ovs, bridge, tcp_dst):
    """[(rule kind, n_packets)] of table 0's rules of `bridge` for `tcp_dst`."""
    out = []
    for line in ovs.ofctl("dump-flows", bridge, "table=0").splitlines():
        if f"tp_dst={tcp_dst}" in line:
            cookie = int(re.search(r"cookie=(0x[0-9a-f]+)", line).group(1), 16)
            out.append((flows.cookie_kind(cookie),
                        int(re.search(r"n_packets=(\d+)", line).group(1))))
    return out


def post_chain(leader, ovs, bridge, body):
    """Once a placement is made: POST chain `body` (a TCP match), wait for
    its classifier in table 0 of its ingress `bridge`; the created chain."""
    wait_for(lambda: leader.alive() and placement_groups(leader), 20, "a placement")
    status, created = rest(leader, "POST", "/chains", body)
    assert status == 201, created
    port = body["match"]["tcp_dst"]
    wait_for(lambda: leader.alive() and [k for k, _ in ingress_rules(
        ovs, bridge, port)] == ["classifier"], 20, f"chain {body['name']}'s classifier")
    return created


def test_a_deleted_chain_is_dropped_and_counted_until_released(
        leader, ovs, bridges, topo, store):
    """DELETE retires the chain: the switch holds its chain_drop rule in
    place of its classifier, and real frames of the chain sent into the
    ingress switch are dropped and counted there; DELETE ?traffic=forward
    releases it: the rule goes and the frames take plain forwarding."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    web = topo.chains[0]
    body = {"name": "retiree", "ingress": web.ingress, "egress": web.egress,
            "match": {"ipv4_dst": "10.0.9.9/32", "ip_proto": 6, "tcp_dst": 8025},
            "nfs": [web.nfs[0]], "mpps": 0.5}
    ingress = topo.edge(web.ingress)
    bridge = bridges[ingress.switch]
    leases = [register(store, topo, h.name) for h in (topo.hosts[0], topo.hosts[2])]
    try:
        created = post_chain(leader, ovs, bridge, body)
        status, reply = rest(leader, "DELETE", "/chains/retiree")
        assert status == 200 and (reply["retired"], reply["traffic"]) == (True, "dropped")
        assert store.get_chain("retiree") == dict(created, retired=True)
        wait_for(lambda: leader.alive() and [k for k, _ in ingress_rules(
            ovs, bridge, 8025)] == ["chain_drop"], 20, "the retired chain's chain_drop")
        frame = Ether(src="02:aa:00:00:00:01", dst=topo.host(web.egress).mac) \
            / IP(src="192.0.2.7", dst="10.0.9.9") / TCP(sport=40000, dport=8025)
        for _ in range(3):
            ovs.ofctl("packet-out", bridge,
                      f"in_port={ingress.port} packet={bytes(frame).hex()} actions=table")
        assert ingress_rules(ovs, bridge, 8025) == [("chain_drop", 3)]
        flow = (f"in_port={ingress.port},tcp,dl_src=02:aa:00:00:00:01,"
                f"dl_dst={topo.host(web.egress).mac},nw_src=192.0.2.7,nw_dst=10.0.9.9,"
                f"tp_src=40000,tp_dst=8025")
        path, _, (_, port), text = ovs_trace(ovs, bridges, bridge, flow)
        assert (path, port) == ([(ingress.switch, 0, "chain_drop")], None), text
        assert "chain retiree retired" in leader.log()

        status, reply = rest(leader, "DELETE", "/chains/retiree?traffic=forward")
        assert status == 200 and reply["traffic"] == "forwarded", reply
        assert store.get_chain("retiree") is None
        wait_for(lambda: leader.alive() and ingress_rules(ovs, bridge, 8025) == [], 20,
                 "the released chain's chain_drop gone")
        path, _, (switch, port), text = ovs_trace(ovs, bridges, bridge, flow)
        host = topo.host(web.egress)
        assert path[0] == (ingress.switch, 0, "next"), text
        assert (switch, port) == (host.switch, host.port), text
    finally:
        for lease in leases:
            lease.stop(revoke=True)
        store.delete_chain("retiree")
    wait_fabric(ovs, bridges, topo, unplaced_rules(topo), leader,
                "back to the file's chains, unplaced")


def test_an_ipv6_chain_is_classified_steered_and_pinned_in_ovs(
        leader, ovs, bridges, topo, store):
    """A chain matching ipv6_dst, made through the REST API: real OVS
    classifies its IPv6 packet, picks a first-NF host, learns a pin on the
    IPv6 addresses and ports (the second packet takes it) and sends it
    with the chain's labels; an IPv6 packet outside the prefix is not the
    chain's."""
    web = topo.chains[0]
    body = {"name": "web6", "ingress": web.ingress, "egress": web.egress,
            "match": {"ipv6_dst": "2001:db8:6::/48", "ip_proto": 6, "tcp_dst": 8066},
            "nfs": ["firewall", "monitor"], "mpps": 0.5}
    ingress = topo.edge(web.ingress)
    bridge = bridges[ingress.switch]
    leases = [register(store, topo, h.name) for h in (topo.hosts[0], topo.hosts[2])]
    try:
        created = post_chain(leader, ovs, bridge, body)
        flow = (f"in_port={ingress.port},tcp6,dl_src=02:aa:00:00:00:01,"
                f"dl_dst=02:aa:00:00:00:02,ipv6_src=2001:db8:9::7,ipv6_dst={{dst}},"
                f"tp_src=40000,tp_dst=8066")
        kinds, exits = [], set()
        for generate in (True, False):      # the first packet learns the pin
            path, labels, (switch, port), text = ovs_trace(
                ovs, bridges, bridge, flow.format(dst="2001:db8:6::9"), generate)
            kinds.append([k for sw, _, k in path if sw == ingress.switch])
            host = next(h for h in topo.hosts if (h.switch, h.port) == (switch, port))
            assert labels == [host.label, created["spi"], 255], text
            exits.add(host.name)
        assert kinds == [["classifier", "miss", "steer", "pick", "learn", "send"],
                         ["classifier", "pin", "steer", "send"]], text
        assert len(exits) == 1
        pins = ovs.ofctl("dump-flows", bridge, f"table={flows.TABLE_PINS}")
        assert "ipv6_src=2001:db8:9::7" in pins and "tp_src=40000" in pins, pins
        path, labels, _, text = ovs_trace(ovs, bridges, bridge,
                                          flow.format(dst="2001:db8:7::9"))
        assert "classifier" not in [k for _, _, k in path] and labels == [], text
    finally:
        for lease in leases:
            lease.stop(revoke=True)
        store.delete_chain("web6")
        for b in bridges.values():
            ovs.ofctl("del-flows", b, f"table={flows.TABLE_PINS},cookie={flows.pin_cookie():#x}/-1")
    wait_fabric(ovs, bridges, topo, unplaced_rules(topo), leader,
                "back to the file's chains, unplaced")


def test_standby_takes_over_when_the_leader_is_killed(
        leader, controllers, ovs, bridges, topo, store):
    standby = controllers("b")
    wait_for(lambda: standby.alive() and "I am" in standby.log(), 20, "standby up")
    leading = store.get(LEADER)["name"]
    assert leading.endswith(f"-{leader.proc.pid}")
    for name in bridges.values():
        ovs.vsctl("set-controller", name, leader.target, standby.target)
    leaf = bridges[topo.hosts[0].switch]
    ovs.ofctl("add-flow", leaf, "cookie=0x0,table=0,priority=8,in_port=88,actions=drop")
    time.sleep(1.0)
    assert "in_port=88" in ovs.ofctl("dump-flows", leaf), "standby must not program"
    leader.kill()
    wait_for(lambda: (store.get(LEADER) or {}).get("name", "").endswith(
        f"-{standby.proc.pid}"), 10, "standby leads")
    wait_fabric(ovs, bridges, topo, unplaced_rules(topo), standby,
                "the new leader reprograms the switches")
    assert "I lead now" in standby.log()


# ------------------------------------------------- a server's way back in OVS

SERVED = """
name: served
switches:
  - {name: s1, dpid: 0x401}
  - {name: s2, dpid: 0x402}
hosts:
  - {name: h1, switch: s1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.0.1/24, cores: 2}
  - {name: h3, switch: s2, port: 1, mac: "02:00:00:00:00:03", ip: 10.0.0.3/24, cores: 2}
links:
  - {a: s1, a_port: 10, b: s2, b_port: 10, gbps: 10}
edges:
  - {name: internet, switch: s1, port: 3}
nfs: {}
chains: []
"""
WEB1 = Server("web1", "s2", 5, "02:00:00:00:01:10", "10.0.1.10/24")
OFPT_ERROR, OFPT_BARRIER_REPLY = 1, 21


def send_over_openflow(ovs, bridge, msgs):
    """Send Ryu messages to `bridge` as the chain manager does, over the
    bridge's own OpenFlow 1.3 management socket (hello, the messages, a
    barrier); returns what OVS answered before the barrier, parsed by Ryu
    (flow-stats replies, ...).  An OpenFlow error from OVS fails with its
    text."""
    datapath = ofmsgs.offline_datapath()
    parser = datapath.ofproto_parser
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(os.path.join(ovs.dir, bridge + ".mgmt"))
    buffered = b""

    def receive():
        nonlocal buffered
        while len(buffered) < 8 or len(buffered) < struct.unpack_from("!H", buffered, 2)[0]:
            chunk = sock.recv(65536)
            assert chunk, "OVS closed the OpenFlow connection"
            buffered += chunk
        length = struct.unpack_from("!H", buffered, 2)[0]
        msg, buffered = buffered[:length], buffered[length:]
        return msg

    def send(msg, xid):
        msg.set_xid(xid)
        msg.serialize()
        sock.sendall(bytes(msg.buf))

    try:
        send(parser.OFPHello(datapath), 1)
        assert receive()[1] == 0, "no OpenFlow hello from OVS"
        for xid, msg in enumerate(msgs, start=2):
            send(msg, xid)
        send(parser.OFPBarrierRequest(datapath), 0xFFFF)
        answers = []
        while True:
            reply = receive()
            version, kind, length, xid = struct.unpack_from("!BBHI", reply)
            if kind == OFPT_BARRIER_REPLY:
                return answers
            answers.append(ofproto_parser.msg(datapath, version, kind, length, xid, reply))
            if kind == OFPT_ERROR:
                raise AssertionError(f"OVS refused message {xid} of {bridge}: {answers[-1]}")
    finally:
        sock.close()


@pytest.fixture(scope="module")
def served_fabric(ovs):
    """Two netdev bridges holding flows.switch_rules of SERVED with server
    web1 on s2, sent as the Ryu messages of controller.ofmsgs; every place
    is an internal port, so real frames can be sent from it."""
    topo = dataclasses.replace(parse_topology(SERVED, "test_chain_manager_ovs.py:SERVED"),
                               servers=(WEB1,))
    rules = flows.switch_rules(topo, build_graph(topo), {})
    names = {}
    for sw in topo.switches:
        names[sw.name] = ovs.add_bridge(f"{ovs.prefix}{sw.name}", dpid=sw.dpid)
    a, b = f"{ovs.prefix}sva", f"{ovs.prefix}svb"
    ovs.vsctl("add-port", names["s1"], a, "--", "set", "Interface", a, "type=patch",
              f"options:peer={b}", "ofport_request=10",
              "--", "add-port", names["s2"], b, "--", "set", "Interface", b, "type=patch",
              f"options:peer={a}", "ofport_request=10")
    for place in topo.hosts + topo.edges + topo.servers:
        port = f"{ovs.prefix}{place.switch}p{place.port}"
        ovs.vsctl("add-port", names[place.switch], port, "--", "set", "Interface", port,
                  "type=internal", f"ofport_request={place.port}")
    datapath = ofmsgs.offline_datapath()
    for sw in topo.switches:
        ovs.ofctl("del-flows", names[sw.name])
        want = rules[sw.dpid]
        send_over_openflow(ovs, names[sw.name], ofmsgs.to_messages(
            datapath, flows.diff(want.flows, []), flows.diff_groups(want.groups, [])))
        held = dumped(ovs, names[sw.name])
        assert held == wanted(want), f"{sw.name}: OVS holds\n{held}"
    yield topo, rules, names
    for bridge in names.values():
        ovs.vsctl("--if-exists", "del-br", bridge)


def served_packet(src_mac, dst_mac, src, dst, sport, dport):
    return {"eth_src": src_mac, "eth_dst": dst_mac, "eth_type": 0x0800, "ipv4_src": src,
            "ipv4_dst": dst, "ip_ttl": 64, "ip_proto": 6, "tcp_src": sport, "tcp_dst": dport}


def trace_flow(in_port, p):
    return (f"in_port={in_port},tcp,dl_src={p['eth_src']},dl_dst={p['eth_dst']},"
            f"nw_src={p['ipv4_src']},nw_dst={p['ipv4_dst']},nw_ttl={p['ip_ttl']},"
            f"tp_src={p['tcp_src']},tp_dst={p['tcp_dst']}")


def counted(ovs, bridge, cookie):
    """n_packets of the flows of `bridge` with `cookie`."""
    text = ovs.ofctl("dump-flows", bridge, f"cookie={cookie:#x}/-1")
    return sum(int(n) for n in re.findall(r"n_packets=(\d+)", text))


def test_a_servers_reply_finds_its_way_back_in_ovs_as_in_ofsim(ovs, served_fabric):
    """Real OVS, rules sent as ofmsgs' messages: a packet from h1 to web1
    runs to_server, whose learn writes the reply rule into table 8; the
    server's reversed packet runs server_in and that rule, and leaves at
    h1 with eth_dst = h1's MAC; a server packet that answers nothing meets
    table 8's miss, and an MPLS frame from the server port the edge_drop
    rule (their counters count real frames).  ofsim says the same."""
    from scapy.contrib.mpls import MPLS
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    topo, rules, names = served_fabric
    bridges = {sw: bridge for sw, bridge in names.items()}
    sim = FabricSim(topo, rules)
    h1, web1_ip = topo.host("h1"), WEB1.ip.split("/")[0]
    forward = served_packet(h1.mac, WEB1.mac, "192.0.2.7", web1_ip, 40000, 80)
    exit_, = sim.from_host("h1", forward)
    path, _, (switch, port), text = ovs_trace(ovs, bridges, names["s1"],
                                              trace_flow(h1.port, forward), generate=True)
    assert path == exit_.trace and exit_.name == "web1", f"ovs {path}\nofsim {exit_.trace}"
    assert (switch, port) == ("s2", WEB1.port), text
    learned = ovs.ofctl("dump-flows", names["s2"], f"table={flows.TABLE_REPLY}")
    rule = next(line for line in learned.splitlines()
                if f"cookie={flows.reply_cookie():#x}" in line)
    for part in (f"priority={flows.PRIO_REPLY}", f"idle_timeout={flows.REPLY_IDLE_SECONDS}",
                 f"in_port={WEB1.port}", f"nw_src={web1_ip}", "nw_dst=192.0.2.7",
                 "tp_src=80", "tp_dst=40000", "output:10",
                 f"load:{int(h1.mac.replace(':', ''), 16):#x}->NXM_OF_ETH_DST[]"):
        assert part in rule, rule
    assert len(sim.switches["s2"].learned) == 1
    # the chain manager's resync (flow stats -> ofmsgs.actual_flows ->
    # flows.diff) leaves the learned reply rule alone and finds nothing to do
    datapath = ofmsgs.offline_datapath()
    stats = send_over_openflow(ovs, names["s2"], [datapath.ofproto_parser.OFPFlowStatsRequest(
        datapath, table_id=datapath.ofproto.OFPTT_ALL)])
    actual = ofmsgs.actual_flows(stats)
    assert sorted(flows.cookie_kind(a.cookie) for a in actual
                  if a.table == flows.TABLE_REPLY) == ["miss", "reply_pin"]
    assert flows.diff(rules[topo.switch("s2").dpid].flows, actual) == ([], [])

    reply = served_packet(WEB1.mac, "02:00:00:00:0e:ee", web1_ip, "192.0.2.7", 80, 40000)
    back, = sim.from_server("web1", reply)
    path, _, (switch, port), text = ovs_trace(ovs, bridges, names["s2"],
                                              trace_flow(WEB1.port, reply))
    assert path == back.trace, f"ovs {path}\nofsim {back.trace}\n{text}"
    assert (back.kind, back.name) == ("host", "h1") and (switch, port) == ("s1", h1.port)
    assert back.packet["eth_dst"] == h1.mac and f"set(eth(dst={h1.mac}))" in text, text
    assert [k for _, _, k in path][:2] == ["server_in", "reply_pin"]

    # real frames from the server's port
    def from_server(frame, times=1):
        for _ in range(times):
            ovs.ofctl("packet-out", names["s2"],
                      f"in_port={WEB1.port} packet={bytes(frame).hex()} actions=table")
    answer = Ether(src=WEB1.mac, dst="02:00:00:00:0e:ee") / IP(src=web1_ip, dst="192.0.2.7") \
        / TCP(sport=80, dport=40000)
    from_server(answer)
    assert counted(ovs, names["s2"], flows.reply_cookie()) == 1
    miss = next(f for f in rules[topo.switch("s2").dpid].flows
                if f.table == flows.TABLE_REPLY and f.kind == "miss")
    before = counted(ovs, names["s2"], miss.cookie)
    unsolicited = Ether(src=WEB1.mac, dst=h1.mac) / IP(src=web1_ip, dst="192.0.2.7") \
        / TCP(sport=80, dport=40001)
    from_server(unsolicited, 3)
    assert counted(ovs, names["s2"], miss.cookie) == before + 3
    assert sim.from_server("web1", dict(reply, tcp_dst=40001, eth_dst=h1.mac)) == []
    _, _, (_, port), text = ovs_trace(ovs, bridges, names["s2"], trace_flow(
        WEB1.port, dict(reply, tcp_dst=40001, eth_dst=h1.mac)))
    assert "Datapath actions: drop" in text, text
    drops = [f for f in rules[topo.switch("s2").dpid].flows if f.kind == "edge_drop"
             and dict(f.match)["in_port"] == WEB1.port]
    assert len(drops) == 3          # MPLS, MPLS multicast, liveness probes
    forged = Ether(src=WEB1.mac, dst=topo.host("h3").mac) / MPLS(label=h1.label, s=0) \
        / MPLS(label=16, s=0) / MPLS(label=255, s=1) / IP(src=web1_ip, dst="10.0.0.3") \
        / TCP(sport=80, dport=40000)
    before = sum(counted(ovs, names["s2"], d.cookie) for d in drops)
    from_server(forged, 2)
    assert sum(counted(ovs, names["s2"], d.cookie) for d in drops) == before + 2



def test_an_ipv6_servers_reply_finds_its_way_back_in_ovs(ovs, served_fabric):
    """The same with IPv6 frames, for a symmetric IPv6 chain: a frame from
    h1 to web1 writes an IPv6 reply rule on web1's switch; the server's
    reversed frame is counted by it, one that answers nothing by table 8's
    miss (neighbour discovery included: a server needs static neighbours)."""
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
    from scapy.layers.l2 import Ether
    topo, rules, names = served_fabric
    h1 = topo.host("h1")
    client, server = "2001:db8:9::7", "2001:db8:1::10"
    forward = Ether(src=h1.mac, dst=WEB1.mac) / IPv6(src=client, dst=server) \
        / TCP(sport=40600, dport=80)
    ovs.ofctl("packet-out", names["s1"],
              f"in_port={h1.port} packet={bytes(forward).hex()} actions=table")
    learned = ovs.ofctl("dump-flows", names["s2"], f"table={flows.TABLE_REPLY}")
    rule = next((line for line in learned.splitlines()
                 if f"cookie={flows.reply_cookie():#x}" in line and "ipv6_src" in line), learned)
    for part in (f"in_port={WEB1.port}", f"ipv6_src={server}", f"ipv6_dst={client}",
                 "tp_src=80", "tp_dst=40600", "output:10",
                 f"load:{int(h1.mac.replace(':', ''), 16):#x}->NXM_OF_ETH_DST[]"):
        assert part in rule, rule

    def from_server(frame, times=1):
        for _ in range(times):
            ovs.ofctl("packet-out", names["s2"],
                      f"in_port={WEB1.port} packet={bytes(frame).hex()} actions=table")
    before = counted(ovs, names["s2"], flows.reply_cookie())
    from_server(Ether(src=WEB1.mac, dst="02:00:00:00:0e:ee") / IPv6(src=server, dst=client)
                / TCP(sport=80, dport=40600))
    assert counted(ovs, names["s2"], flows.reply_cookie()) == before + 1
    miss = next(f for f in rules[topo.switch("s2").dpid].flows
                if f.table == flows.TABLE_REPLY and f.kind == "miss")
    before = counted(ovs, names["s2"], miss.cookie)
    from_server(Ether(src=WEB1.mac, dst=h1.mac) / IPv6(src=server, dst=client)
                / TCP(sport=80, dport=40601), 2)
    from_server(Ether(src=WEB1.mac, dst="33:33:ff:00:00:07")
                / IPv6(src=server, dst="ff02::1:ff00:7") / ICMPv6ND_NS(tgt=client))
    assert counted(ovs, names["s2"], miss.cookie) == before + 3
