"""`onvm emulate --add-host NAME@SWITCH:PORT@S`: a server the topology file
lacks, plugged into a running switch at S seconds (emulate.Emulation's
add_host), its agent registering a MAC and an IP of its own so that the
controller takes it in (controller.joins).  Here: reading the option,
choosing the new host's addresses, and what the run's events say about it
(it joined and what it runs, or the controller refused it and why).

Not here: the Mininet host and link (onvm.emulate), the controller's
decision (controller.joins, controller.core), when events run (onvm.live).
"""
from __future__ import annotations

import ipaddress

from onvm.errors import UsageError

JOIN_MAC = "02:00:00:00:fe:{:02x}"     # locally administered: the n-th added host


def parse_add_host(spec, option, topo):
    """'NAME@SWITCH:PORT' -> (name, switch, port); UsageError naming the part."""
    name, sep, where = spec.partition("@")
    switch, colon, port = where.partition(":")
    if not (name and sep and colon and port.isdigit() and int(port) > 0):
        raise UsageError(f"{option} {spec!r}: expected NAME@SWITCH:PORT@SECONDS "
                         f"(PORT a switch port number of 1 or more)")
    if switch not in [sw.name for sw in topo.switches]:
        raise UsageError(f"{option} {spec!r}: no switch {switch!r} in {topo.source}; known: "
                         f"{', '.join(sw.name for sw in topo.switches)}")
    return name, switch, int(port)


def addresses(topo, index):
    """(mac, ip) for the `index`-th host added: a MAC of JOIN_MAC and the
    highest address of the first host's subnet that no host or server has."""
    if not topo.hosts:
        raise UsageError("--add-host: the topology has no host whose subnet to join")
    net = ipaddress.ip_interface(topo.hosts[0].ip).network
    taken = {ipaddress.ip_interface(p.ip).ip for p in (*topo.hosts, *topo.servers)}
    free = (a for a in reversed(list(net.hosts())[-(len(taken) + index + 2):])
            if a not in taken)
    for _ in range(index):
        next(free)
    return JOIN_MAC.format(index), f"{next(free)}/{net.prefixlen}"


def join_news(joined, plans, controller_log, seen):
    """Texts for the run's events, once each: a host added (`joined`:
    names) got its first plan (it joined: its node label and instances),
    runs other instances than last said, or was refused (the controller's
    reason, from its log).  `seen`: {name: what was said}, updated."""
    out = []
    for name in sorted(joined):
        plan = plans.get(name)
        if plan is None:
            marker = f"join refused, nothing changed: host {name} "
            at = controller_log.find(marker)
            if at >= 0 and seen.get(name) != "refused":
                line = controller_log[at:].split("\n", 1)[0]
                out.append(f"host {name} refused by the controller: "
                           f"{line.split(': ', 2)[-1]}")
                seen[name] = "refused"
            continue
        got = sorted(f"{i['nf']}#{i['id']}" for i in plan.get("instances", []))
        runs = ", ".join(got) or "no instance yet"
        if not isinstance(seen.get(name), list):
            out.append(f"host {name} joined (node label {plan.get('node_label')}): "
                       f"it runs {runs}")
        elif seen[name] != got:
            out.append(f"host {name} now runs {', '.join(got) or 'no instance'}")
        seen[name] = got
    return out
