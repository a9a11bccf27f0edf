"""State that is not per flow, shared among the limiters that enforce it:
the pure logic of distributed rate limiting and merged count-min
sketches, with no store, no thread and no clock of its own.

One budget over many limiters (Raghavan et al., "Cloud control with
distributed rate limiting", SIGCOMM 2007): each limiter measures its
local demand (packets offered a second, passed or not), shares it, and
takes `budget * local / total` of the budget, after a floor every
limiter keeps so that an idle one can still pass a burst and show its
demand at the next exchange.  While the limiters together ask for less
than the budget, each gets its demand and an even part of what is left
(nobody drops while the chain is under its limit).  The shares sum to
the budget.

Count-min sketches of the same shape add counter by counter: the sum of
the sketches of every instance is the sketch of all their traffic, so a
source spread over instances is counted whole.  Sketches travel sparse:
only the counters worth sending (at or over a cutoff, the biggest first,
at most a limit), which undercounts a source by at most the cutoff per
counter per peer.  They add up only if every sketch hashes a source to
the same counters: the instances of a chain share their ddos config's
secret `seed` (controller.plans).  Blocked sources travel as address text,
IPv4 or IPv6, whole.

The same functions serve two levels (host_agent.sharer): the instances
of an NF on many hosts, exchanging through the store, and the worker
cores of one instance (host_agent.workers), exchanging in process.

Not here: reading or writing the NFs (nfs/ratelimit.pyx, nfs/ddos.pyx
do that on their own tables), the store (host_agent.sharer).
"""
from __future__ import annotations

import ipaddress

FLOOR = 0.1         # of the even split, kept by every limiter however idle
EWMA = 0.5          # weight of the newest demand sample
SPARSE_LIMIT = 256  # counters of one sketch sent at most
PEER_STALE_S = 3.0  # a peer not heard for this long (while we hear others) is gone


def split(budget, demands, floor=FLOOR):
    """The shares of `budget` for limiters of measured `demands` (a
    list).  Under the budget: each its demand and an even part of the
    rest.  Over it: each keeps `floor` of an even split, the rest goes
    by demand.  The shares sum to `budget`."""
    n = len(demands)
    if n == 0:
        return []
    if budget < 0 or any(d < 0 for d in demands):
        raise ValueError(f"split: budget {budget} and demands {demands} must not be negative")
    total = sum(demands)
    if total < budget:
        return [d + (budget - total) / n for d in demands]
    base = budget * floor / n
    rest = budget - base * n
    return [base + rest * d / total for d in demands]


class Demand:
    """Packets a second offered to one limiter, from a counter that only
    grows (passed + dropped), smoothed (EWMA).  `update(count, now)`
    returns the demand; a counter that went back (the NF was made anew)
    starts over."""

    def __init__(self):
        self.count = None
        self.at = None
        self.rate = 0.0

    def update(self, count, now):
        if self.count is not None and count >= self.count and now > self.at:
            sample = (count - self.count) / (now - self.at)
            self.rate = EWMA * sample + (1 - EWMA) * self.rate
        self.count, self.at = count, now
        return self.rate


def add_sparse(sketches):
    """{counter index: count} of sparse sketches ([[index, count], ...]) added."""
    out = {}
    for sketch in sketches:
        for index, count in sketch:
            out[index] = out.get(index, 0) + count
    return out


def sparse(counts, cutoff=1, limit=SPARSE_LIMIT):
    """[[index, count], ...] of {index: count}: the counters at or over
    `cutoff`, biggest first, at most `limit` (index order breaks ties)."""
    kept = sorted(((c, i) for i, c in counts.items() if c >= cutoff), key=lambda x: (-x[0], x[1]))
    return [[i, c] for c, i in kept[:limit]]


def source_text(src):
    """A blocked source as the block lists carry it: the address's text
    ("192.0.2.1", "2001:db8::1"; nfs/srckey.pxd), from that text or
    from the number older agents sent (an IPv4 address's bytes read as a
    little-endian integer); None if it is neither."""
    try:
        if isinstance(src, int) and not isinstance(src, bool):
            return str(ipaddress.IPv4Address(src.to_bytes(4, "little")))
        if isinstance(src, str):
            return str(ipaddress.ip_address(src))
    except (ValueError, OverflowError):
        pass
    return None


def union_blocked(lists):
    """{source text: [seconds_left, reason]} of block lists ([[source,
    seconds_left, reason], ...], sources as `source_text` takes them): a
    source blocked by any is blocked, for the longest time any gives.  An
    entry whose source is no address is left out."""
    out = {}
    for blocked in lists:
        for src, left, reason in blocked:
            src = source_text(src)
            if src is not None and (src not in out or left > out[src][0]):
                out[src] = [left, reason]
    return out


def chain_shares(mine, peers, floor=FLOOR):
    """Per-chain shares of one limiter among its peers.

    `mine` and each of `peers`: {spi: {"budget": B, "demand": D}}, where B
    is that limiter's part of the chain's budget as its config says (the
    plans split a chain's budget among its instances) and D its measured
    demand.  The chain's budget is the sum of its limiters' B; returns
    {spi: (my share, limiters of that chain)}."""
    out = {}
    for spi, me in mine.items():
        others = [p[spi] for p in peers if spi in p]
        budget = me["budget"] + sum(o["budget"] for o in others)
        demands = [me["demand"]] + [o["demand"] for o in others]
        out[spi] = (split(budget, demands, floor)[0], len(demands))
    return out


class Peers:
    """The last value each peer published, with when it was heard (on
    the caller's clock).  `fresh(now)` leaves out peers not heard for
    PEER_STALE_S; a caller that cannot reach the store passes `now` of
    its last exchange, so that nobody ages while nobody can be heard."""

    def __init__(self, stale_s=PEER_STALE_S):
        self.stale_s = stale_s
        self.values = {}        # key -> (value, heard at)

    def heard(self, key, value, now):
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = (value, now)

    def fresh(self, now, prefix=""):
        return {k: v for k, (v, at) in self.values.items()
                if k.startswith(prefix) and now - at <= self.stale_s}
