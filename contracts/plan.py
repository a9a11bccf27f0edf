"""A host's forwarding plan: what the controller writes to `/onvm/plan/<host>`
and what `onvm agent --plan FILE` reads, checked before anything is applied.

A plan is JSON:

    {
      "host": "h1", "generation": 7, "node_label": 16,
      "mac": "02:00:00:00:00:01",
      "instances": [{"id": 1, "nf": "firewall", "mode": "inline",
                     "config": {"rules": "rules/fw.rules"}}],
      "classifiers": [{"spi": 16, "match": {"ipv4_dst": "10.0.1.0/24",
                                            "ip_proto": 6, "tcp_dst": 80}}],
      "hops": [
        {"spi": 16, "si": 255, "local": 1},
        {"spi": 16, "si": 254, "remote": [{"host": "h2", "label": 17,
                                           "mac": "02:00:00:00:00:02",
                                           "weight": 1.0}]},
        {"spi": 16, "si": 253, "end": {"port": 0, "dst_mac": "02:00:00:00:00:04"}}
      ],
      "uplink": 0
    }

`hops` maps (SPI, SI) to where the packet goes for that hop: a local NF
instance, one of several remote hosts (chosen per new flow by weighted
consistent hashing, then pinned for the flow's life), or the end of the chain
(labels popped, sent out of `port` to `dst_mac`).  An NF that passes a packet
on lowers its SI by one; the next hop is looked up again.  `classifiers` put
untagged packets that arrive at this host into a chain at SI 255.  `uplink`
is the port towards the fabric.

Symmetric chains (a reverse path, SPI `contracts.wire.reverse_spi(S)`, whose
replies must visit the instances their forward flow used) add optional keys:

* `"pinned": [{"host", "label", "mac"}, ...]` on a reverse hop: the hosts
  a flow's forward packets may have come from; the agent's pin for the flow
  picks one (no pin: local or end as the hop says; remote: dropped).
* `"reverse": {"spi": R, "si": SI_R}` on a forward hop: a packet that
  arrives tagged from a host of hop (R, SI_R)'s `pinned` list pins the
  flow's reply at (R, SI_R) to that host.  The plan must have hop (R, SI_R).
* `end.reply: R`: replies of what this end sends enter (R, 255) here.
* `end.servers: [{"ip", "mac"[, "ip6"]}, ...]`: a pool; the destination MAC
  is the one of the server whose `ip` is the packet's IPv4 destination, or
  whose `ip6` (optional) is its IPv6 destination.

Instance `mode` is "inline" (run to completion in the manager's loop) or
"process" (its own DPDK secondary process, `onvm nf run`).

Two optional instance fields carry NF state on a planned move
(controller/moves.py): `"export": true` asks the agent to snapshot the
instance's state (`export_state()`) and publish it with its stats;
`"state": {...}` (or null) is a snapshot the new instance takes
(`import_state()`) before it gets its first packet.  After a host's
loss, `"adopt": {"host": A, "instance": ID}` gives a new instance the
flows of A's lost instance ID: the agent imports A's replica of it from
the store first (contracts.replica).  A host in a `remote`, `pinned` or
`kept` list may then say `"also": [LABEL, ...]`: a flow pinned to a lost
host with that label goes to this host (which adopted its flows) and is
pinned there from then on.

An instance may carry `"cores": N` (the catalog's `cores`, written where
more than 1): the cores placement gave it on this host, which an agent
with worker cores runs on (host_agent.lcores.plan_cores).

Draining (controller/moves.py, `Drains`): an instance moved away or
scaled in stays for a while with `"draining": true` (informational: the
agent runs it as any instance), and a remote hop toward its host lists
that host with `"weight": 0`: flows pinned to it stay on it, no new flow
picks it.  A remote list needs at least one peer with a positive weight.
A local hop of a chain hop that has a draining instance may carry
`"kept": [{"host", "label", "mac"}, ...]`: a flow the agent pinned to one
of these hosts while the hop was remote goes on there (its state is
there); every other flow is local.

This module does not forward anything: `host_agent/tables.py` compiles a
checked plan into flat tables, which `Manager.apply_plan` loads.
"""
from __future__ import annotations

import ipaddress
import json
import math

from contracts.model import FIRST_SPI, MAX_LABEL
from contracts.wire import ETH_IPV4, ETH_IPV6
from contracts.validate import (MAC_RE, Errors, ValidationError,  # noqa: F401  (MAC_RE re-exported)
                                check_mac, key_path)

