"""Per-host plans (contracts/plan.py's format) and the ingress select
groups, compiled from a Placement.

For chain c with NFs t_1..t_k, NF number j (1-based) runs at SI 256 - j
(255 for the first).  A host needs:
  * (SPI, 256 - j) -> local instance, if it runs an instance of hop j;
  * after hop j, for (SPI, 255 - j): nothing more if it also runs hop j+1
    (the entry above is local: the packet stays on the host, no copy and
    no re-tagging, and a plan's hop cannot be both local and remote);
    else `remote`, the hosts running hop j+1 with weights;
  * after the last hop, (SPI, 255 - k) -> `end`: labels popped, out of the
    uplink (port 0) to the egress's MAC.

Remote weights.  From host X, the base weight of next-hop host Y is the
flow X -> Y of `controller.placement.transport` divided by X's share: the
same local-first, cheapest transportation that `placement.cost` charges, so
near hosts take what their share allows first and farther hosts only the
rest (distance lowers a far host's weight wherever capacity leaves room).
Reported load then shifts traffic away from busy hosts:

    weight(Y) = base(Y) * (1 - 0.9 * min(1, load[Y]))      then normalised

so a host at full utilisation keeps a tenth of its weight (weights must stay
positive; consistent hashing only moves the flows it has to).  With no load
the weights are exactly the placement's shares.

`host_load` turns the agents' raw stats (/onvm/stats/<host>, DESIGN.md) into
that `load`: a host's utilisation is the Mpps its NF instances report over
the Mpps the catalog says the instances placed on it can serve.

Edges have no MAC in the topology; `edge_mac` derives a stable locally
administered one from the name, and the OpenFlow rule builder uses the same
function to deliver chain-end traffic to the edge port.

This module writes no store keys and sends no OpenFlow: it returns dicts.
"""
from __future__ import annotations

import hashlib
import logging
import math

from controller import fabric
from controller.placement import transport
from contracts.plan import check_plan
from contracts.wire import SI_FIRST
from nfs.configs import instance_config

UPLINK = 0
LOAD_DAMPING = 0.9

LOG = logging.getLogger(__name__)


def edge_mac(edge_name):
    """A deterministic unicast, locally administered MAC for an edge
    (first octet 0x06, so never one of the hosts' 02:... addresses)."""
    digest = hashlib.sha256(edge_name.encode()).digest()
    return "06:" + ":".join(f"{b:02x}" for b in digest[:5])


def egress_mac(topo, name):
    """MAC to deliver chain-end traffic to: the host's, or the edge's."""
    try:
        return topo.host(name).mac
    except KeyError:
        edge = topo.edge(name)
        return getattr(edge, "mac", None) or edge_mac(edge.name)


def _config(nf_type):
    """The plan instance's "config" for a catalog entry: what the NF's
    constructor takes (nfs.configs.instance_config, which `onvm topo
    validate` checks the same way).  Paths stay paths: the agent opens them."""
    return instance_config(nf_type.config)


def _reported_mpps(stats):
    """Sum of the Mpps a host's stats report for its instances; raises
    ValueError naming what is missing or malformed."""
    if not isinstance(stats, dict):
        raise ValueError(f"stats are {type(stats).__name__}, not a mapping")
    instances = stats.get("instances")
    if not isinstance(instances, dict):
        raise ValueError("no \"instances\" mapping")
    total = 0.0
    for iid, inst in instances.items():
        mpps = inst.get("mpps") if isinstance(inst, dict) else None
        if isinstance(mpps, bool) or not isinstance(mpps, (int, float)) \
                or not math.isfinite(mpps):
            raise ValueError(f"instance {iid} has no numeric \"mpps\" "
                             f"(got {mpps!r}; agents report it from their second publication)")
        total += max(0.0, float(mpps))
    return total


