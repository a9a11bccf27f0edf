"""The OpenFlow 1.3 rules every switch of the fabric should hold, as plain
data, and the difference between those and what a switch holds now.

This module decides; it never talks to a switch and never imports Ryu
(`controller.ofmsgs` turns these specs into Ryu messages for the app in
`controller.apps.chain_manager`; `controller.ofsim` pushes packets through
them in tests).

Table layout (the same on every switch):

  table 0, ADMIT      what may enter the fabric, and chain classifiers
    9000  in_port=<edge or server port>, eth_type=0x8847 -> drop (edge_drop)
    9000  in_port=<edge or server port>, eth_type=0x8848 -> drop (edge_drop)
    9000  in_port=<edge or server port>, eth_type=0x88B5 -> drop (edge_drop)
    9000  in_port=<host port>, eth_type=0x88B5 -> controller (probe)
          Liveness probes (contracts.wire.ETH_PROBE) never cross the trust
          boundary; a host's answers go to controller.apps.probes.
          Nobody outside the fabric may choose where a packet starts in a
          chain; the flow's counters count the forged frames.  Host ports
          are not filtered: agents legitimately send MPLS.
    5000+n  in_port=<edge port>, eth_type=0x0800, <chain match, n fields>
          -> reg1 := SPI, resubmit(,3), goto table 4     (classifier)
          Only on the switch of the chain's ingress edge.  More specific
          matches win (n = number of match fields).
    5000+n  the same match -> drop                      (chain_drop)
          Instead of the classifier while no host of the chain's first NF
          is placed (or none is reachable): fail-closed, the chain's
          traffic never falls through to plain forwarding around its NFs,
          and the rule's counters count what was dropped.
    4000  in_port=<server port>, eth_type=0x0800 or 0x86dd -> goto
          table 8                                       (server_in)
          A server only ever answers: its IPv4 and IPv6 pass only as the
          reply of a packet it was sent (table 8).
    3999  in_port=<server port>, eth_type=0x0806 -> goto table 1
                                                        (server_in)
    3998  in_port=<server port> -> drop                 (server_drop)
          Its ARP goes on; anything else it sends (other EtherTypes,
          IPv6 neighbour discovery included: a server of a symmetric IPv6
          chain needs static neighbours) is dropped and counted: fail closed, a server's
          traffic never reaches an edge around a chain's NFs.
    0     -> goto table 1                               (next)

  table 1, TRANSPORT  forward on the outermost (transport) label only
    3000  eth_type=0x8847, mpls_label=<host's node label>
          -> output:<port toward host>, or group <node label> (select over
             the ECMP ports) when there are several     (transport)
    1     eth_type=0x8847 / 0x8848 -> drop (unknown label)   (miss)
    0     -> goto table 2                               (next)
          One rule per host: tables grow with hosts, never with chains.

  table 2, PLAIN      reachability for traffic in no chain
    2100  eth_type=0x0806, arp_tpa=<host IP> -> output toward the host (arp)
          ARP is forwarded by its target, not flooded: the host that owns
          the address answers, and the reply comes back by eth_dst.
          Requests for addresses no host owns are dropped (no flooding, so
          no loops in a fabric full of cycles).
    2052  eth_dst=<server MAC>, tcp -> learn a REPLY rule, output:<server
          port>                                         (to_server)
    2051  the same for udp; 2050 for any other IPv4     (to_server)
          and the same three for IPv6 (a REPLY rule on IPv6 addresses)
          Only on the server's own switch.
    2000  eth_dst=<host, edge or server MAC> -> output toward it  (l2)
          Along the first of the sorted ECMP ports: each hop gets strictly
          closer, so there is no loop, and the choice is deterministic.
          ARP (2100) and l2 rules exist for servers as for hosts.
    0     -> drop (counted)                             (miss)

  Tables 3 to 7 steer a chain's flows at its ingress edge switch: they
  pick the host of the chain's first NF per flow and pin the flow to it.
  Registers (pipeline metadata, never on the wire): reg0 = node label of
  the host the flow is pinned to (0: none), reg1 = SPI, reg2 = slot.

  table 3, PINS       one learned rule per running flow (resubmitted to)
    100   reg1=SPI, eth_type=0x0800, ipv4_src, ipv4_dst, ip_proto
          [, tcp_src, tcp_dst | udp_src, udp_dst] -> reg0 := label  (pin)
          (IPv6 flows: eth_type=0x86dd, ipv6_src, ipv6_dst, ...)
          Written by the switch itself (learn in table 6), idle timeout
          PIN_IDLE_SECONDS, cookie kind "pin": diff() leaves them alone.
    0     -> nothing: the flow is not pinned            (miss)
  table 4, STEER      per chain at its ingress switch
    200   reg1=SPI, reg0=<label of a host of the first NF> -> goto 7
                                                        (steer: pinned)
    100   reg1=SPI -> multipath(symmetric L3/L4 hash, HRW over SLOTS
          slots) into reg2, resubmit(,5), resubmit(,6), goto 7
                                                        (steer: new flow)
          A flow pinned to a host that no longer runs the NF falls to the
          100 rule and is picked and pinned again.
    0     -> drop                                       (miss)
  table 5, PICK       per chain: slot -> host, slots shared by weight
    100   reg1=SPI, reg2=<slot> -> reg0 := label        (pick)
  table 6, LEARN      the same six rules on every switch
    2     tcp -> learn a PINS rule on the 5-tuple       (learn)
    2     udp -> learn a PINS rule on the 5-tuple       (learn)
    1     ip  -> learn a PINS rule on addresses and protocol (learn)
          and the same three for IPv6 (tcp6, udp6, ipv6), on IPv6 addresses
  table 7, SEND       per chain and host of its first NF
    100   reg1=SPI, reg0=label -> push_mpls x3 (SI=255, SPI, label), TTL 64
          each, eth_dst := host MAC, output toward it (or its transport
          group)                                        (send)
    0     -> drop                                       (miss)

  table 8, REPLY      one learned rule per flow a server was sent
    100   in_port=<server port>, eth_type=0x0800, ip_proto,
          ipv4_src=<forward ipv4_dst>, ipv4_dst=<forward ipv4_src>
          (IPv6: eth_type=0x86dd, ipv6_src, ipv6_dst)
          [, tcp/udp src=<forward dst port>, dst=<forward src port>]
          -> eth_dst := <forward eth_src>, output:<forward in_port>
                                                        (reply_pin)
          Written by the switch itself (learn in a to_server rule), idle
          timeout REPLY_IDLE_SECONDS, cookie kind "reply_pin": diff()
          leaves them alone.  The reply goes back untagged to the host
          that sent the forward packet (the chain's end), whose agent
          carries it through the chain's reverse path; switches never
          classify replies.
    0     -> drop (counted: a server's packet that answers nothing)
                                                        (miss)

  Why not an OpenFlow select group: its hash would have to see the IP
  header, so the labels must be pushed inside the buckets, and OVS treats
  a bucket's actions as an action set (one push_mpls at most, no
  resubmit, no learn).  multipath hashes the plain IPv4 header before any
  label is pushed; learn keeps a running flow on its host when the slots
  change (scale-out), which a hash alone cannot.

  Tables 1 and 2 grow with hosts and servers only.  Tables 4, 5 and 7
  hold rules per chain only on that chain's ingress switch (as the
  classifier does); table 3 holds one rule per running flow, only on
  ingress switches, and each goes after PIN_IDLE_SECONDS without packets;
  table 8 one per flow to a server, only on that server's switch.

Groups: transport group id = the host's node label (16 .. 2^20-1), select
over the ECMP ports (plain output actions, so the action-set semantics of
buckets do not matter).

Cookies: bits 63..48 = APP_ID (every onvm rule), 47..40 = the rule's kind,
39..0 = a hash of the rule's content.  A switch's flow is kept on resync
only if one desired rule has the same table, priority, match and cookie;
everything else is deleted or replaced, so no stale rule survives; the
exceptions are the rules the switch learned (kind "pin" in table PINS,
"reply_pin" in table REPLY), which its idle timeouts remove.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from contracts.wire import (ETH_ARP, ETH_IPV4, ETH_IPV6, ETH_MPLS, ETH_MPLS_MC,  # noqa: F401
                            ETH_PROBE, MPLS_TTL, SI_FIRST)
from contracts.plan import match_eth_type
from controller import pausing
from controller.fabric import ecmp_tables
from controller.plans import edge_mac

TABLE_ADMIT, TABLE_TRANSPORT, TABLE_PLAIN = 0, 1, 2
TABLE_PINS, TABLE_STEER, TABLE_PICK, TABLE_LEARN, TABLE_SEND = 3, 4, 5, 6, 7
TABLE_REPLY = 8
REG_HOST, REG_SPI, REG_SLOT = "reg0", "reg1", "reg2"

APP_ID = 0x6F6E                     # "on"
KINDS = {"edge_drop": 1, "classifier": 2, "transport": 3, "arp": 4,
         "l2": 5, "miss": 6, "next": 7, "steer": 8, "pick": 9, "learn": 10,
         "send": 11, "pin": 12, "chain_drop": 13, "server_in": 14, "to_server": 15,
         "reply_pin": 16, "server_drop": 17, "probe": 18, "join": 19}
KIND_NAMES = {code: name for name, code in KINDS.items()}

PRIO_EDGE_DROP, PRIO_CLASSIFIER, PRIO_TRANSPORT = 9000, 5000, 3000
PRIO_PROBE = 9000
OFPP_CONTROLLER = 0xFFFFFFFD        # OpenFlow 1.3's reserved port
PRIO_ARP, PRIO_L2 = 2100, 2000
PRIO_SERVER_IN, PRIO_TO_SERVER, PRIO_REPLY = 4000, 2050, 100
PRIO_PIN, PRIO_STEER_PINNED, PRIO_STEER_NEW, PRIO_PICK, PRIO_SEND = 100, 200, 100, 100, 100
PIN_IDLE_SECONDS = 20   # a flow silent this long may move on its next packet
SLOTS = 16              # multipath slots per chain: weight resolution 1/16
REPLY_IDLE_SECONDS = 300    # a server's learned way back outlives a quiet connection
L4_PROTOS = {"tcp": 6, "udp": 17}


# OpenFlow 1.3 prerequisites (spec 7.2.3.8): a field is only matchable when
# the packet is of the kind that carries it.  OVS refuses rules without them.
PREREQUISITES = {
    "ipv4_src": ("eth_type", (ETH_IPV4,)), "ipv4_dst": ("eth_type", (ETH_IPV4,)),
    "ipv6_src": ("eth_type", (ETH_IPV6,)), "ipv6_dst": ("eth_type", (ETH_IPV6,)),
    "ip_proto": ("eth_type", (ETH_IPV4, ETH_IPV6)),
    "tcp_src": ("ip_proto", (6,)), "tcp_dst": ("ip_proto", (6,)),
    "udp_src": ("ip_proto", (17,)), "udp_dst": ("ip_proto", (17,)),
    "arp_tpa": ("eth_type", (ETH_ARP,)), "arp_spa": ("eth_type", (ETH_ARP,)),
    "mpls_label": ("eth_type", (ETH_MPLS, ETH_MPLS_MC)),
    "mpls_tc": ("eth_type", (ETH_MPLS, ETH_MPLS_MC)),
}
IPV4_FIELDS = ("ipv4_src", "ipv4_dst", "arp_tpa", "arp_spa")
IPV6_FIELDS = ("ipv6_src", "ipv6_dst")
MAC_FIELDS = ("eth_src", "eth_dst")


class FlowError(ValueError):
    """A rule that cannot be built; the message names the chain and field."""


# --------------------------------------------------------------- the specs

@dataclasses.dataclass(frozen=True)
class FlowSpec:
    """One flow entry.  `match` is canonical (see canonical_match); `actions`
    is the apply-actions list as tuples such as ("output", 3),
    ("set_field", "mpls_label", 17), ("push_mpls", 0x8847),
    ("set_mpls_ttl", 64), ("group", 17), ("resubmit", table),
    ("multipath", n_slots, dst_register) (Nicira: symmetric L3/L4 hash
    with UDP ports, HRW, basis 0) and ("learn", table, idle_timeout,
    priority, cookie, matches, loads, outputs) (Nicira learn, spelled out:
    `matches` are (field, source) pairs, the source a field of the packet
    to copy or a constant; `loads` are (field, source field) pairs the
    learned rule sets; `outputs` are fields naming the port the learned
    rule outputs to; see learn_action); `goto` a table id or None.  No
    actions and no goto means drop."""
    table: int
    priority: int
    kind: str
    match: Tuple[Tuple[str, object], ...]
    actions: Tuple[tuple, ...] = ()
    goto: Optional[int] = None

    @property
    def key(self):
        return (self.table, self.priority, self.match)

    @property
    def cookie(self) -> int:
        text = repr((self.table, self.priority, self.match, self.actions,
                     self.goto)).encode()
        digest = int.from_bytes(hashlib.blake2b(text, digest_size=5).digest(), "big")
        return (APP_ID << 48) | (KINDS[self.kind] << 40) | digest


@dataclasses.dataclass(frozen=True)
class Bucket:
    weight: int
    actions: Tuple[tuple, ...]


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    group_id: int
    type: str                       # "select" (all we use)
    buckets: Tuple[Bucket, ...]


class SwitchRules(NamedTuple):
    flows: List[FlowSpec]
    groups: List[GroupSpec]


@dataclasses.dataclass(frozen=True)
class ActualFlow:
    """A flow as a switch reports it; `raw` is the switch's own match object,
    kept so the app can delete exactly that entry."""
    table: int
    priority: int
    cookie: int
    match: Tuple[Tuple[str, object], ...]
    raw: object = None

    @property
    def key(self):
        return (self.table, self.priority, self.match)


class FlowDiff(NamedTuple):
    adds: List[FlowSpec]            # send as OFPFC_ADD (replaces same key)
    deletes: List[ActualFlow]       # send as OFPFC_DELETE_STRICT


class GroupDiff(NamedTuple):
    adds: List[GroupSpec]
    modifies: List[GroupSpec]       # present already: rewritten, idempotent
    deletes: List[int]


def is_onvm_cookie(cookie: int) -> bool:
    return cookie >> 48 == APP_ID


def cookie_kind(cookie: int) -> Optional[str]:
    """The kind of an onvm rule from its cookie, None for foreign rules."""
    return KIND_NAMES.get((cookie >> 40) & 0xFF) if is_onvm_cookie(cookie) else None


def learned_cookie(kind) -> int:
    """The cookie the switch gives the rules of `kind` it learns."""
    return (APP_ID << 48) | (KINDS[kind] << 40)


def pin_cookie() -> int:
    """The cookie the switch gives the pins it learns."""
    return learned_cookie("pin")


def reply_cookie() -> int:
    """The cookie the switch gives the reply rules it learns."""
    return learned_cookie("reply_pin")


# what the switches write themselves: table -> cookie; diff() leaves them alone
LEARNED = {TABLE_PINS: pin_cookie(), TABLE_REPLY: reply_cookie()}


# ------------------------------------------------------------- the matches

@functools.lru_cache(maxsize=1 << 16)
def _canonical_ipv4(text):
    """An IPv4 address or prefix as OVS reports it; parsed once per text
    (a fabric's rules name each host's address on every switch)."""
    return _canonical_net(ipaddress.IPv4Network(text, strict=False))


def _canonical_net(net):
    """One address plain, a prefix as (network, netmask), in the forms Ryu
    gives them back (IPv6 compressed: 2001:db8::, ffff:ffff::)."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return (str(net.network_address), str(net.netmask))


