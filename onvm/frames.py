"""Frames for the emulation's senders: packets that match a chain's
classifier, one per flow, each with room for the marker that
`onvm.traffic` patches in as it sends.

A flow spec is {"src": address, "sport": port, "payload": bytes
(optional, after the marker)}.  The destination comes from the
classifier's network, the ports from its port fields where it has them;
a classifier with ipv6_src/ipv6_dst gets IPv6 frames.

Not here: sending and counting (traffic.py), which chain a sender serves
(emulate.py).
"""
from __future__ import annotations

import ipaddress

from onvm.traffic import MAGIC, MARK

DEFAULT_SRC = "192.0.2.1"
DEFAULT_DST = "198.51.100.1"
DEFAULT_SRC6 = "2001:db8:ffff::1"       # documentation prefix, as the IPv4 ones
DEFAULT_DST6 = "2001:db8:fffe::1"
FIRST_SPORT = 20000


def address(net, i, default):
    """An address inside the classifier's network `net` (its i-th host),
    or `default` + i when the classifier has none."""
    if net is None:
        return str(ipaddress.ip_address(default) + i)
    net = ipaddress.ip_network(net, strict=False)
    if net.num_addresses <= 2:
        return str(net.network_address)
    return str(net.network_address + 1 + i % min(net.num_addresses - 2, 1 << 32))


def _family(match):
    """("ipv4", defaults) or ("ipv6", defaults) of a classifier match."""
    if any(k.startswith("ipv6_") for k in match):
        return "ipv6", (DEFAULT_SRC6, DEFAULT_DST6)
    return "ipv4", (DEFAULT_SRC, DEFAULT_DST)


def default_flows(chain, flows=8):
    """Flow specs of `flows` flows inside `chain`'s classifier: one source
    address and source port each."""
    m = dict(chain.match)
    ip, (src, _) = _family(m)
    return [{"src": address(m.get(f"{ip}_src"), i, src), "sport": FIRST_SPORT + i}
            for i in range(flows)]


def flow_key(spec):
    """How the sink names a flow spec's flow: "SRC:SPORT"."""
    return f"{spec['src']}:{spec['sport']}"


def chain_frames(chain, src_mac, dst_mac, flows):
    """Frames (bytes) that match `chain`'s classifier, one per flow spec,
    each with a marker field for the sender to fill.  A classifier's port
    fields win over a spec's; its source network is the caller's to
    respect (default_flows does)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    m = dict(chain.match)
    udp = any(k.startswith("udp_") for k in m)
    proto = m.get("ip_proto", 17 if udp else 6)
    family, (_, default_dst) = _family(m)
    dst = address(m.get(f"{family}_dst"), 0, default_dst)
    frames = []
    for spec in flows:
        if family == "ipv6":
            ip = IPv6(src=spec["src"], dst=dst, nh=proto, hlim=64)
        else:
            ip = IP(src=spec["src"], dst=dst, proto=proto, ttl=64)
        if proto == 6:
            l4 = TCP(sport=m.get("tcp_src", spec["sport"]), dport=m.get("tcp_dst", 80),
                     flags="A")
        elif proto == 17:
            l4 = UDP(sport=m.get("udp_src", spec["sport"]), dport=m.get("udp_dst", 53))
        else:
            l4 = None
        payload = MAGIC + bytes(MARK.size - len(MAGIC)) + bytes(8) + spec.get("payload", b"")
        pkt = Ether(src=src_mac, dst=dst_mac) / ip
        pkt = pkt / l4 / payload if l4 is not None else pkt / payload
        frames.append(bytes(pkt))
    return frames
