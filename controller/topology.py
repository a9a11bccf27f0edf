"""Reading and checking topology files (DESIGN.md, "Topology file").

A topology file is YAML.  It is checked the way Faucet checks its config:
every entity has declared keys with types and defaults, unknown keys are
rejected, and every problem found is reported (not only the first) as
`FILE:LINE: message`, LINE being where the offending key or item starts.
What comes out is a frozen `contracts.model.Topology`; nothing else in the
controller ever sees the raw YAML.

Chains are checked by `controller.chains` (the validator the REST API
uses too), and every catalog entry's NF config by `nfs.configs`, the
parser the NF's constructor calls: what an agent would refuse, this
refuses first (`FILE:LINE: nfs.TYPE.config: ...`).  An NF type nobody here
can check (not installed, or third-party without `check_config`) is a
warning in `Topology.warnings`, not an error.

This module does not place chains or build routes: it only makes sure that
what `controller.placement` and `controller.fabric` receive makes sense.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import sys
from typing import Any, Dict, List, Tuple

import networkx as nx
import yaml

from contracts.model import (FIRST_NODE_LABEL, FIRST_SPI, MAX_LABEL, Edge,
                              Host, Link, NFType, Server, Switch, Topology)
from contracts.validate import ValidationError, already_used, check_mac, key_path
from controller import natslices
from controller.yamllines import LineDict, Loader, line_of
from controller.chains import (Other, Scope, check_clashes, check_fields,
                               default_symmetric, make_chain)
from nflib.api import NFConfigError
from nfs.configs import NotCheckable, check_config, instance_config

MAX_DPID = (1 << 64) - 1
MAX_PORT = 0xFFFFFF00          # OFPP_MAX: ports above are reserved


class TopologyError(ValidationError):
    """A topology that cannot be used.  `.errors` lists every problem, each
    as `FILE:LINE: message`; str() joins them with newlines."""


# --- field declarations (Faucet's defaults / defaults_types) --------------

REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Field:
    kind: str                     # "str", "int", "number", "mapping", "strlist", "list"
    default: Any = REQUIRED


_TOP = {
    "name": Field("str"),
    "switches": Field("list"),
    "hosts": Field("list"),
    "links": Field("list", ()),
    "edges": Field("list", ()),
    "servers": Field("list", ()),
    "nfs": Field("mapping", None),
    "chains": Field("list", ()),
}
_SWITCH = {"name": Field("str"), "dpid": Field("int")}
_HOST = {
    "name": Field("str"), "switch": Field("str"), "port": Field("int"),
    "mac": Field("str"), "ip": Field("str"), "cores": Field("int"),
    "label": Field("int", None),
}
_LINK = {
    "a": Field("str"), "a_port": Field("int"),
    "b": Field("str"), "b_port": Field("int"),
    "gbps": Field("number", 10.0),
}
_EDGE = {"name": Field("str"), "switch": Field("str"), "port": Field("int")}
_SERVER = {"name": Field("str"), "switch": Field("str"), "port": Field("int"),
           "mac": Field("str"), "ip": Field("str"), "ip6": Field("str", None)}
_NF = {"cores": Field("int"), "mpps": Field("number"), "config": Field("str", None)}
_CHAIN = {
    "name": Field("str"), "ingress": Field("str"), "egress": Field("names"),
    "match": Field("mapping"), "nfs": Field("strlist"), "mpps": Field("number"),
    "spi": Field("int", None), "symmetric": Field("bool", None),
    "autoscale": Field("mapping", None),
}

_KIND_WORDS = {
    "str": "a string", "int": "an integer", "number": "a number",
    "mapping": "a mapping", "strlist": "a list of names", "list": "a list",
    "names": "a name or a list of names", "bool": "true or false",
}


def _is_kind(value, kind):
    if kind == "str":
        return isinstance(value, str) and value != ""
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind == "mapping":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    if kind == "strlist":
        return (isinstance(value, list) and value
                and all(isinstance(v, str) and v for v in value))
    if kind == "names":
        return _is_kind(value, "str") or _is_kind(value, "strlist")
    if kind == "bool":
        return isinstance(value, bool)
    raise AssertionError(kind)


# --- the checker ----------------------------------------------------------

class _Fields(dict):
    """The well-typed keys of one entity, defaults applied.  `complete` is
    False when a required key is missing or mistyped: the entity is then
    still checked key by key, but not built."""
    complete = True


class _Checker:
    """Collects every problem of one file; each check adds to `errors`."""

    def __init__(self, source):
        self.source = source
        self.errors: List[Tuple[int, str]] = []
        self.warnings: List[str] = []

    def error(self, line, message):
        self.errors.append((line, message))

    def warn(self, line, message):
        self.warnings.append(f"{self.source}:{line}: warning: {message}")

    def fields(self, raw, spec, what, line):
        """Reports unknown keys, missing keys and wrong types, all of them;
        returns the usable keys, or None when `raw` is no mapping at all."""
        if not isinstance(raw, dict):
            self.error(line, f"{what}: must be a mapping of keys, not {raw!r}")
            return None
        out = _Fields()
        for key in raw:
            if key not in spec:
                self.error(line_of(raw, key, line),
                           f"{what}: unknown key {key!r}; known keys: "
                           f"{', '.join(spec)}")
        for key, field in spec.items():
            if key not in raw:
                if field.default is REQUIRED:
                    self.error(line, f"{what}: missing key {key!r}")
                    out.complete = False
                else:
                    out[key] = field.default
            elif _is_kind(raw[key], field.kind):
                out[key] = raw[key]
            else:
                value = raw[key]
                self.error(line_of(raw, key, line),
                           f"{what}: {key} must be {_KIND_WORDS[field.kind]}, "
                           f"not {value!r}" + _yaml_hint(key, value))
                out.complete = False
        return out

    def items(self, raw, field_name, spec, noun):
        """Each mapping of a top-level list: (index, line, raw, what, fields)."""
        for i, item in enumerate(raw):
            line = line_of(raw, i, getattr(raw, "line", 0))
            name = item.get("name") if isinstance(item, dict) else None
            what = f"{noun} {name}" if isinstance(name, str) and name \
                else f"{field_name}[{i}]"
            fields = self.fields(item, spec, what, line)
            if fields is not None:
                yield i, line, item, what, fields

    def positive(self, item, f, key, line, what):
        """A count or rate that must be above zero (when it is well-typed)."""
        if key in f and f[key] <= 0:
            self.error(line_of(item, key, line),
                       f"{what}: {key} must be > 0, not {f[key]}")
            return False
        return True


def _yaml_hint(key, value):
    """YAML 1.1 reads some unquoted MACs (12:34:56:...) as base-60 numbers."""
    if key == "mac" and isinstance(value, int):
        return ' (quote MACs: "02:00:00:00:00:01")'
    return ""


class _Ports:
    """Which (switch, port) is used by what, for duplicate detection."""

    def __init__(self, ck):
        self.ck = ck
        self.used: Dict[Tuple[str, int], Tuple[str, int]] = {}

    def take(self, switch, port, user, line):
        prev = self.used.get((switch, port))
        if prev is not None:
            self.ck.error(line, f"{user}: " + already_used(
                f"port {switch}:{port}", prev[0], prev[1]))
            return False
        self.used[(switch, port)] = (user, line)
        return True


class _Names:
    """Switches, hosts and edges share one namespace: they are graph nodes.
    A name counts as declared even when the rest of its entity is wrong, so
    one mistake does not echo through every reference to it."""

    def __init__(self, ck):
        self.ck = ck
        self.seen: Dict[str, Tuple[str, int]] = {}

    def declare(self, f, noun, line):
        if "name" not in f:
            return False
        name = f["name"]
        if name in self.seen:
            prev_noun, prev_line = self.seen[name]
            self.ck.error(line, f"{noun} {name}: " + already_used(
                f"name {name}", f"{prev_noun} {name}", prev_line))
            return False
        self.seen[name] = (noun, line)
        return True

    def of(self, noun):
        return {n for n, (kind, _) in self.seen.items() if kind == noun}


def _check_port(ck, item, f, key, line, what):
    if key not in f:
        return False
    if not 1 <= f[key] <= MAX_PORT:
        ck.error(line_of(item, key, line),
                 f"{what}: {key} must be 1..{MAX_PORT}, not {f[key]}")
        return False
    return True


def _known_switch(ck, item, f, key, line, what, switch_names):
    if key not in f:
        return False
    if f[key] not in switch_names:
        ck.error(line_of(item, key, line),
                 f"{what}: {key} {f[key]!r} is not a switch of this topology")
        return False
    return True


def _attach(ck, item, f, line, what, switch_names, ports, end=""):
    """A host's, edge's or link end's (switch, port): a declared switch, a
    valid port, and no one else on it."""
    sw_key, port_key = (end or "switch"), (f"{end}_port" if end else "port")
    ok = _known_switch(ck, item, f, sw_key, line, what, switch_names)
    ok &= _check_port(ck, item, f, port_key, line, what)
    return ok and ports.take(f[sw_key], f[port_key], what, line)


def _check_dpid(ck, item, f, line, what, dpids):
    if "dpid" not in f:
        return False
    dpid, dline = f["dpid"], line_of(item, "dpid", line)
    if not 1 <= dpid <= MAX_DPID:
        ck.error(dline, f"{what}: dpid must be 1..2^64-1, not {dpid}")
        return False
    if dpid in dpids:
        ck.error(dline, f"{what}: " + already_used(f"dpid {dpid:#x}", *dpids[dpid]))
        return False
    dpids[dpid] = (what, dline)
    return True


def _parse_switches(ck, raw, names):
    switches, dpids = [], {}
    for _, line, item, what, f in ck.items(raw, "switches", _SWITCH, "switch"):
        ok = names.declare(f, "switch", line)
        ok &= _check_dpid(ck, item, f, line, what, dpids)
        if ok and f.complete:
            switches.append(Switch(f["name"], f["dpid"]))
    return switches


def _check_mac(ck, item, f, line, what, macs):
    if "mac" not in f:
        return False
    mac, mline = f["mac"], line_of(item, "mac", line)
    try:
        check_mac(mac, unicast=True)
    except ValueError as err:
        ck.error(mline, f"{what}: mac {err}")
        return False
    key = mac.lower()
    if key in macs:
        ck.error(mline, f"{what}: " + already_used(f"mac {mac}", *macs[key]))
        return False
    macs[key] = (what, mline)
    return True


def _check_ip(ck, item, f, line, what, ips):
    if "ip" not in f:
        return False
    ip, iline = f["ip"], line_of(item, "ip", line)
    if "/" not in ip:
        ck.error(iline, f"{what}: ip must be an interface address with a "
                        f"prefix length, like 10.0.0.1/24, not {ip!r}")
        return False
    try:
        iface = ipaddress.ip_interface(ip)
    except ValueError as err:
        ck.error(iline, f"{what}: ip {ip!r} is not an interface address: {err}")
        return False
    return _claim_address(ck, ips, iface.ip, what, iline)


def _claim_address(ck, ips, address, what, line):
    """`address` is `what`'s (at `line`), unless a host or server has it."""
    if address in ips:
        ck.error(line, f"{what}: " + already_used(f"address {address}", *ips[address]))
        return False
    ips[address] = (what, line)
    return True


