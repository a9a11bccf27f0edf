"""What an agent puts in the store about its measurements: a small,
bounded summary of its full stats (/onvm/stats/<host>, DESIGN.md), made
of what the controller decides on and `onvm status` shows.

    summary, notes = summarize(agent_stats)          # at most MAX_BYTES of JSON
    if notes: log once (what was left out to keep under the cap)

The summary has the same shape as the full stats, so every reader of
/onvm/stats/ reads it unchanged: "host", "time", "generation",
"plan_error", "processed", "flows", "flow_table_full", "drops" (by
reason), "ports" (per port counters and Mpps), "pins" (scalars) and
per instance "nf", "mode", "rx", "tx", "drops", "ring_full", "queue"
(ring occupancy), "mpps", and "counters" reduced to the NF's numbers
(at most MAX_COUNTERS: numeric scalars, ranges as pairs, one level of
nested counters such as a NAT's per protocol; no rule texts, no per-rule
arrays: those stay on the agent's Prometheus endpoint and in its full
stats).  A
summary still over MAX_BYTES loses its instances' "counters", then its
instances by ascending Mpps, then its ports; `notes` says what went, "summary" in the
value says how much.

A planned move's snapshot (instances[ID]["state"], controller.moves) is
not a measurement: the agent adds it after the cap, only to the
publications made while its plan marks the instance "export".

Not here: publishing it (`host_agent.agent`), how often (the agent's
`publish_interval`), what the controller makes of it (`controller.plans`).
"""
from __future__ import annotations

import json
import numbers

PUBLISH_S = 5.0             # how often an agent puts it (and at once on a change)
MAX_BYTES = 16384           # the hard cap on one host's summary, as JSON
MAX_COUNTERS = 16           # numeric NF counters kept per instance
MAX_NAME = 48               # longest counter or port name kept
NOTE_ROOM = 256             # bytes kept free for "summary" in a summary that was cut
INSTANCE_KEYS = ("nf", "mode", "rx", "tx", "drops", "ring_full", "queue", "mpps",
                 "core")
# "cores": the manager's core, each NF process's, the shared ones (at most
# 64 instances a host: bounded); "workers": each worker's queue, core and
# packets (one per core at most)
HOST_KEYS = ("host", "time", "generation", "plan_error", "processed", "flows",
             "flow_table_full", "cores", "workers")


def _size(value):
    return len(json.dumps(value, sort_keys=True, separators=(",", ":")))


def _number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _scalars(mapping, limit=MAX_COUNTERS, nested=False):
    """The numbers of `mapping`: numeric scalars, pairs of numbers (a
    range), and with `nested` one level of such mappings (a NAT's per
    protocol counters); no bools, texts, or longer lists (per-rule arrays)."""
    out = {}
    for key, value in (mapping or {}).items():
        if len(out) >= limit:
            break
        if len(str(key)) > MAX_NAME:
            continue
        if _number(value):
            out[str(key)] = value
        elif isinstance(value, list) and len(value) <= 2 and all(map(_number, value)):
            out[str(key)] = value
        elif nested and isinstance(value, dict):
            inner = _scalars(value)
            if inner:
                out[str(key)] = inner
    return out


def summarize(stats, max_bytes=MAX_BYTES):
    """(summary, notes): the bounded summary of an agent's full stats
    (`host_agent.agent.Agent.stats()`); `notes` lists what was left out
    to stay under `max_bytes` (empty when nothing was)."""
    out = {k: stats.get(k) for k in HOST_KEYS if k in stats}
    if isinstance(out.get("plan_error"), str):
        out["plan_error"] = out["plan_error"][:512]
    out["drops"] = _scalars(stats.get("drops"), limit=64)
    out["pins"] = _scalars(stats.get("pins"))
    out["ports"] = {str(name)[:MAX_NAME]: _scalars(port)
                    for name, port in (stats.get("ports") or {}).items()}
    instances = {}
    for iid, inst in (stats.get("instances") or {}).items():
        entry = {k: inst[k] for k in INSTANCE_KEYS if k in inst}
        counters = _scalars(inst.get("counters"), nested=True)
        if counters:
            entry["counters"] = counters
        instances[str(iid)] = entry
    out["instances"] = instances
    notes = []
    if _size(out) > max_bytes:
        max_bytes -= NOTE_ROOM      # room for saying what was left out
        for entry in instances.values():
            entry.pop("counters", None)
        notes.append("the instances' NF counters")
    if _size(out) > max_bytes:
        ranked = sorted(instances, key=lambda i: (instances[i].get("mpps") or 0, i))
        dropped = 0
        while ranked and _size(out) > max_bytes:
            del instances[ranked.pop(0)]
            dropped += 1
        notes.append(f"{dropped} of its {dropped + len(instances)} instances "
                     "(the least busy)")
    if _size(out) > max_bytes:
        notes.append(f"its {len(out['ports'])} ports' counters")
        out["ports"] = {}
    if notes:
        out["summary"] = {"max_bytes": max_bytes + NOTE_ROOM, "left_out": notes}
    return out, notes
