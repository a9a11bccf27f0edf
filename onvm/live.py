"""`onvm emulate`: run an emulation for a while, act on its scheduled
events, show what it does every second, and sum it up at the end.

`watch()` is the loop: it returns a `Run` (the final counts, the events
done, what changed over time), which `summary_text()` and
`summary_object()` (the JSON of DESIGN.md's `onvm emulate --json`) turn
into output.  A store that does not answer is shown and waited out: the
view says "store unreachable" and goes on with the counts the senders and
sinks keep, the placement as last seen.  A controller or agent that exits
unasked is an event of the run, not its end.

Not here: starting and stopping the parts (emulate.py), what the options
mean (schedule.py), exit codes (cli.py).
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import signal
import sys
import time

from onvm import netns
from onvm.errors import UsageError
from onvm.emulate import Emulation
from onvm.schedule import act, schedule

TICK_S = 1.0
SETTLE_S = 10.0             # at most this long for in-flight packets at the end


@dataclasses.dataclass
class Run:
    """What one run saw: its emulation, its last status (None if it never
    got one), the events done and when the chains' instance counts changed."""
    emu: Emulation
    final: dict = None
    events: list = dataclasses.field(default_factory=list)
    timeline: dict = dataclasses.field(default_factory=dict)  # chain -> [[t, n]]
    where: dict = dataclasses.field(default_factory=dict)     # chain -> [[t, "nf@h,h -> .."]]
    store_outages: list = dataclasses.field(default_factory=list)  # [[from, to]]
    store_error: str = None     # why the store did not answer, last time
    interrupted: bool = False

    def note(self, t, text):
        self.events.append(f"t={t:.1f} s: {text}")


def stop_on_signals(emu):
    """SIGINT, SIGTERM and SIGHUP end the run as Ctrl-C does (KeyboardInterrupt),
    and the emulation is stopped at exit whatever happens."""
    atexit.register(emu.stop)

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    # SIGINT too: a shell may start us with it ignored (background jobs)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def say(*parts, end="\n", file=None):
    """The command's output: printed and flushed at once (a live view)."""
    print(*parts, end=end, file=file or sys.stdout, flush=True)


def instances(status):
    """{chain: number of NF instances it runs} of a status."""
    return {name: sum(len(hosts) for _, hosts in c["nfs"])
            for name, c in status["chains"].items()}


def watch(emu, seconds, events, out=say, on_start=None):
    """Start `emu`, watch until `seconds` (None: until Ctrl-C), act on the
    events [(at, text, action, arg)] (`on_start(emu)` may add more, once
    all runs), then pause the senders for exact counts and stop.  Errors
    of the emulation propagate (after stop); Ctrl-C ends the run early."""
    run = Run(emu)
    last = None
    try:
        emu.start()
        t0 = emu.started
        pending = sorted(list(events) + (on_start(emu) if on_start else []),
                         key=lambda e: e[0])
        while seconds is None or time.time() - t0 < seconds:
            time.sleep(max(0.0, TICK_S - (time.time() - t0) % TICK_S))
            while pending and time.time() - t0 >= pending[0][0]:
                at, text, action, arg = pending.pop(0)
                out(f">>> t={time.time() - t0:.1f} s: {text}")
                done = act(emu, action, arg)     # what it chose, when it chooses
                run.note(at, f"{text}: {done}" if done else text)
            for text in emu.exits():
                out(f">>> t={time.time() - t0:.1f} s: {text}")
                run.note(time.time() - t0, text.split(";")[0])
            for text in emu.join_news():
                out(f">>> t={time.time() - t0:.1f} s: {text}")
                run.note(time.time() - t0, text)
            last = add_rates(emu.status(), last)
            record(run, last, t0)
            out(render(last, t0))
        run.final = final_status(emu, out)
        record(run, run.final, t0)
    except KeyboardInterrupt:
        out("\ninterrupted; tearing down")
        run.interrupted = True
        run.final = last
    finally:
        emu.stop()
    return run


def record(run, status, t0):
    """Keep what changed: instance counts per chain, store outages."""
    t = round(status["time"] - t0, 1)
    for name, n in instances(status).items():
        line = run.timeline.setdefault(name, [])
        if not line or line[-1][1] != n:
            line.append([t, n])
    for name, c in status["chains"].items():
        text = where_text(c["nfs"])
        line = run.where.setdefault(name, [])
        if c["nfs"] and (not line or line[-1][1] != text):
            line.append([t, text])
    store = status["store"]
    outage = run.store_outages[-1] if run.store_outages else None
    if not store["reachable"]:
        run.store_error = store["error"]
        if outage is None or outage[1] is not None:
            since = round(store["since"] - t0, 1)
            run.store_outages.append([since, None])
            run.note(since, "the store stopped answering")
    elif outage is not None and outage[1] is None:
        outage[1] = t
        run.note(t, f"the store answers again, after {t - outage[0]:.1f} s "
                    f"(last error: {run.store_error})")