def _check_ip6(ck, item, f, line, what, ips):
    """A server's optional IPv6 address (with or without a prefix length),
    used by no other host or server."""
    ip6 = f.get("ip6")
    if ip6 is None:
        return True
    iline = line_of(item, "ip6", line)
    try:
        address = ipaddress.IPv6Interface(ip6).ip
    except ValueError:
        ck.error(iline, f"{what}: ip6 must be an IPv6 address, like 2001:db8:1::10, "
                        f"not {ip6!r}")
        return False
    return _claim_address(ck, ips, address, what, iline)


def _check_label(ck, seen, value, line, what, key, noun):
    if not FIRST_NODE_LABEL <= value <= MAX_LABEL:
        ck.error(line, f"{what}: {key} must be {FIRST_NODE_LABEL}..{MAX_LABEL} "
                       f"(MPLS labels 0..15 are reserved), not {value}")
        return False
    if value in seen:
        ck.error(line, f"{what}: " + already_used(f"{noun} {value}", *seen[value]))
        return False
    seen[value] = (what, line)
    return True


def _check_machine(ck, item, f, line, what, places):
    """A host's or server's switch port, MAC and IP, none used before by a
    host, a server, an edge or a link (`places`: (switch names, ports,
    macs, ips), shared by all of them)."""
    switch_names, ports, macs, ips = places
    ok = _attach(ck, item, f, line, what, switch_names, ports)
    ok &= _check_mac(ck, item, f, line, what, macs)
    return ok & _check_ip(ck, item, f, line, what, ips)


