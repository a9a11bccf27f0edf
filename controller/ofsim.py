"""A small OpenFlow 1.3 table walker for tests: pushes a packet through the
FlowSpec/GroupSpec lists of `controller.flows` switch by switch, following
the topology's links, and says where it comes out and with which labels.

It models only what our rules use (priority matching with masks, goto,
apply-actions: push_mpls, set_field, set_mpls_ttl, output, group with
select buckets chosen by a hash the caller passes, and the Nicira actions
resubmit, multipath (rendezvous hashing of the 5-tuple) and learn, with
its matches, loads and outputs spelled out as controller.flows writes them
and as a decoded NXActionLearn carries them).  Besides whole
SwitchRules, a switch takes single flow and group changes (`add_flow`,
`delete_flow_strict`, `set_group`, `delete_group`), so tests can replay
the OpenFlow messages the controller sends (tests/test_ofmsgs.py).
Registers (reg0, reg1, ...) start at 0 on every switch and never leave it.
Learned rules (pins, and the reply rules of a server's switch) stay in
the switch until `SwitchSim.expire_pins()` (the walker has no clock).
It is not a switch: integration tests with real
OVS confirm what it predicts.

Packets injected with in_port=INJECTED come from the switch itself (like a
packet-out), so no port rule matches them.

A packet is a dict of header fields named as OpenFlow names them
(eth_dst, eth_type, ipv4_dst, ip_proto, tcp_dst, arp_tpa, ip_ttl, ...)
plus "mpls": a list of label stack entries, outermost first, each a dict
{label, tc, ttl, bos}.  While labels are on, eth_type reads 0x8847 and the
IP fields are hidden, as on the wire.
"""
from __future__ import annotations

import copy
import dataclasses
import ipaddress
import zlib
from typing import Callable, Dict, List, Optional, Tuple

from controller.flows import (ETH_MPLS, FlowSpec, GroupSpec, SwitchRules,
                              canonical_match, cookie_kind)

MAX_HOPS = 32
MAX_RESUBMITS = 64          # OVS gives up on deeper recursion too
INJECTED = 0xFFFFFFFE       # OFPP_LOCAL: "from the switch itself"
FLOW_FIELDS = ("ipv4_src", "ipv4_dst", "ip_proto", "tcp_src", "tcp_dst",
               "udp_src", "udp_dst")


class SimError(RuntimeError):
    """The rules do something the walker cannot follow (a loop, a missing
    group, an unknown action); the message says where."""


@dataclasses.dataclass
class Exit:
    """Where a packet left the fabric: kind "host", "edge" or "server", its
    name, the packet as it left, and the (switch, table, rule kind) it went
    through."""
    kind: str
    name: str
    packet: dict
    trace: List[Tuple[str, int, str]]

    @property
    def labels(self):
        return [entry["label"] for entry in self.packet.get("mpls", [])]


def flow_hash(packet, salt=0):
    """A stable hash of the flow's 5-tuple (what a select group spreads on)."""
    key = repr([packet.get(f) for f in FLOW_FIELDS] + [salt]).encode()
    return zlib.crc32(key)


def hrw_slot(packet, n_slots, basis=0):
    """multipath with HRW: the slot whose hash with the flow is highest.
    Symmetric, like OVS's symmetric_l3l4+udp: both directions agree."""
    ends = sorted([(packet.get("ipv4_src"), packet.get("tcp_src") or packet.get("udp_src")),
                   (packet.get("ipv4_dst"), packet.get("tcp_dst") or packet.get("udp_dst"))],
                  key=repr)
    flow_key = repr([ends, packet.get("ip_proto"), basis])
    return max(range(n_slots), key=lambda slot: zlib.crc32(f"{flow_key}/{slot}".encode()))


def weighted_pick(buckets, packet, salt=0):
    """Default bucket choice: weighted, by the flow hash."""
    total = sum(b.weight for b in buckets)
    point = flow_hash(packet, salt) % total
    for bucket in buckets:
        point -= bucket.weight
        if point < 0:
            return bucket
    return buckets[-1]


# ------------------------------------------------------------- one switch

def _read(packet, field):
    labels = packet.get("mpls")
    if field == "eth_type" and labels:
        return packet.get("mpls_ethertype", ETH_MPLS)
    if field.startswith("mpls_"):
        if not labels:
            return None
        return labels[0][field[len("mpls_"):]]
    if field.startswith("reg"):
        return packet.get(field, 0)     # registers start at zero
    if labels and field not in ("eth_dst", "eth_src", "in_port"):
        return None             # beneath the labels: invisible to the switch
    return packet.get(field)


