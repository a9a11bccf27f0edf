"""`onvm status`: the running cluster as the store sees it, the way
`kubectl get nodes` or `ovs-ofctl dump-flows` show theirs.

Everything comes from the store's keys (DESIGN.md): which controller
leads, each host's registration, the plan generation the controller wrote
and the one the agent applied, each chain as asked for, and the agents'
last published stats.  It works the same on a real cluster and on a running
`onvm emulate` (pass the store URL its log prints).

    hosts   alive (its key exists), plan generation written / applied,
            NF instances, cores, Mpps in, packets dropped by reason
    chains  SPI, declared Mpps, measured Mpps (what its first NF's
            instances take in), its NFs and where each instance runs with
            its rate and drops; a retired chain (deleted with its traffic
            held, `"retired": true` in its /onvm/chains/ record) as RETIRED:
            placed nowhere, its traffic dropped at its ingress

Not here: changing anything (the REST API does), the switches' view
(`ovs-ofctl dump-flows`), the emulation's own traffic counts.
"""
from __future__ import annotations

import json
import time
from typing import Dict

from contracts.store import LEADER
from contracts.wire import SI_FIRST
from controller.chains import is_retired


def _number(value, default=0):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _instances(plan) -> Dict[int, str]:
    return {i.get("id"): i.get("nf") for i in (plan or {}).get("instances", [])
            if isinstance(i, dict)}


def cluster_status(store) -> dict:
    """The cluster's state from `store` (contracts.store) as one JSON-able
    dict: {"leader", "hosts": {...}, "chains": {...}} (module docstring)."""
    leader = store.get(LEADER)
    registered = store.hosts()
    plans = store.plans()
    stats = store.stats()
    chains = store.chains()
    hosts = {}
    for name in sorted(set(registered) | set(plans) | set(stats)):
        info, plan, st = registered.get(name) or {}, plans.get(name), stats.get(name) or {}
        ports = st.get("ports") if isinstance(st.get("ports"), dict) else {}
        drops = st.get("drops") if isinstance(st.get("drops"), dict) else {}
        hosts[name] = {
            "alive": name in registered,
            "generation_written": (plan or {}).get("generation"),
            "generation_applied": store.get_applied(name),
            "instances": len(_instances(plan)),
            "cores": info.get("cores"),
            "mpps_in": round(sum(_number(p.get("rx_mpps")) for p in ports.values()
                                 if isinstance(p, dict)), 4),
            "drops": {r: n for r, n in sorted(drops.items()) if _number(n)},
            "plan_error": st.get("plan_error"),
            # cores more than one of the manager and NF processes poll
            "cores_shared": (st.get("cores") or {}).get("shared") or []
            if isinstance(st.get("cores"), dict) else [],
            "stats_age_s": (round(time.time() - st["time"], 1)
                            if _number(st.get("time"), None) is not None else None),
        }
    out_chains = {}
    for name, chain in sorted(chains.items()):
        spi = chain.get("spi")
        nfs = [{"nf": nf, "instances": []} for nf in chain.get("nfs", [])]
        for host, plan in sorted(plans.items()):
            kinds = _instances(plan)
            host_stats = (stats.get(host) or {}).get("instances") or {}
            for hop in (plan or {}).get("hops", []):
                if hop.get("spi") != spi or "local" not in hop:
                    continue
                j = SI_FIRST - hop.get("si", 0)
                if not 0 <= j < len(nfs):
                    continue
                inst = host_stats.get(str(hop["local"])) or {}
                nfs[j]["instances"].append({
                    "host": host, "id": hop["local"], "nf": kinds.get(hop["local"]),
                    "mpps": _number(inst.get("mpps"), None),
                    "core": inst.get("core"),           # an NF process's core
                    "drops": _number(inst.get("drops"), None)})
        first = nfs[0]["instances"] if nfs else []
        out_chains[name] = {
            "spi": spi, "ingress": chain.get("ingress"), "egress": chain.get("egress"),
            "mpps_declared": chain.get("mpps"),
            "mpps_measured": round(sum(_number(i["mpps"]) for i in first), 4),
            "nfs": nfs, "retired": is_retired(chain)}
    return {"leader": leader.get("name") if isinstance(leader, dict) else None,
            "hosts": hosts, "chains": out_chains}


def _where(instance):
    """h1, or h1:core 3 for an NF process."""
    core = instance.get("core")
    return instance["host"] if core is None else f"{instance['host']}:core {core}"


def render(status) -> str:
    """The status as the tables a person reads."""
    lines = [f"leader: {status['leader'] or 'none (no controller leads)'}", ""]
    lines.append(f"{'HOST':<10} {'ALIVE':<6} {'PLAN':>11} {'INST':>5} {'CORES':>5} "
                 f"{'MPPS IN':>8}  DROPS")
    for name, h in status["hosts"].items():
        plan = f"{h['generation_applied'] if h['generation_applied'] is not None else '-'}/" \
               f"{h['generation_written'] if h['generation_written'] is not None else '-'}"
        drops = ", ".join(f"{r} {n}" for r, n in h["drops"].items()) or "-"
        if h["plan_error"]:
            drops += f"; plan refused: {h['plan_error']}"
        if h.get("cores_shared"):
            drops += f"; cores shared (too few): {','.join(map(str, h['cores_shared']))}"
        lines.append(f"{name:<10} {'yes' if h['alive'] else 'NO':<6} {plan:>11} "
                     f"{h['instances']:>5} {h['cores'] if h['cores'] is not None else '-':>5} "
                     f"{h['mpps_in']:>8.3f}  {drops}")
    lines.append("  (PLAN: generation applied / written)")
    lines.append("")
    lines.append(f"{'CHAIN':<12} {'SPI':>5} {'DECLARED':>9} {'MEASURED':>9}  NFS")
    for name, c in status["chains"].items():
        where = " -> ".join(
            f"{nf['nf']}@{','.join(_where(i) for i in nf['instances']) or 'UNPLACED'}"
            for nf in c["nfs"])
        if c.get("retired"):
            where = f"RETIRED: placed nowhere, its traffic dropped at {c['ingress']}"
        lines.append(f"{name:<12} {c['spi'] if c['spi'] is not None else '-':>5} "
                     f"{_number(c['mpps_declared']):>9.3f} {c['mpps_measured']:>9.3f}  {where}")
    return "\n".join(lines)


def cli_status(args):
    """`onvm status --store URL [--store-ca/cert/key F] [--store-user U
    --store-password-file F] [--json] [--watch [SECONDS]]`."""
    import sys
    from contracts.store import StoreAuth, StoreError, StoreTLS, open_store
    tls = StoreTLS(args.store_ca, args.store_cert, args.store_key)
    auth = StoreAuth(args.store_user, args.store_password_file)
    try:
        store = open_store(args.store, tls=tls if any(tls) else None,
                           auth=auth if any(auth) else None)
    except StoreError as err:
        print(f"onvm status: {err}", file=sys.stderr)
        return 1
    try:
        while True:
            status = cluster_status(store)
            if args.json:
                print(json.dumps(status), flush=True)
            else:
                if args.watch:
                    print("\033[H\033[J", end="")
                print(render(status), flush=True)
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except StoreError as err:
        print(f"onvm status: the store does not answer: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()
