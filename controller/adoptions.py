"""Adoptions: after a host's loss, the new instances that take over the
flows of its lost stateful instances from their replicas in the store
(contracts.replica).

    host A lost -> controller.core re-places what A ran
      -> Adoptions.pick     pairs each lost lb, nat or firewall-stateful
                            instance of A with a new instance of the same
                            NF type serving one of its chain hops
      -> natslices          a nat successor keeps the lost one's port slice
                            (`handed`: old key -> new key), so the adopted
                            mappings stay in its range
      -> Adoptions.mark     B's plan gives the new instance
                            "adopt": {"host": A, "instance": ID} until B's
                            agent applied a plan that carried it; and for
                            ALIAS_SECONDS (a pin's idle life), wherever a
                            hop of the adopted chain hops lists B, B says
                            "also": [A's label], so a flow an agent had
                            pinned to A (forward, or its replies) goes to
                            B, and is pinned to B from then on

A lost instance whose hops got no new instance of its type (their
surviving instances took its share) is not adopted: its flows start anew
there, and the log says so.  Only a host's loss adopts: a move carries a
fresh snapshot (controller.moves), a drain keeps the flows where they are.

Plain deciding code over the placement and the store: no Ryu, no
OpenFlow.  Not here: the replicas (host_agent.replicas), the re-placement
(controller.placement).
"""
from __future__ import annotations

import logging

from contracts.replica import REPLICATED_NFS
from contracts.wire import SI_FIRST, reverse_spi
from controller.moves import applied_carrying, plan_instance

log = logging.getLogger("onvm.adoptions")

ALIAS_SECONDS = 300.0   # host_agent.manager's PIN_IDLE_SECONDS: a pin unused longer is gone


def pick(before, after, lost):
    """{new key: old key}: for each replicated instance of a `lost` host in
    placement `before`, the instance of `after` (not in `before`, of the
    same NF type, sharing a chain hop with it) that adopts its flows; each
    new instance adopts at most one."""
    if before is None or after is None:
        return {}
    fresh = [inst for key, inst in sorted(after.instances.items())
             if key not in before.instances]
    out = {}
    for key, old in sorted(before.instances.items()):
        if old.host not in lost or old.nf not in REPLICATED_NFS:
            continue
        hops = set(old.users)
        heir = next((inst for inst in fresh if inst.nf == old.nf
                     and inst.key not in out and hops & set(inst.users)), None)
        if heir is not None:
            out[heir.key] = key
    return out


class Adoptions:
    """The adoptions the plans still carry; see the module docstring."""

    def __init__(self, store):
        self.store = store
        self.pending = {}       # new key -> [old key, generation of the plan carrying it]
        self.handed = {}        # old key -> new key of the last `pick`
        self.aliases = {}       # (lost host, heir host, chain, hop index) -> until (clock)

    def pick(self, before, after, lost, now=0.0):
        """Pair the lost hosts' replicated instances with their heirs in
        `after`; returns {old key: new key} (also kept in `handed`)."""
        if before is None or after is None or not lost:
            self.handed = {}
            return self.handed
        chosen = pick(before, after, lost)
        self.handed = {old: new for new, old in chosen.items()}
        for new, old in sorted(chosen.items()):
            self.pending[new] = [old, None]
            for chain, j in set(before.instances[old].users) & set(after.instances[new].users):
                self.aliases[(old[0], new[0], chain, j)] = now + ALIAS_SECONDS
            log.info("%s#%d of lost host %s: %s#%d on %s adopts its flows from the "
                     "replica in the store", before.instances[old].nf, old[1], old[0],
                     after.instances[new].nf, new[1], new[0])
        for key, old in sorted(before.instances.items()):
            if old.host in lost and old.nf in REPLICATED_NFS and key not in self.handed:
                log.warning("%s#%d of lost host %s: no new %s instance took its chain "
                            "hops; its flows start anew where the fast path sends them",
                            old.nf, old.id, old.host, old.nf)
        return self.handed

    def mark(self, plans, topo=None, now=0.0, alive=()):
        """Add "adopt" to the new instances of `plans` ({host: plan}, about
        to be written) until their host applied a plan carrying it, and the
        heirs' "also" labels (see the module docstring) of the chains of
        `topo` while their lost host is not `alive` again."""
        if topo is not None:
            self._alias(plans, topo, now, alive)
        for new, record in list(self.pending.items()):
            inst = plan_instance(plans.get(new[0]), new[1])
            if inst is None or applied_carrying(self.store, new[0], new[1], "adopt", record):
                if inst is not None:
                    log.info("%s applied plan generation %d: %s#%d runs with the flows "
                             "of %s#%d of %s", new[0], record[1], inst["nf"], new[1],
                             inst["nf"], record[0][1], record[0][0])
                del self.pending[new]
                continue
            inst["adopt"] = {"host": record[0][0], "instance": record[0][1]}
        return plans

    def _alias(self, plans, topo, now, alive):
        for key, until in sorted(self.aliases.items()):
            lost, heir, name, j = key
            chain = next((c for c in topo.chains if c.name == name), None)
            if until <= now or lost in alive or chain is None:
                del self.aliases[key]
                continue
            hops = {(chain.spi, SI_FIRST - j)}
            if chain.symmetric:
                hops.add((reverse_spi(chain.spi), SI_FIRST - (len(chain.nfs) - 1 - j)))
            label = topo.host(lost).label
            for plan in plans.values():
                for hop in plan.get("hops", ()):
                    if (hop["spi"], hop["si"]) not in hops:
                        continue
                    for field in ("remote", "pinned", "kept"):
                        peers = hop.get(field) or ()
                        if any(p["label"] == label or label in p.get("also", ())
                               for p in peers):
                            continue        # A is listed (back), or aliased already
                        for peer in peers:
                            if peer["host"] == heir:
                                peer["also"] = peer.get("also", []) + [label]

    def status(self):
        return [{"host": new[0], "instance": new[1], "from_host": old[0],
                 "from_instance": old[1]} for new, (old, _) in sorted(self.pending.items())]
