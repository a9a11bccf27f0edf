"""Takeover: the placement a controller finds in the stored plans when it
gains leadership, which it adopts before it re-places anything.

A standby places in the shadows from what it sees itself (controller.core),
but the leader decided things it never saw: an operator's drain or move
(REST, kept in the leader), its own liveness verdicts, autoscaling, and the
history every re-placement keeps.  Writing the standby's own placement
would move healthy instances back and forth (the chaos suite saw a chain's
first NF moved from h5 back to h6 after `leader_killed`, 19 packets lost).
The plans in the store are what runs, so the new leader starts from them:

    placement, notes = from_plans(topo, plans)   # topo: the chains to place
    core re-places with previous=placement, dead hosts excluded: only what
      ran on a host that is down (or a chain that changed, or no longer
      fits) moves, and the log says why

What a plan tells exactly: which instance (host, id, NF type) serves which
hop of which chain ((SPI, SI) -> "local"), and which run "draining".  The
shares a hop's instances carry are not stored; they are read back from the
remote weights of the hop before it (what placecost.transport gave, before
the load damping of controller.plans reshaped them), the first hop's split
evenly.  A chain not found whole (a hop without an instance, an NF of
another type) is left out: it is placed anew, and a note says so.

Adoptions in flight (`"adopt"` on a plan instance, controller.adoptions)
are read back by `adopting`, so the new leader carries them on until their
host applied them, and the heirs' "also" labels by `aliases`.

Plain code over plan dicts: no store, no Ryu.  Not here: placing
(controller.placement), the plans' format (contracts.plan).
"""
from __future__ import annotations

import logging

from contracts.wire import SI_FIRST, reverse_spi
from controller.placecost import Instance, Placement

log = logging.getLogger("onvm.takeover")

TOL = 1e-9


def _instances(plans):
    """{(host, id): plan instance entry} of every stored plan."""
    return {(host, inst["id"]): inst for host, plan in sorted(plans.items())
            for inst in (plan or {}).get("instances", ())}


def _hop_entries(plans, spi, si):
    """{host: hop entry} of (spi, si) in the stored plans."""
    out = {}
    for host, plan in sorted(plans.items()):
        for hop in (plan or {}).get("hops", ()):
            if hop.get("spi") == spi and hop.get("si") == si:
                out[host] = hop
    return out


def _shares(plans, chain, on, j, before):
    """{host: share} of hop j (0-based) whose serving hosts are `on`, from
    the shares `before` of hop j-1 and its hosts' remote weights; None when
    the weights do not give every host of `on` a part."""
    if j == 0:
        return {host: 1.0 / len(on) for host in on}
    flows = dict.fromkeys(on, 0.0)
    entries = _hop_entries(plans, chain.spi, SI_FIRST - j)
    for host, share in before.items():
        if host in on:
            flows[host] += share                # both hops here: it stays local
            continue
        peers = [p for p in (entries.get(host) or {}).get("remote", ())
                 if p.get("host") in on and p.get("weight", 0) > 0]
        total = sum(p["weight"] for p in peers)
        for p in peers:
            flows[p["host"]] += share * p["weight"] / total
    total = sum(flows.values())
    if total <= TOL or any(f <= TOL for f in flows.values()):
        return None
    return {host: f / total for host, f in flows.items()}


def _chain_hops(plans, instances, chain):
    """([{host: (id, share)} per hop], [(key, hop index)] draining) of
    `chain` in the stored plans, or (None, why) when it is not there whole."""
    hops, draining, before = [], [], None
    for j, nf in enumerate(chain.nfs):
        on = {}
        for host, hop in _hop_entries(plans, chain.spi, SI_FIRST - j).items():
            if "local" not in hop:
                continue
            inst = instances.get((host, hop["local"]))
            if inst is None or inst.get("nf") != nf:
                return None, (f"hop {j + 1} ({nf}) on {host} names instance "
                              f"{hop['local']}, which runs "
                              f"{'nothing' if inst is None else inst.get('nf')}")
            if inst.get("draining"):
                draining.append(((host, hop["local"]), j))
            else:
                on[host] = hop["local"]
        if not on:
            return None, f"hop {j + 1} ({nf}) has no instance serving it"
        shares = _shares(plans, chain, on, j, before)
        if shares is None:
            shares = {host: 1.0 / len(on) for host in on}
        hops.append({host: (on[host], shares[host]) for host in sorted(on)})
        before = shares
    return hops, draining