def _parse_hosts(ck, raw, names, places):
    hosts, labels = [], {}
    for i, line, item, what, f in ck.items(raw, "hosts", _HOST, "host"):
        ok = names.declare(f, "host", line)
        ok &= _check_machine(ck, item, f, line, what, places)
        ok &= ck.positive(item, f, "cores", line, what)
        label = f.get("label")
        if label is None and "label" not in item:
            label = FIRST_NODE_LABEL + i
        if label is not None:
            ok &= _check_label(ck, labels, label, line_of(item, "label", line),
                               what, "label", "node label")
        if ok and f.complete:
            hosts.append(Host(f["name"], f["switch"], f["port"], f["mac"],
                              f["ip"], f["cores"], label))
    return hosts


def _parse_servers(ck, raw, names, places):
    servers = []
    for _, line, item, what, f in ck.items(raw, "servers", _SERVER, "server"):
        ok = names.declare(f, "server", line)
        ok &= _check_machine(ck, item, f, line, what, places)
        ok &= _check_ip6(ck, item, f, line, what, places[3])
        if ok and f.complete:
            servers.append(Server(f["name"], f["switch"], f["port"], f["mac"], f["ip"],
                                  f.get("ip6")))
    return servers


def _parse_links(ck, raw, switch_names, ports):
    links, pairs = [], {}
    for _, line, item, what, f in ck.items(raw, "links", _LINK, "link"):
        what = f"link {f.get('a', '?')}-{f.get('b', '?')}"
        ok = _known_switch(ck, item, f, "a", line, what, switch_names)
        ok &= _known_switch(ck, item, f, "b", line, what, switch_names)
        ok &= _check_port(ck, item, f, "a_port", line, what)
        ok &= _check_port(ck, item, f, "b_port", line, what)
        ok &= ck.positive(item, f, "gbps", line, what)
        if not (ok and f.complete):
            continue
        if f["a"] == f["b"]:
            ck.error(line, f"{what}: a link must join two different switches")
            continue
        pair = frozenset((f["a"], f["b"]))
        if pair in pairs:
            ck.error(line, f"{what}: a second link between {f['a']} and "
                           f"{f['b']} (first at line {pairs[pair]}); the fabric "
                           f"is a simple graph: declare one link with the "
                           f"summed gbps")
            continue
        taken_a = ports.take(f["a"], f["a_port"], what, line)
        if ports.take(f["b"], f["b_port"], what, line) and taken_a:
            pairs[pair] = line
            links.append(Link(f["a"], f["a_port"], f["b"], f["b_port"],
                              float(f["gbps"])))
    return links


