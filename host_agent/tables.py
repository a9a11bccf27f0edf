"""The plan compiler: a checked plan (contracts.plan.check_plan) as the flat
arrays the fast path's tables are made of.  Plain Python, no DPDK, so what
a plan compiles to is tested without an EAL (tests/test_tables.py).

The fast path's loader (host_agent/plantables.pyx) copies these arrays
into its C tables as they are: hop i of the arrays is hop i of the loop,
instance slot s is position s of the plan's instances.

* hops: per hop its SPI, SI, kind (LOCAL, REMOTE, END), the instance slot
  (LOCAL), the index of the hop after it ((SPI, SI - 1), -1 if none), the
  first of its SLOTS consistent-hash slots in `remote` (REMOTE), the port
  and next MAC (END);
* remote: per slot the index of the peer that serves it; peers: label, MAC
  and the label a pin names to find it (a remote hop's peers, then a
  `pinned` list's, each a run of the peer arrays: hop_peer_off/hop_npeers,
  hop_pinned_off/hop_npinned; a peer's `also` labels add rows after the
  run's peers, found by a pin to a lost host, sending to the peer);
* a local hop's `kept` hosts as its peers (FLAG_KEPT: a flow pinned to one
  of them, picked while the hop was remote, goes on there);
* symmetric chains: hop_flags (FLAG_PINNED: look the flow's pin up first),
  hop_rev (the index of the hop a `reverse` key names, -1 if none),
  hop_reply (`end.reply`'s SPI, 0 if none), and an end's `servers` as a run
  of server_ip (host byte order) / server_ip6 (16 bytes each, zeros for a
  server without `ip6`) / server_mac (hop_server_off/_nservers);
* classifiers: rte_acl rules (nflib.nf.Acl's tuples), the first matching
  wins, and per rule the hop where its chain starts (-1 if not here).

Not here: checking the plan (contracts.plan), making NF objects
(host_agent.manager), anything the loop does.
"""
import dataclasses
import ipaddress
import math
import zlib
from array import array

from contracts.plan import PlanError
from contracts.wire import SI_FIRST

SLOTS = 256              # consistent-hash slots per remote hop
MAX_INSTANCES = 64       # instances one host runs
HOP_LOCAL, HOP_REMOTE, HOP_END = 1, 2, 3
FLAG_PINNED = 1          # the hop has a "pinned" list: pin lookup first
FLAG_KEPT = 2            # a local hop with a "kept" list: pinned flows go on there


@dataclasses.dataclass(frozen=True)
class PlanTables:
    generation: int
    node_label: int
    mac: bytes
    uplink: int
    instances: tuple          # ((instance id, mode), ...) by slot
    hop_spi: array            # "I"
    hop_si: array             # "B"
    hop_kind: array           # "B"
    hop_slot: array           # "H"
    hop_next: array           # "i"
    hop_remote_off: array     # "I"
    hop_port: array           # "H"
    hop_dst_mac: bytes        # 6 per hop
    hop_peer_off: array       # "I": first peer of a remote hop
    hop_npeers: array         # "H"
    hop_pinned_off: array     # "I": first peer of a "pinned" list
    hop_npinned: array        # "H"
    hop_flags: array          # "B": FLAG_PINNED | FLAG_KEPT
    hop_rev: array            # "i": hop index named by "reverse", -1 if none
    hop_reply: array          # "I": end.reply (a reverse SPI), 0 if none
    hop_server_off: array     # "I": first server of end.servers
    hop_nservers: array       # "H"
    remote: array             # "H": peer index per slot
    peer_label: array         # "I"
    peer_pin: array           # "I": the label a pin names to find this peer
    peer_mac: bytes           # 6 per peer
    server_ip: array          # "I": IPv4 address, host byte order
    server_ip6: bytes         # 16 per server: its IPv6 address, or zeros
    server_mac: bytes         # 6 per server
    acl_rules: tuple          # Acl rule tuples, one per classifier
    class_hop: array          # "i": hop index per classifier rule

    def hop_of(self, spi, si):
        """Index of the hop (spi, si), or None: for tests and tools."""
        for i in range(len(self.hop_spi)):
            if self.hop_spi[i] == spi and self.hop_si[i] == si:
                return i
        return None


def mac_bytes(text):
    return bytes.fromhex(text.replace(":", ""))


