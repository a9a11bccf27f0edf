"""The one chain validator: what a chain must be, checked the same way for
a topology file (`controller.topology`, places `FILE:LINE: chain NAME: KEY`)
and for a REST body (`controller.apps.rest_api`, places `chain.KEY`).

Every check reports through `report(path, message)`, `path` being the key
path inside the chain (`("match", "tcp_dst")`, `("nfs", 1)`, `()`), so each
caller puts its own place in front of the same message text:

    t.yaml:16: chain web: ingress: 'h1' is not an edge of topology t; ...
    chain.ingress: 'h1' is not an edge of topology t; ...

Also what a chain's egress may be (a host, an edge, a server, or a list of
servers: a pool, which needs an lb), when it is symmetric (said, or by
default: a stateful NF toward a server or pool; never toward an edge or a
host) and `make_chain`, the one way a checked body becomes a Chain.

Also here, because a REST body is a chain: reading a JSON body, the keys
a body may and must have, and the error a refused request carries
(`RequestError`: HTTP status and every error).

A retired chain (one deleted without releasing its traffic) stays stored
under its key `/onvm/chains/<name>` with `"retired": true` (`RETIRED`,
`is_retired`); the store's field, never a body's (a body that says it is
refused as an unknown field).  It keeps its SPI and its (ingress, match):
`check_clashes` refuses another chain with either, saying it is retired.

Not here: placing chains (controller.placement), storing them
(contracts.store), the HTTP routes (controller.apps.rest_api).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from typing import Callable, Dict, FrozenSet, Iterable, Optional, Tuple

from contracts.model import FIRST_SPI, Chain
from contracts.store import CHAINS
from contracts.wire import ETH_IPV6, MAX_CHAIN_SPI
from contracts.plan import match_eth_type, match_problems
from controller.autoscale import check_policy
from contracts.validate import Errors, ValidationError, already_used, key_path

log = logging.getLogger("onvm.core")

MAX_BODY = 1 << 20
MAX_NFS = 255                  # SIs 255 .. 1: one per NF
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
CHAIN_FIELDS = ("name", "ingress", "egress", "match", "nfs", "mpps", "spi", "symmetric",
                "autoscale")
REQUIRED_FIELDS = CHAIN_FIELDS[:6]
# NF types that keep per-flow state: a chain through one of them toward a
# server is symmetric unless it says otherwise (its replies need the state).
STATEFUL_NFS = frozenset(("firewall-stateful", "nat", "lb", "ids"))
POOL_NF = "lb"                 # what spreads a pool's flows over its servers
# NF types that pass IPv6 packets without acting on them: an IPv6 chain
# cannot hold one (it would be sent around the NF, which fails open).
# (lb balances IPv6 toward a pool whose servers have IPv6 addresses: below.)
IPV4_ONLY_NFS = {"ids": "its rules and streams are IPv4", "nat": "it translates IPv4 addresses"}
# The stored chain's field that marks it retired: deleted, placed nowhere,
# its match still dropped and counted at its ingress (controller.core).
RETIRED = "retired"

Report = Callable[[Tuple, str], None]


class RequestError(ValidationError):
    """A request we refuse: an HTTP status, and every error with its key
    path (`.errors`); `.message` is them all, one a line."""

    def __init__(self, status, errors):
        super().__init__(errors)
        self.status = status
        self.message = str(self)


@dataclasses.dataclass(frozen=True)
class Scope:
    """What a chain may refer to: the topology's edges, hosts and servers
    (a chain ends at any of them; a pool holds servers only) and the NF
    types of its catalog."""
    topology: str
    edges: FrozenSet[str]
    hosts: FrozenSet[str]
    servers: FrozenSet[str]
    nf_types: FrozenSet[str]
    servers_ip6: FrozenSet[str] = frozenset()    # the servers with an IPv6 address

    @classmethod
    def of(cls, topo):
        return cls(topo.name, frozenset(e.name for e in topo.edges),
                   frozenset(h.name for h in topo.hosts),
                   frozenset(s.name for s in topo.servers), frozenset(topo.nfs),
                   frozenset(s.name for s in topo.servers if s.ip6))

    def noun(self, name):
        """What `name` is here: "edge", "host", "server" or None."""
        for noun, names in (("edge", self.edges), ("host", self.hosts),
                            ("server", self.servers)):
            if name in names:
                return noun
        return None


def is_retired(body) -> bool:
    """Whether a stored chain body is a retired chain's."""
    return isinstance(body, dict) and body.get(RETIRED) is True


