"""controller.ofmsgs: the Ryu OpenFlow 1.3 messages the chain manager really
sends, serialized to bytes, parsed back by Ryu, decoded and replayed into
simulated switches (controller.ofsim), as Faucet's FakeOFTable does.
Packets pushed through those switches must come out where the rules-level
simulation says they do: the step from rules to messages is tested with
no switch.  Real OVS confirms it in test_chain_manager_ovs."""
import random
import struct

import pytest
from ryu.ofproto import ofproto_parser

from controller import flows, ofmsgs, topogen
from controller.fabric import build_graph
from controller.ofsim import FabricSim, rule_kinds
from test_fabric import with_servers

INGRESS = {"web1": [("h1", 1.0), ("h3", 3.0)], "tls2": [("h2", 1.0)]}


@pytest.fixture(scope="module")
def topo():
    return with_servers(topogen.leaf_spine(2, 2, 2, chains=2), 2)


def rules_for(topo, ingress):
    return flows.switch_rules(topo, build_graph(topo), ingress)


# --------------------------------------------------- messages -> ofsim specs

def _field(name):
    return name[:-len("_nxm")] if name.endswith("_nxm") else name


def _learn(action):
    """A decoded NXActionLearn in controller.flows' ("learn", ...) form."""
    matches, loads, outputs = [], [], []
    for spec in action.specs:
        src = spec.src if not isinstance(spec.src, tuple) else _field(spec.src[0])
        if type(spec).__name__ == "NXFlowSpecMatch":
            matches.append((_field(spec.dst[0]), src))
        elif type(spec).__name__ == "NXFlowSpecLoad":
            loads.append((_field(spec.dst[0]), src))
        elif type(spec).__name__ == "NXFlowSpecOutput":
            outputs.append(src)
        else:
            raise AssertionError(f"learn spec not modelled: {spec!r}")
    return ("learn", action.table_id, action.idle_timeout, action.priority,
            action.cookie, tuple(matches), tuple(loads), tuple(outputs))


DECODE = {
    "OFPActionOutput": lambda a: ("output", a.port),
    "OFPActionGroup": lambda a: ("group", a.group_id),
    "OFPActionPushMpls": lambda a: ("push_mpls", a.ethertype),
    "OFPActionSetMplsTtl": lambda a: ("set_mpls_ttl", a.mpls_ttl),
    "OFPActionSetField": lambda a: ("set_field", a.key, a.value),
    "NXActionResubmitTable": lambda a: ("resubmit", a.table_id),
    "NXActionMultipath": lambda a: ("multipath", a.max_link + 1, a.dst),
    "NXActionLearn": _learn,
}


def decode_actions(actions):
    return tuple(DECODE[type(a).__name__](a) for a in actions)


def decode_flow(msg):
    """An OFPFlowMod as the FlowSpec it carries (kind from its cookie)."""
    actions, goto = (), None
    for inst in msg.instructions:
        if type(inst).__name__ == "OFPInstructionActions":
            actions = decode_actions(inst.actions)
        elif type(inst).__name__ == "OFPInstructionGotoTable":
            goto = inst.table_id
        else:
            raise AssertionError(f"instruction not modelled: {inst!r}")
    return flows.FlowSpec(msg.table_id, msg.priority, flows.cookie_kind(msg.cookie),
                          flows.canonical_match(dict(msg.match.items())), actions, goto)


def decode_group(msg):
    kind = {msg.datapath.ofproto.OFPGT_SELECT: "select"}[msg.type]
    return flows.GroupSpec(msg.group_id, kind, tuple(
        flows.Bucket(b.weight, decode_actions(b.actions)) for b in msg.buckets))