def _matches(packet, match):
    for field, want in match:
        have = _read(packet, field)
        if have is None:
            return False
        if isinstance(want, tuple):             # (network, netmask), IPv4 or IPv6
            addr, net, mask = (ipaddress.ip_address(a) for a in (have, *want))
            if addr.version != net.version or int(addr) & int(mask) != int(net):
                return False
        elif isinstance(have, str) and isinstance(want, str):
            if have.lower() != want.lower():
                return False
        elif have != want:
            return False
    return True


def _push_mpls(packet, ethertype):
    packet["mpls_ethertype"] = ethertype
    labels = packet.setdefault("mpls", [])
    if labels:      # OVS copies the outer entry, bottom-of-stack bit clear
        entry = dict(labels[0], bos=0)
    else:           # first label: TTL from the IP header, bottom of stack
        entry = {"label": 0, "tc": 0, "ttl": packet.get("ip_ttl", 64), "bos": 1}
    labels.insert(0, entry)


class SwitchSim:
    def __init__(self, name, rules: SwitchRules, pick=weighted_pick):
        self.name = name
        self.pick = pick
        self.learned: Dict[tuple, FlowSpec] = {}     # key -> pin, per switch
        self.reprogram(rules)

    def reprogram(self, rules: SwitchRules):
        """New rules and groups, as a resync brings them; learned pins stay
        (controller.flows.diff leaves them alone)."""
        self.tables: Dict[int, list] = {}
        for spec in sorted(rules.flows, key=lambda s: -s.priority):
            self.tables.setdefault(spec.table, []).append(spec)
        self.groups = {g.group_id: g for g in rules.groups}

    def add_flow(self, spec: FlowSpec):
        """OFPFC_ADD: a flow with the same table, priority and match is replaced."""
        rows = [s for s in self.tables.get(spec.table, []) if s.key != spec.key]
        self.tables[spec.table] = sorted(rows + [spec], key=lambda s: -s.priority)

    def delete_flow_strict(self, table, priority, match):
        """OFPFC_DELETE_STRICT; returns how many flows went (0 or 1)."""
        rows = self.tables.get(table, [])
        kept = [s for s in rows if s.key != (table, priority, match)]
        self.tables[table] = kept
        return len(rows) - len(kept)

    def set_group(self, group: GroupSpec):
        """OFPGC_ADD or OFPGC_MODIFY."""
        self.groups[group.group_id] = group

    def delete_group(self, group_id):
        self.groups.pop(group_id, None)

    def flows(self) -> List[FlowSpec]:
        """Every flow the controller put there (not the learned pins)."""
        return [s for t in sorted(self.tables) for s in self.tables[t]]

    def expire_pins(self):
        """What PIN_IDLE_SECONDS of silence does: every learned rule goes."""
        self.learned.clear()

    def _lookup(self, table, packet):
        learned = [s for s in self.learned.values() if s.table == table]
        candidates = sorted(learned + self.tables.get(table, []), key=lambda s: -s.priority)
        return next((s for s in candidates if _matches(packet, s.match)), None)

    def process(self, packet, in_port, trace) -> List[Tuple[int, dict]]:
        """Returns [(out_port, packet)]; empty when the packet is dropped."""
        packet = copy.deepcopy(packet)
        packet["in_port"] = in_port
        out = []
        self._pipeline(packet, 0, out, trace, depth=0)
        return out

    def _pipeline(self, packet, table, out, trace, depth):
        """From `table` on, following goto; resubmit comes back here."""
        if depth > MAX_RESUBMITS:
            raise SimError(f"switch {self.name}: resubmits nest deeper than "
                           f"{MAX_RESUBMITS} (a loop through table {table})")
        while table is not None:
            spec = self._lookup(table, packet)
            if spec is None:
                trace.append((self.name, table, "table-miss"))
                return          # OpenFlow 1.3: no table-miss rule drops
            trace.append((self.name, table, spec.kind))
            self._apply(packet, spec.actions, out, trace, depth)
            table = spec.goto

    def _apply(self, packet, actions, out, trace=None, depth=0):
        for action in actions:
            op = action[0]
            if op == "output":
                if action[1] == packet["in_port"]:
                    continue    # OpenFlow never sends back out the in_port
                emitted = copy.deepcopy(packet)
                emitted.pop("in_port", None)
                for reg in [f for f in emitted if f.startswith("reg")]:
                    del emitted[reg]    # pipeline metadata: not on the wire
                out.append((action[1], emitted))
            elif op == "push_mpls":
                _push_mpls(packet, action[1])
            elif op == "set_mpls_ttl":
                packet["mpls"][0]["ttl"] = action[1]
            elif op == "set_field" and action[1].startswith("mpls_"):
                packet["mpls"][0][action[1][len("mpls_"):]] = action[2]
            elif op == "set_field":
                packet[action[1]] = action[2]
            elif op == "group":
                self._group(packet, action[1], out)
            elif op == "resubmit":
                self._pipeline(packet, action[1], out,
                               trace if trace is not None else [], depth + 1)
            elif op == "multipath":
                packet[action[2]] = hrw_slot(packet, action[1])
            elif op == "learn":
                self._learn(packet, *action[1:])
            else:
                raise SimError(f"switch {self.name}: unknown action {action!r}")

    def _learn(self, packet, table, idle_timeout, priority, cookie, matches, loads, outputs):
        """controller.flows' learn action: `matches` are (field, source)
        with the source a field to copy from the packet or a constant;
        `loads` are (field, source field) pairs set by the learned rule,
        `outputs` source fields naming its output port.  Fields are named
        as in matches (Ryu's "_nxm" suffix dropped)."""
        def value(src):
            return _read(packet, src) if isinstance(src, str) else src
        match = {field: value(src) for field, src in matches}
        if any(v is None for v in match.values()):
            raise SimError(f"switch {self.name}: learn copies a field the packet "
                           f"lacks: {match}")
        actions = (tuple(("set_field", field, value(src)) for field, src in loads)
                   + tuple(("output", value(src)) for src in outputs))
        spec = FlowSpec(table, priority, cookie_kind(cookie) or "learned",
                        canonical_match(match, "learn"), actions)
        self.learned[spec.key] = spec    # same match: the newer one replaces it

    def _group(self, packet, group_id, out):
        group = self.groups.get(group_id)
        if group is None:
            raise SimError(f"switch {self.name}: rule sends to group {group_id}, "
                           "which the switch does not hold")
        if group.type != "select":
            raise SimError(f"switch {self.name}: group type {group.type} not modelled")
        bucket = self.pick(group.buckets, packet)
        self._apply(copy.deepcopy(packet), bucket.actions, out)