def _parse_edges(ck, raw, names, switch_names, ports):
    edges = []
    for _, line, item, what, f in ck.items(raw, "edges", _EDGE, "edge"):
        ok = names.declare(f, "edge", line)
        ok &= _attach(ck, item, f, line, what, switch_names, ports)
        if ok and f.complete:
            edges.append(Edge(f["name"], f["switch"], f["port"]))
    return edges


# The shipped rule library: generic NF configs that any topology may name
# by bare name (generated ones do), wherever the topology file itself lives.
RULE_LIBRARY = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, "topologies", "rules"))


def library_config(name):
    """Absolute path of `name` in the shipped rule library."""
    return os.path.join(RULE_LIBRARY, name)


def config_places(config, base_dir):
    """Where a catalog `config` may be, in the order looked at: next to the
    topology file first (so a file placed there overrides the library's of
    the same name), then the shipped rule library.  Absolute: only itself."""
    if os.path.isabs(config):
        return [os.path.normpath(config)]
    return [os.path.abspath(os.path.join(base_dir, config)),
            os.path.normpath(os.path.join(RULE_LIBRARY, config))]


def _check_config(ck, entry, f, line, what, base_dir):
    """Resolve an NF's config path; stored absolute, so whoever opens it
    (an agent, another working directory) need not know where the topology
    file lives."""
    if f.get("config") is None:
        return True, None
    places = config_places(f["config"], base_dir)
    for path in places:
        if os.path.isfile(path):
            return True, path
    if len(places) == 1:
        problem = f"not found (looked for {places[0]})"
    else:
        # Text with no file behind it resolves against the working directory.
        near = "in the working directory" if ck.source.startswith("<") \
            else "next to the topology file"
        problem = (f"is neither {near} ({places[0]}) nor in the shipped rule "
                   f"library ({places[1]})")
    ck.error(line_of(entry, "config", line),
             f"{what}: config file {f['config']!r} {problem}")
    return False, None


