"""Reading and checking topology files (DESIGN.md, "Topology file").

A topology file is YAML.  It is checked the way Faucet checks its config:
every entity has declared keys with types and defaults, unknown keys are
rejected, and every problem found is reported (not only the first) as
`FILE:LINE: message`, LINE being where the offending key or item starts.
What comes out is a frozen `controller.model.Topology`; nothing else in the
controller ever sees the raw YAML.

This module does not place chains or build routes: it only makes sure that
what `controller.placement` and `controller.fabric` receive makes sense.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

import networkx as nx
import yaml

from controller.model import (FIRST_NODE_LABEL, FIRST_SPI, MAX_LABEL, Chain,
                              Edge, Host, Link, NFType, Switch, Topology)
from host_agent.plan import MAC_RE, PlanError, check_match

MAX_DPID = (1 << 64) - 1
MAX_PORT = 0xFFFFFF00          # OFPP_MAX: ports above are reserved


class TopologyError(ValueError):
    """A topology that cannot be used.  `.errors` lists every problem, each
    as `FILE:LINE: message`; str() joins them with newlines."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# --- YAML with line numbers ------------------------------------------------

class _LineDict(dict):
    """A mapping from YAML that remembers the line of itself and each key."""
    line = 0
    key_lines: Dict[Any, int]


class _LineList(list):
    """A sequence from YAML that remembers the line of itself and each item."""
    line = 0
    item_lines: List[int]


_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):
    """SafeLoader whose mappings and sequences carry 1-based line numbers,
    and which records duplicate keys instead of silently keeping the last."""

    def __init__(self, stream):
        super().__init__(stream)
        self.problems: List[Tuple[int, str]] = []


def _construct_map(loader, node):
    data = _LineDict()
    data.line = node.start_mark.line + 1
    data.key_lines = {}
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (dict, list)):
            loader.problems.append((line, "a key must be a plain value, not a "
                                    "mapping or a list"))
            continue
        if key in data.key_lines:
            loader.problems.append((line, f"duplicate key {key!r} (first at "
                                    f"line {data.key_lines[key]})"))
            continue
        data.key_lines[key] = line
        data[key] = loader.construct_object(value_node, deep=True)


def _construct_seq(loader, node):
    data = _LineList()
    data.line = node.start_mark.line + 1
    data.item_lines = [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_object(item, deep=True) for item in node.value)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _line_of(container, key, default):
    """Line of a key in a mapping (or of an item in a sequence)."""
    if isinstance(container, _LineDict):
        return container.key_lines.get(key, container.line)
    if isinstance(container, _LineList) and isinstance(key, int) \
            and key < len(container.item_lines):
        return container.item_lines[key]
    return default


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
_NF = {"cores": Field("int"), "mpps": Field("number"), "config": Field("str", None)}
_CHAIN = {
    "name": Field("str"), "ingress": Field("str"), "egress": Field("str"),
    "match": Field("mapping"), "nfs": Field("strlist"), "mpps": Field("number"),
    "spi": Field("int", None),
}

