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
    uplink (port 0) to the egress's MAC (a pool's: `servers`, with their
    `ip6` where they have one; the agent picks the MAC by the packet's
    destination address, IPv4 or IPv6).

Symmetric chains (docs: /work/notes/issue9.md, "Plans").  Chain S's
replies travel SPI R = reverse_spi(S) through the same hosts in reverse:
reverse NF j is forward NF k-1-j, on the same instances, at SI 255 - j;
its end (R, 255 - k) goes to the ingress edge.  The agents learn which
instance a reply belongs to from its forward packets (pins), so:
  * the forward `end` says `"reply": R` (the reply enters at (R, 255) here);
  * a forward local hop of NF i >= 1 says `"reverse": {"spi": R, "si":
    255 - k + i}`: where to pin "the reply goes back to the host this
    packet came from";
  * every reverse hop (R, si) of the 2nd..k-th reverse NF lists in
    `"pinned"` the other hosts running that NF (the hosts a pin may name).

Draining instances (Placement.draining, controller.moves.Drains): moved
away or scaled in, they run on with `"draining": true` and every hop of
the chains they served that names them, but with share 0: a remote hop
toward their host lists it with weight 0 (flows pinned to it stay, no new
flow picks it), the ingress gives their host weight 0, reverse `pinned`
lists name it (replies of its flows come back to it), and their own hops
onward forward as the hop's running instances do.  While a hop drains,
its local entries list the hop's other hosts as `kept`: a host whose hop
turned local (the new instance landed beside the previous NF) still sends
the flows it had pinned to another host there.  A nat that drains
keeps its port slice.