def host_load(stats_by_host, topo, placement, warned=None):
    """{host: utilisation 0..1} from the agents' stats ({host: stats dict as
    published under /onvm/stats/}): the Mpps the host's instances report
    over the catalog Mpps of the instances `placement` gives that host,
    clipped to 0..1.  Hosts without placed instances, or whose stats are
    missing or malformed, get no entry (no damping); each such problem is
    logged once per (host, problem), remembered in `warned` (a set the
    caller keeps)."""
    warned = set() if warned is None else warned
    capacity = {}
    for inst in (placement.instances.values() if placement else ()):
        capacity[inst.host] = capacity.get(inst.host, 0.0) + topo.nfs[inst.nf].mpps
    load = {}
    for host, stats in sorted((stats_by_host or {}).items()):
        if not capacity.get(host):
            continue
        try:
            load[host] = min(1.0, _reported_mpps(stats) / capacity[host])
        except ValueError as err:
            if (host, str(err)) not in warned:
                warned.add((host, str(err)))
                LOG.warning("stats of %s not used for remote weights: %s", host, err)
    return load


def _hop_instances(placement, chain):
    """Per hop: {host: instance id}; a hop has at most one instance a host."""
    return [{host: ident for (host, ident), _ in hop} for hop in placement.hops[chain.name]]


def _weights(row, share, load):
    """Normalised, load-adjusted weights of a source's flows (see above)."""
    raw = {}
    for host, flow in row.items():
        busy = min(1.0, max(0.0, (load or {}).get(host, 0.0)))
        raw[host] = (flow / share) * (1.0 - LOAD_DAMPING * busy)
    total = sum(raw.values())
    return {h: round(w / total, 6) or 1e-6 for h, w in raw.items()}


def _chain_hops(topo, placement, chain, dist, load):
    """{host: [hop entries]} for one chain."""
    out = {}
    on = _hop_instances(placement, chain)
    k = len(chain.nfs)
    for j in range(k):
        si = SI_FIRST - j
        for host, ident in on[j].items():
            out.setdefault(host, []).append({"spi": chain.spi, "si": si, "local": ident})
        if j == k - 1:
            end = {"port": UPLINK, "dst_mac": egress_mac(topo, chain.egress)}
            for host in on[j]:
                out[host].append({"spi": chain.spi, "si": si - 1, "end": dict(end)})
            continue
        here, there = placement.shares(chain.name, j), placement.shares(chain.name, j + 1)
        flows = transport(here, there, dist)[1]
        for host in on[j]:
            if host in on[j + 1]:
                continue
            row = {b: f for (a, b), f in flows.items() if a == host and f > 0}
            peers = []
            for peer, weight in sorted(_weights(row, here[host], load).items()):
                h = topo.host(peer)
                peers.append({"host": peer, "label": h.label, "mac": h.mac,
                              "weight": weight})
            out[host].append({"spi": chain.spi, "si": si - 1, "remote": peers})
    return out


def host_plans(topo, placement, generation, load=None):
    """{host name: plan dict} for every host of `topo`, each passing
    contracts.plan.check_plan.  `load`: optional {host: utilisation 0..1}
    from reported stats, used to lower busy hosts' remote weights."""
    graph = fabric.build_graph(topo)
    table = fabric.DistanceTable(graph, [h.name for h in topo.hosts] +
                                 [e.name for e in topo.edges])
    plans = {h.name: {"host": h.name, "generation": generation, "node_label": h.label,
                      "mac": h.mac, "instances": [], "classifiers": [], "hops": [],
                      "uplink": UPLINK} for h in topo.hosts}
    for inst in placement.instances.values():
        plans[inst.host]["instances"].append(
            {"id": inst.id, "nf": inst.nf, "mode": "inline",
             "config": _config(topo.nfs[inst.nf])})
    for chain in topo.chains:
        for host, hops in _chain_hops(topo, placement, chain, table.d, load).items():
            plans[host]["hops"].extend(hops)
    for plan in plans.values():
        plan["instances"].sort(key=lambda i: i["id"])
        plan["hops"].sort(key=lambda hop: (hop["spi"], -hop["si"]))
        check_plan(plan)
    return plans


def ingress_groups(topo, placement):
    """{chain name: [(host, weight)]}: the hosts running the chain's first
    NF and their shares, which the ingress edge switch picks among per flow
    (controller/flows.py: weighted hash slots, flows pinned by learned rules)."""
    out = {}
    for chain in topo.chains:
        if not chain.nfs:
            continue
        shares = placement.shares(chain.name, 0)
        out[chain.name] = [(host, round(shares[host], 6)) for host in sorted(shares)]
    return out