def final_status(emu, out, timeout=SETTLE_S):
    """The final counts, exact: pause every sender, then wait until what is
    in flight has arrived and the counts stop moving (or `timeout`)."""
    out("pausing traffic for the final counts...")
    emu.pause_traffic()

    def counts(status):
        return {n: (c["sent"], c["received"], c.get("tcp", {}).get("ok"),
                    c.get("tcp", {}).get("failed"), c.get("tcp", {}).get("started"))
                for n, c in status["chains"].items()}
    deadline = time.time() + timeout
    last = emu.status()
    while time.time() < deadline:
        time.sleep(0.7)
        status = emu.status()
        if counts(status) == counts(last):
            return status
        last = status
    return last


# ---------------------------------------------------------------- display

def host_state(h):
    """"killed" (failed on purpose), "up" (its key in the store) or "down"."""
    if h["killed"]:
        return "killed"
    return "up" if h["alive"] and not h["exited"] else "down"


def render(status, since):
    """The live view: text lines."""
    t = status["time"] - since
    store = status["store"]
    note = "" if store["reachable"] else (
        f" store unreachable for {status['time'] - store['since']:.0f} s "
        "(placement as last seen) ")
    lines = [f"--- t={t:5.1f} s {note}" + "-" * max(4, 50 - len(note)),
             f"{'chain':<10} {'in pps':>8} {'out pps':>8} {'sent':>8} {'recv':>8} "
             f"{'lost':>6}  NFs (host)"]
    for name, c in status["chains"].items():
        nfs = " -> ".join(f"{nf}@{','.join(hosts) or '?'}" for nf, hosts in c["nfs"])
        lines.append(f"{name:<10} {c.get('in_pps', 0):>8.0f} {c.get('out_pps', 0):>8.0f} "
                     f"{c['sent']:>8} {c['received']:>8} {c['lost']:>6}  {nfs}")
        if "tcp" in c:
            lines.append(f"{'':<10} {tcp_text(c['tcp'])}")
    lines.append(f"{'host':<6} {'state':<8} {'gen':>4}  instances (pps)")
    for name, h in status["hosts"].items():
        insts = ", ".join(f"{v['nf']}#{i} {v['pps']:.0f}" for i, v in h["instances"].items())
        drops = " drops " + json.dumps(h["drops"]) if h["drops"] else ""
        lines.append(f"{name:<6} {host_state(h):<8} {h['generation'] or '-':>4}  "
                     f"{insts or '-'}{drops}")
    return "\n".join(lines)


def tcp_text(tcp):
    """One line on a chain's real TCP connections."""
    servers = ", ".join(f"{k} {v}" for k, v in sorted(tcp["servers"].items()))
    seen = ", ".join(sorted(tcp["seen_as"]))
    error = f"; last error: {tcp['errors'][-1]}" if tcp.get("errors") else ""
    return (f"tcp connections ok {tcp['ok']}, failed {tcp['failed']}"
            f"{' (servers: ' + servers + ')' if servers else ''}"
            f"{'; servers saw ' + seen if seen else ''}{error}")


def add_rates(status, previous):
    """Per-chain in/out pps and per-instance pps since the previous snapshot.
    (Instance rates are taken from counters here: the agent's own "mpps"
    per instance is not a rate, see the report of this module's author.)"""
    if previous is None:
        return status
    dt = max(1e-3, status["time"] - previous["time"])
    for name, h in status["hosts"].items():
        old = previous["hosts"].get(name, {}).get("instances", {})  # a host added
        for iid, inst in h["instances"].items():
            if iid in old:
                inst["pps"] = max(0.0, (inst["rx"] - old[iid]["rx"]) / dt)
    for name, c in status["chains"].items():
        old = previous["chains"][name]
        c["in_pps"] = (c["sent"] - old["sent"]) / dt
        c["out_pps"] = (c["received"] - old["received"]) / dt
    return status


def lost_egress(run, chain):
    """Why a chain's sink saw nothing after some point, or ""."""
    egress = run.emu.topo.chain(chain).egress
    return (f" (its egress {egress} failed: nothing receives its traffic)"
            if egress in run.emu.killed else "")


def loss_reasons(run, chain):
    """Why a chain lost what it lost, as far as the run knows: each host
    that failed (Emulation.fail_host) while it ran the chain's NFs (by the
    chain's `where` timeline); "" when none did."""
    t0 = getattr(run.emu, "started", None)
    line = run.where.get(chain, [])
    out = []
    for at, host in getattr(run.emu, "failures", ()):
        t = at - t0 if t0 else at
        ran = [text for since, text in line if since <= t]
        if ran and host in _hosts_of(ran[-1]):
            out.append(f"{host}, which ran its NFs, failed at {t:.0f} s (what was in "
                       f"flight to it, and sent there until the fabric re-steered, is lost)")
    return "; ".join(out)


