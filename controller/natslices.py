"""NAT port slices: how the port range of the catalog's `nat` entry is cut
among the cluster's nat instances, and which instance owns which slice.

The catalog's `port_range` [lo, hi] is cut into `slices` equal, disjoint
slices (default DEFAULT_SLICES; the last ports of an uneven cut stay
unused).  Every nat instance of the cluster owns one slice, so no two
instances hand out the same external port and a reply's destination port
names the instance that holds its mapping.

The assignment {(host, instance id): slice} is pure and stable (`assign`):
  * an instance keeps its slice while it lives;
  * a moved instance hands its slice to its successor (`moves`: old key ->
    new key, from the core's move bookkeeping), unless it is still among
    `instances` (draining, controller.moves.Drains): both then run at
    once, so the successor takes a free slice and the old one's slice is
    free again only when its drain ends;
  * a new instance takes the lowest free slice;
  * a leader that starts recovers the assignment from the plans it reads
    back from the store (`from_plans`).

Not here: which instances exist (controller.placement), writing the
slice into plans (controller.plans), checking a topology's range is big
enough (controller.topology calls `check_range` and `instances_needed`).
"""
from __future__ import annotations

import math

# One cut of a range into slices, the NF's and the controller's.
from nfs.configs import nat_slice as slice_range  # noqa: F401  (re-exported)

NAT = "nat"                 # the NF type whose instances own slices
DEFAULT_SLICES = 16
MIN_SLICE_PORTS = 64


class SlicesExhausted(ValueError):
    """More nat instances than slices: the topology's check should have
    refused it (`onvm topo validate`); a REST chain or scale-out can still
    get here."""


def settings(parsed):
    """(port_range, slices) of a checked nat config (nfs.configs.check_config's
    values): how the cluster's range is cut."""
    return parsed["port_range"], parsed.get("slices") or DEFAULT_SLICES


def slice_size(port_range, slices):
    lo, hi = port_range
    return (hi - lo + 1) // slices


def instances_needed(mpps, nf_mpps):
    """The fewest instances that carry `mpps` at `nf_mpps` each (the epsilon
    keeps 3 x 0.1 Mpps from needing a second instance)."""
    return math.ceil(mpps / nf_mpps - 1e-9)


def range_problems(port_range, slices, needed):
    """What is wrong with cutting `port_range` into `slices` for `needed`
    instances (texts, empty when nothing)."""
    out = []
    size = slice_size(port_range, slices)
    if size < MIN_SLICE_PORTS:
        out.append(f"port_range [{port_range[0]}, {port_range[1]}] cut into {slices} "
                   f"slices gives each nat instance {size} ports; a slice needs at "
                   f"least {MIN_SLICE_PORTS} (widen port_range or lower slices)")
    if needed > slices:
        out.append(f"the chains through nat need at least {needed} instances but "
                   f"port_range is cut into only {slices} slices, one per instance "
                   f"(raise slices)")
    return out


def assign(previous, instances, moves=None, slices=DEFAULT_SLICES):
    """{(host, id): slice} for the nat instances `instances` (an iterable of
    (host, id) keys, draining ones included), keeping each one's slice from
    `previous` (the same shape), a moved instance's (`moves`: {old key: new
    key}) passing to its successor when the old one is not in `instances`,
    and giving new instances the lowest free slices in sorted
    key order.  Raises SlicesExhausted when there are more instances than
    slices."""
    wanted = sorted(set(instances))
    previous = dict(previous or {})
    for old, new in (moves or {}).items():
        # A moved instance still draining keeps its slice: its successor
        # runs beside it and takes a free one.
        if old in previous and new not in previous and old not in wanted:
            previous[new] = previous.pop(old)
    out, taken = {}, set()
    for key in wanted:
        n = previous.get(key)
        if n is not None and 0 <= n < slices and n not in taken:
            out[key] = n
            taken.add(n)
    free = (n for n in range(slices) if n not in taken)
    for key in wanted:
        if key in out:
            continue
        n = next(free, None)
        if n is None:
            raise SlicesExhausted(
                f"{len(wanted)} nat instances but the port range has only {slices} "
                f"slices; raise `slices` in the nat config")
        out[key] = n
    return out


def from_plans(plans):
    """{(host, id): slice} read back from host plans ({host: plan dict}, as
    in the store): every nat instance whose config carries a `slice`."""
    out = {}
    for host, plan in (plans or {}).items():
        for inst in (plan or {}).get("instances", ()):
            config = inst.get("config") if isinstance(inst, dict) else None
            if inst.get("nf") == NAT and isinstance(config, dict) \
                    and isinstance(config.get("slice"), int):
                out[(host, inst["id"])] = config["slice"]
    return out