def _check_nf_config(ck, name, config, line):
    """The NF's config as an agent will hand it to the NF (nfs.configs:
    the very parser the NF's constructor calls): what it refuses, validate
    refuses, each problem after `nfs.NAME.config:`.  Returns (ok, the
    parsed config or None)."""
    where = f"nfs.{name}.config"
    try:
        return True, check_config(name, instance_config(config))
    except NotCheckable as why:
        ck.warn(line, f"{where}: not checked: {why}")
    except (NFConfigError, ValueError) as err:
        if config is None:
            where += f": missing, and {name} cannot start without one"
        for problem in str(err).splitlines():
            ck.error(line, f"{where}: {problem}")
        return False, None
    return True, None


def _parse_catalog(ck, raw, line, base_dir):
    """({name: NFType}, {name: (parsed config, line)}) of the catalog."""
    catalog, parsed = {}, {}
    for name, entry in (raw or {}).items():
        eline = line_of(raw, name, line)
        what = f"nf {name}"
        if not isinstance(name, str) or not name:
            ck.error(eline, f"nfs: NF type names must be strings, not {name!r}")
            continue
        f = ck.fields(entry, _NF, what, eline)
        if f is None:
            continue
        ok = ck.positive(entry, f, "cores", eline, what)
        ok &= ck.positive(entry, f, "mpps", eline, what)
        found, config = _check_config(ck, entry, f, eline, what, base_dir)
        if found:
            found, values = _check_nf_config(ck, name, config,
                                             line_of(entry, "config", eline))
            parsed[name] = (values, eline)
        if ok and found and f.complete:
            catalog[name] = NFType(name, f["cores"], float(f["mpps"]), config)
    return catalog, parsed


def _path_line(item, path, line):
    """The line of a key path inside an item (the deepest one known)."""
    node = item
    for key in path:
        line = line_of(node, key, line)
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
    return line


def _chain_report(ck, item, line, what):
    """controller.chains reports by key path; here that is FILE:LINE (the
    line of the key) and `chain NAME: KEY: message`."""
    def report(path, message):
        where = f"{what}: {key_path(*path)}" if path else what
        ck.error(_path_line(item, path, line), f"{where}: {message}")
    return report


