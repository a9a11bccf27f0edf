"""What `onvm emulate`'s options ask to happen during a run, and when:
`schedule()` turns them into events [(at seconds, text, action, argument)],
`act()` does one on a running emulation.

Not here: the loop that runs them (live.py), how a host fails or a rate
changes (emulate.Emulation's actions).
"""
from __future__ import annotations

from onvm.errors import UsageError
from onvm.joining import addresses, parse_add_host


def parse_at(text, option):
    """'X@S' -> (X, seconds)."""
    if "@" not in text:
        raise UsageError(f"{option} {text!r}: expected VALUE@SECONDS")
    value, at = text.rsplit("@", 1)
    try:
        return value, float(at)
    except ValueError:
        raise UsageError(f"{option} {text!r}: {at!r} is not a number of seconds") from None


def known(name, kind, names, topo):
    """`name` if `names` has it, else a UsageError listing them."""
    if name not in names:
        raise UsageError(f"no {kind} {name!r} in {topo.source}; known: {', '.join(names)}")
    return name


def chain_rate(text, option, topo):
    """'CHAIN=MPPS@S' -> (chain, mpps, seconds)."""
    spec, at = parse_at(text, option)
    chain, sep, mpps = spec.partition("=")
    try:
        rate = float(mpps) if sep else None
    except ValueError:
        rate = None
    if rate is None:
        raise UsageError(f"{option} {text!r}: expected CHAIN=MPPS@SECONDS")
    return known(chain, "chain", [c.name for c in topo.chains], topo), rate, at


def seconds(text, option):
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected SECONDS") from None


def schedule(args, topo):
    """Events [(seconds, description, action, argument)] of the options
    --kill-host, --restart-controller, --kill-leader, --drain-host,
    --undrain-host, --add-host, --raise-rate and --offer, in time order."""
    events = []
    hosts = [h.name for h in topo.hosts]
    for text in args.kill_host:
        host, at = parse_at(text, "--kill-host")
        known(host, "host", hosts, topo)
        events.append((at, f"fail {host} (its agent killed, its link down)", "kill", host))
    if args.restart_controller is not None:
        at = seconds(args.restart_controller, "--restart-controller")
        events.append((at, "restart the controller", "restart", None))
    if getattr(args, "kill_leader", None) is not None:
        at = seconds(args.kill_leader, "--kill-leader")
        if getattr(args, "controllers", 1) < 2:
            raise UsageError("--kill-leader needs --controllers 2 or more (a standby "
                             "to take over)")
        events.append((at, "SIGKILL the leading controller (a standby takes over)",
                       "kill-leader", None))
    for option, drain in (("drain_host", True), ("undrain_host", False)):
        for text in getattr(args, option, None) or []:
            host, at = parse_at(text, "--" + option.replace("_", "-"))
            known(host, "host", hosts, topo)
            events.append((at, f"{'drain' if drain else 'undrain'} {host}", "drain",
                           (host, drain)))
    for index, text in enumerate(getattr(args, "add_host", None) or []):
        spec, at = parse_at(text, "--add-host")
        name, switch, port = parse_add_host(spec, "--add-host", topo)
        mac, ip = addresses(topo, index)
        events.append((at, f"plug in host {name} at {switch} port {port} (mac {mac}, "
                           f"ip {ip}) and start its agent", "add-host",
                       (name, switch, port, mac, ip)))
    for text in args.raise_rate:
        chain, mpps, at = chain_rate(text, "--raise-rate", topo)
        events.append((at, f"raise {chain} to {mpps} Mpps", "rate", (chain, mpps)))
    for text in getattr(args, "offer", None) or []:
        chain, mpps, at = chain_rate(text, "--offer", topo)
        events.append((at, f"offer {chain} {mpps} Mpps of traffic (its declared rate "
                           f"unchanged)", "offer", (chain, mpps)))
    return sorted(events, key=lambda e: e[0])


def act(emu, action, arg):
    """Do one event's action on a running emulation; for an action that
    chooses its host when it happens, what it chose (for the summary)."""
    if action == "kill":
        emu.fail_host(arg)
    elif action == "restart":
        emu.restart_controller()
    elif action == "kill-leader":
        leader = emu.leader()
        if leader is None:
            raise ValueError("--kill-leader: no controller of this run leads now")
        emu.kill_controller(leader)
    elif action == "drain":
        emu.drain_host(*arg)
    elif action == "add-host":
        emu.add_host(*arg)
    elif action == "rate":
        emu.raise_rate(*arg)
    elif action == "offer":
        emu.set_rate(*arg)
    elif action == "drain-other":
        from onvm.failover import drain_candidate
        host = drain_candidate(emu)
        if host is None:
            emu.say("no NF host to drain besides the busiest: no drain\n")
            return "none to drain"
        try:
            emu.drain_host(host)
        except Exception as err:        # 409: its chains fit nowhere else
            emu.say(f"drain of {host} refused: {err}\n")
            return f"drain of {host} refused"
        emu.demo_drained = host
        emu.say(f"draining {host}: its instances move off it with their state\n")
        return f"{host} drained"
    elif action == "undrain-other":
        host = getattr(emu, "demo_drained", None)
        if host is not None:
            emu.drain_host(host, drain=False)
            emu.say(f"undrained {host}: it takes instances again\n")
            return f"{host} undrained"
    elif action == "fail-busiest":
        from onvm.failover import failover_victim
        host, chains = failover_victim(emu, tcp=True)
        emu.say(f"failing {host}: it runs NFs of {', '.join(chains)}\n")
        emu.fail_host(host)
        return f"{host} failed (it ran NFs of {', '.join(chains)})"
    else:
        raise ValueError(f"no action {action!r}")
