"""Generated data centers: fat trees and leaf-spine fabrics, with a realistic
NF catalog and, on request, many service chains that fit in the cluster.

Everything here is deterministic (the same arguments give the same file)
and valid by construction; tests still run each result through
`controller.topology` to prove it.  This module only describes fabrics: it
does not place chains (`controller.placement`) or emulate them.

Numbering, so that a person can read a dump:
  * dpid 0x1000000+i for core and spine switches, 0x2000000+i for leaves,
    0x200PPJJ for aggregation and 0x300PPJJ for top-of-rack switches (fat
    tree; PP the pod from 0, JJ the switch from 1);
  * host n (1-based) has MAC 02:00:00 followed by n in three octets;
  * fat-tree host IPs are 10.pod.tor.(2+i)/8, leaf-spine ones
    10.(leaf>>8).(leaf&255).(1+i)/8: one subnet, so traffic in no chain
    needs no router;
  * on a switch, host ports come first, then uplinks, then edges.
"""
from __future__ import annotations

import ipaddress
import random
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from contracts.model import (FIRST_NODE_LABEL, FIRST_SPI, Chain, Edge, Host,
                              Link, NFType, Switch, Topology)
from controller import natslices
from controller.topology import dump_topology, library_config

# The config each NF type needs to start, by its name in the shipped rule
# library (controller.topology.RULE_LIBRARY): `onvm topo gen` writes YAML to
# stdout and cannot write per-topology files, so generated catalogs name
# generic ones.  They fit every generated chain: the firewall allows what the
# classifiers below send plus ICMP, the ids holds web signatures, nat knows
# 10.0.0.0/8 as inside, and the lb's VIP is an address no generated chain
# sends to, so it passes each chain's packets to its egress host unchanged
# (generic-lb.yaml explains).  A file of the same name next to the topology
# file overrides the library's.
GENERIC_CONFIGS: Dict[str, str] = {
    "firewall": "generic-fw.rules",
    "ids": "generic-ids.rules",
    "lb": "generic-lb.yaml",
    "nat": "nat.yaml",
    "ratelimit": "ratelimit.yaml",
    "ddos": "ddos.yaml",
}
# nat.yaml cuts its port range into natslices.DEFAULT_SLICES slices, one per
# nat instance; chains that need more nat instances get this one instead.
MANY_NATS = ("nat.many.yaml", 512)

# Per instance: cores taken and Mpps served, 64-byte packets, order of
# magnitude of published DPDK NFs (an IDS with pattern matching is the slow
# one, a plain forwarder the fast one).
def _nf(name: str, cores: int, mpps: float) -> NFType:
    config = GENERIC_CONFIGS.get(name)
    return NFType(name, cores, mpps, config and library_config(config))


CATALOG: Dict[str, NFType] = {t.name: t for t in (
    _nf("firewall", 1, 8.0),
    _nf("ids", 2, 3.0),
    _nf("lb", 1, 10.0),
    _nf("nat", 1, 8.0),
    _nf("ratelimit", 1, 12.0),
    _nf("ddos", 1, 6.0),
    _nf("monitor", 1, 14.0),
    _nf("forward", 1, 20.0),
)}

# Chains towards a host: (name, NFs, IP protocol, destination port).
HOST_CHAINS: Tuple[Tuple[str, Tuple[str, ...], int, int], ...] = (
    ("web", ("firewall", "ids", "lb"), 6, 80),
    ("tls", ("firewall", "lb"), 6, 443),
    ("api", ("ddos", "firewall", "ratelimit", "lb"), 6, 8080),
    ("dns", ("ddos", "monitor", "forward"), 17, 53),
    ("video", ("ratelimit", "monitor"), 17, 5004),
    ("vpn", ("firewall", "nat", "monitor"), 17, 1194),
    ("mail", ("firewall", "ids"), 6, 25),
)
# Traffic that crosses the data center from one edge to another.
TRANSIT_NFS = ("ddos", "nat", "monitor")
TRANSIT_BASE = ipaddress.IPv4Address("198.18.0.0")   # RFC 2544 test range
HIGH_PORT = 20000

# Chains get rates that need at most this share of all host cores (counted
# as the validator does), so placement has room to choose.
LOAD = 0.4
DEFAULT_HOST_CORES = 4


def _mac(n: int) -> str:
    return "02:00:00:{:02x}:{:02x}:{:02x}".format(
        (n >> 16) & 255, (n >> 8) & 255, n & 255)


