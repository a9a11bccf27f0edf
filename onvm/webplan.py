"""Which HTTP servers and TCP clients an emulation runs, and how their
namespaces are addressed, decided from the topology alone (pure).

Each application server (`servers:`) serves HTTP on the TCP ports of the
chains that end at it (or at a pool it is in); 80 when none says.  Each
chain that matches TCP and ends at a server or a pool gets one client at
its ingress edge, with its own source address (inside the classifier's
source network when it has one), toward the chain's destination: its
`ipv4_dst` when that is one address (a VIP, or a server's), else the
egress server's address.  Servers reach everything through a gateway
address whose neighbor entry is static (their subnet's route is removed,
so the gateway serves it too); edges have a static neighbor for
each destination of their clients: nobody in the emulation ever needs ARP.

Not here: the processes (web.py), starting them (emulate.py).
"""
from __future__ import annotations

import dataclasses
import ipaddress

from onvm.frames import address

HTTP_PORT = 80
GATEWAY_IP = "169.254.255.254"      # servers' default gateway (static neighbor)
GATEWAY_MAC = "06:00:00:00:00:fe"   # any: the server's switch sets the reply's eth_dst
CLIENT_SRC = "192.0.2.100"          # the first client's address without an ipv4_src
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


def destination(topo, chain):
    """The address a chain's client connects to."""
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
        src_net = dict(chain.match).get("ipv4_src")
        src = address(src_net, len(out), CLIENT_SRC) if src_net else \
            str(ipaddress.IPv4Address(CLIENT_SRC) + i)
        out.append(Client(chain.name, chain.ingress, src, destination(topo, chain),
                          tcp_port(chain), topo.server(servers[0]).mac, CONNECTIONS_PER_S))
    return out


def server_setup(intf):
    """Shell commands that make a server's interface ready."""
    return [f"ip link set {intf} mtu {MTU}",
            f"ethtool -K {intf} tx off",
            f"ip neigh replace {GATEWAY_IP} lladdr {GATEWAY_MAC} dev {intf} nud permanent",
            # everything via the gateway, its own subnet too (a NAT's address
            # may lie in it): no neighbor is ever resolved by ARP
            f"ip route flush dev {intf}",
            f"ip route replace default via {GATEWAY_IP} dev {intf} onlink"]


def edge_setup(intf, edge_clients):
    """Shell commands that make an edge's interface ready for its clients."""
    cmds = [f"ip link set {intf} mtu {MTU}", f"ethtool -K {intf} tx off"]
    for c in edge_clients:
        cmds += [f"ip addr replace {c.src}/32 dev {intf}",
                 f"ip route replace {c.dst}/32 dev {intf} src {c.src}",
                 f"ip neigh replace {c.dst} lladdr {c.dst_mac} dev {intf} nud permanent"]
    return cmds