def from_plans(topo, plans):
    """(Placement or None, [note]) of `topo`'s chains as the stored `plans`
    ({host: plan}) run them; the Placement holds only the chains found
    whole (see the module docstring), and None when there is none."""
    plans = plans or {}
    instances = _instances(plans)
    found, notes = {}, []
    out, drains, hops = {}, {}, {}
    for chain in topo.chains:
        per_hop, draining = _chain_hops(plans, instances, chain)
        if per_hop is None:
            if any(h.get("spi") == chain.spi for p in plans.values() for h in p.get("hops", ())):
                notes.append(f"chain {chain.name}: not adopted ({draining}): placed anew")
            else:
                notes.append(f"chain {chain.name}: in no stored plan: placed anew")
            continue
        found[chain.name] = chain
        hops[chain.name] = []
        for j, hop in enumerate(per_hop):
            row = []
            for host, (ident, share) in hop.items():
                inst = out.setdefault((host, ident), Instance(host, ident, chain.nfs[j]))
                inst.users[(chain.name, j)] = inst.users.get((chain.name, j), 0.0) \
                    + share * chain.mpps
                row.append(((host, ident), share))
            hops[chain.name].append(row)
        for key, j in draining:
            inst = drains.setdefault(key, Instance(key[0], key[1], chain.nfs[j]))
            inst.users[(chain.name, j)] = 0.0
    if not found:
        return None, notes
    placed = topo.with_chains([c for c in topo.chains if c.name in found])
    return Placement(placed, dict(sorted(out.items())), hops,
                     {k: v for k, v in sorted(drains.items()) if k not in out}), notes


def adopting(plans):
    """{(host, id): [(from host, from id), generation]} of the plan
    instances that carry "adopt" (controller.adoptions' `pending`)."""
    out = {}
    for (host, ident), inst in _instances(plans).items():
        adopt = inst.get("adopt")
        if isinstance(adopt, dict) and "host" in adopt and "instance" in adopt:
            out[(host, ident)] = [(adopt["host"], adopt["instance"]),
                                  (plans[host] or {}).get("generation")]
    return out


def describe(placement):
    """One line per chain of `placement`: where its NFs run."""
    if placement is None:
        return []
    return [f"chain {chain.name}: " + "; ".join(
        f"{nf} on " + ", ".join(f"{h}#{i}" for (h, i), _ in hop)
        for nf, hop in zip(chain.nfs, placement.hops[chain.name]))
        for chain in placement.topo.chains]


def adopt(topo, stored, mine):
    """`from_plans(topo, stored)`, with what it found logged, and how it
    differs from `mine` (the placement this controller made standing by)."""
    placement, notes = from_plans(topo, stored)
    theirs, ours = describe(placement), describe(mine)
    generation = max([p.get("generation", 0) for p in stored.values()] or [0])
    if placement is None:
        log.info("taking over: the stored plans (%d hosts) run no chain: placing "
                 "from what I see", len(stored))
        return None
    for note in notes:
        log.warning("taking over: %s", note)
    log.info("taking over the placement the stored plans run (%d plans, generation up "
             "to %d): %s", len(stored), generation, " | ".join(theirs))
    for (host, ident), inst in sorted(_instances(stored).items()):
        if inst.get("export"):
            log.warning("taking over: %s#%d on %s was asked for its state for a move the "
                        "old leader had in progress; the move is dropped (the instance "
                        "stays): request it again", inst.get("nf"), ident, host)
    differ = sorted(set(ours) - set(theirs))
    if differ:
        log.warning("taking over: standing by I had placed otherwise (%s); the stored "
                    "placement is kept: only what runs on a host that is down now "
                    "moves", " | ".join(differ))
    return placement


def aliases(topo, plans, until):
    """{(lost host, heir host, chain, hop index): `until`} of the "also"
    labels the stored plans carry (controller.adoptions' `aliases`): the
    new leader keeps the old one's heirs, not the ones it chose itself
    standing by.  `until`: when they go (when the old leader set them is
    not stored: a whole ALIAS_SECONDS from now)."""
    by_label = {h.label: h.name for h in topo.hosts}
    paths = {}
    for chain in topo.chains:
        k = len(chain.nfs)
        paths[chain.spi] = (chain.name, lambda si: SI_FIRST - si)
        if chain.symmetric:
            paths[reverse_spi(chain.spi)] = (chain.name,
                                             lambda si, k=k: k - 1 - (SI_FIRST - si))
    out = {}
    for plan in plans.values():
        for hop in (plan or {}).get("hops", ()):
            if hop.get("spi") not in paths:
                continue
            name, index = paths[hop["spi"]]
            for field in ("remote", "pinned", "kept"):
                for peer in hop.get(field) or ():
                    for label in peer.get("also", ()):
                        if label in by_label:
                            out[(by_label[label], peer["host"], name, index(hop["si"]))] = until
    return out