def parse_group_mod(datapath, buf):
    """Ryu 4.34 parses no OFPGroupMod body: its fields by OpenFlow's layout,
    the buckets by Ryu's OFPBucket parser."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    command, kind, group_id = struct.unpack_from(ofp.OFP_GROUP_MOD_PACK_STR, buf,
                                                 ofp.OFP_HEADER_SIZE)
    buckets, offset = [], ofp.OFP_GROUP_MOD_SIZE
    while offset < len(buf):
        buckets.append(parser.OFPBucket.parser(buf, offset))
        offset += buckets[-1].len
    return parser.OFPGroupMod(datapath, command, kind, group_id, buckets)


def on_the_wire(msgs):
    """The messages serialized as the shell's datapath.send_msg does, and
    parsed back from the bytes."""
    out = []
    for msg in msgs:
        msg.serialize()
        buf = bytes(msg.buf)
        if msg.msg_type == msg.datapath.ofproto.OFPT_GROUP_MOD:
            out.append(parse_group_mod(msg.datapath, buf))
        else:
            out.append(ofproto_parser.msg(msg.datapath, msg.version, msg.msg_type,
                                          msg.msg_len, msg.xid, buf))
    return out


class FakeSwitches:
    """Every switch of a topology as an ofsim switch programmed only by
    the OpenFlow messages it receives; `held` keeps the decoded flows with
    their cookies and wire matches, as a flow-stats reply reports them."""

    def __init__(self, topo):
        self.topo = topo
        self.datapath = ofmsgs.offline_datapath()
        empty = flows.SwitchRules([], [])
        self.fabric = FabricSim(topo, {sw.dpid: empty for sw in topo.switches})
        self.held = {sw.dpid: {} for sw in topo.switches}     # key -> ActualFlow
        self.groups = {sw.dpid: set() for sw in topo.switches}

    def sync(self, rules_by_dpid):
        """What the chain manager does for every switch: diff against what
        it holds, send the messages."""
        for sw in self.topo.switches:
            rules = rules_by_dpid[sw.dpid]
            flow_diff = flows.diff(rules.flows, list(self.held[sw.dpid].values()))
            group_diff = flows.diff_groups(rules.groups, self.groups[sw.dpid])
            self.receive(sw, ofmsgs.to_messages(self.datapath, flow_diff, group_diff))

    def receive(self, sw, msgs):
        switch, ofp = self.fabric.switches[sw.name], self.datapath.ofproto
        for msg in on_the_wire(msgs):
            name = type(msg).__name__
            if name == "OFPFlowMod" and msg.command == ofp.OFPFC_ADD:
                spec = decode_flow(msg)
                switch.add_flow(spec)
                self.held[sw.dpid][spec.key] = flows.ActualFlow(
                    spec.table, spec.priority, msg.cookie, spec.match, msg.match)
            elif name == "OFPFlowMod" and msg.command == ofp.OFPFC_DELETE_STRICT:
                match = flows.canonical_match(dict(msg.match.items()))
                assert switch.delete_flow_strict(msg.table_id, msg.priority, match) == 1
                del self.held[sw.dpid][(msg.table_id, msg.priority, match)]
            elif name == "OFPGroupMod" and msg.command == ofp.OFPGC_DELETE:
                switch.delete_group(msg.group_id)
                self.groups[sw.dpid].discard(msg.group_id)
            elif name == "OFPGroupMod":
                assert (msg.command == ofp.OFPGC_ADD) == (msg.group_id not in
                                                          self.groups[sw.dpid])
                switch.set_group(decode_group(msg))
                self.groups[sw.dpid].add(msg.group_id)
            else:
                raise AssertionError(f"the shell sent a message not modelled: {msg}")


def tcp_packet(sport, src="192.0.2.7", dst="10.0.1.2", dport=80):
    return {"eth_src": "02:aa:00:00:00:01", "eth_dst": "02:aa:00:00:00:02",
            "eth_type": 0x0800, "ipv4_src": src, "ipv4_dst": dst, "ip_ttl": 30,
            "ip_proto": 6, "tcp_src": sport, "tcp_dst": dport}


def web_flows(count, base=0):
    return [tcp_packet(2000 + base + i, src=f"192.0.2.{(base + i) % 250}")
            for i in range(count)]


def outcome(fabric, edge, packet):
    return [(e.kind, e.name, e.labels, e.packet["eth_dst"], rule_kinds(e.trace))
            for e in fabric.from_edge(edge, packet)]


# -------------------------------------------------------------------- tests

def test_every_message_carries_exactly_its_rule(topo):
    rules = rules_for(topo, INGRESS)
    datapath = ofmsgs.offline_datapath()
    for sw in topo.switches:
        want = rules[sw.dpid]
        msgs = on_the_wire(ofmsgs.to_messages(
            datapath, flows.diff(want.flows, []), flows.diff_groups(want.groups, [])))
        flow_mods = [m for m in msgs if type(m).__name__ == "OFPFlowMod"]
        got = {decode_flow(m).key: (m, decode_flow(m)) for m in flow_mods}
        assert len(got) == len(flow_mods) == len(want.flows)
        for spec in want.flows:
            msg, decoded = got[spec.key]
            assert msg.cookie == spec.cookie
            assert decoded == spec, sw.name
        groups = [decode_group(m) for m in msgs if type(m).__name__ == "OFPGroupMod"]
        assert sorted(groups, key=lambda g: g.group_id) == \
            sorted(want.groups, key=lambda g: g.group_id)


def test_chain_packets_through_the_messages_go_where_the_rules_say(topo):
    rules = rules_for(topo, INGRESS)
    by_rules = FabricSim(topo, rules)
    switches = FakeSwitches(topo)
    switches.sync(rules)
    seen = set()
    for packet in web_flows(150):
        got = outcome(switches.fabric, "internet", packet)
        assert got == outcome(by_rules, "internet", packet)
        (kind, name, labels, eth_dst, kinds), = got
        host = topo.host(name)
        assert (kind, labels, eth_dst) == ("host", [host.label, 16, 255], host.mac)
        seen.add(name)
        # the second packet of the flow takes the pin the first one learned
        again = outcome(switches.fabric, "internet", packet)
        assert again[0][:2] == (kind, name)
        assert [k for sw, _, k in switches.fabric.from_edge("internet", packet)[0].trace
                if sw == "spine1"] == ["classifier", "pin", "steer", "send"]
    assert seen == {"h1", "h3"}
    # the pins the messages' learn action made are the ones the rules describe
    learned = switches.fabric.switches["spine1"].learned
    assert len(learned) == 150
    assert learned == by_rules.switches["spine1"].learned
    tls = tcp_packet(5000, dst="10.0.2.2", dport=443)
    assert outcome(switches.fabric, "wan", tls) == outcome(by_rules, "wan", tls)
    assert outcome(switches.fabric, "wan", tls)[0][1] == "h2"


def test_transport_and_plain_traffic_through_the_messages(topo):
    rules = rules_for(topo, INGRESS)
    by_rules = FabricSim(topo, rules)
    switches = FakeSwitches(topo)
    switches.sync(rules)
    for host in topo.hosts:
        for other in topo.hosts:
            labelled = {"eth_src": host.mac, "eth_dst": other.mac, "eth_type": 0x0800,
                        "mpls_ethertype": 0x8847,
                        "mpls": [{"label": other.label, "tc": 0, "ttl": 64, "bos": 0},
                                 {"label": 16, "tc": 0, "ttl": 64, "bos": 0},
                                 {"label": 254, "tc": 0, "ttl": 64, "bos": 1}]}
            a = switches.fabric.from_host(host.name, labelled)
            b = by_rules.from_host(host.name, labelled)
            assert [(e.kind, e.name, e.labels) for e in a] == \
                [(e.kind, e.name, e.labels) for e in b]
    forged = dict(tcp_packet(1), mpls_ethertype=0x8847,
                  mpls=[{"label": 16, "tc": 0, "ttl": 64, "bos": 1}])
    assert switches.fabric.from_edge("internet", forged) == []
    plain = tcp_packet(7, dst="10.9.9.9", dport=22)
    assert outcome(switches.fabric, "internet", plain) == outcome(by_rules, "internet", plain)


def test_a_resync_by_messages_moves_new_flows_and_keeps_running_ones(topo):
    switches = FakeSwitches(topo)
    switches.sync(rules_for(topo, INGRESS))
    running = web_flows(100)
    before = {p["tcp_src"]: outcome(switches.fabric, "internet", p)[0][1] for p in running}
    # scale out: h4 joins the first NF of web1; the diff is sent as messages
    grown = dict(INGRESS, web1=INGRESS["web1"] + [("h4", 4.0)])
    new_rules = rules_for(topo, grown)
    switches.sync(new_rules)
    for sw in topo.switches:
        held = switches.held[sw.dpid]
        assert sorted((k, f.cookie) for k, f in held.items()) == \
            sorted((f.key, f.cookie) for f in new_rules[sw.dpid].flows), sw.name
    assert {p["tcp_src"]: outcome(switches.fabric, "internet", p)[0][1]
            for p in running} == before, "a running flow changed its host"
    fresh = [outcome(switches.fabric, "internet", p)[0][1] for p in web_flows(200, 500)]
    assert fresh.count("h4") >= 50
    # a second sync of the same rules sends no flow change
    datapath = ofmsgs.offline_datapath()
    spine1 = topo.switch("spine1").dpid
    again = flows.diff(new_rules[spine1].flows, list(switches.held[spine1].values()))
    assert again == ([], [])
    assert [type(m).__name__ for m in ofmsgs.to_messages(
        datapath, again, flows.diff_groups([], []))] == []


def test_a_lost_host_is_deleted_by_delete_strict_messages(topo):
    switches = FakeSwitches(topo)
    switches.sync(rules_for(topo, INGRESS))
    pinned = web_flows(60)
    for packet in pinned:
        outcome(switches.fabric, "internet", packet)
    shrunk = dict(INGRESS, web1=[("h3", 1.0)])
    switches.sync(rules_for(topo, shrunk))
    hosts = {outcome(switches.fabric, "internet", p)[0][1] for p in pinned}
    assert hosts == {"h3"}, "flows pinned to h1 are picked again"
    rng = random.Random(7)
    for _ in range(20):
        packet = tcp_packet(rng.randrange(1024, 65535), src=f"198.51.100.{rng.randrange(250)}")
        assert outcome(switches.fabric, "internet", packet)[0][1] == "h3"


def server_exchange(fabric, topo, sender, server, sport, l4="tcp"):
    """A chain end's packet from `sender` to `server`, then the server's
    reversed answer: (where each came out, with eth_dst, labels and the
    rule kinds it took)."""
    host = topo.host(sender)
    forward = {"eth_src": host.mac, "eth_dst": server.mac, "eth_type": 0x0800,
               "ipv4_src": "192.0.2.9", "ipv4_dst": server.ip.split("/")[0],
               "ip_ttl": 30, "ip_proto": {"tcp": 6, "udp": 17}[l4],
               f"{l4}_src": sport, f"{l4}_dst": 80}
    reply = dict(forward, eth_src=server.mac, eth_dst="02:00:00:00:0e:ee",
                 ipv4_src=forward["ipv4_dst"], ipv4_dst=forward["ipv4_src"],
                 **{f"{l4}_src": 80, f"{l4}_dst": sport})
    seen = lambda exits: [(e.kind, e.name, e.packet["eth_dst"], e.labels,
                           rule_kinds(e.trace)) for e in exits]
    return (seen(fabric.from_host(sender, forward)),
            seen(fabric.from_server(server.name, reply)))


def test_a_servers_reply_through_the_messages_learn_action(topo):
    """The to_server rules' NXActionLearn, serialized and parsed back,
    writes the reply rule the rules describe; the server's answer goes
    back untagged to the sender; an answer to nothing is dropped."""
    rules = rules_for(topo, INGRESS)
    by_rules = FabricSim(topo, rules)
    switches = FakeSwitches(topo)
    switches.sync(rules)
    web1 = topo.servers[0]
    for i, (sender, l4) in enumerate([("h1", "tcp"), ("h3", "udp"), ("h4", "tcp")]):
        got = server_exchange(switches.fabric, topo, sender, web1, 3000 + i, l4)
        assert got == server_exchange(by_rules, topo, sender, web1, 3000 + i, l4)
        forward, reply = got
        assert [f[:4] for f in forward] == [("server", web1.name, web1.mac, [])]
        assert [r[:4] for r in reply] == [("host", sender, topo.host(sender).mac, [])]
        assert reply[0][4][:2] == ["server_in", "reply_pin"]
    learned = switches.fabric.switches[web1.switch].learned
    assert len(learned) == 3 and learned == by_rules.switches[web1.switch].learned
    # a second sync leaves the learned reply rules alone
    switches.sync(rules)
    assert switches.fabric.switches[web1.switch].learned == learned
    nothing = dict(tcp_packet(80, src=web1.ip.split("/")[0], dst="192.0.2.9", dport=9999),
                   eth_dst=topo.host("h1").mac)
    assert switches.fabric.from_server(web1.name, nothing) == []


def test_an_ipv6_classifier_survives_the_wire_and_a_resync_keeps_it():
    """An IPv6 chain's classifier through Ryu's bytes: it decodes to the
    same rule, and the match a switch reports back (flow stats) has the
    rule's key, so a resync neither deletes nor rewrites it."""
    datapath = ofmsgs.offline_datapath()
    spec = flows.flow(0, 5003, "classifier",
                      {"eth_type": 0x86DD, "ipv6_dst": "2001:DB8:1:0::/48", "ip_proto": 6,
                       "tcp_dst": 80, "in_port": 10}, [("output", 1)])
    msg, = on_the_wire(ofmsgs.to_messages(datapath, flows.diff([spec], []),
                                          flows.diff_groups([], [])))
    assert decode_flow(msg) == spec
    reported = flows.ActualFlow(msg.table_id, msg.priority, msg.cookie,
                                tuple(sorted(msg.match.items())), msg.match)
    assert reported.key == spec.key
    again = flows.diff([spec], [reported])
    assert not ofmsgs.to_messages(datapath, again, flows.diff_groups([], []))