# ------------------------------------------------------------- the fabric

def port_map(topo):
    """(switch, port) -> ("switch", peer, peer_port) | ("host", name, None)
    | ("edge", name, None) | ("server", name, None)."""
    ports = {}
    for link in topo.links:
        ports[(link.a, link.a_port)] = ("switch", link.b, link.b_port)
        ports[(link.b, link.b_port)] = ("switch", link.a, link.a_port)
    for host in topo.hosts:
        ports[(host.switch, host.port)] = ("host", host.name, None)
    for edge in topo.edges:
        ports[(edge.switch, edge.port)] = ("edge", edge.name, None)
    for server in topo.servers:
        ports[(server.switch, server.port)] = ("server", server.name, None)
    return ports


class FabricSim:
    """All switches of a topology with the rules of `flows.switch_rules`."""

    def __init__(self, topo, rules_by_dpid, pick: Callable = weighted_pick):
        self.topo = topo
        self.ports = port_map(topo)
        self.switches = {sw.name: SwitchSim(sw.name, rules_by_dpid[sw.dpid], pick)
                         for sw in topo.switches}

    def reprogram(self, rules_by_dpid):
        """Every switch to new rules; what the switches learned stays."""
        for sw in self.topo.switches:
            self.switches[sw.name].reprogram(rules_by_dpid[sw.dpid])

    def send(self, switch, in_port, packet) -> List[Exit]:
        """Inject `packet` at (switch, in_port); every place it leaves."""
        exits, queue = [], [(switch, in_port, packet, [], 0)]
        while queue:
            sw, port, pkt, trace, hops = queue.pop(0)
            if hops > MAX_HOPS:
                raise SimError(f"packet loops: {' -> '.join(t[0] for t in trace)}")
            for out_port, emitted in self.switches[sw].process(pkt, port, trace):
                peer = self.ports.get((sw, out_port))
                if peer is None:
                    raise SimError(f"switch {sw}: output to port {out_port}, "
                                   "which the topology does not connect")
                kind, name, peer_port = peer
                if kind == "switch":
                    queue.append((name, peer_port, emitted, list(trace), hops + 1))
                else:
                    exits.append(Exit(kind, name, emitted, list(trace)))
        return exits

    def from_host(self, host_name, packet) -> List[Exit]:
        host = self.topo.host(host_name)
        return self.send(host.switch, host.port, packet)

    def from_edge(self, edge_name, packet) -> List[Exit]:
        edge = self.topo.edge(edge_name)
        return self.send(edge.switch, edge.port, packet)

    def from_server(self, server_name, packet) -> List[Exit]:
        server = self.topo.server(server_name)
        return self.send(server.switch, server.port, packet)


def rule_kinds(trace) -> List[str]:
    return [kind for _, _, kind in trace]

