"""`onvm bench failover`: on a running emulation, fail the busiest NF
host in each of three ways and measure how fast its chains carry traffic
again, and what they lost; with `--connections N`, fail the host of a
stateful NF under N kept TCP connections and count those that went on
(issue 10's state replication: host_agent.replicas, controller.adoptions).

The figures are BENCHMARKS.md's: speed is measured here, never asserted
in tests (tests/test_emulate.py checks that failover happens).

Not here: the emulation (emulate.py), the live view (live.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time

from onvm import netns
from onvm.catalog import runnable_topology
from onvm.emulate import Emulation
from onvm.errors import EmulationError
from onvm.live import stop_on_signals
from onvm.services import wait_for

FAILURES = {
    "host": ("fail_host", "the host fails: agent killed, link down"),
    "crash": ("kill_agent", "the agent crashes: SIGKILL, link up, its lease runs out"),
    "stop": ("stop_agent", "the agent is stopped: SIGTERM, it revokes its lease"),
}


def failover_victim(emu, tcp=False):
    """A host that runs an NF of a chain with packet traffic (a sender and a
    sink; with `tcp`, or of real TCP connections), and those chains; the
    host whose loss moves the most chains, ties broken by name."""
    # A chain whose egress is the failed host loses its sink with it: only
    # chains that can carry traffic again are counted and measured.
    # A chain of real TCP connections (its client at the edge) has no sink
    # counting packets: its loss is not measured here (the demo shows it).
    egress = {c.name: c.egress for c in emu.topo.chains
              if tcp or c.name not in emu.client_plans}
    counts = {}
    for name, hops in emu.placement().items():
        if name not in egress:
            continue
        for _, hosts in hops:
            for h in hosts:
                if (h != egress.get(name) and h not in emu.killed
                        and egress.get(name) not in emu.killed):
                    counts.setdefault(h, set()).add(name)
    if not counts:
        raise EmulationError("no NF runs away from its chain's egress: "
                             "no failover to measure")
    # Prefer a host that is no chain's egress: failing it breaks no sink.
    egresses = set(egress.values())
    host = sorted(counts, key=lambda h: (h in egresses, -len(counts[h]), h))[0]
    return host, sorted(counts[host])


def drain_candidate(emu):
    """An NF host to drain for maintenance that the busiest (the one
    failover_victim would fail) is not, and no chain's egress; None if
    there is none."""
    try:
        busiest, _ = failover_victim(emu, tcp=True)
    except EmulationError:
        return None
    egresses = {c.egress for c in emu.topo.chains}
    hosts = sorted({h for _, hops in emu.placement().items() for _, on in hops for h in on}
                   - egresses - set(emu.killed) - {busiest})
    return hosts[0] if hosts else None


def measure_failover(emu, settle=3.0, timeout=15.0, how="host"):
    """Fail one NF host (`how`: a key of FAILURES) and measure, for the
    chains it served: detection (failure -> a new plan generation in the
    store for a surviving host), recovery (failure -> first packet at the
    egress after the outage) and packets lost.  Raises TimeoutError when
    either does not happen within `timeout` seconds."""
    time.sleep(settle)
    host, chains = failover_victim(emu)
    before_gen = {h: p["generation"] for h, p in emu.store.plans().items()}
    before = {c: (emu.sent(c).get("sent", 0), emu.received(c).get("received", 0))
              for c in chains}
    t_kill = time.time()
    getattr(emu, FAILURES[how][0])(host)

    def replanned():
        plans = emu.store.plans()
        return host not in plans and any(
            p["generation"] != before_gen.get(h) for h, p in plans.items())
    wait_for(replanned, timeout, f"a new plan after {host} failed ({how})", 0.01)
    detect = time.time() - t_kill

    def recovered(chain):
        """Seconds from the kill to the first packet after the outage, once
        traffic flows again (as a 1-tuple: 0.0 is an answer); None while
        it does not."""
        r = emu.received(chain)
        gaps = [g for g in r.get("gaps", []) if g[1] > t_kill]
        if gaps:
            return (gaps[0][1] - t_kill,)
        quiet_since = time.time() - (r.get("last") or 0)
        if time.time() - t_kill > detect + 1.0 and quiet_since < 0.05:
            return (0.0,)       # no outage at all: the chain never stopped
        return None
    recover = {chain: wait_for(lambda: recovered(chain), timeout,
                               f"traffic of {chain} again after {host} failed", 0.02)[0]
               for chain in chains}
    time.sleep(2.0)                 # let the sink count what is in flight
    lost = {}
    for c in chains:
        s0, r0 = before[c]
        s1, r1 = emu.sent(c).get("sent", 0), emu.received(c).get("received", 0)
        lost[c] = max(0, (s1 - s0) - (r1 - r0))
    return {"how": how, "host": host, "chains": chains, "detect_s": round(detect, 3),
            "recover_s": round(max(recover.values()), 3),
            "recover_per_chain_s": {c: round(v, 3) for c, v in recover.items()},
            "lost_packets": sum(lost.values()), "lost_per_chain": lost,
            "pps_per_chain": {c: emu.sent(c).get("pps") for c in chains}}


def measure_state_failover(emu, chain, nf="nat", connections=40, every=0.3,
                           after=5.0, timeout=60.0):
    """Keep `connections` TCP connections open through `chain` (a GET on
    each every `every` s, onvm.web hold), fail the host of its `nf` (power
    lost) once replicas taken after they all opened are in the store, and
    measure what survived: connections kept (none failed, none answered by
    another server, none seen from another NAT address or port) and the
    seconds until every connection made a request again.  Returns a dict;
    raises TimeoutError when the chain does not come back."""
    emu.set_connection_rate(chain, 0)
    read = emu.hold(chain, connections, every=every)
    try:
        wait_for(lambda: read().get("open", 0) == connections, timeout,
                 f"{connections} kept connections open")
        host = _host_of(emu, chain, nf)
        on_host = [t for t, hosts in emu.placement()[chain] if host in hosts]
        opened = time.time()
        ids = [i["id"] for i in emu.store.plans()[host]["instances"]]
        wait_for(lambda: all((emu.store.get_replica(host, i) or {}).get("time", 0) > opened
                             for i in ids), timeout,
                 f"replicas of {host}'s instances taken after the connections opened")
        replicas = {i: emu.store.get_replica(host, i)["entries"] for i in ids}
        before = read()
        t_fail = time.time()
        emu.fail_host(host)
        wait_for(lambda: _host_of(emu, chain, nf) != host, timeout,
                 f"{nf} re-placed away from {host}")
        heir = _host_of(emu, chain, nf)
        wait_for(lambda: read()["requests"] >= before["requests"] + connections
                 or read()["failed"] >= connections, timeout, "requests after the failure")
        again = time.time() - t_fail
        time.sleep(after)
        status = read(stop=True)
    finally:
        read(stop=True)
    broken = status["failed"]
    return {"host": host, "nfs_lost": on_host, "heir": heir, "connections": connections,
            "kept": connections - broken, "kept_pct": round(100.0 * (connections - broken)
                                                            / connections, 2),
            "failed": broken, "server_changed": status["server_changed"],
            "address_changed": status["address_changed"],
            "requests_again_s": round(again, 3), "replica_entries": replicas,
            "requests": status["requests"], "errors": status.get("errors", [])[:5]}


def _host_of(emu, chain, nf):
    hosts = dict(emu.placement()[chain])[nf]
    if len(hosts) != 1:
        raise EmulationError(f"chain {chain} runs {len(hosts)} {nf} instances; "
                             "the stateful failover measures a chain with one")
    return hosts[0]


@contextlib.contextmanager
def bench_emulation(topology):
    """A started Emulation of `topology` for a bench, in a private network
    namespace, its progress on stderr; stopped and its files removed after."""
    netns.enter_private_netns()

    def quiet(*parts, **kwargs):
        print(*parts, **kwargs, file=sys.stderr, flush=True)
    topo_path = runnable_topology(topology, quiet)
    try:
        emu = Emulation(topo_path, say=quiet)
        stop_on_signals(emu)
        try:
            emu.start()
            yield emu, quiet
        finally:
            emu.stop()
    finally:
        os.unlink(topo_path)


def cli_bench_failover(args):
    """`onvm bench failover [--topology FILE] [--connections N] [--json]`."""
    from controller.topology import load_topology
    load_topology(args.topology)
    with bench_emulation(args.topology) as (emu, quiet):
        result = {"topology": emu.topo.name}
        if args.connections:
            chain = next(iter(emu.client_plans), None)
            if chain is None:
                raise EmulationError(f"{args.topology} has no chain of TCP "
                                     "connections (one whose egress is a server)")
            quiet(f"failover: the host of {chain}'s {args.nf} loses power under "
                  f"{args.connections} kept connections")
            result["state"] = measure_state_failover(emu, chain, args.nf, args.connections)
        else:
            # Three failures in turn, each of the then busiest NF host.
            for how in ("host", "stop", "crash"):
                quiet(f"failover: {FAILURES[how][1]}")
                result[how] = measure_failover(emu, how=how)
    if args.json:
        print(json.dumps(result))
        return
    if "state" in result:
        r = result["state"]
        print(f"{r['host']} ({', '.join(r['nfs_lost'])}) lost power: {r['kept']} of "
              f"{r['connections']} kept connections went on ({r['kept_pct']} %), "
              f"through {r['heir']}; every connection made a request again after "
              f"{r['requests_again_s']} s")
        return
    for how in ("host", "stop", "crash"):
        r = result[how]
        print(f"{FAILURES[how][1]}: {r['host']} on {result['topology']}: detected in "
              f"{r['detect_s']} s, traffic again after {r['recover_s']} s, "
              f"{r['lost_packets']} packets lost")
