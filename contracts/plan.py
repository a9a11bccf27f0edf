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
instance, one of several remote hosts (chosen per flow by weighted consistent
hashing), or the end of the chain (labels popped, sent out of `port` to
`dst_mac`).  An NF that passes a packet on lowers its SI by one; the next hop
is looked up again.  `classifiers` put untagged packets that arrive at this
host into a chain at SI 255.  `uplink` is the port towards the fabric.

Instance `mode` is "inline" (run to completion in the manager's loop) or
"process" (its own DPDK secondary process, `onvm nf run`).

Two optional instance fields carry NF state on a planned move
(controller/moves.py): `"export": true` asks the agent to snapshot the
instance's state (`export_state()`) and publish it with its stats;
`"state": {...}` (or null) is a snapshot the new instance takes
(`import_state()`) before it gets its first packet.

This module does not forward anything: `Manager.apply_plan` in
host_agent/fastpath.pyx compiles a checked plan into the fast path's tables.
"""
from __future__ import annotations

import ipaddress
import json
import re

from contracts.model import FIRST_SPI, MAX_LABEL

MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
MATCH_FIELDS = {
    "eth_type": int, "ipv4_src": str, "ipv4_dst": str, "ip_proto": int,
    "tcp_src": int, "tcp_dst": int, "udp_src": int, "udp_dst": int,
}
MODES = ("inline", "process")


class PlanError(ValueError):
    """A plan that cannot be applied; the message names the field at fault."""


def _need(cond, where, message):
    if not cond:
        raise PlanError(f"{where}: {message}")


def _label(value, where, low=FIRST_SPI):
    _need(isinstance(value, int) and not isinstance(value, bool)
          and low <= value <= MAX_LABEL, where,
          f"must be an integer label in {low}..{MAX_LABEL}, not {value!r}")


def _mac(value, where):
    _need(isinstance(value, str) and MAC_RE.match(value), where,
          f"must be a MAC address like 02:00:00:00:00:01, not {value!r}")


def check_match(match, where):
    """Check a classifier match (OpenFlow field names); returns it."""
    _need(isinstance(match, dict) and match, where, "must be a non-empty mapping")
    for key, value in match.items():
        _need(key in MATCH_FIELDS, f"{where}.{key}",
              f"unknown match field; known: {', '.join(sorted(MATCH_FIELDS))}")
        kind = MATCH_FIELDS[key]
        _need(isinstance(value, kind) and not isinstance(value, bool),
              f"{where}.{key}", f"must be {kind.__name__}, not {value!r}")
        if key.startswith("ipv4_"):
            try:
                ipaddress.IPv4Network(value, strict=False)
            except ValueError as err:
                raise PlanError(f"{where}.{key}: {err}") from None
        elif key == "ip_proto":
            _need(0 <= value <= 255, f"{where}.{key}", "must be 0..255")
        elif key != "eth_type":
            _need(0 <= value <= 65535, f"{where}.{key}", "must be 0..65535")
    return match


def check_plan(plan):
    """Check a plan dict; returns it, or raises PlanError naming the field."""
    _need(isinstance(plan, dict), "plan", "must be a JSON object")
    for key in ("host", "generation", "node_label", "mac", "instances", "hops"):
        _need(key in plan, "plan", f"missing field {key!r}")
    _need(isinstance(plan["generation"], int) and plan["generation"] >= 0,
          "plan.generation", "must be a non-negative integer")
    _label(plan["node_label"], "plan.node_label")
    _mac(plan["mac"], "plan.mac")
    ids = set()
    for i, inst in enumerate(plan["instances"]):
        where = f"plan.instances[{i}]"
        _need(isinstance(inst, dict), where, "must be an object")
        _need(isinstance(inst.get("id"), int) and 0 < inst["id"] < 65535,
              f"{where}.id", "must be an integer 1..65534")
        _need(inst["id"] not in ids, f"{where}.id", f"duplicate id {inst['id']}")
        ids.add(inst["id"])
        _need(isinstance(inst.get("nf"), str), f"{where}.nf", "must name an NF type")
        _need(inst.get("mode", "inline") in MODES, f"{where}.mode",
              f"must be one of {MODES}")
        _need(isinstance(inst.get("export", False), bool), f"{where}.export",
              f"must be true or false, not {inst.get('export')!r}")
        _need(isinstance(inst.get("state"), (dict, type(None))), f"{where}.state",
              "must be a JSON object (an NF's exported state) or null, "
              f"not {type(inst.get('state')).__name__}")
        _need(not (inst.get("export") and inst.get("state") is not None), where,
              "cannot both export state and take imported state")
    for i, cls in enumerate(plan.get("classifiers", [])):
        where = f"plan.classifiers[{i}]"
        _label(cls.get("spi"), f"{where}.spi")
        check_match(cls.get("match"), f"{where}.match")
    seen = set()
    for i, hop in enumerate(plan["hops"]):
        where = f"plan.hops[{i}]"
        _label(hop.get("spi"), f"{where}.spi")
        _need(isinstance(hop.get("si"), int) and 1 <= hop["si"] <= 255,
              f"{where}.si", "must be an integer 1..255")
        key = (hop["spi"], hop["si"])
        _need(key not in seen, where, f"duplicate hop for SPI {key[0]} SI {key[1]}")
        seen.add(key)
        kinds = [k for k in ("local", "remote", "end") if k in hop]
        _need(len(kinds) == 1, where, "needs exactly one of local, remote, end")
        if "local" in hop:
            _need(hop["local"] in ids, f"{where}.local",
                  f"names instance {hop['local']!r}, which the plan does not run")
        elif "remote" in hop:
            _need(isinstance(hop["remote"], list) and hop["remote"],
                  f"{where}.remote", "must be a non-empty list")
            for j, peer in enumerate(hop["remote"]):
                pw = f"{where}.remote[{j}]"
                _label(peer.get("label"), f"{pw}.label")
                _mac(peer.get("mac"), f"{pw}.mac")
                w = peer.get("weight", 1.0)
                _need(isinstance(w, (int, float)) and w > 0, f"{pw}.weight",
                      "must be a positive number")
        else:
            end = hop["end"]
            _need(isinstance(end, dict), f"{where}.end", "must be an object")
            _need(isinstance(end.get("port", 0), int), f"{where}.end.port",
                  "must be a port number")
            _mac(end.get("dst_mac"), f"{where}.end.dst_mac")
    return plan


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
        raise PlanError(f"{path}: {err}") from None