def _canonical_value(field, value, where):
    if field in IPV4_FIELDS or field in IPV6_FIELDS:
        try:
            if isinstance(value, tuple):        # (network, netmask), as Ryu parses it
                net, mask = (ipaddress.ip_address(v) for v in value)
                value = f"{net}/{bin(int(mask)).count('1')}"
            if field in IPV6_FIELDS:
                return _canonical_net(ipaddress.IPv6Network(str(value), strict=False))
            return _canonical_ipv4(str(value))
        except ValueError as err:
            raise FlowError(f"{where}.{field}: {err}") from None
    if field in MAC_FIELDS:
        return str(value).lower()
    return value


def canonical_match(match: Mapping[str, object], where="match"):
    """Match fields as a sorted tuple of pairs, in the form OVS reports them
    back (IPv4 prefixes as (network, netmask), /32 as a plain address, MACs
    in lower case), after checking OpenFlow's prerequisites."""
    fields = {k: _canonical_value(k, v, where) for k, v in match.items()}
    for field in fields:
        if field in PREREQUISITES:
            need, allowed = PREREQUISITES[field]
            if fields.get(need) not in allowed:
                raise FlowError(
                    f"{where}.{field}: needs {need} in "
                    f"{', '.join(hex(a) if need == 'eth_type' else str(a) for a in allowed)}"
                    f" (OpenFlow prerequisite), has {fields.get(need)!r}")
    return tuple(sorted(fields.items()))