def _parse_chains(ck, raw, scope):
    chains, others, chain_names = [], [], {}
    for i, line, item, what, f in ck.items(raw, "chains", _CHAIN, "chain"):
        report = _chain_report(ck, item, line, what)
        ok = True
        if "name" in f:
            if f["name"] in chain_names:
                ck.error(line, f"{what}: " + already_used(
                    f"name {f['name']}", f"chain {f['name']}", chain_names[f["name"]]))
                ok = False
            chain_names.setdefault(f["name"], line)
        ok &= check_fields(f, scope, report)
        spi = FIRST_SPI + i if f.get("spi") is None else f["spi"]
        if not (ok and f.complete):
            continue
        if not check_clashes(f["name"], f["ingress"], f["match"], spi, others, report):
            continue
        others.append(Other(f["name"], f["ingress"], dict(f["match"]), spi, line))
        chains.append(make_chain(f, spi, scope))
    return chains


def _nf_rates(chains):
    """{NF type: the summed Mpps of every chain visit}."""
    rate: Dict[str, float] = {}
    for chain in chains:
        for nf in chain.nfs:
            rate[nf] = rate.get(nf, 0.0) + chain.mpps
    return rate


def _check_nat_slices(ck, chains, catalog, parsed):
    """The nat port range, cut into `slices` (its config's, default
    natslices.DEFAULT_SLICES), must give each slice enough ports and have
    a slice for every instance the chains through nat need."""
    values, line = parsed.get(natslices.NAT, (None, 0))
    if natslices.NAT not in catalog or not isinstance(values, dict):
        return
    port_range, slices = natslices.settings(values)
    needed = natslices.instances_needed(_nf_rates(chains).get(natslices.NAT, 0.0),
                                        catalog[natslices.NAT].mpps)
    for problem in natslices.range_problems(port_range, slices, needed):
        ck.error(line, f"nf {natslices.NAT}: {problem}")


def _check_capacity(ck, chains, hosts, catalog, line):
    """Reject only what no placement can serve: per NF type, the fewest
    instances that carry the summed rate of every chain visit, and the cores
    those take, against the cores of all hosts."""
    if not chains or not hosts:
        return
    rate = _nf_rates(chains)
    total_cores = sum(h.cores for h in hosts)
    biggest_host = max(h.cores for h in hosts)
    parts, needed = [], 0
    for nf in sorted(rate):
        t = catalog[nf]
        if t.cores > biggest_host:
            ck.error(line, f"nf {nf} needs {t.cores} cores per instance but the "
                           f"largest host has {biggest_host}")
            continue
        instances = natslices.instances_needed(rate[nf], t.mpps)
        needed += instances * t.cores
        parts.append(f"{nf}: {instances} x {t.cores} cores for "
                     f"{rate[nf]:g} Mpps at {t.mpps:g} Mpps each")
    if needed > total_cores:
        ck.error(line, f"chains ask for more than the cluster can serve: they "
                       f"need at least {needed} cores ({'; '.join(parts)}) but "
                       f"the {len(hosts)} hosts have {total_cores} cores in all")


def _check_connected(ck, switches, hosts, links, edges, servers, names):
    """Every host, edge and server must reach every other through the fabric."""
    ends = [(h.name, h.switch, "host") for h in hosts] + \
           [(e.name, e.switch, "edge") for e in edges] + \
           [(s.name, s.switch, "server") for s in servers]
    if not ends:
        return
    g = nx.Graph()
    g.add_nodes_from(s.name for s in switches)
    g.add_edges_from((link.a, link.b) for link in links)
    g.add_edges_from((name, switch) for name, switch, _ in ends)
    first, _, first_noun = ends[0]
    reach = nx.node_connected_component(g, first)
    for name, switch, noun in ends[1:]:
        if name not in reach:
            ck.error(names.seen[name][1],
                     f"{noun} {name} cannot reach {first_noun} {first}: no path "
                     f"of links from switch {switch}; the fabric must be "
                     f"connected")


# --- entry points ---------------------------------------------------------

def _load_yaml(text, source):
    loader = Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 0
        message = err.problem or err.context
        if err.problem and err.context and err.context_mark:
            # Where the problem shows is often past where the mistake is.
            message += f" ({err.context} at line {err.context_mark.line + 1})"
        raise TopologyError([f"{source}:{line}: not valid YAML: {message}"]) \
            from None
    finally:
        loader.dispose()
    return data, loader.problems