def _is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def check_fields(body, scope: Scope, report: Report):
    """Each chain field present in `body`, checked on its own (a missing
    field is the caller's to report).  Returns whether all were right."""
    ok = True

    def bad(path, message):
        nonlocal ok
        ok = False
        report(path, message)

    if "name" in body and not (isinstance(body["name"], str) and NAME_RE.match(body["name"])):
        bad(("name",), "must be 1..64 letters, digits, '_', '.', '-', "
                       f"not {body['name']!r}")
    if "ingress" in body and not (isinstance(body["ingress"], str)
                                  and body["ingress"] in scope.edges):
        bad(("ingress",), f"{body['ingress']!r} is not an edge of topology "
                          f"{scope.topology}; traffic enters the fabric only at "
                          f"edges: {', '.join(sorted(scope.edges)) or 'none'}")
    egress_ok = "egress" in body and _check_egress(body["egress"], scope, report)
    nfs_ok = "nfs" in body and _check_nfs(body["nfs"], scope, report)
    ok &= egress_ok == ("egress" in body) and nfs_ok == ("nfs" in body)
    if body.get("symmetric") is not None and not isinstance(body["symmetric"], bool):
        bad(("symmetric",), f"must be true or false, not {body['symmetric']!r}")
    elif egress_ok and nfs_ok:
        ok &= _check_pool_and_symmetry(body, scope, report)
    if "mpps" in body and not (_is_number(body["mpps"]) and body["mpps"] > 0):
        bad(("mpps",), f"must be a number > 0, not {body['mpps']!r}")
    if "match" in body:
        for path, message in match_problems(body["match"]):
            bad(("match", *path), message)
    if body.get("spi") is not None:
        ok &= check_spi_range(body["spi"], report)
    if body.get("autoscale") is not None:
        ok &= check_policy(body["autoscale"], lambda path, message:
                           report(("autoscale", *path), message))
    return ok


def _check_egress(egress, scope, report):
    """A host, an edge or a server; or a list of servers (a pool)."""
    if isinstance(egress, str):
        if scope.noun(egress) is None:
            report(("egress",), f"{egress!r} is not a host, a server or an edge of "
                                f"topology {scope.topology}")
            return False
        return True
    if not (isinstance(egress, list) and egress):
        report(("egress",), f"must be a host, a server or an edge, or a list of "
                            f"servers (a pool), not {egress!r}")
        return False
    ok, seen = True, set()
    for i, name in enumerate(egress):
        if not (isinstance(name, str) and name in scope.servers):
            noun = scope.noun(name) if isinstance(name, str) else None
            what = f"{noun} {name}" if noun else repr(name)
            report(("egress", i), f"{what} is not a server of topology "
                                  f"{scope.topology}; a pool holds servers only")
            ok = False
        elif name in seen:
            report(("egress", i), f"server {name} is in the pool twice")
            ok = False
        seen.add(name)
    return ok


def is_pool(egress):
    return isinstance(egress, list)


def default_symmetric(nfs, egress_is_server):
    """A chain's `symmetric` when it does not say: True when one of its NFs
    keeps per-flow state and it ends at a server or a pool (that answers)."""
    return bool(egress_is_server) and any(nf in STATEFUL_NFS for nf in nfs)