def flow(table, priority, kind, match, actions=(), goto=None, where="match"):
    return FlowSpec(table, priority, kind, canonical_match(match, where),
                    tuple(actions), goto)


# ----------------------------------------------------------- the decisions

def _host_ip(host):
    return host.ip.split("/")[0]


def routes(topo, graph, pause=None):
    """{target: {switch: sorted ECMP ports}} for every host, edge and
    server, from one search per switch for the whole fabric
    (fabric.ecmp_tables); `pause` is called every pausing.ROWS switches'
    next hops."""
    return ecmp_tables(graph, [h.name for h in topo.hosts] + [e.name for e in topo.edges]
                       + [s.name for s in topo.servers],
                       pause=pausing.every(pausing.ROWS, pause))


def _ports_toward(routes, switch, target):
    ports = tuple(sorted(routes[target].get(switch, ())))
    if not ports:
        raise FlowError(f"switch {switch}: no path to {target} in the fabric")
    return ports


@functools.lru_cache(maxsize=1 << 16)
def _host_matches(host):
    """The canonical matches that name `host` (transport, ARP, L2): the
    same on every switch, so checked and canonicalised once per host."""
    return (canonical_match({"eth_type": ETH_MPLS, "mpls_label": host.label}),
            canonical_match({"eth_type": ETH_ARP, "arp_tpa": _host_ip(host)}),
            canonical_match({"eth_dst": host.mac}))


