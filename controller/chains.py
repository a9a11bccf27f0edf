"""The one chain validator: what a chain must be, checked the same way for
a topology file (`controller.topology`, places `FILE:LINE: chain NAME: KEY`)
and for a REST body (`controller.apps.rest_api`, places `chain.KEY`).

Every check reports through `report(path, message)`, `path` being the key
path inside the chain (`("match", "tcp_dst")`, `("nfs", 1)`, `()`), so each
caller puts its own place in front of the same message text:

    t.yaml:16: chain web: ingress: 'h1' is not an edge of topology t; ...
    chain.ingress: 'h1' is not an edge of topology t; ...

Also here, because a REST body is a chain: reading a JSON body, the keys
a body may and must have, and the error a refused request carries
(`RequestError`: HTTP status and every error).

Not here: placing chains (controller.placement), storing them
(contracts.store), the HTTP routes (controller.apps.rest_api).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Callable, FrozenSet, Iterable, Optional, Tuple

from contracts.model import FIRST_SPI, MAX_LABEL, Chain
from contracts.plan import match_problems
from contracts.validate import Errors, ValidationError, already_used, key_path

MAX_BODY = 1 << 20
MAX_NFS = 255                  # SIs 255 .. 1: one per NF
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
CHAIN_FIELDS = ("name", "ingress", "egress", "match", "nfs", "mpps", "spi")
REQUIRED_FIELDS = CHAIN_FIELDS[:-1]

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
    """What a chain may refer to: the topology's edges, the places a chain
    may end (hosts and edges) and the NF types of its catalog."""
    topology: str
    edges: FrozenSet[str]
    ends: FrozenSet[str]
    nf_types: FrozenSet[str]

    @classmethod
    def of(cls, topo):
        edges = frozenset(e.name for e in topo.edges)
        return cls(topo.name, edges, edges | {h.name for h in topo.hosts},
                   frozenset(topo.nfs))


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
    if "egress" in body and not (isinstance(body["egress"], str)
                                 and body["egress"] in scope.ends):
        bad(("egress",), f"{body['egress']!r} is neither a host nor an edge of "
                         f"topology {scope.topology}")
    if "nfs" in body:
        ok &= _check_nfs(body["nfs"], scope, report)
    if "mpps" in body and not (_is_number(body["mpps"]) and body["mpps"] > 0):
        bad(("mpps",), f"must be a number > 0, not {body['mpps']!r}")
    if "match" in body:
        for path, message in match_problems(body["match"]):
            bad(("match", *path), message)
    if body.get("spi") is not None:
        ok &= check_spi_range(body["spi"], report)
    return ok


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
    if isinstance(spi, int) and not isinstance(spi, bool) and FIRST_SPI <= spi <= MAX_LABEL:
        return True
    report(("spi",), f"must be an integer {FIRST_SPI}..{MAX_LABEL}, not {spi!r}")
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

    @classmethod
    def of(cls, chain: Chain, line=None):
        return cls(chain.name, chain.ingress, dict(chain.match), chain.spi, line)


def check_clashes(name, ingress, match, spi, others: Iterable[Other], report: Report):
    """A chain's SPI and its classifier (ingress, match) against the other
    chains: each must be its own.  Returns whether there was no clash."""
    ok = True
    for other in others:
        if other.name == name:
            continue
        if other.spi == spi:
            report(("spi",), already_used(f"SPI {spi}", f"chain {other.name}", other.line))
            ok = False
        # The ingress switch tells chains apart only by (ingress, match).
        if other.ingress == ingress and other.match == dict(match):
            at = f" (line {other.line})" if other.line else ""
            report(("match",), f"same ingress and match as chain {other.name}{at}; "
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
    if spi > MAX_LABEL:
        raise RequestError(409, "no free SPI left")
    return spi


def chain_from_json(body, topo, others, where="chain", spi=None) -> Chain:
    """Check a chain body against topology `topo` and the `others` chains
    (model.Chain, not including this one) and build it.

    400 for a malformed body, 409 for a clash with another chain; every
    error of the body is in the one RequestError.  `spi` is the SPI to
    keep when the body names none (a changed chain keeps its SPI);
    without either, the lowest free one is taken."""
    others = list(others)
    errors = Errors(lambda errs: RequestError(400, errs))

    def report(path, message):
        errors.add(key_path(where, *path), message)

    check_keys(body, where, CHAIN_FIELDS, REQUIRED_FIELDS, errors)
    if isinstance(body, dict):
        check_fields(body, Scope.of(topo), report)
    errors.raise_if_any()
    if body.get("spi") is not None:
        spi = body["spi"]
    elif spi is None or spi in {c.spi for c in others}:
        spi = free_spi({c.spi for c in others})
    errors.error_type = lambda errs: RequestError(409, errs)
    check_clashes(body["name"], body["ingress"], body["match"], spi,
                  [Other.of(c) for c in others], report)
    errors.raise_if_any()
    return Chain(body["name"], body["ingress"], body["egress"], dict(body["match"]),
                 tuple(body["nfs"]), float(body["mpps"]), spi)
