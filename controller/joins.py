"""Hosts that join: servers the topology file does not list, whose agent
registered in `/onvm/hosts/<host>` (with its `mac`, `ip`, `cores` and
optionally a wanted `label`), and that the fabric shows plugged in at a
switch port.  Pure (Faucet's habit): no Ryu, no store, no clock.

    pending = joining(topo, registered)          # {name: mac} waiting to join
    host = admit(topo, name, body, switch, port) # a Host, or JoinRefused(why)
    topo = with_host(topo, host)

How the fabric shows where a host is plugged in: controller.apps.probes
sends a liveness probe (contracts.wire.ETH_PROBE) addressed to a waiting
host's MAC out of every switch port that is nobody's in the topology (a
free port); the fast path answers any probe by swapping its addresses, and
the switch punts the answer (the "join" rule, `join_punts`, present while
a host waits).  An answer on a free port proves a running fast path
behind it.  Since any fast path answers any probe, an answer can only be
paired with a waiting host while exactly one host waits: with several,
nobody joins until one is left (`pair`), and the log says so.

A joining host is refused, with the field at fault in the log, when its
name is a switch's, edge's or server's, its MAC or IP is a known host's or
server's, its wanted label is taken, or its fields are malformed; nothing
changes then.  Its node label is the wanted one, else the lowest free one
from 16 on.  A host that joined is a host like any other from then on
(liveness, re-placement); it stays in this controller's model when it
leaves, so that it comes back under the same name and label.

Not here: sending the probes and hearing the answers
(controller.apps.probes), what the cluster does with the new host
(controller.core), the switch rules (controller.flows).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Dict, Mapping, Optional

from contracts.model import Host, Topology
from contracts.wire import ETH_PROBE
from controller import flows

FIRST_LABEL = 16
MAX_LABEL = (1 << 20) - 1
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class JoinRefused(ValueError):
    """A waiting host that may not join; the message says which field and why."""


def _mac_of(body) -> Optional[str]:
    mac = body.get("mac") if isinstance(body, Mapping) else None
    if isinstance(mac, str) and _MAC.match(mac.lower()):
        return mac.lower()
    return None


def joining(topo: Topology, registered: Mapping[str, object]) -> Dict[str, str]:
    """{name: mac} of the registered hosts the topology does not know that
    gave a well-formed MAC (without one, nothing can find them)."""
    known = {h.name for h in topo.hosts}
    return {name: mac for name, body in sorted(registered.items())
            if name not in known and (mac := _mac_of(body)) is not None}


def pair(pending: Mapping[str, str], mac: str) -> Optional[str]:
    """The waiting host an answer addressed back from `mac` stands for, or
    None: any fast path answers any probe, so an answer tells which host
    only while one host waits (see the module docstring)."""
    if len(pending) != 1:
        return None
    (name, want), = pending.items()
    return name if want == mac.lower() else None


def free_label(topo: Topology) -> int:
    used = {h.label for h in topo.hosts}
    label = FIRST_LABEL
    while label in used:
        label += 1
    return label


def _owner(topo, switch, port):
    for kind, items in (("host", topo.hosts), ("edge", topo.edges),
                        ("server", topo.servers)):
        for item in items:
            if item.switch == switch and item.port == port:
                return f"{kind} {item.name}"
    for link in topo.links:
        if (link.a, link.a_port) == (switch, port) or (link.b, link.b_port) == (switch, port):
            return f"the link {link.a}:{link.a_port}-{link.b}:{link.b_port}"
    return None


def admit(topo: Topology, name: str, body: Mapping, switch: str, port: int) -> Host:
    """The Host that `name` (registered with `body`, seen at `switch` port
    `port`) joins as; raises JoinRefused naming the field at fault."""
    where = f"host {name} (seen at {switch} port {port})"
    if not isinstance(body, Mapping):
        raise JoinRefused(f"{where}: its registration is not a JSON object")
    for kind, items in (("a switch", topo.switches), ("an edge", topo.edges),
                        ("a server", topo.servers), ("a host", topo.hosts)):
        if any(item.name == name for item in items):
            raise JoinRefused(f"{where}: name: {name!r} is already {kind}'s name")
    mac = _mac_of(body)
    if mac is None:
        raise JoinRefused(f"{where}: mac: {body.get('mac')!r} is no MAC address "
                          "(six hex pairs with colons)")
    for kind, items in (("host", topo.hosts), ("server", topo.servers)):
        for item in items:
            if item.mac.lower() == mac:
                raise JoinRefused(f"{where}: mac: {mac} is already {kind} {item.name}'s")
    ip = body.get("ip")
    try:
        iface = ipaddress.ip_interface(ip if isinstance(ip, str) else "")
    except ValueError:
        raise JoinRefused(f"{where}: ip: {ip!r} is no address with prefix length "
                          "(like 10.0.0.9/24)") from None
    for kind, items in (("host", topo.hosts), ("server", topo.servers)):
        for item in items:
            if ipaddress.ip_interface(item.ip).ip == iface.ip:
                raise JoinRefused(f"{where}: ip: {iface.ip} is already {kind} {item.name}'s")
    cores = body.get("cores")
    if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
        raise JoinRefused(f"{where}: cores: {cores!r} is not a whole number of 1 or more")
    label = body.get("label")
    if label is None:
        label = free_label(topo)
    elif not isinstance(label, int) or isinstance(label, bool) \
            or not FIRST_LABEL <= label <= MAX_LABEL:
        raise JoinRefused(f"{where}: label: {label!r} is not a node label "
                          f"({FIRST_LABEL}..{MAX_LABEL})")
    else:
        taken = [h.name for h in topo.hosts if h.label == label]
        if taken:
            raise JoinRefused(f"{where}: label: {label} is already host {taken[0]}'s")
    if not any(sw.name == switch for sw in topo.switches):
        raise JoinRefused(f"{where}: switch: {switch!r} is no switch of the topology")
    owner = _owner(topo, switch, port)
    if owner is not None:
        raise JoinRefused(f"{where}: port: {switch} port {port} is {owner}'s")
    return Host(name=name, switch=switch, port=port, mac=mac, ip=str(iface),
                cores=cores, label=label)


def with_host(topo: Topology, host: Host) -> Topology:
    return dataclasses.replace(topo, hosts=topo.hosts + (host,))


def is_free_port(topo: Topology, switch: str, port: int) -> bool:
    return _owner(topo, switch, port) is None


def join_punts(switches, probe_src_mac):
    """ADMIT rules giving probe answers addressed to the controller
    (`probe_src_mac`) from any port to the controller, beneath the host
    ports' probe punts and the edge and server ports' edge_drops (which
    win): present only while a host waits to join."""
    return {sw: [flows.flow(flows.TABLE_ADMIT, flows.PRIO_PROBE - 1, "join",
                            {"eth_type": ETH_PROBE, "eth_dst": probe_src_mac},
                            [("output", flows.OFPP_CONTROLLER)])]
            for sw in switches}