@functools.lru_cache(maxsize=1 << 16)
def _select_group(group_id, ports):
    """A select group over `ports`; equal ones are shared between switches
    (specs are immutable)."""
    return GroupSpec(group_id, "select", tuple(Bucket(1, (("output", p),)) for p in ports))


def transport_rules(topo, routes, switch):
    """Per host: a transport rule, and a select group when ECMP has a choice.
    Returns (flows, groups, how) where how[host] is the action that sends a
    labelled packet toward it (used by classifier buckets too)."""
    flows, groups, how = [], [], {}
    for host in topo.hosts:
        ports = _ports_toward(routes, switch, host.name)
        if len(ports) == 1:
            how[host.name] = ("output", ports[0])
        else:
            groups.append(_select_group(host.label, ports))
            how[host.name] = ("group", host.label)
        flows.append(FlowSpec(TABLE_TRANSPORT, PRIO_TRANSPORT, "transport",
                              _host_matches(host)[0], (how[host.name],)))
    return flows, groups, how


def _label_stack_push(spi, label):
    """Push SI, then SPI, then the transport label: outermost first on the
    wire that is transport, SPI, SI.  OVS sets the bottom-of-stack bit
    itself (S=1 only on the first label pushed)."""
    actions = []
    for value in (SI_FIRST, spi, label):
        actions += [("push_mpls", ETH_MPLS), ("set_field", "mpls_label", value),
                    ("set_field", "mpls_tc", 0), ("set_mpls_ttl", MPLS_TTL)]
    return actions