def _check_pool_and_symmetry(body, scope, report):
    """A pool needs an lb; `symmetric` (a boolean by now) is true only
    toward servers (an edge or a host sends no replies back through it)."""
    ok = True
    egress = body["egress"]
    if is_pool(egress) and POOL_NF not in body["nfs"]:
        report(("egress",), f"a pool of servers needs an {POOL_NF} in the chain's "
                            f"nfs to spread flows over its servers")
        ok = False
    noun = "pool" if is_pool(egress) else scope.noun(egress)
    if body.get("symmetric") and noun not in ("pool", "server"):
        report((), f"symmetric needs a server or a pool of servers as egress; "
                   f"{noun} {egress} has no way back")
        ok = False
    if _is_ipv6(body.get("match")):
        for i, nf in enumerate(body["nfs"]):
            if nf in IPV4_ONLY_NFS:
                report(("nfs", i), f"{nf} handles IPv4 only ({IPV4_ONLY_NFS[nf]}): an IPv6 "
                                   f"chain through it would pass its packets untouched")
                ok = False
        if POOL_NF in body["nfs"]:
            ok &= _check_ipv6_pool(egress, scope, report)
    return ok


def _check_ipv6_pool(egress, scope, report):
    """An IPv6 chain through lb ends at a pool whose servers all have an
    IPv6 address (`ip6`): the lb balances over those."""
    if not is_pool(egress):
        report(("egress",), f"an IPv6 chain through {POOL_NF} must end at a pool of servers "
                            f"with ip6 (the {POOL_NF} balances over their IPv6 addresses), "
                            f"not {scope.noun(egress) or 'at'} {egress}")
        return False
    ok = True
    for i, name in enumerate(egress):
        if name in scope.servers and name not in scope.servers_ip6:
            report(("egress", i), f"server {name} has no ip6: an IPv6 chain through "
                                  f"{POOL_NF} needs an IPv6 address for every server of "
                                  f"its pool (give {name} an ip6)")
            ok = False
    return ok


def _is_ipv6(match):
    return isinstance(match, dict) and match_eth_type(match) == ETH_IPV6


def make_chain(body, spi, scope) -> Chain:
    """The Chain of a checked body (file or REST): a pool's first server is
    its `egress`, and `symmetric` takes its default when not given."""
    egress = body["egress"]
    pool = tuple(egress) if is_pool(egress) else ()
    symmetric = body.get("symmetric")
    if symmetric is None:
        symmetric = default_symmetric(body["nfs"], bool(pool) or
                                      scope.noun(egress) == "server")
    return Chain(body["name"], body["ingress"], pool[0] if pool else egress,
                 dict(body["match"]), tuple(body["nfs"]), float(body["mpps"]), spi,
                 symmetric=symmetric, pool=pool,
                 autoscale=dict(body["autoscale"]) if body.get("autoscale") is not None
                 else None)


def _check_nfs(nfs, scope, report):
    if not (isinstance(nfs, list) and nfs and len(nfs) <= MAX_NFS):
        report(("nfs",), f"must be a list of 1..{MAX_NFS} NF types, not {nfs!r}")
        return False
    ok = True
    for i, nf in enumerate(nfs):
        if not (isinstance(nf, str) and nf in scope.nf_types):
            report(("nfs", i), f"NF type {nf!r} is not in the catalog (nfs: "
                               f"{', '.join(sorted(scope.nf_types)) or 'empty'})")
            ok = False
    return ok


def check_spi_range(spi, report):
    if isinstance(spi, int) and not isinstance(spi, bool) and FIRST_SPI <= spi <= MAX_CHAIN_SPI:
        return True
    report(("spi",), f"must be an integer {FIRST_SPI}..{MAX_CHAIN_SPI} (a symmetric "
                     f"chain's replies use SPI + 2^19), not {spi!r}")
    return False


@dataclasses.dataclass(frozen=True)
class Other:
    """A chain already there, as the clash checks see it; `line` where it
    is written, when it comes from a file."""
    name: str
    ingress: str
    match: dict
    spi: int
    line: Optional[int] = None
    retired: bool = False

    @classmethod
    def of(cls, chain: Chain, line=None, retired=False):
        return cls(chain.name, chain.ingress, dict(chain.match), chain.spi, line, retired)

    def said(self):
        """'chain NAME', and how to free what a retired one holds."""
        if not self.retired:
            return f"chain {self.name}"
        return (f"chain {self.name} (retired: its traffic is dropped until released "
                f"with DELETE /onvm/v1/chains/{self.name}?traffic=forward)")


