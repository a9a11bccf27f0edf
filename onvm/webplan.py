"""Which HTTP servers and TCP clients an emulation runs, and how their
namespaces are addressed, decided from the topology alone (pure).

Each application server (`servers:`) serves HTTP on the TCP ports of the
chains that end at it (or at a pool it is in); 80 when none says.  Each
chain that matches TCP and ends at a server or a pool gets one client at
its ingress edge, with its own source address (inside the classifier's
source network when it has one), toward the chain's destination: its
`ipv4_dst` when that is one address (a VIP, or a server's), else the
egress server's address.  An IPv6 chain's client connects to its
`ipv6_dst` when that is one address, else to that prefix's address ::10;
a server with an `ip6` takes that address, and the servers of an IPv6
chain that ends at one server also take the chain's destination (an IPv6
chain to a pool connects to its VIP, which the chain's lb rewrites to
the servers' `ip6`).  Servers reach everything through a gateway
address whose neighbor entry is static (their subnet's route is removed,
so the gateway serves it too; fe80::1 for IPv6); edges have a static
neighbor for each destination of their clients: nobody in the emulation
ever needs ARP or neighbour discovery (the fabric drops a server's).

Not here: the processes (web.py), starting them (emulate.py).
"""
from __future__ import annotations

import dataclasses
import ipaddress

from contracts.plan import match_eth_type
from onvm.frames import address

HTTP_PORT = 80
GATEWAY_IP = "169.254.255.254"      # servers' default gateway (static neighbor)
GATEWAY_MAC = "06:00:00:00:00:fe"   # any: the server's switch sets the reply's eth_dst
CLIENT_SRC = "192.0.2.100"          # the first client's address without an ipv4_src
CLIENT_SRC6 = "2001:db8:ffff::100"  # the same for IPv6 chains, without an ipv6_src
GATEWAY6 = "fe80::1"                # servers' IPv6 gateway (static neighbor)
SERVER6_HOST = 0x10                 # an IPv6 chain's server address in a prefix
MTU = 1400                          # servers and edges: labels add 12 bytes in the fabric
CONNECTIONS_PER_S = 4.0             # what a client opens a second, a chain's default


@dataclasses.dataclass(frozen=True)
class Client:
    chain: str
    edge: str
    src: str
    dst: str
    port: int
    dst_mac: str                    # the static neighbor for dst at the edge
    rate: float                     # connections a second


def carries_tcp(chain):
    m = dict(chain.match)
    return m.get("ip_proto") == 6 or any(k.startswith("tcp_") for k in m)


def chain_servers(topo, chain):
    """The servers a chain ends at (its pool, or its one server), or ()."""
    if chain.pool:
        return tuple(chain.pool)
    names = {s.name for s in topo.servers}
    return (chain.egress,) if chain.egress in names else ()


def tcp_port(chain):
    return int(dict(chain.match).get("tcp_dst", HTTP_PORT))


def server_ports(topo):
    """{server name: [ports]} for every server of the topology."""
    ports = {s.name: set() for s in topo.servers}
    for chain in topo.chains:
        if carries_tcp(chain):
            for name in chain_servers(topo, chain):
                ports[name].add(tcp_port(chain))
    return {name: sorted(p) or [HTTP_PORT] for name, p in ports.items()}


def is_ipv6(chain):
    return match_eth_type(dict(chain.match)) == 0x86DD


def destination(topo, chain):
    """The address a chain's client connects to."""
    if is_ipv6(chain):
        net = ipaddress.IPv6Network(dict(chain.match).get("ipv6_dst", "2001:db8:80::/64"),
                                    strict=False)
        return str(net.network_address + (SERVER6_HOST if net.num_addresses > 1 else 0))
    net = dict(chain.match).get("ipv4_dst")
    if net is not None and ipaddress.IPv4Network(net, strict=False).num_addresses == 1:
        return str(ipaddress.IPv4Network(net, strict=False).network_address)
    return topo.server(chain_servers(topo, chain)[0]).ip.split("/")[0]