def slot_hosts(members, slots=SLOTS):
    """[host] of length max(slots, len(members)): each host gets slots in
    proportion to its weight (largest remainder), at least one; a host of
    weight 0 (draining: its pinned flows stay, controller.moves) none."""
    exact = [(h, w) for h, w in members if w > 0]
    n = max(slots, len(exact))
    total = sum(w for _, w in exact) or 1.0
    exact = [(h, n * w / total) for h, w in exact]
    count = {h: max(1, int(x)) for h, x in exact}
    by_remainder = sorted(exact, key=lambda hx: (-(hx[1] - int(hx[1])), hx[0]))
    i = 0
    while sum(count.values()) < n:
        count[by_remainder[i % len(by_remainder)][0]] += 1
        i += 1
    while sum(count.values()) > n:      # the minimum of one overshot
        big = max(count, key=lambda h: (count[h], h))
        count[big] -= 1
    return [h for h, _ in members for _ in range(count.get(h, 0))]


def _steering(topo, chain, members, how):
    """Tables STEER, PICK and SEND for one chain at its ingress switch."""
    spi = {REG_SPI: chain.spi}
    hosts = [topo.host(name) for name, _ in members]
    slots = slot_hosts(members)
    flows = [flow(TABLE_STEER, PRIO_STEER_NEW, "steer", spi,
                  [("multipath", len(slots), REG_SLOT), ("resubmit", TABLE_PICK),
                   ("resubmit", TABLE_LEARN)], goto=TABLE_SEND)]
    for host in hosts:
        pinned = dict(spi, **{REG_HOST: host.label})
        flows.append(flow(TABLE_STEER, PRIO_STEER_PINNED, "steer", pinned,
                          goto=TABLE_SEND))
        flows.append(flow(TABLE_SEND, PRIO_SEND, "send", pinned,
                          _label_stack_push(chain.spi, host.label)
                          + [("set_field", "eth_dst", host.mac.lower()), how[host.name]]))
    for slot, name in enumerate(slots):
        flows.append(flow(TABLE_PICK, PRIO_PICK, "pick", dict(spi, **{REG_SLOT: slot}),
                          [("set_field", REG_HOST, topo.host(name).label)]))
    return flows


def chain_rules(topo, chain, members, how):
    """The rules of one chain with NFs at its ingress switch: the classifier
    and its steering when `members` (the first NF's [(host, weight)]) has
    hosts, else the chain_drop rule on the same match (fail-closed).
    `how` is the ingress switch's {host: action toward it}."""
    edge = topo.edge(chain.ingress)
    where = f"chain {chain.name}: match"
    match = {"eth_type": match_eth_type(chain.match), **chain.match, "in_port": edge.port}
    priority = PRIO_CLASSIFIER + len(chain.match)
    if not members:
        return [flow(TABLE_ADMIT, priority, "chain_drop", match, where=where)]
    return ([flow(TABLE_ADMIT, priority, "classifier", match,
                  [("set_field", REG_SPI, chain.spi), ("resubmit", TABLE_PINS)],
                  goto=TABLE_STEER, where=where)]
            + _steering(topo, chain, members, how))


