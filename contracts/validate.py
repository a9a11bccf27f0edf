"""The one way onvm-cluster checks what people write: every error is
collected, each with its place, and reported at once.

A place is `FILE:LINE` for files (topologies, rule files, NF config files)
or a key path for JSON (`plan.hops[2].spi`, `chain.match.tcp_dst`).  A
checker adds errors to an `Errors` and calls `raise_if_any()` at the end;
the exception (a `ValidationError` subclass: `PlanError`, `TopologyError`,
`NFConfigError`, ...) carries them all in `.errors`, and its message lists
them one a line, each as `PLACE: message`.

Also here, because three parts check them: `check_mac` (the one MAC check),
`already_used` (the one "X is already used by Y (line N)" text) and
`key_path` (how a key path is written).

Not here: what any particular document must hold.  The plan schema is
`contracts.plan`, topologies `controller.topology`, chains
`controller.chains`, NF configs `nfs.nfconfig`.
"""
from __future__ import annotations

import re

MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class ValidationError(ValueError):
    """Something a person wrote cannot be used.  `.errors` lists every
    problem as `PLACE: message`; str() joins them with newlines."""

    def __init__(self, errors):
        if isinstance(errors, str):
            errors = [errors]
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class Errors:
    """Collects the errors of one document.  `add(place, message)` keeps
    one; `check(cond, place, message)` keeps it unless cond holds and says
    whether it held; `raise_if_any()` raises `error_type` with them all."""

    def __init__(self, error_type=ValidationError):
        self.error_type = error_type
        self.errors: list = []

    def add(self, place, message):
        self.errors.append(f"{place}: {message}" if place else message)

    def check(self, cond, place, message):
        if not cond:
            self.add(place, message)
        return bool(cond)

    def extend(self, errors):
        self.errors.extend(errors)

    def __bool__(self):
        return bool(self.errors)

    def __len__(self):
        return len(self.errors)

    def raise_if_any(self):
        if self.errors:
            raise self.error_type(self.errors)


def key_path(*parts):
    """`a.b[2].c` from ("a", "b", 2, "c"); empty parts are left out."""
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif part not in (None, ""):
            out += f".{part}" if out else str(part)
    return out


def check_mac(value, unicast=False):
    """A MAC address as bytes; raises ValueError with a message that reads
    after the key's name (`mac must be ...`, `plan.mac: must be ...`).
    `unicast`: refuse group addresses (a host's own MAC)."""
    if not isinstance(value, str) or not MAC_RE.match(value):
        raise ValueError(f"must be a MAC address like 02:00:00:00:00:01, not {value!r}")
    raw = bytes(int(p, 16) for p in value.split(":"))
    if unicast and raw[0] & 1:
        raise ValueError(f"{value} is a multicast address; a host needs a unicast "
                         f"one (first octet even)")
    return raw


def already_used(thing, by, line=None):
    """`port s1:1 is already used by host h1 (line 6)`: the one text for a
    value that must be unique; `line` where the first user is, if known."""
    return f"{thing} is already used by {by}" + (f" (line {line})" if line else "")