_KIND_WORDS = {
    "str": "a string", "int": "an integer", "number": "a number",
    "mapping": "a mapping", "strlist": "a list of names", "list": "a list",
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
    raise AssertionError(kind)


# --- the checker ----------------------------------------------------------

class _Checker:
    """Collects every problem of one file; each check adds to `errors`."""

    def __init__(self, source):
        self.source = source
        self.errors: List[Tuple[int, str]] = []

    def error(self, line, message):
        self.errors.append((line, message))

    def fields(self, raw, spec, what, line):
        """Keys of one entity with defaults applied; None when unusable.
        Reports missing keys, unknown keys and wrong types, all of them."""
        if not isinstance(raw, dict):
            self.error(line, f"{what}: must be a mapping of keys, not {raw!r}")
            return None
        out, ok = {}, True
        for key in raw:
            if key not in spec:
                self.error(_line_of(raw, key, line),
                           f"{what}: unknown key {key!r}; known keys: "
                           f"{', '.join(spec)}")
                ok = False
        for key, field in spec.items():
            if key not in raw:
                if field.default is REQUIRED:
                    self.error(line, f"{what}: missing key {key!r}")
                    ok = False
                else:
                    out[key] = field.default
                continue
            value = raw[key]
            if not _is_kind(value, field.kind):
                self.error(_line_of(raw, key, line),
                           f"{what}: {key} must be {_KIND_WORDS[field.kind]}, "
                           f"not {value!r}" + _yaml_hint(key, value))
                ok = False
            else:
                out[key] = value
        return out if ok else None

    def items(self, raw, field_name, spec, noun):
        """Check each item of a top-level list; yields (index, line, fields)."""
        for i, item in enumerate(raw):
            line = _line_of(raw, i, raw.line if isinstance(raw, _LineList) else 0)
            name = item.get("name") if isinstance(item, dict) else None
            what = f"{noun} {name}" if isinstance(name, str) and name \
                else f"{field_name}[{i}]"
            fields = self.fields(item, spec, what, line)
            if fields is not None:
                yield i, line, item, what, fields


def _yaml_hint(key, value):
    """YAML 1.1 reads some unquoted MACs (12:34:56:...) as base-60 numbers."""
    if key == "mac" and isinstance(value, int):
        return ' (quote MACs: "02:00:00:00:00:01")'
    return ""


def _check_port(ck, port, line, what):
    if not 1 <= port <= MAX_PORT:
        ck.error(line, f"{what}: port must be 1..{MAX_PORT}, not {port}")
        return False
    return True


class _Ports:
    """Which (switch, port) is used by what, for duplicate detection."""

    def __init__(self, ck):
        self.ck = ck
        self.used: Dict[Tuple[str, int], Tuple[str, int]] = {}

    def take(self, switch, port, user, line):
        prev = self.used.get((switch, port))
        if prev is not None:
            self.ck.error(line, f"{user}: port {switch}:{port} is already used "
                                f"by {prev[0]} (line {prev[1]})")
            return False
        self.used[(switch, port)] = (user, line)
        return True


def _attach(ck, item, f, line, what, switch_names, ports):
    """A host's or edge's (switch, port): known switch, valid and free port."""
    ok = _known_switch(ck, switch_names, f["switch"],
                       _line_of(item, "switch", line), what)
    ok &= _check_port(ck, f["port"], _line_of(item, "port", line), what)
    return ok and ports.take(f["switch"], f["port"], what, line)


def _parse_switches(ck, raw, names):
    switches, dpids = [], {}
    for _, line, item, what, f in ck.items(raw, "switches", _SWITCH, "switch"):
        if not _unique_name(ck, names, f["name"], "switch", line):
            continue
        dpid = f["dpid"]
        if not 1 <= dpid <= MAX_DPID:
            ck.error(_line_of(item, "dpid", line),
                     f"{what}: dpid must be 1..2^64-1, not {dpid}")
            continue
        if dpid in dpids:
            ck.error(_line_of(item, "dpid", line),
                     f"{what}: dpid {dpid:#x} is already used by switch "
                     f"{dpids[dpid][0]} (line {dpids[dpid][1]})")
            continue
        dpids[dpid] = (f["name"], line)
        switches.append(Switch(f["name"], dpid))
    return switches


def _unique_name(ck, names, name, noun, line):
    """Switches, hosts and edges share one namespace: they are graph nodes."""
    if name in names:
        prev_noun, prev_line = names[name]
        ck.error(line, f"{noun} {name}: name already used by {prev_noun} "
                       f"{name} (line {prev_line})")
        return False
    names[name] = (noun, line)
    return True


def _known_switch(ck, switch_names, switch, line, what, key="switch"):
    if switch not in switch_names:
        ck.error(line, f"{what}: {key} {switch!r} is not a switch of this "
                       f"topology")
        return False
    return True


def _check_mac(ck, item, mac, line, what, macs):
    mline = _line_of(item, "mac", line)
    if not MAC_RE.match(mac):
        ck.error(mline, f"{what}: mac must look like 02:00:00:00:00:01, "
                        f"not {mac!r}")
        return False
    if int(mac[:2], 16) & 1:
        ck.error(mline, f"{what}: mac {mac} is a multicast address; a host "
                        f"needs a unicast one (first octet even)")
        return False
    key = mac.lower()
    if key in macs:
        ck.error(mline, f"{what}: mac {mac} is already used by "
                        f"{macs[key][0]} (line {macs[key][1]})")
        return False
    macs[key] = (what, mline)
    return True


def _check_ip(ck, item, ip, line, what, ips):
    iline = _line_of(item, "ip", line)
    if "/" not in ip:
        ck.error(iline, f"{what}: ip must be an interface address with a "
                        f"prefix length, like 10.0.0.1/24, not {ip!r}")
        return False
    try:
        iface = ipaddress.ip_interface(ip)
    except ValueError as err:
        ck.error(iline, f"{what}: ip {ip!r} is not an interface address: {err}")
        return False
    if iface.ip in ips:
        ck.error(iline, f"{what}: address {iface.ip} is already used by "
                        f"{ips[iface.ip][0]} (line {ips[iface.ip][1]})")
        return False
    ips[iface.ip] = (what, iline)
    return True


def _parse_hosts(ck, raw, names, switch_names, ports):
    hosts, macs, ips, labels = [], {}, {}, {}
    for i, line, item, what, f in ck.items(raw, "hosts", _HOST, "host"):
        ok = _unique_name(ck, names, f["name"], "host", line)
        ok &= _attach(ck, item, f, line, what, switch_names, ports)
        ok &= _check_mac(ck, item, f["mac"], line, what, macs)
        ok &= _check_ip(ck, item, f["ip"], line, what, ips)
        if f["cores"] <= 0:
            ck.error(_line_of(item, "cores", line),
                     f"{what}: cores must be > 0, not {f['cores']}")
            ok = False
        label = f["label"] if f["label"] is not None else FIRST_NODE_LABEL + i
        ok &= _check_label(ck, labels, label, _line_of(item, "label", line),
                           what, "label", "node label")
        if ok:
            hosts.append(Host(f["name"], f["switch"], f["port"], f["mac"],
                              f["ip"], f["cores"], label))
    return hosts


def _check_label(ck, seen, value, line, what, key, noun):
    if not FIRST_NODE_LABEL <= value <= MAX_LABEL:
        ck.error(line, f"{what}: {key} must be {FIRST_NODE_LABEL}..{MAX_LABEL} "
                       f"(MPLS labels 0..15 are reserved), not {value}")
        return False
    if value in seen:
        ck.error(line, f"{what}: {noun} {value} is already used by "
                       f"{seen[value][0]} (line {seen[value][1]})")
        return False
    seen[value] = (what, line)
    return True


def _parse_links(ck, raw, switch_names, ports):
    links, pairs = [], {}
    for _, line, item, what, f in ck.items(raw, "links", _LINK, "link"):
        what = f"link {f['a']}-{f['b']}"
        ok = True
        for end in ("a", "b"):
            ok &= _known_switch(ck, switch_names, f[end],
                                _line_of(item, end, line), what, key=end)
            ok &= _check_port(ck, f[f"{end}_port"],
                              _line_of(item, f"{end}_port", line), what)
        if f["gbps"] <= 0:
            ck.error(_line_of(item, "gbps", line),
                     f"{what}: gbps must be > 0, not {f['gbps']}")
            ok = False
        if not ok:
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
        if not (ports.take(f["a"], f["a_port"], what, line)
                & ports.take(f["b"], f["b_port"], what, line)):
            continue
        pairs[pair] = line
        links.append(Link(f["a"], f["a_port"], f["b"], f["b_port"],
                          float(f["gbps"])))
    return links


def _parse_edges(ck, raw, names, switch_names, ports):
    edges = []
    for _, line, item, what, f in ck.items(raw, "edges", _EDGE, "edge"):
        ok = _unique_name(ck, names, f["name"], "edge", line)
        ok &= _attach(ck, item, f, line, what, switch_names, ports)
        if ok:
            edges.append(Edge(f["name"], f["switch"], f["port"]))
    return edges


def _parse_catalog(ck, raw, line, base_dir):
    catalog = {}
    if raw is None:
        return catalog
    for name, entry in raw.items():
        eline = _line_of(raw, name, line)
        what = f"nf {name}"
        if not isinstance(name, str) or not name:
            ck.error(eline, f"nfs: NF type names must be strings, not {name!r}")
            continue
        f = ck.fields(entry, _NF, what, eline)
        if f is None:
            continue
        ok = True
        if f["cores"] <= 0:
            ck.error(_line_of(entry, "cores", eline),
                     f"{what}: cores must be > 0, not {f['cores']}")
            ok = False
        if f["mpps"] <= 0:
            ck.error(_line_of(entry, "mpps", eline),
                     f"{what}: mpps must be > 0, not {f['mpps']}")
            ok = False
        config = f["config"]
        if config is not None:
            # Stored resolved, so whoever opens it need not know our directory.
            config = os.path.normpath(os.path.join(base_dir, config))
            if not os.path.isfile(config):
                ck.error(_line_of(entry, "config", eline),
                         f"{what}: config file {f['config']!r} not found "
                         f"(looked for {config})")
                ok = False
        if ok:
            catalog[name] = NFType(name, f["cores"], float(f["mpps"]), config)
    return catalog


def _check_chain_match(ck, item, match, line, what):
    """check_match stops at its first error: feed it one key at a time so
    every bad field is reported, each at its own line."""
    mline = _line_of(item, "match", line)
    if not match:
        ck.error(mline, f"{what}: match must name at least one field")
        return False
    ok = True
    for key, value in match.items():
        try:
            check_match({key: value}, "match")
        except PlanError as err:
            ck.error(_line_of(match, key, mline), f"{what}: {err}")
            ok = False
    return ok


def _parse_chains(ck, raw, hosts, edges, catalog, catalog_names):
    chains, spis, chain_names, classifiers = [], {}, {}, {}
    host_names = {h.name for h in hosts}
    edge_names = {e.name for e in edges}
    for i, line, item, what, f in ck.items(raw, "chains", _CHAIN, "chain"):
        ok = True
        if f["name"] in chain_names:
            ck.error(line, f"{what}: chain name already used (line "
                           f"{chain_names[f['name']]})")
            ok = False
        chain_names.setdefault(f["name"], line)
        if f["ingress"] not in edge_names:
            ck.error(_line_of(item, "ingress", line),
                     f"{what}: ingress {f['ingress']!r} is not an edge; "
                     f"traffic enters the fabric only at edges")
            ok = False
        if f["egress"] not in host_names and f["egress"] not in edge_names:
            ck.error(_line_of(item, "egress", line),
                     f"{what}: egress {f['egress']!r} is neither a host nor "
                     f"an edge")
            ok = False
        nfs = f["nfs"]
        for j, nf in enumerate(nfs):
            if nf not in catalog_names:
                ck.error(_line_of(nfs, j, _line_of(item, "nfs", line)),
                         f"{what}: NF type {nf!r} is not in the catalog "
                         f"(nfs: {', '.join(sorted(catalog_names)) or 'empty'})")
                ok = False
        if len(nfs) > 255:
            ck.error(_line_of(item, "nfs", line),
                     f"{what}: at most 255 NFs fit in the service index")
            ok = False
        ok &= _check_chain_match(ck, item, f["match"], line, what)
        if f["mpps"] <= 0:
            ck.error(_line_of(item, "mpps", line),
                     f"{what}: mpps must be > 0, not {f['mpps']}")
            ok = False
        spi = f["spi"] if f["spi"] is not None else FIRST_SPI + i
        ok &= _check_label(ck, spis, spi, _line_of(item, "spi", line),
                           what, "spi", "SPI")
        if not ok:
            continue
        key = (f["ingress"], tuple(sorted((k, str(v)) for k, v in f["match"].items())))
        if key in classifiers:
            ck.error(_line_of(item, "match", line),
                     f"{what}: same ingress and match as {classifiers[key][0]} "
                     f"(line {classifiers[key][1]}); the edge switch could not "
                     f"tell them apart")
            continue
        classifiers[key] = (what, line)
        chains.append(Chain(f["name"], f["ingress"], f["egress"],
                            dict(f["match"]), tuple(nfs), float(f["mpps"]), spi))
    return chains


def _check_capacity(ck, chains, hosts, catalog, line):
    """Reject only what no placement can serve: per NF type, the fewest
    instances that carry the summed rate of every chain visit, and the cores
    those take, against the cores of all hosts."""
    if not chains or not hosts:
        return
    rate: Dict[str, float] = {}
    for chain in chains:
        for nf in chain.nfs:
            rate[nf] = rate.get(nf, 0.0) + chain.mpps
    total_cores = sum(h.cores for h in hosts)
    biggest_host = max(h.cores for h in hosts)
    parts, needed = [], 0
    for nf in sorted(rate):
        t = catalog[nf]
        if t.cores > biggest_host:
            ck.error(line, f"nf {nf} needs {t.cores} cores per instance but the "
                           f"largest host has {biggest_host}")
            continue
        instances = math.ceil(rate[nf] / t.mpps - 1e-9)
        needed += instances * t.cores
        parts.append(f"{nf} {instances} x {t.cores} for {rate[nf]:g} Mpps at "
                     f"{t.mpps:g} Mpps each")
    if needed > total_cores:
        ck.error(line, f"chains ask for more than the cluster can serve: they "
                       f"need at least {needed} cores ({'; '.join(parts)}) but "
                       f"the {len(hosts)} hosts have {total_cores} cores in all")


def _check_connected(ck, topo_switches, hosts, links, edges, lines):
    """Every host and edge must reach every other through the fabric."""
    g = nx.Graph()
    g.add_nodes_from(s.name for s in topo_switches)
    g.add_edges_from((l.a, l.b) for l in links)
    ends = [(h.name, h.switch, "host") for h in hosts] + \
           [(e.name, e.switch, "edge") for e in edges]
    g.add_edges_from((name, switch) for name, switch, _ in ends)
    if not ends:
        return
    first, _, first_noun = ends[0]
    reach = nx.node_connected_component(g, first)
    for name, switch, noun in ends[1:]:
        if name not in reach:
            ck.error(lines[name], f"{noun} {name} cannot reach {first_noun} "
                                  f"{first}: no path of links from switch "
                                  f"{switch}; the fabric must be connected")


# --- entry points ---------------------------------------------------------

def _load_yaml(text, source):
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 0
        raise TopologyError([f"{source}:{line}: not valid YAML: "
                             f"{err.problem or err.context}"]) from None
    finally:
        loader.dispose()
    return data, loader.problems


def parse_topology(text, source="<memory>") -> Topology:
    """Check a topology from YAML text; `source` names it in messages and
    resolves NF config paths (relative to its directory)."""
    data, problems = _load_yaml(text, source)
    ck = _Checker(source)
    ck.errors.extend(problems)
    top = ck.fields(data, _TOP, "topology", getattr(data, "line", 1))
    if top is None:
        _raise_if_errors(ck)
        raise TopologyError([f"{source}:1: topology: unusable"])
    base_dir = os.path.dirname(source) if not source.startswith("<") else "."
    names: Dict[str, Tuple[str, int]] = {}
    ports = _Ports(ck)
    switches = _parse_switches(ck, top["switches"], names)
    switch_names = {s.name for s in switches}
    hosts = _parse_hosts(ck, top["hosts"], names, switch_names, ports)
    links = _parse_links(ck, top["links"], switch_names, ports)
    edges = _parse_edges(ck, top["edges"], names, switch_names, ports)
    catalog = _parse_catalog(ck, top["nfs"], _line_of(data, "nfs", 1), base_dir)
    catalog_names = set(top["nfs"] or ())   # a bad entry is not also "unknown"
    chains = _parse_chains(ck, top["chains"], hosts, edges, catalog,
                           catalog_names)
    if not hosts and not ck.errors:
        ck.error(_line_of(data, "hosts", 1), "topology: needs at least one host")
    if not ck.errors:
        # Whole-fabric checks only make sense once every entity is sound.
        _check_connected(ck, switches, hosts, links, edges,
                         {n: l for n, (_, l) in names.items()})
        _check_capacity(ck, chains, hosts, catalog,
                        _line_of(data, "chains", 1))
    _raise_if_errors(ck)
    return Topology(top["name"], tuple(switches), tuple(hosts), tuple(links),
                    tuple(edges), catalog, tuple(chains), source)


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
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _flow(pairs):
    return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"


def dump_topology(topo: Topology) -> str:
    """YAML that parse_topology reads back to an equal Topology."""
    s = _scalar
    out = [f"name: {s(topo.name)}", "switches:"]
    out += [f"  - {_flow([('name', s(w.name)), ('dpid', s(w.dpid, True))])}"
            for w in topo.switches]
    out.append("hosts:")
    for i, h in enumerate(topo.hosts):
        pairs = [("name", s(h.name)), ("switch", s(h.switch)),
                 ("port", s(h.port)), ("mac", s(h.mac)), ("ip", s(h.ip)),
                 ("cores", s(h.cores))]
        if h.label != FIRST_NODE_LABEL + i:
            pairs.append(("label", s(h.label)))
        out.append(f"  - {_flow(pairs)}")
    out.append("links:" + ("" if topo.links else " []"))
    out += [f"  - {_flow([('a', s(l.a)), ('a_port', s(l.a_port)), ('b', s(l.b)), ('b_port', s(l.b_port)), ('gbps', s(float(l.gbps)))])}"
            for l in topo.links]
    out.append("edges:" + ("" if topo.edges else " []"))
    out += [f"  - {_flow([('name', s(e.name)), ('switch', s(e.switch)), ('port', s(e.port))])}"
            for e in topo.edges]
    out.append("nfs:" + ("" if topo.nfs else " {}"))
    for name, t in topo.nfs.items():
        pairs = [("cores", s(t.cores)), ("mpps", s(float(t.mpps)))]
        if t.config is not None:
            pairs.append(("config", s(os.path.abspath(t.config))))
        out.append(f"  {s(name)}: {_flow(pairs)}")
    out.append("chains:" + ("" if topo.chains else " []"))
    for i, c in enumerate(topo.chains):
        pairs = [("name", s(c.name)), ("ingress", s(c.ingress)),
                 ("egress", s(c.egress)),
                 ("match", _flow([(s(k), s(v)) for k, v in c.match.items()])),
                 ("nfs", "[" + ", ".join(s(n) for n in c.nfs) + "]"),
                 ("mpps", s(float(c.mpps)))]
        if c.spi != FIRST_SPI + i:
            pairs.append(("spi", s(c.spi)))
        out.append(f"  - {_flow(pairs)}")
    return "\n".join(out) + "\n"


# --- command line ---------------------------------------------------------

def summary(topo: Topology) -> str:
    counts = [(len(topo.switches), "switch", "switches"),
              (len(topo.hosts), "host", "hosts"),
              (len(topo.links), "link", "links"),
              (len(topo.edges), "edge", "edges"),
              (len(topo.chains), "chain", "chains")]
    return f"{topo.source}: ok: " + ", ".join(
        f"{n} {one if n == 1 else many}" for n, one, many in counts)


def cli_validate(args) -> int:
    """`onvm topo validate FILE`: errors on stderr and exit 1, or one line."""
    try:
        topo = load_topology(args.file)
    except TopologyError as err:
        for line in err.errors:
            print(line, file=sys.stderr)
        return 1
    print(summary(topo))
    return 0