def chains_at(topo, switch):
    """The chains with NFs classified on `switch` (their ingress edge's)."""
    return [c for c in topo.chains if c.nfs and topo.edge(c.ingress).switch == switch]


def _classifiers(topo, switch, ingress_groups, how):
    """Per chain with NFs whose ingress edge is on `switch`: chain_rules."""
    flows = []
    for chain in chains_at(topo, switch):
        flows += chain_rules(topo, chain, ingress_groups.get(chain.name), how)
    return flows


@functools.lru_cache(maxsize=1)
def _fixed():
    return tuple(_learning() + _misses())


def fixed_rules():
    """The rules every switch has whatever the fabric and the chains: the
    learn rules that pin a new flow to the host picked for it, and each
    table's miss."""
    return list(_fixed())


def learn_action(table, idle_timeout, priority, kind, matches, loads=(), outputs=()):
    """A ("learn", ...) action (see FlowSpec) writing rules of `kind` into
    `table`.  Constants come before the fields that need them: OVS checks
    the learned match's prerequisites as it builds it."""
    return ("learn", table, idle_timeout, priority, learned_cookie(kind),
            tuple(matches), tuple(loads), tuple(outputs))


def _l4_matches(l4, reverse):
    """The learned match's protocol and ports for l4 "tcp", "udp" or "ip",
    copied from the packet as they are or, with `reverse`, swapped."""
    if l4 == "ip":
        return (("ip_proto", "ip_proto"),)
    src, dst = f"{l4}_src", f"{l4}_dst"
    return (("ip_proto", L4_PROTOS[l4]),
            (src, dst if reverse else src), (dst, src if reverse else dst))


@functools.lru_cache(maxsize=None)
def pin_learn(l4, family=4):
    """The PINS rule of the module docstring, learned from a new flow (an
    IPv4 one, or with `family` 6 an IPv6 one, on its IPv6 addresses)."""
    ip = f"ipv{family}"
    matches = ((REG_SPI, REG_SPI), ("eth_type", ETH_IPV4 if family == 4 else ETH_IPV6),
               (f"{ip}_src", f"{ip}_src"), (f"{ip}_dst", f"{ip}_dst")) + _l4_matches(l4, False)
    return learn_action(TABLE_PINS, PIN_IDLE_SECONDS, PRIO_PIN, "pin", matches,
                        loads=((REG_HOST, REG_HOST),))


@functools.lru_cache(maxsize=1 << 16)
def reply_learn(server_port, l4, family=4):
    """The TABLE_REPLY rule of the module docstring, learned from a packet
    going to the server at `server_port` (IPv4, or with `family` 6 IPv6):
    its reply, from that port, goes back untagged to the sender's MAC out
    of the port it came in by."""
    ip = f"ipv{family}"
    matches = (("in_port", server_port), ("eth_type", ETH_IPV4 if family == 4 else ETH_IPV6),
               (f"{ip}_src", f"{ip}_dst"), (f"{ip}_dst", f"{ip}_src")) + _l4_matches(l4, True)
    return learn_action(TABLE_REPLY, REPLY_IDLE_SECONDS, PRIO_REPLY, "reply_pin", matches,
                        loads=(("eth_dst", "eth_src"),), outputs=("in_port",))


def _by_l4(l4, family=4):
    """The match and priority offset of a rule for l4 "tcp", "udp" or "ip"
    (the more specific, the higher), of IPv4 or IPv6 packets."""
    eth_type = ETH_IPV4 if family == 4 else ETH_IPV6
    if l4 == "ip":
        return {"eth_type": eth_type}, 0
    return {"eth_type": eth_type, "ip_proto": L4_PROTOS[l4]}, 1 + (l4 == "tcp")


def _learning():
    """The rules that pin a new flow (IPv4 or IPv6) to the host picked for it."""
    return [flow(TABLE_LEARN, 1 + (l4 != "ip"), "learn", _by_l4(l4, family)[0],
                 [pin_learn(l4, family)])
            for family in (4, 6) for l4 in ("tcp", "udp", "ip")]


def untrusted_ports(edges, servers, switch):
    """(port, is a server) for the ports of `edges` and `servers` on
    `switch`: outside the trust boundary."""
    return ([(e.port, False) for e in edges if e.switch == switch]
            + [(s.port, True) for s in servers if s.switch == switch])