def _host(n: int, switch: str, port: int, ip: str, cores: int) -> Host:
    """Host n, 1-based; its label is the default for its position."""
    return Host(f"h{n}", switch, port, _mac(n), ip, cores,
                FIRST_NODE_LABEL + n - 1)


def fat_tree(k: int, chains: Optional[int] = None,
             host_cores: int = DEFAULT_HOST_CORES) -> Topology:
    """The k-ary fat tree (Al-Fares et al.): k pods of k/2 top-of-rack and
    k/2 aggregation switches, (k/2)^2 cores, k^3/4 hosts."""
    if k < 2 or k % 2 or k > 64:
        raise ValueError(f"fat tree: k must be an even number 2..64, not {k}")
    half = k // 2
    cores = [Switch(f"core{c + 1}", (1 << 24) | (c + 1)) for c in range(half * half)]
    switches: List[Switch] = list(cores)
    hosts: List[Host] = []
    links: List[Link] = []
    for pod in range(k):
        aggs = [Switch(f"pod{pod + 1}-agg{j + 1}", (2 << 24) | (pod << 8) | (j + 1))
                for j in range(half)]
        tors = [Switch(f"pod{pod + 1}-tor{j + 1}", (3 << 24) | (pod << 8) | (j + 1))
                for j in range(half)]
        switches += aggs + tors
        for t, tor in enumerate(tors):
            for h in range(half):
                hosts.append(_host(len(hosts) + 1, tor.name, h + 1,
                                   f"10.{pod}.{t}.{h + 2}/8", host_cores))
            links += [Link(tor.name, half + 1 + a, agg.name, t + 1, 10.0)
                      for a, agg in enumerate(aggs)]
        for a, agg in enumerate(aggs):
            links += [Link(agg.name, half + 1 + c, cores[a * half + c].name,
                           pod + 1, 10.0) for c in range(half)]
    edges = [Edge(name, core.name, k + 1)
             for name, core in zip(("internet", "wan"), cores)]
    return _finish(f"fat-tree-k{k}", switches, hosts, links, edges, chains)


def leaf_spine(spines: int, leaves: int, hosts_per_leaf: int,
               chains: Optional[int] = None,
               host_cores: int = DEFAULT_HOST_CORES) -> Topology:
    """Every leaf linked to every spine; hosts on leaves, edges on spines."""
    for what, value, top in (("spines", spines, 255), ("leaves", leaves, 4095),
                             ("hosts per leaf", hosts_per_leaf, 253)):
        if not 1 <= value <= top:
            raise ValueError(f"leaf-spine: {what} must be 1..{top}, not {value}")
    spine_sw = [Switch(f"spine{s + 1}", (1 << 24) | (s + 1)) for s in range(spines)]
    leaf_sw = [Switch(f"leaf{l + 1}", (2 << 24) | (l + 1)) for l in range(leaves)]
    hosts: List[Host] = []
    links: List[Link] = []
    for l, leaf in enumerate(leaf_sw):
        n = l + 1
        for h in range(hosts_per_leaf):
            hosts.append(_host(len(hosts) + 1, leaf.name, h + 1,
                               f"10.{n >> 8}.{n & 255}.{h + 1}/8", host_cores))
        links += [Link(leaf.name, hosts_per_leaf + 1 + s, spine.name, l + 1, 40.0)
                  for s, spine in enumerate(spine_sw)]
    edges = [Edge(name, spine.name, leaves + 1)
             for name, spine in zip(("internet", "wan"), spine_sw)]
    return _finish(f"leaf-spine-{spines}x{leaves}", spine_sw + leaf_sw, hosts,
                   links, edges, chains)


def _finish(name, switches, hosts, links, edges, n_chains) -> Topology:
    chains = _chains(hosts, edges, n_chains or 0)
    return Topology(name, tuple(switches), tuple(hosts), tuple(links),
                    tuple(edges), _catalog(chains), tuple(chains),
                    source=f"<generated {name}>")