MATCH_FIELDS = {
    "eth_type": int, "ipv4_src": str, "ipv4_dst": str, "ipv6_src": str, "ipv6_dst": str,
    "ip_proto": int, "tcp_src": int, "tcp_dst": int, "udp_src": int, "udp_dst": int,
}


def match_eth_type(match):
    """The EtherType a chain match classifies: IPv6 when it names an IPv6
    address or eth_type 0x86dd, else IPv4 (a match with no address, such as
    `{tcp_dst: 80}`, classifies IPv4 only)."""
    if match.get("eth_type") == ETH_IPV6 or any(k.startswith("ipv6_") for k in match):
        return ETH_IPV6
    return ETH_IPV4
MODES = ("inline", "process")


class PlanError(ValidationError):
    """A plan that cannot be applied; `.errors` names every field at fault."""


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _label(errors, value, where, low=FIRST_SPI):
    return errors.check(_is_int(value) and low <= value <= MAX_LABEL, where,
                        f"must be an integer label in {low}..{MAX_LABEL}, not {value!r}")


def _mac(errors, value, where):
    try:
        check_mac(value)
    except ValueError as err:
        errors.add(where, str(err))


def check_match(match, where, errors=None):
    """Check a classifier match (OpenFlow field names), every field.  With
    `errors` (a contracts.validate.Errors) the problems are added there and
    the result says whether there were none; without, they are raised as
    one PlanError and the match is returned."""
    own = errors is None
    errors = Errors(PlanError) if own else errors
    problems = list(match_problems(match))
    for path, message in problems:
        errors.add(key_path(where, *path), message)
    if own:
        errors.raise_if_any()
        return match
    return not problems


def match_problems(match):
    """(key path inside the match, message) of every problem of a match."""
    if not (isinstance(match, dict) and match):
        yield (), "must be a non-empty mapping"
        return
    for key, value in match.items():
        problem = _match_field(key, value)
        if problem:
            yield (key,), problem
    v4 = sorted(k for k in match if k.startswith("ipv4_"))
    v6 = sorted(k for k in match if k.startswith("ipv6_"))
    for key in v6:
        if v4:
            yield (key,), (f"cannot be matched with {', '.join(v4)}: a packet is IPv4 or "
                           f"IPv6 (write one chain for each)")
        elif match.get("eth_type", ETH_IPV6) != ETH_IPV6:
            yield (key,), f"needs eth_type 0x86dd (IPv6), has {match['eth_type']:#x}"
    if v4 and match.get("eth_type", ETH_IPV4) != ETH_IPV4:
        yield (v4[0],), f"needs eth_type 0x0800 (IPv4), has {match['eth_type']:#x}"