def guard_rules(edges, servers, switch):
    """ADMIT rules for the ports outside the fabric on `switch`: MPLS from
    an edge or a server is dropped (edge_drop), and a server's IPv4 goes
    to TABLE_REPLY (server_in), where only a learned reply passes; its ARP
    goes on, anything else it sends is dropped (server_drop)."""
    out = []
    for port, is_server in untrusted_ports(edges, servers, switch):
        out += [flow(TABLE_ADMIT, PRIO_EDGE_DROP, "edge_drop",
                     {"in_port": port, "eth_type": eth_type})
                for eth_type in (ETH_MPLS, ETH_MPLS_MC, ETH_PROBE)]
        if is_server:
            out += [flow(TABLE_ADMIT, PRIO_SERVER_IN, "server_in",
                         {"in_port": port, "eth_type": eth_type}, goto=TABLE_REPLY)
                    for eth_type in (ETH_IPV4, ETH_IPV6)]
            out += [
                    flow(TABLE_ADMIT, PRIO_SERVER_IN - 1, "server_in",
                         {"in_port": port, "eth_type": ETH_ARP}, goto=TABLE_TRANSPORT),
                    flow(TABLE_ADMIT, PRIO_SERVER_IN - 2, "server_drop", {"in_port": port})]
    return out


def probe_punts(hosts, switch):
    """ADMIT rules giving the liveness probes' answers (EtherType
    ETH_PROBE) that `hosts` on `switch` send to the controller
    (controller.apps.probes); from any other port a probe is an edge_drop."""
    return [flow(TABLE_ADMIT, PRIO_PROBE, "probe",
                 {"in_port": h.port, "eth_type": ETH_PROBE}, [("output", OFPP_CONTROLLER)])
            for h in hosts if h.switch == switch]


def edge_drops(topo, switch):
    """The guard rules of every edge and server port of `switch`, and the
    probe punts of its host ports."""
    return guard_rules(topo.edges, topo.servers, switch) + probe_punts(topo.hosts, switch)


def plain_rules(topo, routes, switch):
    flows = []
    for host in topo.hosts:
        out = (("output", _ports_toward(routes, switch, host.name)[0]),)
        _, arp, l2 = _host_matches(host)
        flows.append(FlowSpec(TABLE_PLAIN, PRIO_ARP, "arp", arp, out))
        flows.append(FlowSpec(TABLE_PLAIN, PRIO_L2, "l2", l2, out))
    for edge in topo.edges:
        port = _ports_toward(routes, switch, edge.name)[0]
        flows.append(flow(TABLE_PLAIN, PRIO_L2, "l2", {"eth_dst": edge_mac(edge.name)},
                          [("output", port)]))
    for server in topo.servers:
        flows += _server_rules(server, _ports_toward(routes, switch, server.name)[0],
                               server.switch == switch)
    return flows


@functools.lru_cache(maxsize=1 << 16)
def _server_rules(server, port, own_switch):
    """ARP and L2 toward a server out of `port`; on its own switch also the
    to_server rules that learn each packet's way back."""
    out = [flow(TABLE_PLAIN, PRIO_ARP, "arp", {"eth_type": ETH_ARP, "arp_tpa": _host_ip(server)},
                [("output", port)]),
           flow(TABLE_PLAIN, PRIO_L2, "l2", {"eth_dst": server.mac}, [("output", port)])]
    if own_switch:
        for family in (4, 6):
            for l4 in ("ip", "udp", "tcp"):
                match, offset = _by_l4(l4, family)
                out.append(flow(TABLE_PLAIN, PRIO_TO_SERVER + offset, "to_server",
                                dict(match, eth_dst=server.mac),
                                [reply_learn(server.port, l4, family), ("output", port)]))
    return tuple(out)


def _misses():
    return [flow(TABLE_ADMIT, 0, "next", {}, goto=TABLE_TRANSPORT),
            flow(TABLE_TRANSPORT, 1, "miss", {"eth_type": ETH_MPLS}),
            flow(TABLE_TRANSPORT, 1, "miss", {"eth_type": ETH_MPLS_MC}),
            flow(TABLE_TRANSPORT, 0, "next", {}, goto=TABLE_PLAIN),
            flow(TABLE_PLAIN, 0, "miss", {}),
            flow(TABLE_PINS, 0, "miss", {}), flow(TABLE_STEER, 0, "miss", {}),
            flow(TABLE_SEND, 0, "miss", {}), flow(TABLE_REPLY, 0, "miss", {})]


def assemble(drops, classifiers, transport, plain, groups) -> SwitchRules:
    """One switch's rules from its parts, in the one order every compile
    (this module's and controller.rulebook's) gives them."""
    return SwitchRules(list(drops) + list(classifiers) + list(transport)
                       + list(plain) + fixed_rules(), list(groups))


def rules_for_switch(topo, routes, switch, ingress_groups) -> SwitchRules:
    """The rules of one switch; `routes` is routes(topo, graph)."""
    transport, groups, how = transport_rules(topo, routes, switch)
    return assemble(edge_drops(topo, switch), _classifiers(topo, switch, ingress_groups, how),
                    transport, plain_rules(topo, routes, switch), groups)