def clients(topo):
    """One Client per chain that carries TCP to a server or a pool."""
    out = []
    for i, chain in enumerate(topo.chains):
        servers = chain_servers(topo, chain)
        if not servers or not carries_tcp(chain):
            continue
        ip, default = ("ipv6", CLIENT_SRC6) if is_ipv6(chain) else ("ipv4", CLIENT_SRC)
        src_net = dict(chain.match).get(f"{ip}_src")
        src = address(src_net, len(out), default) if src_net else \
            str(ipaddress.ip_address(default) + i)
        out.append(Client(chain.name, chain.ingress, src, destination(topo, chain),
                          tcp_port(chain), topo.server(servers[0]).mac, CONNECTIONS_PER_S))
    return out


def server_addresses6(topo):
    """{server name: [IPv6 addresses]}: its `ip6`, and the destinations of
    the IPv6 TCP chains that end at it alone (a pool's VIP is the lb's)."""
    out = {s.name: [str(ipaddress.IPv6Interface(s.ip6).ip)] for s in topo.servers if s.ip6}
    for chain in topo.chains:
        if carries_tcp(chain) and is_ipv6(chain) and not chain.pool:
            for name in chain_servers(topo, chain):
                out.setdefault(name, []).append(destination(topo, chain))
    return {name: sorted(set(a)) for name, a in out.items()}


def _ipv6_on(intf):
    """Commands that turn IPv6 on for `intf` alone (the emulation turns it
    off everywhere), quiet: no duplicate address detection, no router
    solicitations."""
    return [f"sysctl -qw net.ipv6.conf.{intf}.accept_dad=0",
            f"sysctl -qw net.ipv6.conf.{intf}.router_solicitations=0",
            f"sysctl -qw net.ipv6.conf.{intf}.accept_ra=0",
            f"sysctl -qw net.ipv6.conf.{intf}.disable_ipv6=0"]


def server_setup(intf, addresses6=()):
    """Shell commands that make a server's interface ready (with IPv6
    `addresses6` if it serves IPv6 chains)."""
    cmds = [f"ip link set {intf} mtu {MTU}",
            f"ethtool -K {intf} tx off",
            f"ip neigh replace {GATEWAY_IP} lladdr {GATEWAY_MAC} dev {intf} nud permanent",
            # everything via the gateway, its own subnet too (a NAT's address
            # may lie in it): no neighbor is ever resolved by ARP
            f"ip route flush dev {intf}",
            f"ip route replace default via {GATEWAY_IP} dev {intf} onlink"]
    if addresses6:
        cmds += _ipv6_on(intf)
        cmds += [f"ip -6 addr replace {a}/128 dev {intf} nodad" for a in addresses6]
        cmds += [f"ip -6 neigh replace {GATEWAY6} lladdr {GATEWAY_MAC} dev {intf} nud permanent",
                 f"ip -6 route replace default via {GATEWAY6} dev {intf}"]
    return cmds


def edge_setup(intf, edge_clients):
    """Shell commands that make an edge's interface ready for its clients."""
    cmds = [f"ip link set {intf} mtu {MTU}", f"ethtool -K {intf} tx off"]
    if any(":" in c.dst for c in edge_clients):
        cmds += _ipv6_on(intf)
    for c in edge_clients:
        if ":" in c.dst:
            cmds += [f"ip -6 addr replace {c.src}/128 dev {intf} nodad",
                     f"ip -6 route replace {c.dst}/128 dev {intf} src {c.src}",
                     f"ip -6 neigh replace {c.dst} lladdr {c.dst_mac} dev {intf} nud permanent"]
            continue
        cmds += [f"ip addr replace {c.src}/32 dev {intf}",
                 f"ip route replace {c.dst}/32 dev {intf} src {c.src}",
                 f"ip neigh replace {c.dst} lladdr {c.dst_mac} dev {intf} nud permanent"]
    return cmds