def compile_plan(plan):
    """PlanTables of a checked plan; PlanError if this host cannot run it."""
    specs = plan["instances"]
    if len(specs) > MAX_INSTANCES:
        raise PlanError(f"instances: a host runs at most {MAX_INSTANCES} instances, "
                        f"this plan has {len(specs)}")
    slot_of = {spec["id"]: slot for slot, spec in enumerate(specs)}
    hops = plan["hops"]
    index = {(hp["spi"], hp["si"]): i for i, hp in enumerate(hops)}
    cols = {name: array(code) for name, code in (
        ("hop_spi", "I"), ("hop_si", "B"), ("hop_kind", "B"), ("hop_slot", "H"),
        ("hop_next", "i"), ("hop_remote_off", "I"), ("hop_port", "H"),
        ("hop_peer_off", "I"), ("hop_npeers", "H"), ("hop_pinned_off", "I"),
        ("hop_npinned", "H"), ("hop_flags", "B"), ("hop_rev", "i"), ("hop_reply", "I"),
        ("hop_server_off", "I"), ("hop_nservers", "H"),
        ("remote", "H"), ("peer_label", "I"), ("peer_pin", "I"),
        ("server_ip", "I"))}
    dst_macs, peer_macs, server_macs, server_ip6 = (bytearray() for _ in range(4))

    def add_peers(peers):
        """A run of peers, then one row per label a peer's `also` names
        (flows pinned to a lost host go to the peer that adopted them):
        returns (first row, rows)."""
        first = len(cols["peer_label"])
        rows = [(p["label"], p["label"], p["mac"]) for p in peers]
        rows += [(alias, p["label"], p["mac"]) for p in peers for alias in p.get("also", ())]
        for pin, label, mac in rows:
            cols["peer_pin"].append(pin)
            cols["peer_label"].append(label)
            peer_macs.extend(mac_bytes(mac))
        return first, len(rows)

    for hp in hops:
        kind, slot, remote_off, port, dst_mac = HOP_END, 0, 0, 0, bytes(6)
        peer_off, npeers, reply, server_off, nservers = 0, 0, 0, 0, 0
        if "local" in hp:
            kind, slot = HOP_LOCAL, slot_of[hp["local"]]
            if hp.get("kept"):
                peer_off, npeers = add_peers(hp["kept"])
        elif "remote" in hp:
            kind, remote_off = HOP_REMOTE, len(cols["remote"])
            peer_off, npeers = add_peers(hp["remote"])
            cols["remote"].extend(peer_off + j for j in consistent_slots(hp["remote"]))
        else:
            end = hp["end"]
            port, dst_mac = end.get("port", 0), mac_bytes(end["dst_mac"])
            reply = end.get("reply", 0)
            server_off, nservers = len(cols["server_ip"]), len(end.get("servers", ()))
            for server in end.get("servers", ()):
                cols["server_ip"].append(int(ipaddress.IPv4Address(server["ip"])))
                server_ip6.extend(ipaddress.IPv6Address(server["ip6"]).packed
                                  if server.get("ip6") else bytes(16))
                server_macs.extend(mac_bytes(server["mac"]))
        pinned = hp.get("pinned")
        pinned_off, npinned = add_peers(pinned) if pinned is not None else (0, 0)
        rev = hp.get("reverse")
        for name, value in (("hop_spi", hp["spi"]), ("hop_si", hp["si"]),
                            ("hop_kind", kind), ("hop_slot", slot),
                            ("hop_next", index.get((hp["spi"], hp["si"] - 1), -1)),
                            ("hop_remote_off", remote_off), ("hop_port", port),
                            ("hop_peer_off", peer_off), ("hop_npeers", npeers),
                            ("hop_pinned_off", pinned_off),
                            ("hop_npinned", npinned),
                            ("hop_flags", (FLAG_PINNED if pinned is not None else 0)
                             | (FLAG_KEPT if hp.get("kept") else 0)),
                            ("hop_rev", index.get((rev["spi"], rev["si"]), -1) if rev else -1),
                            ("hop_reply", reply), ("hop_server_off", server_off),
                            ("hop_nservers", nservers)):
            cols[name].append(value)
        dst_macs += dst_mac
    classifiers = plan.get("classifiers", [])
    return PlanTables(
        generation=plan["generation"], node_label=plan["node_label"],
        mac=mac_bytes(plan["mac"]), uplink=plan.get("uplink", 0),
        instances=tuple((spec["id"], spec.get("mode", "inline")) for spec in specs),
        hop_dst_mac=bytes(dst_macs), peer_mac=bytes(peer_macs),
        server_mac=bytes(server_macs), server_ip6=bytes(server_ip6),
        acl_rules=tuple(match_to_acl_rule(c["match"]) for c in classifiers),
        class_hop=array("i", (index.get((c["spi"], SI_FIRST), -1) for c in classifiers)),
        **cols)


def consistent_slots(peers, slots=SLOTS):
    """Which peer serves each of `slots` hash slots: weighted rendezvous
    hashing, so a flow keeps its host when others join or leave or change
    weight (only slots whose winner changed move).  A peer of weight 0
    (draining) serves no slot: the fast path still sends it the flows
    pinned to it while it is in the list."""
    out = []
    for s in range(slots):
        best, best_score = 0, None
        for j, peer in enumerate(peers):
            if peer.get("weight", 1.0) <= 0:
                continue        # draining: keeps its pinned flows, gets no slot
            h = zlib.crc32(f"{peer['label']}/{s}".encode()) & 0xffffffff
            u = (h + 0.5) / 4294967296.0
            score = -peer.get("weight", 1.0) / math.log(u)
            if best_score is None or score > best_score:
                best, best_score = j, score
        out.append(best)
    return out


def match_to_acl_rule(match):
    """An OpenFlow-style chain match (see contracts.plan) as an Acl rule."""
    proto = match.get("ip_proto")
    sport = match.get("tcp_src", match.get("udp_src"))
    dport = match.get("tcp_dst", match.get("udp_dst"))
    if proto is None and ("tcp_src" in match or "tcp_dst" in match):
        proto = 6
    if proto is None and ("udp_src" in match or "udp_dst" in match):
        proto = 17
    return (proto, match.get("ipv4_src"), match.get("ipv4_dst"),
            (sport, sport) if sport is not None else (0, 65535),
            (dport, dport) if dport is not None else (0, 65535))