def switch_rules(topo, graph, ingress_groups) -> Dict[int, SwitchRules]:
    """{dpid: SwitchRules(flows, groups)} for every switch of the topology.
    `ingress_groups` is {chain: [(host, weight)]} of `controller.plans`: the
    hosts running each chain's first NF.  Every chain of `topo` with NFs is
    classified at its ingress: a chain absent from `ingress_groups` (or
    with no host in it) gets a chain_drop rule, so its traffic is dropped
    and counted, never forwarded around its NFs.  Pass every chain users
    asked for in `topo`, placed or not; chains not in `topo` stay plain."""
    table = routes(topo, graph)
    return {sw.dpid: rules_for_switch(topo, table, sw.name, ingress_groups)
            for sw in topo.switches}


# ----------------------------------------------------------------- the diff

def diff(desired: Iterable[FlowSpec], actual: Iterable[ActualFlow]) -> FlowDiff:
    """What to send so the switch holds exactly `desired`.  A flow stays when
    a desired rule has its table, priority, match and cookie (the cookie
    hashes the actions, so changed actions show).  A flow whose key is
    desired with another cookie is overwritten by the add (OFPFC_ADD on an
    identical match replaces it), so it is not deleted first; every other
    flow, onvm's or not, is deleted, but for the pins and reply rules the
    switch learned (LEARNED: they carry running flows and go by their idle
    timeout)."""
    desired = list(desired)
    wanted = {spec.key: spec for spec in desired}
    kept, deletes = set(), []
    for entry in actual:
        if LEARNED.get(entry.table) == entry.cookie:
            continue
        spec = wanted.get(entry.key)
        if spec is None:
            deletes.append(entry)
        elif spec.cookie == entry.cookie:
            kept.add(entry.key)
    adds = [spec for spec in desired if spec.key not in kept]
    return FlowDiff(adds, deletes)


def diff_programmed(desired: SwitchRules, confirmed: SwitchRules) -> Tuple[FlowDiff, GroupDiff]:
    """What to send a switch that holds `confirmed` (what the controller
    last programmed there and saw confirmed by a barrier) so that it holds
    `desired`, without reading its tables: the same adds and deletes as
    `diff` would give on a faithful dump, and only the groups that differ
    rewritten.  The deletes are ActualFlows without `raw` (built from the
    spec's match)."""
    held = {spec.key: spec.cookie for spec in confirmed.flows}
    wanted = {spec.key for spec in desired.flows}
    adds = [spec for spec in desired.flows if held.get(spec.key) != spec.cookie]
    deletes = [ActualFlow(spec.table, spec.priority, spec.cookie, spec.match)
               for spec in confirmed.flows if spec.key not in wanted]
    before = {g.group_id: g for g in confirmed.groups}
    ids = {g.group_id for g in desired.groups}
    return (FlowDiff(adds, deletes),
            GroupDiff([g for g in desired.groups if g.group_id not in before],
                      [g for g in desired.groups
                       if g.group_id in before and before[g.group_id] != g],
                      sorted(set(before) - ids)))


def diff_groups(desired: Iterable[GroupSpec], actual_ids: Iterable[int]) -> GroupDiff:
    """Groups to add, rewrite and delete.  Present groups are rewritten with
    OFPGC_MODIFY rather than compared bucket by bucket: that is idempotent
    and leaves no stale bucket."""
    desired = list(desired)
    present = set(actual_ids)
    wanted = {g.group_id for g in desired}
    return GroupDiff([g for g in desired if g.group_id not in present],
                     [g for g in desired if g.group_id in present],
                     sorted(present - wanted))


class Confirmed:
    """What this controller programmed on each switch and saw confirmed by
    a barrier, the base a sync diffs against (else it reads the switch).
    It holds only while this controller leads without a break: another
    controller may program the switches while it stands by, so a change
    of leadership forgets everything, and a sync begun in an earlier term
    confirms nothing."""

    def __init__(self):
        self.rules = {}         # dpid -> SwitchRules
        self.leading = False
        self.term = 0

    def leadership(self, leading):
        if leading != self.leading:
            self.rules.clear()
            self.leading = leading
            self.term += 1

    def take(self, dpid):
        """(the rules confirmed on `dpid` or None, the term) for a sync
        beginning; the switch counts as unconfirmed until `confirm`."""
        return self.rules.pop(dpid, None), self.term

    def confirm(self, dpid, rules, term):
        if self.leading and term == self.term:
            self.rules[dpid] = rules

    def forget(self, dpid):
        self.rules.pop(dpid, None)