def _catalog(chains):
    """CATALOG, with a nat config of enough port slices for the nat
    instances `chains` need (`onvm topo validate` checks that).  The
    placement puts instances near their chains rather than filling each,
    so it may make up to one instance per chain through nat (more for a
    chain over one instance's rate): the larger config is taken as soon as
    that many could exceed the default slices."""
    catalog = dict(CATALOG)
    nat = catalog[natslices.NAT]
    through = [c for c in chains for nf in c.nfs if nf == nat.name]
    need = natslices.instances_needed(sum(c.mpps for c in through), nat.mpps)
    most = sum(natslices.instances_needed(c.mpps, nat.mpps) for c in through)
    if most > natslices.DEFAULT_SLICES:
        config, slices = MANY_NATS
        if need > slices:
            raise ValueError(f"the chains need {need} nat instances; {config} has "
                             f"port slices for {slices}: ask for fewer chains")
        catalog[nat.name] = NFType(nat.name, nat.cores, nat.mpps, library_config(config))
    return catalog


def _chains(hosts: Sequence[Host], edges: Sequence[Edge], n: int) -> List[Chain]:
    """n chains, spread over hosts and NF sequences, with rates that fit."""
    rng = random.Random(len(hosts) * 100003 + n)
    order = list(range(len(hosts)))
    rng.shuffle(order)   # egress hosts spread over racks, not h1, h2, ...
    shapes = []
    for i in range(n):
        if len(edges) > 1 and i % 10 == 9:
            shapes.append(_transit(i, edges))
        else:
            shapes.append(_to_host(i, hosts[order[i % len(hosts)]], i // len(hosts),
                                   edges))
    weights = [rng.uniform(0.5, 2.0) for _ in range(n)]
    rates = _fit_rates(shapes, weights, sum(h.cores for h in hosts))
    return [Chain(name, ingress, egress, match, nfs, rate, FIRST_SPI + i)
            for i, ((name, ingress, egress, match, nfs), rate)
            in enumerate(zip(shapes, rates))]


def _to_host(i, host, round_, edges):
    """Round 0 uses each service's well-known port; later rounds (more
    chains than hosts) use distinct high ports so classifiers never clash."""
    name, nfs, proto, port = HOST_CHAINS[(i + round_) % len(HOST_CHAINS)]
    if round_:
        port = HIGH_PORT + round_
    l4 = "tcp_dst" if proto == 6 else "udp_dst"
    match = {"ipv4_dst": host.ip.split("/")[0] + "/32", "ip_proto": proto,
             l4: port}
    return (f"{name}{i + 1}", edges[i % len(edges)].name, host.name, match, nfs)


def _transit(i, edges):
    match = {"ipv4_dst": f"{TRANSIT_BASE + i}/32"}
    return (f"transit{i + 1}", edges[1].name, edges[0].name, match, TRANSIT_NFS)


def _cores_needed(shapes, rates) -> int:
    """The validator's lower bound: per NF type, whole instances for the
    summed rate."""
    per_type: Dict[str, float] = {}
    for shape, rate in zip(shapes, rates):
        for nf in shape[4]:
            per_type[nf] = per_type.get(nf, 0.0) + rate
    return sum(natslices.instances_needed(r, CATALOG[nf].mpps) * CATALOG[nf].cores
               for nf, r in per_type.items())


def _fit_rates(shapes, weights, total_cores) -> List[float]:
    """Rates proportional to `weights` whose need is at most LOAD of the
    cores (at least 0.001 Mpps each, rounded so a dump reads well)."""
    if not shapes:
        return []
    per_mpps = [sum(CATALOG[nf].cores / CATALOG[nf].mpps for nf in s[4])
                for s in shapes]
    budget = LOAD * total_cores
    scale = budget / sum(w * c for w, c in zip(weights, per_mpps))
    while True:
        rates = [max(0.001, round(w * scale, 3)) for w in weights]
        needed = _cores_needed(shapes, rates)
        if needed <= budget or scale < 1e-6:
            break
        scale *= 0.9
    if needed > total_cores:
        raise ValueError(f"{len(shapes)} chains need at least {needed} cores "
                         f"even at 0.001 Mpps each; the hosts have "
                         f"{total_cores}: ask for fewer chains or more hosts")
    return rates


def cli_gen(args) -> int:
    """`onvm topo gen fat-tree|leaf-spine ...`: the topology as YAML."""
    try:
        if args.kind == "fat-tree":
            topo = fat_tree(args.k, args.chains)
        else:
            topo = leaf_spine(args.spines, args.leaves, args.hosts_per_leaf,
                              args.chains)
    except ValueError as err:
        print(f"onvm topo gen: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(f"# onvm topo gen {args.kind}: {len(topo.hosts)} hosts, "
                     f"{len(topo.switches)} switches, {len(topo.chains)} chains\n")
    sys.stdout.write(dump_topology(topo))
    return 0