def _hosts_of(where):
    """The hosts a where_text names."""
    return {h for part in where.split(" -> ") for h in part.split("@", 1)[-1].split(",")}


def where_text(nfs):
    """"firewall@h1 -> ids@h2,h3" of a chain's [(nf, [hosts])]."""
    return " -> ".join(f"{nf}@{','.join(h) or '?'}" for nf, h in nfs)


def summary_text(run):
    status = run.final
    lines = ["=== summary " + "=" * 56]
    for name, c in status["chains"].items():
        lost_pct = 100.0 * c["lost"] / c["sent"] if c["sent"] else 0.0
        where = where_text(c["nfs"])
        latency = c["latency_ms"] if c["latency_ms"] is not None else "-"
        if "tcp" in c and not c["sent"]:        # real TCP only, no packet sender
            lines.append(f"chain {name}: {tcp_text(c['tcp'])}; {where}")
            continue
        lines.append(f"chain {name}: sent {c['sent']}, received {c['received']}, "
                     f"lost {c['lost']} ({lost_pct:.1f} %){lost_egress(run, name)}, "
                     f"latency {latency} ms; {where}")
        if "tcp" in c:
            lines.append(f"chain {name}: {tcp_text(c['tcp'])}")
        if c["lost"] > 0:
            why = loss_reasons(run, name)
            lines.append(f"chain {name}: lost {c['lost']}: " + (why or "no host failure "
                         "of this run explains it; the agents' drops by reason are in "
                         f"their logs ({run.emu.dir})"))
    for name, line in sorted(run.timeline.items()):
        if len(line) > 1:
            lines.append(f"chain {name}: NF instances over time: " + ", ".join(
                f"{n} at {t:g} s" for t, n in line))
    for name, line in sorted(run.where.items()):
        if len(line) > 1:
            lines.append(f"chain {name}: where its NFs ran: " + "; ".join(
                f"from {t:g} s {text}" for t, text in line))
    for text in run.events:
        lines.append(f"event: {text}")
    if not status["store"]["reachable"]:
        lines.append("the store did not answer at the end: placement as last seen")
    lines.append(f"logs in {run.emu.dir}")
    return "\n".join(lines)


def summary_object(run):
    """The summary of DESIGN.md's `onvm emulate --json` (plain data)."""
    status = run.final
    chains = {}
    for name, c in status["chains"].items():
        chains[name] = {
            "sent": c["sent"], "received": c["received"], "lost": c["lost"],
            "nfs": [{"nf": nf, "hosts": hosts} for nf, hosts in c["nfs"]],
            "instances_timeline": run.timeline.get(name, []),
            "nfs_timeline": run.where.get(name, []),
            "latency_ms": c["latency_ms"]}
        if "tcp" in c:
            chains[name]["tcp"] = {"ok": c["tcp"]["ok"], "failed": c["tcp"]["failed"],
                                   "servers": c["tcp"]["servers"],
                                   "seen_as": c["tcp"]["seen_as"]}
    hosts = {name: {"state": host_state(h), "generation": h["generation"]}
             for name, h in status["hosts"].items()}
    return {"chains": chains, "hosts": hosts, "events": list(run.events),
            "store_outages": run.store_outages, "interrupted": run.interrupted,
            "logs": run.emu.dir}


def cli_emulate(args):
    """`onvm emulate FILE [--seconds S] [events] [--json]`."""
    from controller.topology import load_topology
    topo = load_topology(args.file)
    events = schedule(args, topo)
    if args.etcd_members < 1:
        raise UsageError(f"--etcd-members {args.etcd_members}: give 1 or more (3 "
                         "survives one member's loss)")
    netns.enter_private_netns()
    # With --json, stdout carries the summary object alone: the view goes to stderr.
    view = (lambda *a, **k: say(*a, **k, file=sys.stderr)) if args.json else say
    quota = {} if args.etcd_quota_bytes is None else {"etcd_quota_bytes": args.etcd_quota_bytes}
    if not 1 <= args.controllers <= 4:
        raise UsageError(f"--controllers {args.controllers}: give 1 to 4")
    emu = Emulation(args.file, say=view, etcd_members=args.etcd_members,
                    tls=args.tls, controllers=args.controllers, **quota)
    stop_on_signals(emu)
    run = watch(emu, args.seconds, events, out=view)
    if run.final is not None:
        view(summary_text(run))
        if args.json:
            say(json.dumps(summary_object(run)))
    if run.interrupted:
        raise KeyboardInterrupt("the run was interrupted")    # the CLI's exit code