def parse_topology(text, source="<memory>") -> Topology:
    """Check a topology from YAML text; `source` names it in messages and
    resolves NF config paths (relative to its directory, then the shipped
    rule library; see config_places)."""
    data, problems = _load_yaml(text, source)
    ck = _Checker(source)
    ck.errors.extend(problems)
    top = ck.fields(data, _TOP, "topology", getattr(data, "line", 1))
    if top is None:
        _raise_if_errors(ck)
    base_dir = os.path.dirname(source) if not source.startswith("<") else "."
    names, ports = _Names(ck), _Ports(ck)
    switches = _parse_switches(ck, top.get("switches", ()), names)
    switch_names = names.of("switch")
    places = (switch_names, ports, {}, {})     # MACs and IPs: hosts' and servers'
    hosts = _parse_hosts(ck, top.get("hosts", ()), names, places)
    servers = _parse_servers(ck, top.get("servers", ()), names, places)
    links = _parse_links(ck, top.get("links", ()), switch_names, ports)
    edges = _parse_edges(ck, top.get("edges", ()), names, switch_names, ports)
    catalog, parsed = _parse_catalog(ck, top.get("nfs"), line_of(data, "nfs", 1),
                                     base_dir)
    # A catalog entry with a bad field is reported there, not again per chain.
    scope = Scope(top.get("name", "?"), frozenset(names.of("edge")),
                  frozenset(names.of("host")), frozenset(names.of("server")),
                  frozenset(top.get("nfs") or ()),
                  frozenset(s.get("name") for s in top.get("servers") or ()
                            if isinstance(s, dict) and "ip6" in s))
    chains = _parse_chains(ck, top.get("chains", ()), scope)
    if "hosts" in top and not top["hosts"]:
        ck.error(line_of(data, "hosts", 1), "topology: needs at least one host")
    if not ck.errors:
        # Whole-fabric checks only make sense once every entity is sound.
        _check_connected(ck, switches, hosts, links, edges, servers, names)
        _check_capacity(ck, chains, hosts, catalog,
                        line_of(data, "chains", 1))
        _check_nat_slices(ck, chains, catalog, parsed)
    _raise_if_errors(ck)
    return Topology(top["name"], tuple(switches), tuple(hosts), tuple(links),
                    tuple(edges), catalog, tuple(chains), source,
                    warnings=tuple(ck.warnings), servers=tuple(servers))


def _raise_if_errors(ck):
    if ck.errors:
        ordered = sorted(enumerate(ck.errors), key=lambda e: (e[1][0], e[0]))
        raise TopologyError([f"{ck.source}:{line}: {msg}"
                             for _, (line, msg) in ordered])