def _match_field(key, value):
    if key not in MATCH_FIELDS:
        return f"unknown match field; known: {', '.join(sorted(MATCH_FIELDS))}"
    kind = MATCH_FIELDS[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        return f"must be {kind.__name__}, not {value!r}"
    if key.startswith(("ipv4_", "ipv6_")):
        try:
            (ipaddress.IPv4Network if key.startswith("ipv4_") else ipaddress.IPv6Network)(
                value, strict=False)
        except ValueError as err:
            return str(err)
    elif key == "ip_proto":
        if not 0 <= value <= 255:
            return "must be 0..255"
    elif key != "eth_type" and not 0 <= value <= 65535:
        return "must be 0..65535"
    return None


def _items(errors, plan, key, where, required):
    """The list plan[key], each item an object; non-objects are reported."""
    items = plan.get(key, [] if not required else None)
    if not errors.check(isinstance(items, list), f"{where}.{key}", "must be a list"):
        return []
    out = []
    for i, item in enumerate(items):
        if errors.check(isinstance(item, dict), f"{where}.{key}[{i}]", "must be an object"):
            out.append((i, item))
    return out


def check_plan(plan):
    """Check a plan dict; returns it, or raises PlanError naming every
    field at fault by its key path."""
    errors = Errors(PlanError)
    if not errors.check(isinstance(plan, dict), "plan", "must be a JSON object"):
        errors.raise_if_any()
    missing = [k for k in ("host", "generation", "node_label", "mac", "instances", "hops")
               if not errors.check(k in plan, "plan", f"missing field {k!r}")]
    if "generation" in plan:
        errors.check(_is_int(plan["generation"]) and plan["generation"] >= 0,
                     "plan.generation", "must be a non-negative integer")
    if "node_label" in plan:
        _label(errors, plan["node_label"], "plan.node_label")
    if "mac" in plan:
        _mac(errors, plan["mac"], "plan.mac")
    ids = _check_instances(errors, plan) if "instances" not in missing else set()
    for i, cls in _items(errors, plan, "classifiers", "plan", required=False):
        where = f"plan.classifiers[{i}]"
        _label(errors, cls.get("spi"), f"{where}.spi")
        if check_match(cls.get("match"), f"{where}.match", errors):
            errors.check(match_eth_type(cls["match"]) == ETH_IPV4, f"{where}.match",
                         "a host classifier matches IPv4 only (a chain's IPv6 match "
                         "is classified at its ingress switch)")
    if "hops" not in missing:
        _check_hops(errors, plan, ids)
    errors.raise_if_any()
    return plan


def _check_instances(errors, plan):
    ids = set()
    for i, inst in _items(errors, plan, "instances", "plan", required=True):
        where = f"plan.instances[{i}]"
        iid = inst.get("id")
        if errors.check(_is_int(iid) and 0 < iid < 65535, f"{where}.id",
                        "must be an integer 1..65534"):
            errors.check(iid not in ids, f"{where}.id", f"duplicate id {iid}")
            ids.add(iid)
        errors.check(isinstance(inst.get("nf"), str), f"{where}.nf", "must name an NF type")
        errors.check(inst.get("mode", "inline") in MODES, f"{where}.mode",
                     f"must be one of {MODES}")
        errors.check(isinstance(inst.get("export", False), bool), f"{where}.export",
                     f"must be true or false, not {inst.get('export')!r}")
        errors.check(isinstance(inst.get("state"), (dict, type(None))), f"{where}.state",
                     "must be a JSON object (an NF's exported state) or null, "
                     f"not {type(inst.get('state')).__name__}")
        errors.check(not (inst.get("export") and inst.get("state") is not None), where,
                     "cannot both export state and take imported state")
        if "adopt" in inst:
            _check_adopt(errors, inst, where)
        errors.check(isinstance(inst.get("draining", False), bool), f"{where}.draining",
                     f"must be true or false, not {inst.get('draining')!r}")
        errors.check(_is_int(inst.get("cores", 1)) and inst.get("cores", 1) >= 1,
                     f"{where}.cores", f"must be an integer 1 or more, not {inst.get('cores')!r}")
    return ids


def _check_adopt(errors, inst, where):
    adopt = inst["adopt"]
    if not errors.check(isinstance(adopt, dict), f"{where}.adopt",
                        'must be {"host": NAME, "instance": ID}'):
        return
    errors.check(isinstance(adopt.get("host"), str) and adopt.get("host"),
                 f"{where}.adopt.host", "must name the host whose replica is adopted")
    errors.check(_is_int(adopt.get("instance")) and 0 < adopt["instance"] < 65535,
                 f"{where}.adopt.instance", "must be an instance id 1..65534")
    errors.check("state" not in inst, where, "cannot both adopt a replica and take a "
                                             "moved state")


def _check_hops(errors, plan, ids):
    seen = set()
    hop_keys = {(h["spi"], h["si"]) for h in plan["hops"]
                if isinstance(h, dict) and _is_int(h.get("spi")) and _is_int(h.get("si"))
                } if isinstance(plan["hops"], list) else set()
    for i, hop in _items(errors, plan, "hops", "plan", required=True):
        where = f"plan.hops[{i}]"
        ok = _label(errors, hop.get("spi"), f"{where}.spi")
        ok &= errors.check(_is_int(hop.get("si")) and 1 <= hop["si"] <= 255,
                           f"{where}.si", "must be an integer 1..255")
        if ok:
            key = (hop["spi"], hop["si"])
            errors.check(key not in seen, where,
                         f"duplicate hop for SPI {key[0]} SI {key[1]}")
            seen.add(key)
        kinds = [k for k in ("local", "remote", "end") if k in hop]
        if not errors.check(len(kinds) == 1, where,
                            "needs exactly one of local, remote, end"):
            continue
        if "local" in hop:
            errors.check(hop["local"] in ids, f"{where}.local",
                         f"names instance {hop['local']!r}, which the plan does not run")
        elif "remote" in hop:
            _check_remote(errors, hop["remote"], f"{where}.remote")
        else:
            _check_end(errors, hop["end"], f"{where}.end")
        if "pinned" in hop:
            _check_peers(errors, hop["pinned"], f"{where}.pinned", empty_ok=True,
                         weights=False)
        if "kept" in hop:
            if errors.check("local" in hop, f"{where}.kept", "only a local hop keeps "
                            "flows pinned elsewhere"):
                _check_peers(errors, hop["kept"], f"{where}.kept", empty_ok=True,
                             weights=False)
        if "reverse" in hop:
            _check_reverse(errors, hop["reverse"], f"{where}.reverse", hop_keys)


def _check_remote(errors, remote, where):
    _check_peers(errors, remote, where, empty_ok=False, weights=True)
    weights = [p.get("weight", 1.0) for p in remote if isinstance(p, dict)] \
        if isinstance(remote, list) else []
    if weights and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        errors.check(any(w > 0 for w in weights), where,
                     "needs a peer with a positive weight (weight 0 is a draining "
                     "host: it keeps its pinned flows and takes no new one)")


def _objects(errors, items, where, empty_ok, fields):
    """(key path, item) of each object of the list `items`; a list that is
    not one, empty (unless `empty_ok`) or items that are no object are
    reported."""
    if not errors.check(isinstance(items, list) and (empty_ok or items), where,
                        ("must be a list" if empty_ok else "must be a non-empty list")
                        + f" of objects {fields}"):
        return
    for j, item in enumerate(items):
        if errors.check(isinstance(item, dict), f"{where}[{j}]", f"must be an object {fields}"):
            yield f"{where}[{j}]", item


def _check_peers(errors, peers, where, empty_ok, weights):
    """A list of hosts ({"host", "label", "mac"[, "weight"]}), labels unique."""
    labels, aliases = set(), []
    for pw, peer in _objects(errors, peers, where, empty_ok, "{host, label, mac}"):
        if _label(errors, peer.get("label"), f"{pw}.label"):
            errors.check(peer["label"] not in labels, f"{pw}.label",
                         f"duplicate label {peer['label']}")
            labels.add(peer["label"])
        _mac(errors, peer.get("mac"), f"{pw}.mac")
        also = peer.get("also", [])
        if errors.check(isinstance(also, list), f"{pw}.also",
                        "must be a list of the labels of lost hosts it took flows of"):
            aliases += [(f"{pw}.also[{j}]", alias) for j, alias in enumerate(also)]
        if weights:
            w = peer.get("weight", 1.0)
            errors.check(isinstance(w, (int, float)) and not isinstance(w, bool)
                         and math.isfinite(w) and w >= 0,
                         f"{pw}.weight", "must be a number >= 0 (0: draining)")
    for aw, alias in aliases:       # a lost host's label, listed once, not as a host
        if _label(errors, alias, aw):
            errors.check(alias not in labels, aw, f"duplicate label {alias}")
            labels.add(alias)


def _check_reverse(errors, rev, where, hop_keys):
    if not errors.check(isinstance(rev, dict), where, "must be an object {spi, si}"):
        return
    ok = _label(errors, rev.get("spi"), f"{where}.spi")
    ok &= errors.check(_is_int(rev.get("si")) and 1 <= rev["si"] <= 255,
                       f"{where}.si", f"must be an integer 1..255, not {rev.get('si')!r}")
    if ok:
        errors.check((rev["spi"], rev["si"]) in hop_keys, where,
                     f"names hop SPI {rev['spi']} SI {rev['si']}, which the plan does not have")


def _check_end(errors, end, where):
    if not errors.check(isinstance(end, dict), where, "must be an object"):
        return
    errors.check(_is_int(end.get("port", 0)), f"{where}.port", "must be a port number")
    _mac(errors, end.get("dst_mac"), f"{where}.dst_mac")
    if "reply" in end:
        _label(errors, end["reply"], f"{where}.reply")
    if "servers" in end:
        _check_servers(errors, end["servers"], f"{where}.servers")


def _check_servers(errors, servers, where):
    ips = set()
    for sw, server in _objects(errors, servers, where, False, "{ip, mac[, ip6]}"):
        for key, family in (("ip", ipaddress.IPv4Address), ("ip6", ipaddress.IPv6Address)):
            if key == "ip6" and key not in server:
                continue
            ip = server.get(key)
            try:
                address = family(ip)
            except (ValueError, TypeError):
                errors.add(f"{sw}.{key}", f"must be an {family.__name__[:4]} address, "
                                          f"not {ip!r}")
            else:
                errors.check(address not in ips, f"{sw}.{key}",
                             f"duplicate server address {ip}")
                ips.add(address)
        _mac(errors, server.get("mac"), f"{sw}.mac")


def load_plan(path):
    """Read and check a plan file; errors name the file."""
    try:
        with open(path) as f:
            plan = json.load(f)
    except OSError as err:
        raise PlanError(f"{path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise PlanError(f"{path}:{err.lineno}: {err.msg}") from None
    try:
        return check_plan(plan)
    except PlanError as err:
        raise PlanError([f"{path}: {e}" for e in err.errors]) from None
