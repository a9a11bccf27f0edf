"""What `onvm emulate`'s options ask to happen during a run, and when:
`schedule()` turns them into events [(at seconds, text, action, argument)],
`act()` does one on a running emulation.

Not here: the loop that runs them (live.py), how a host fails or a rate
changes (emulate.Emulation's actions).
"""
from __future__ import annotations

from onvm.errors import UsageError


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


def schedule(args, topo):
    """Events [(seconds, description, action, argument)] of the options
    --kill-host, --restart-controller and --raise-rate, in time order."""
    events = []
    hosts = [h.name for h in topo.hosts]
    for text in args.kill_host:
        host, at = parse_at(text, "--kill-host")
        known(host, "host", hosts, topo)
        events.append((at, f"fail {host} (its agent killed, its link down)", "kill", host))
    if args.restart_controller is not None:
        try:
            at = float(args.restart_controller)
        except ValueError:
            raise UsageError(f"--restart-controller {args.restart_controller!r}: "
                             "expected SECONDS") from None
        events.append((at, "restart the controller", "restart", None))
    for text in args.raise_rate:
        chain, mpps, at = chain_rate(text, "--raise-rate", topo)
        events.append((at, f"raise {chain} to {mpps} Mpps", "rate", (chain, mpps)))
    return sorted(events, key=lambda e: e[0])


def act(emu, action, arg):
    """Do one event's action on a running emulation."""
    if action == "kill":
        emu.fail_host(arg)
    elif action == "restart":
        emu.restart_controller()
    elif action == "rate":
        emu.raise_rate(*arg)
    else:
        raise ValueError(f"no action {action!r}")