def load_topology(path) -> Topology:
    """Read and check a topology file; raises TopologyError."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise TopologyError([f"{path}: cannot read: {err.strerror}"]) from None
    return parse_topology(text, path)


# --- writing --------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")
_RESOLVER = yaml.resolver.Resolver()


def _scalar(value, hex_int=False):
    if isinstance(value, bool):
        raise TypeError(f"no booleans in a topology: {value!r}")
    if isinstance(value, int):
        return f"{value:#x}" if hex_int else str(value)
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "null"
    text = str(value)
    # Plain only when YAML reads it back as this very string; MACs and
    # anything with ':' are quoted (YAML 1.1 takes 12:34:56 for a number).
    if _PLAIN.match(text) and _RESOLVER.resolve(
            yaml.ScalarNode, text, (True, False)) == "tag:yaml.org,2002:str":
        return text
    return json.dumps(text)   # a JSON string is a YAML double-quoted scalar


def _flow(pairs):
    return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"


def _item(obj, keys, extra=()):
    """One list item in flow style, keys in the order the file uses."""
    pairs = [(k, _scalar(getattr(obj, k), hex_int=(k == "dpid"))) for k in keys]
    return "  - " + _flow(pairs + list(extra))


def _section(key, lines, empty="[]"):
    return [f"{key}:" + ("" if lines else f" {empty}")] + lines


def _names(names):
    return "[" + ", ".join(_scalar(n) for n in names) + "]"


def _dump_chain(chain, position, server_names):
    match = _flow([(_scalar(k), _scalar(v)) for k, v in chain.match.items()])
    egress = _names(chain.pool) if chain.pool else _scalar(chain.egress)
    pairs = [(k, _scalar(getattr(chain, k))) for k in ("name", "ingress")]
    pairs += [("egress", egress), ("match", match), ("nfs", _names(chain.nfs)),
              ("mpps", _scalar(chain.mpps))]
    if chain.spi != FIRST_SPI + position:
        pairs.append(("spi", _scalar(chain.spi)))
    default = default_symmetric(chain.nfs, bool(chain.pool) or
                                chain.egress in server_names)
    if chain.symmetric != default:
        pairs.append(("symmetric", "true" if chain.symmetric else "false"))
    if chain.autoscale is not None:
        pairs.append(("autoscale", _flow([(k, _scalar(v)) for k, v
                                           in sorted(chain.autoscale.items())])))
    return "  - " + _flow(pairs)


def _dump_nf(nf):
    pairs = [("cores", _scalar(nf.cores)), ("mpps", _scalar(nf.mpps))]
    if nf.config is not None:
        pairs.append(("config", _scalar(_config_name(nf.config))))
    return f"  {_scalar(nf.name)}: {_flow(pairs)}"


def _config_name(path):
    """How a dump names a config so the file loads back the same wherever it
    is written: a library file by its name in the library (a fresh clone at
    another path finds it there), any other file by its absolute path."""
    path = os.path.abspath(path)
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(RULE_LIBRARY))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return path
    return rel


def dump_topology(topo: Topology) -> str:
    """YAML that parse_topology reads back to an equal Topology.  Labels and
    SPIs are written only where they differ from the default for their
    position; NF configs by library name or absolute path (_config_name)."""
    host_keys = ("name", "switch", "port", "mac", "ip", "cores")
    hosts = [_item(h, host_keys, [("label", _scalar(h.label))]
                   if h.label != FIRST_NODE_LABEL + i else ())
             for i, h in enumerate(topo.hosts)]
    out = [f"name: {_scalar(topo.name)}"]
    out += _section("switches", [_item(w, ("name", "dpid")) for w in topo.switches])
    out += _section("hosts", hosts)
    out += _section("links", [_item(l, ("a", "a_port", "b", "b_port", "gbps"))
                              for l in topo.links])
    out += _section("edges", [_item(e, ("name", "switch", "port"))
                              for e in topo.edges])
    if topo.servers:
        out += _section("servers", [_item(s, ("name", "switch", "port", "mac", "ip"),
                                          [("ip6", _scalar(s.ip6))] if s.ip6 else ())
                                    for s in topo.servers])
    out += _section("nfs", [_dump_nf(t) for t in topo.nfs.values()], "{}")
    servers = {s.name for s in topo.servers}
    out += _section("chains", [_dump_chain(c, i, servers)
                               for i, c in enumerate(topo.chains)])
    return "\n".join(out) + "\n"


# --- command line ---------------------------------------------------------

def summary(topo: Topology) -> str:
    counts = [(len(topo.switches), "switch", "switches"),
              (len(topo.hosts), "host", "hosts"),
              (len(topo.links), "link", "links"),
              (len(topo.edges), "edge", "edges"),
              (len(topo.servers), "server", "servers"),
              (len(topo.chains), "chain", "chains")]
    return f"{topo.source}: ok: " + ", ".join(
        f"{n} {one if n == 1 else many}" for n, one, many in counts
        if n or one != "server")     # files without servers read as before


def cli_validate(args) -> int:
    """`onvm topo validate FILE`: errors on stderr and exit 1, or one line."""
    try:
        topo = load_topology(args.file)
    except TopologyError as err:
        for line in err.errors:
            print(line, file=sys.stderr)
        return 1
    for line in topo.warnings:
        print(line, file=sys.stderr)
    print(summary(topo))
    return 0