NF configs.  `nat` instances get their own slice of the catalog's port
range (controller.natslices; the caller keeps the assignment stable), and
`lb` instances serving a chain with a pool get the pool's servers as
`backends` (`ip`, and `ip6` where a server has one when the lb serves an
IPv6 chain) and the chain's single
destination address as `vip` (an IPv4 chain's ipv4_dst) or `vip6` (an IPv6
chain's ipv6_dst).  A
`ratelimit` instance's limit of a chain it serves is the chain's budget
times the instance's share of the chain's rate, so the chain's instances
together pass its limit (a static split: it changes when the placement
does).  Every `ddos` instance gets the cluster's sketch `seed`
(`ddos_seed`: the secret its sketch rows are hashed with; the instances
of a chain add their sketches, so one seed for all, unless the catalog's
config names its own).  All are written inline: the catalog file's keys
plus these.

Remote weights.  From host X, the base weight of next-hop host Y is the
flow X -> Y of `controller.placecost.transport` divided by X's share: the
same local-first, cheapest transportation that `placecost.cost` charges, so
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

import functools
import hashlib
import ipaddress
import logging
import math
import secrets

from controller import fabric, natslices, pausing
from controller.moves import DRAINED_NFS
from controller.placecost import places_of, transport
from contracts.plan import check_plan, match_eth_type
from contracts.wire import ETH_IPV6, SI_FIRST, reverse_spi
from nfs import nfconfig
from nfs.configs import check_config, instance_config

UPLINK = 0
LOAD_DAMPING = 0.9
NF_RING = 4096          # packets an NF process's ring holds (host_agent/plantables.pyx)

LOG = logging.getLogger(__name__)


def edge_mac(edge_name):
    """A deterministic unicast, locally administered MAC for an edge
    (first octet 0x06, so never one of the hosts' 02:... addresses)."""
    digest = hashlib.sha256(edge_name.encode()).digest()
    return "06:" + ":".join(f"{b:02x}" for b in digest[:5])


def egress_mac(topo, name):
    """MAC to deliver chain-end traffic to: the host's, the server's, or
    the edge's."""
    for lookup in (topo.host, topo.server):
        try:
            return lookup(name).mac
        except KeyError:
            pass
    return edge_mac(topo.edge(name).name)


def _end(topo, chain):
    """The forward `end` entry of a chain: to its egress; a pool's lists
    its servers (ip, mac) for the agent to pick by destination address."""
    end = {"port": UPLINK, "dst_mac": egress_mac(topo, chain.egress)}
    if chain.pool:
        end["servers"] = [_server_entry(topo.server(name)) for name in chain.pool]
    if chain.symmetric:
        end["reply"] = reverse_spi(chain.spi)
    return end


def _server_entry(server, name=None):
    """A pool server as an end ({ip, mac[, ip6]}) and, given its `name`,
    an lb ({name, ip, [ip6,] mac}) name it."""
    out = {"name": name} if name else {}
    out.update(ip=_address(server.ip), mac=server.mac)
    if server.ip6:
        out["ip6"] = _address(server.ip6)
    return out


def _address(interface):
    """"10.0.1.10/24" -> "10.0.1.10" (and "2001:db8::1/64" -> "2001:db8::1")."""
    return str(ipaddress.ip_interface(interface).ip)


@functools.lru_cache(maxsize=64)
def _catalog_config(nf, path):
    """(keys as written in the catalog's config file, the same checked with
    defaults applied) of an NF type; files are read once."""
    config = instance_config(path)
    return nfconfig.read(nf, config)[0], check_config(nf, config)


def _single_address(match, field):
    """The one address a match's `field` (ipv4_dst, ipv6_dst) names, or None."""
    dst = (match or {}).get(field)
    if dst is None:
        return None
    net = ipaddress.ip_network(dst, strict=False)
    return str(net.network_address) if net.num_addresses == 1 else None


def _lb_config(topo, written, parsed, chains):
    """An lb serving pool `chains`: backends of their pools (unless the
    catalog names backends) and, per family, the VIP their single
    destination address names: `vip` of the IPv4 chains, `vip6` of the
    IPv6 ones (dropped when they name several: the lb then balances every
    new flow of that family)."""
    _values, backends = parsed
    out = dict(written)
    servers = [name for chain in chains for name in chain.pool]
    if not backends:
        six = any(_is_ipv6(chain.match) for chain in chains)   # else no IPv6 tables
        out["backends"] = [{k: v for k, v in _server_entry(topo.server(name), name).items()
                            if six or k != "ip6"} for name in dict.fromkeys(servers)]
    for key, field in (("vip", "ipv4_dst"), ("vip6", "ipv6_dst")):
        family = [c for c in chains if _is_ipv6(c.match) == (key == "vip6")]
        if not family:
            continue
        vips = {_single_address(chain.match, field) for chain in family}
        if len(vips) == 1 and None not in vips:
            out[key] = vips.pop()
            continue
        out.pop(key, None)
        names = ", ".join(c.name for c in family)
        if names not in _WARNED_VIPS:     # plans are made again and again
            _WARNED_VIPS.add(names)
            LOG.warning("lb serving chains %s: they name %s destination addresses, "
                        "so it balances every new flow (no %s)", names,
                        "no single" if vips == {None} else "several", key)
    return out


def _is_ipv6(match):
    return match_eth_type(match or {}) == ETH_IPV6


_WARNED_VIPS = set()


RATELIMIT = "ratelimit"      # the NF type whose chain limits are split among instances
DDOS = "ddos"                # the NF type whose instances share a sketch seed


def new_ddos_seed():
    """A fresh secret for the ddos sketches (nfs/ddos.pyx): 64 random bits."""
    return secrets.randbits(64)


def ddos_seed_from(plans):
    """The ddos sketch seed read back from host plans ({host: plan dict},
    as in the store), as natslices.from_plans does for nat slices: the one
    most of their ddos instances carry (ties: the smallest), None if none
    carries one.  A new leader keeps it, so the instances it places hash
    as the running ones do."""
    counts = {}
    for plan in (plans or {}).values():
        for inst in (plan or {}).get("instances", ()):
            config = inst.get("config") if isinstance(inst, dict) else None
            seed = config.get("seed") if isinstance(config, dict) else None
            if inst.get("nf") == DDOS and isinstance(seed, int) and not isinstance(seed, bool) \
                    and 0 <= seed < 2 ** 64:
                counts[seed] = counts.get(seed, 0) + 1
    if not counts:
        return None
    return min(counts, key=lambda seed: (-counts[seed], seed))


def _cores(topo, inst, entry):
    """The plan instance `entry` with the catalog's `cores` where it is
    more than 1 (the agent's worker cores: host_agent.lcores.plan_cores)."""
    cores = topo.nfs[inst.nf].cores
    return {**entry, "cores": cores} if cores > 1 else entry


def _config(nf_type):
    """The catalog entry's config as a plan instance carries it: what the
    NF's constructor takes (nfs.configs.instance_config, which `onvm topo
    validate` checks the same way).  Paths stay paths: the agent opens them."""
    return instance_config(nf_type.config)


def _instance_config(topo, inst, slices, placed, ddos_seed=None):
    """The plan instance's "config": the catalog's (`_config`), but nat,
    lb, ratelimit and ddos instances get the file's keys inline with their
    own additions (see the module docstring).  `placed`: {name: chain} of
    `topo`'s chains (made once by the caller, not once per instance)."""
    nf_type = topo.nfs[inst.nf]
    if inst.nf == DDOS and ddos_seed is not None:
        written = _catalog_config(inst.nf, nf_type.config)[0] if nf_type.config is not None else {}
        return dict(written, seed=written.get("seed", ddos_seed))
    pools = [placed[name] for name in sorted({c for c, _ in inst.users})
             if name in placed and placed[name].pool]
    if inst.nf == natslices.NAT and inst.key in slices:
        written, parsed = _catalog_config(inst.nf, nf_type.config)
        port_range, count = natslices.settings(parsed)
        return dict(written, port_range=natslices.slice_range(port_range, count,
                                                              slices[inst.key]),
                    slice=slices[inst.key], slices=count)
    if inst.nf == "lb" and pools:
        return _lb_config(topo, *_catalog_config(inst.nf, nf_type.config), pools)
    if inst.nf == RATELIMIT and nf_type.config is not None:
        split = _ratelimit_config(*_catalog_config(inst.nf, nf_type.config), inst, placed)
        if split is not None:
            return split
    return _config(nf_type)


def _ratelimit_config(written, parsed, inst, placed):
    """A ratelimit instance's config when its catalog limits chains it
    serves: each chain's budget split by the instance's share of the
    chain's rate at its hop (the share of the chain's flows the hops before
    send it), so N instances together pass the chain's limit, not N times
    it; None when it limits none of them."""
    split = {}
    for (name, _), mpps in sorted(inst.users.items()):
        chain = placed.get(name)
        limit = parsed["chains"].get(chain.spi) if chain is not None else None
        if limit is None:
            continue
        share = min(1.0, mpps / chain.mpps) if chain.mpps > 0 else 1.0
        split[str(chain.spi)] = {"rate": max(1.0, round(limit["rate"] * share, 3)),
                                 "burst": max(1, round(limit["burst"] * share))}
    if not split:
        return None
    chains = {str(k): v for k, v in (written.get("chains") or {}).items()}
    return dict(written, chains=dict(chains, **split))


def nat_slices(topo, placement, previous=None, moves=None):
    """{(host, id): slice} for the nat instances of `placement`, keeping
    `previous` (natslices.assign); {} when the catalog has no nat."""
    nat = topo.nfs.get(natslices.NAT)
    if nat is None or placement is None:
        return {}
    count = natslices.settings(_catalog_config(nat.name, nat.config)[1])[1]
    keys = [k for k, inst in list(placement.instances.items()) + list(placement.draining.items())
            if inst.nf == natslices.NAT]
    return natslices.assign(previous, keys, moves, count)


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


def _queue_fill(stats):
    """The fullest NF ring of a host's instances, 0..1 (an NF process's
    ring holds NF_RING packets; inline instances have none: 0)."""
    fill = 0.0
    for inst in (stats.get("instances") or {}).values():
        queue = inst.get("queue") if isinstance(inst, dict) else None
        if isinstance(queue, (int, float)) and not isinstance(queue, bool) \
                and math.isfinite(queue):
            fill = max(fill, min(1.0, max(0.0, queue / NF_RING)))
    return fill


def host_load(stats_by_host, topo, placement, warned=None):
    """{host: utilisation 0..1} from the agents' stats ({host: stats dict as
    published under /onvm/stats/}): the Mpps the host's instances report
    over the catalog Mpps of the instances `placement` gives that host, or
    the fill of its fullest NF ring when that is higher (a queue that grows
    is load the Mpps do not show yet: join the shortest queue), clipped to
    0..1.  Hosts without placed instances, or whose stats are missing or
    malformed, get no entry (no damping); each such problem is logged once
    per (host, problem), remembered in `warned` (a set the caller keeps)."""
    warned = set() if warned is None else warned
    capacity = {}
    for inst in (placement.instances.values() if placement else ()):
        capacity[inst.host] = capacity.get(inst.host, 0.0) + topo.nfs[inst.nf].mpps
    load = {}
    for host, stats in sorted((stats_by_host or {}).items()):
        if not capacity.get(host):
            continue
        try:
            load[host] = min(1.0, max(_reported_mpps(stats) / capacity[host],
                                      _queue_fill(stats)))
        except ValueError as err:
            if (host, str(err)) not in warned:
                warned.add((host, str(err)))
                LOG.warning("stats of %s not used for remote weights: %s", host, err)
    return load


def _hop_instances(placement, chain):
    """Per hop: {host: instance id}, draining instances included (share 0);
    a hop has at most one instance a host."""
    return [dict({host: ident for (host, ident), _ in hop}, **placement.draining_at(chain, j))
            for j, hop in enumerate(placement.hops[chain.name])]


def remote_weights(row, share, load):
    """Normalised, load-adjusted weights of a source's flows (see above)."""
    raw = {}
    for host, flow in row.items():
        busy = min(1.0, max(0.0, (load or {}).get(host, 0.0)))
        raw[host] = (flow / share) * (1.0 - LOAD_DAMPING * busy)
    total = sum(raw.values())
    return {h: round(w / total, 6) or 1e-6 for h, w in raw.items()}


def _retiring(placement, chain, j):
    """Hosts where hop j of `chain` has an instance retiring: draining, of
    an NF without flow state (controller.moves.RETIRE_SECONDS).  No hop
    lists them any more; they run on for what is still in flight."""
    if chain.nfs[j] in DRAINED_NFS:
        return set()
    return set(placement.draining_at(chain, j))


def _path_hops(topo, spi, on, shares, end, dist, load, keep=False, retiring=None):
    """{host: {si: hop entry}} of one service path: `on` and `shares` are
    per NF in path order ({host: instance id}, {host: share}), `end` the
    entry after the last NF, `retiring` per NF the hosts whose instance
    retires (listed by no hop before it).  `keep` (the forward path): while
    an instance of a hop drains, the hop's local entries list the hop's
    other hosts as `kept`, so a flow pinned there while the hop was remote
    stays there."""
    out = {}
    k = len(on)
    retiring = retiring or [set()] * k
    for j in range(k):
        si = SI_FIRST - j
        drains = keep and any(host not in shares[j] and host not in retiring[j]
                              for host in on[j])
        for host, ident in on[j].items():
            out.setdefault(host, {})[si] = {"spi": spi, "si": si, "local": ident}
            if drains and len(on[j]) > 1:
                out[host][si]["kept"] = [_host_ref(topo, other) for other in sorted(on[j])
                                         if other != host and other not in retiring[j]]
        if j == k - 1:
            for host in on[j]:
                out[host][si - 1] = {"spi": spi, "si": si - 1, "end": dict(end)}
            continue
        flows = transport(shares[j], shares[j + 1], dist)[1]
        for host in on[j]:
            if host in on[j + 1]:
                continue
            row = {b: f for (a, b), f in flows.items() if a == host and f > 0}
            if host in shares[j]:
                weights = remote_weights(row, shares[j][host], load)
            else:               # draining here: what it still carries goes on as the hop's
                weights = remote_weights(shares[j + 1], sum(shares[j + 1].values()), load)
            for other in on[j + 1]:
                if other in retiring[j + 1]:
                    weights.pop(other, None)    # retiring there: nothing more
                elif other not in shares[j + 1]:
                    weights[other] = 0.0    # draining there: its pinned flows only
            out[host][si - 1] = {"spi": spi, "si": si - 1, "remote": _peers(topo, weights)}
    return out


def _peers(topo, weights):
    return [dict(_host_ref(topo, peer), weight=weight)
            for peer, weight in sorted(weights.items())]


def _host_ref(topo, name):
    h = topo.host(name)
    return {"host": name, "label": h.label, "mac": h.mac}


def _chain_hops(topo, placement, chain, dist, load):
    """{host: [hop entries]} for one chain, its reverse path too when it is
    symmetric (see the module docstring)."""
    on = _hop_instances(placement, chain)
    k = len(chain.nfs)
    shares = [placement.shares(chain.name, j) for j in range(k)]
    retiring = [_retiring(placement, chain, j) for j in range(k)]
    forward = _path_hops(topo, chain.spi, on, shares, _end(topo, chain), dist, load,
                         keep=True, retiring=retiring)
    paths = [forward]
    if chain.symmetric:
        rspi = reverse_spi(chain.spi)
        back = {"port": UPLINK, "dst_mac": edge_mac(chain.ingress)}
        reverse = _path_hops(topo, rspi, on[::-1], shares[::-1], back, dist, load,
                             retiring=retiring[::-1])
        for i in range(1, k):               # forward NF i: pin its sender
            for host in on[i]:
                forward[host][SI_FIRST - i]["reverse"] = {"spi": rspi,
                                                          "si": SI_FIRST - k + i}
        for j in range(1, k):               # reverse NF j = forward NF k-1-j
            for host, hops in reverse.items():
                if SI_FIRST - j in hops:
                    hops[SI_FIRST - j]["pinned"] = [
                        _host_ref(topo, other) for other in sorted(on[k - 1 - j])
                        if other != host]
        paths.append(reverse)
    out = {}
    for path in paths:
        for host, hops in path.items():
            out.setdefault(host, []).extend(hops.values())
    return out


def host_plans(topo, placement, generation, load=None, slices=None, pause=None,
               ddos_seed=None):
    """{host name: plan dict} for every host of `topo`, each passing
    contracts.plan.check_plan.  `load`: optional {host: utilisation 0..1}
    from reported stats, used to lower busy hosts' remote weights.
    `slices`: {(host, id): NAT slice} to keep (the caller's, from
    `nat_slices`); None assigns them afresh.  `ddos_seed`: the sketch seed
    every ddos instance's config gets (the caller keeps it: `new_ddos_seed`,
    `ddos_seed_from`); None gives none (each ddos then draws its own).  `pause` is called every
    pausing.PLAN_CHAINS chains or instances and pausing.PLAN_HOSTS hosts
    (controller.pausing)."""
    chain_done = pausing.every(pausing.PLAN_CHAINS, pause)
    graph = fabric.build_graph(topo)
    table = fabric.DistanceTable(graph, places_of(topo))
    if slices is None:
        slices = nat_slices(topo, placement)
    plans = {h.name: {"host": h.name, "generation": generation, "node_label": h.label,
                      "mac": h.mac, "instances": [], "classifiers": [], "hops": [],
                      "uplink": UPLINK} for h in topo.hosts}
    placed = {chain.name: chain for chain in topo.chains}
    for inst in placement.instances.values():
        plans[inst.host]["instances"].append(_cores(topo, inst, {
            "id": inst.id, "nf": inst.nf, "mode": "inline",
            "config": _instance_config(topo, inst, slices, placed, ddos_seed)}))
        chain_done()
    for inst in placement.draining.values():
        plans[inst.host]["instances"].append(_cores(topo, inst, {
            "id": inst.id, "nf": inst.nf, "mode": "inline", "draining": True,
            "config": _instance_config(topo, inst, slices, placed, ddos_seed)}))
    for chain in topo.chains:
        for host, hops in _chain_hops(topo, placement, chain, table.d, load).items():
            plans[host]["hops"].extend(hops)
        chain_done()
    host_done = pausing.every(pausing.PLAN_HOSTS, pause)
    for plan in plans.values():
        plan["instances"].sort(key=lambda i: i["id"])
        plan["hops"].sort(key=lambda hop: (hop["spi"], -hop["si"]))
        check_plan(plan)
        host_done()
    return plans


def ingress_groups(topo, placement):
    """{chain name: [(host, weight)]}: the hosts running the chain's first
    NF and their shares, which the ingress edge switch picks among per flow
    (controller/flows.py: weighted hash slots, flows pinned by learned rules);
    a host whose first-NF instance drains has weight 0 (pinned flows only)."""
    out = {}
    for chain in topo.chains:
        if not chain.nfs:
            continue
        shares = placement.shares(chain.name, 0)
        retiring = _retiring(placement, chain, 0)
        shares.update({host: 0.0 for host in placement.draining_at(chain, 0)
                       if host not in retiring})
        out[chain.name] = [(host, round(shares[host], 6)) for host in sorted(shares)]
    return out