def check_clashes(name, ingress, match, spi, others: Iterable[Other], report: Report):
    """A chain's SPI and its classifier (ingress, match) against the other
    chains: each must be its own.  Returns whether there was no clash."""
    ok = True
    for other in others:
        if other.name == name:
            continue
        if other.spi == spi:
            report(("spi",), already_used(f"SPI {spi}", other.said(), other.line))
            ok = False
        # The ingress switch tells chains apart only by (ingress, match).
        if other.ingress == ingress and other.match == dict(match):
            at = f" (line {other.line})" if other.line else ""
            report(("match",), f"same ingress and match as {other.said()}{at}; "
                               f"the edge switch could not tell them apart")
            ok = False
    return ok


# --- REST bodies --------------------------------------------------------------

def parse_json_body(raw: bytes):
    if len(raw) > MAX_BODY:
        raise RequestError(400, f"body larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise RequestError(400, f"body is not UTF-8: {err}") from None
    except ValueError as err:
        raise RequestError(400, f"body is not JSON: {err}") from None


def check_keys(body, where, known, required, errors=None):
    """A JSON object with only `known` keys and all `required` ones.  With
    `errors` the problems go there (the result: whether there were none);
    without, they are raised at once as a 400 RequestError."""
    own = errors is None
    errors = Errors(lambda errs: RequestError(400, errs)) if own else errors
    before = len(errors)
    if errors.check(isinstance(body, dict), where, f"must be a JSON object, not {body!r}"):
        unknown = sorted(set(body) - set(known))
        errors.check(not unknown, where, f"unknown field(s) {', '.join(unknown)}; "
                                         f"known: {', '.join(known)}")
        missing = [f for f in required if f not in body]
        errors.check(not missing, where, f"missing field(s) {', '.join(missing)}")
    if own:
        errors.raise_if_any()
    return len(errors) == before


def free_spi(used):
    """The lowest SPI no chain uses."""
    spi = FIRST_SPI
    while spi in used:
        spi += 1
    if spi > MAX_CHAIN_SPI:
        raise RequestError(409, "no free SPI left")
    return spi


def chain_from_json(body, topo, others, where="chain", spi=None, retired=()) -> Chain:
    """Check a chain body against topology `topo` and the `others` chains
    (model.Chain, not including this one) and build it; the `retired`
    chains (model.Chain) hold their SPI and match as the others do.

    400 for a malformed body, 409 for a clash with another chain; every
    error of the body is in the one RequestError.  `spi` is the SPI to
    keep when the body names none (a changed chain keeps its SPI);
    without either, the lowest free one is taken."""
    others = list(others)
    held = [Other.of(c) for c in others] + [Other.of(c, retired=True) for c in retired]
    errors = Errors(lambda errs: RequestError(400, errs))

    def report(path, message):
        errors.add(key_path(where, *path), message)

    check_keys(body, where, CHAIN_FIELDS, REQUIRED_FIELDS, errors)
    if isinstance(body, dict):
        check_fields(body, Scope.of(topo), report)
    errors.raise_if_any()
    used = {o.spi for o in held if o.name != body["name"]}
    if body.get("spi") is not None:
        spi = body["spi"]
    elif spi is None or spi in used:
        spi = free_spi(used)
    errors.error_type = lambda errs: RequestError(409, errs)
    check_clashes(body["name"], body["ingress"], body["match"], spi, held, report)
    errors.raise_if_any()
    return make_chain(body, spi, Scope.of(topo))


def chains_from_store(bodies, scope, retired=False) -> Dict[str, Chain]:
    """{name: Chain} of stored chain bodies, in SPI order (`scope`: the
    topology's, for a body stored without "symmetric": its default): the
    retired ones with `retired`, else the others.  Stored chains were
    checked when written; one that is not even well-formed is logged and
    left out (nothing could place it)."""
    chains = {}
    for name, body in bodies.items():
        if is_retired(body) != retired:
            continue
        try:
            chains[name] = make_chain(body, int(body["spi"]), scope)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            log.warning("stored chain %s%s is malformed (%s: %s) and ignored",
                        CHAINS, name, type(err).__name__, err)
    return dict(sorted(chains.items(), key=lambda kv: kv[1].spi))
