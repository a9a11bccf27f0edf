"""The topology loader: each error case with its exact `FILE:LINE: message`,
every error collected, the round trip through dump_topology, the shipped
files, and `onvm topo validate` as a user runs it."""
import dataclasses
import glob
import os
import subprocess
import sys

import pytest

from contracts.model import Topology
from controller.topology import (RULE_LIBRARY, TopologyError, dump_topology,
                                 load_topology, parse_topology)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(REPO, "topologies", "*.yaml")))

# Line numbers matter below: 3-4 switches, 6-7 hosts, 9 the link, 11 the
# edge, 13-14 the catalog, 16 the chain.
BASE = """\
name: t
switches:
  - {name: s1, dpid: 0x101}
  - {name: s2, dpid: 0x102}
hosts:
  - {name: h1, switch: s1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.0.1/24, cores: 4}
  - {name: h2, switch: s2, port: 1, mac: "02:00:00:00:00:02", ip: 10.0.0.2/24, cores: 4}
links:
  - {a: s1, a_port: 2, b: s2, b_port: 2, gbps: 40}
edges:
  - {name: internet, switch: s1, port: 10}
nfs:
  firewall: {cores: 1, mpps: 10, config: generic-fw.rules}
  monitor: {cores: 1, mpps: 14}
chains:
  - {name: web, ingress: internet, egress: h2, match: {ipv4_dst: 10.0.0.2/32}, nfs: [firewall, monitor], mpps: 1.5}
"""


def edit(base, changes):
    """`base` with whole lines replaced: {line number: new text}; the new
    text may hold several lines, which shifts what follows."""
    lines = base.splitlines()
    for number, text in sorted(changes.items(), reverse=True):
        lines[number - 1:number] = text.splitlines()
    return "\n".join(lines) + "\n"


def edited(changes):
    return edit(BASE, changes)


def flow_item(defaults, fields):
    """A list item in flow style: `defaults` with `fields` changed (None
    leaves a key out)."""
    f = dict(defaults, **fields)
    return "  - {" + ", ".join(f"{k}: {v}" for k, v in f.items() if v is not None) + "}"


def errors_of(text, source="t.yaml"):
    with pytest.raises(TopologyError) as info:
        parse_topology(text, source)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def host2(**fields):
    """Line 7 (host h2) with some fields changed."""
    return flow_item({"name": "h2", "switch": "s2", "port": "1",
                      "mac": '"02:00:00:00:00:02"', "ip": "10.0.0.2/24", "cores": "4"},
                     fields)


def chain(**fields):
    """Line 16 (chain web) with some fields changed."""
    return flow_item({"name": "web", "ingress": "internet", "egress": "h2",
                      "match": "{ipv4_dst: 10.0.0.2/32}", "nfs": "[firewall, monitor]",
                      "mpps": "1.5"}, fields)


# (case id, line changes, the exact errors)
CASES = [
    ("missing-key", {7: host2(cores=None)},
     ["t.yaml:7: host h2: missing key 'cores'"]),
    ("unknown-key", {4: "  - {name: s2, dpid: 0x102, colour: red}"},
     ["t.yaml:4: switch s2: unknown key 'colour'; known keys: name, dpid"]),
    ("unknown-top-key", {1: "name: t\nowner: ops"},
     ["t.yaml:2: topology: unknown key 'owner'; known keys: name, switches, "
      "hosts, links, edges, servers, nfs, chains"]),
    ("wrong-type", {7: host2(port="one")},
     ["t.yaml:7: host h2: port must be an integer, not 'one'"]),
    ("bool-is-not-int", {7: host2(cores="yes")},
     ["t.yaml:7: host h2: cores must be an integer, not True"]),
    ("unquoted-mac-read-as-number", {7: host2(mac="12:00:00:00:00:02")},
     ["t.yaml:7: host h2: mac must be a string, not 9331200002 "
      '(quote MACs: "02:00:00:00:00:01")']),
    ("malformed-mac", {7: host2(mac='"02:00:00:00:02"')},
     ["t.yaml:7: host h2: mac must be a MAC address like 02:00:00:00:00:01, "
      "not '02:00:00:00:02'"]),
    ("multicast-mac", {7: host2(mac='"01:00:5e:00:00:02"')},
     ["t.yaml:7: host h2: mac 01:00:5e:00:00:02 is a multicast address; a "
      "host needs a unicast one (first octet even)"]),
    ("duplicate-mac", {7: host2(mac='"02:00:00:00:00:01"')},
     ["t.yaml:7: host h2: mac 02:00:00:00:00:01 is already used by host h1 "
      "(line 6)"]),
    ("ip-without-prefix", {7: host2(ip="10.0.0.2")},
     ["t.yaml:7: host h2: ip must be an interface address with a prefix "
      "length, like 10.0.0.1/24, not '10.0.0.2'"]),
    ("ip-malformed", {7: host2(ip="10.0.0.300/24")},
     ["t.yaml:7: host h2: ip '10.0.0.300/24' is not an interface address: "
      "'10.0.0.300/24' does not appear to be an IPv4 or IPv6 interface"]),
    ("duplicate-ip", {7: host2(ip="10.0.0.1/16")},
     ["t.yaml:7: host h2: address 10.0.0.1 is already used by host h1 "
      "(line 6)"]),
    ("zero-cores", {7: host2(cores="0")},
     ["t.yaml:7: host h2: cores must be > 0, not 0"]),
    ("duplicate-dpid", {4: "  - {name: s2, dpid: 257}"},
     ["t.yaml:4: switch s2: dpid 0x101 is already used by switch s1 (line 3)"]),
    ("dpid-zero", {4: "  - {name: s2, dpid: 0}"},
     ["t.yaml:4: switch s2: dpid must be 1..2^64-1, not 0"]),
    ("duplicate-name", {11: "  - {name: h1, switch: s1, port: 10}"},
     ["t.yaml:11: edge h1: name h1 is already used by host h1 (line 6)",
      "t.yaml:16: chain web: ingress: 'internet' is not an edge of topology t; "
      "traffic enters the fabric only at edges: none"]),
    ("host-on-missing-switch", {7: host2(switch="s9")},
     ["t.yaml:7: host h2: switch 's9' is not a switch of this topology"]),
    ("link-to-missing-switch",
     {9: "  - {a: s1, a_port: 2, b: s9, b_port: 2, gbps: 40}"},
     ["t.yaml:9: link s1-s9: b 's9' is not a switch of this topology"]),
    ("port-used-by-host-and-link",
     {9: "  - {a: s1, a_port: 2, b: s2, b_port: 1, gbps: 40}"},
     ["t.yaml:9: link s1-s2: port s2:1 is already used by host h2 (line 7)"]),
    ("port-used-by-host-and-edge", {11: "  - {name: internet, switch: s1, port: 1}"},
     ["t.yaml:11: edge internet: port s1:1 is already used by host h1 "
      "(line 6)"]),
    ("port-zero", {7: host2(port="0")},
     ["t.yaml:7: host h2: port must be 1..4294967040, not 0"]),
    ("parallel-links",
     {9: "  - {a: s1, a_port: 2, b: s2, b_port: 2, gbps: 40}\n"
         "  - {a: s2, a_port: 3, b: s1, b_port: 3, gbps: 40}"},
     ["t.yaml:10: link s2-s1: a second link between s2 and s1 (first at line "
      "9); the fabric is a simple graph: declare one link with the summed "
      "gbps"]),
    ("self-loop", {9: "  - {a: s1, a_port: 2, b: s1, b_port: 3}"},
     ["t.yaml:9: link s1-s1: a link must join two different switches"]),
    ("label-reserved", {7: host2(label="15")},
     ["t.yaml:7: host h2: label must be 16..1048575 (MPLS labels 0..15 are "
      "reserved), not 15"]),
    ("label-too-big", {7: host2(label=str(1 << 20))},
     ["t.yaml:7: host h2: label must be 16..1048575 (MPLS labels 0..15 are "
      "reserved), not 1048576"]),
    ("duplicate-label", {7: host2(label="16")},
     ["t.yaml:7: host h2: node label 16 is already used by host h1 (line 6)"]),
    ("duplicate-chain-name", {16: chain() + "\n" + chain(
        match="{ipv4_dst: 10.0.0.1/32}")},
     ["t.yaml:17: chain web: name web is already used by chain web (line 16)"]),
    ("ingress-is-a-host", {16: chain(ingress="h1")},
     ["t.yaml:16: chain web: ingress: 'h1' is not an edge of topology t; traffic "
      "enters the fabric only at edges: internet"]),
    ("egress-unknown", {16: chain(egress="nowhere")},
     ["t.yaml:16: chain web: egress: 'nowhere' is not a host, a server or an edge "
      "of topology t"]),
    ("nf-not-in-catalog", {16: chain(nfs="[firewall, nat]")},
     ["t.yaml:16: chain web: nfs[1]: NF type 'nat' is not in the catalog (nfs: "
      "firewall, monitor)"]),
    ("empty-nf-list", {16: chain(nfs="[]")},
     ["t.yaml:16: chain web: nfs must be a list of names, not []"]),
    ("match-unknown-field", {16: chain(match="{vlan_vid: 3}")},
     ["t.yaml:16: chain web: match.vlan_vid: unknown match field; known: "
      "eth_type, ip_proto, ipv4_dst, ipv4_src, ipv6_dst, ipv6_src, tcp_dst, tcp_src, "
      "udp_dst, udp_src"]),
    ("match-empty", {16: chain(match="{}")},
     ["t.yaml:16: chain web: match: must be a non-empty mapping"]),
    ("chain-mpps-zero", {16: chain(mpps="0")},
     ["t.yaml:16: chain web: mpps: must be a number > 0, not 0"]),
    ("spi-reserved", {16: chain(spi="3")},
     ["t.yaml:16: chain web: spi: must be an integer 16..524287 (a symmetric "
      "chain's replies use SPI + 2^19), not 3"]),
    ("spi-in-the-reverse-half", {16: chain(spi=str(1 << 19))},
     ["t.yaml:16: chain web: spi: must be an integer 16..524287 (a symmetric "
      "chain's replies use SPI + 2^19), not 524288"]),
    ("duplicate-spi", {16: chain() + "\n" + chain(
        name="mail", match="{ipv4_dst: 10.0.0.1/32}", spi="16")},
     ["t.yaml:17: chain mail: spi: SPI 16 is already used by chain web (line 16)"]),
    ("same-classifier", {16: chain() + "\n" + chain(name="mail")},
     ["t.yaml:17: chain mail: match: same ingress and match as chain web (line 16); "
      "the edge switch could not tell them apart"]),
    ("nf-cores-zero", {13: "  firewall: {cores: 0, mpps: 10, config: generic-fw.rules}"},
     ["t.yaml:13: nf firewall: cores must be > 0, not 0"]),
    ("nf-unknown-key", {13: "  firewall: {cores: 1, mpps: 10, rules: fw, config: generic-fw.rules}"},
     ["t.yaml:13: nf firewall: unknown key 'rules'; known keys: cores, mpps, "
      "config"]),
    ("nf-config-missing", {13: "  firewall: {cores: 1, mpps: 10, config: "
                               "/nonexistent/none.rules}"},
     ["t.yaml:13: nf firewall: config file '/nonexistent/none.rules' not found "
      "(looked for /nonexistent/none.rules)"]),
    ("firewall-without-config", {13: "  firewall: {cores: 1, mpps: 10}"},
     ["t.yaml:13: nfs.firewall.config: missing, and firewall cannot start without "
      "one: firewall config needs 'rules' (a rule file) or 'rules_text'"]),
    ("config-for-an-nf-that-takes-none", {14: "  monitor: {cores: 1, mpps: 14, "
                                              "config: generic-fw.rules}"},
     ["t.yaml:14: nfs.monitor.config: <monitor config>: rules: unknown key; known: "
      "none"]),
    ("duplicate-yaml-key", {14: "  monitor: {cores: 1, mpps: 14}\n"
                                "  monitor: {cores: 2, mpps: 14}"},
     ["t.yaml:15: duplicate key 'monitor' (first at line 14)"]),
    ("no-hosts", {6: "", 7: "", 5: "hosts: []", 16: chain(egress="internet")},
     ["t.yaml:5: topology: needs at least one host"]),
]


@pytest.mark.parametrize("changes,expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_error_case(changes, expected):
    assert errors_of(edited(changes)) == expected


def test_base_is_valid():
    topo = parse_topology(BASE, "t.yaml")
    assert [h.label for h in topo.hosts] == [16, 17]
    assert topo.chains[0].spi == 16
    assert topo.switch("s1").dpid == 0x101
    assert topo.links[0].gbps == 40.0


def test_block_style_errors_point_at_the_key():
    text = edited({16: """\
  - name: web
    ingress: internet
    egress: h2
    match:
      ipv4_dst: 10.0.0.2/33
      tcp_dst: 70000
    nfs:
      - firewall
      - nat
    mpps: -2"""})
    assert errors_of(text) == [
        "t.yaml:20: chain web: match.ipv4_dst: '33' is not a valid netmask",
        "t.yaml:21: chain web: match.tcp_dst: must be 0..65535",
        "t.yaml:24: chain web: nfs[1]: NF type 'nat' is not in the catalog (nfs: "
        "firewall, monitor)",
        "t.yaml:25: chain web: mpps: must be a number > 0, not -2",
    ]


def test_fabric_must_be_connected():
    text = edited({4: "  - {name: s2, dpid: 0x102}\n  - {name: s3, dpid: 0x103}",
                   7: host2(switch="s3")})
    assert errors_of(text) == [
        "t.yaml:8: host h2 cannot reach host h1: no path of links from switch "
        "s3; the fabric must be connected"]


def test_rate_above_cluster_capacity_explains_the_numbers():
    assert errors_of(edited({16: chain(mpps="50")})) == [
        "t.yaml:15: chains ask for more than the cluster can serve: they need "
        "at least 9 cores (firewall: 5 x 1 cores for 50 Mpps at 10 Mpps each; "
        "monitor: 4 x 1 cores for 50 Mpps at 14 Mpps each) but the 2 hosts "
        "have 8 cores in all"]


def test_rates_of_chains_sharing_an_nf_add_up():
    # Each chain alone fits; together firewall needs 6 and monitor 5 > 8.
    two = chain(mpps="28") + "\n" + chain(
        name="mail", match="{ipv4_dst: 10.0.0.1/32}", mpps="28")
    (error,) = errors_of(edited({16: two}))
    assert "need at least 10 cores (firewall: 6 x 1 cores for 56 Mpps" in error
    assert parse_topology(edited({16: chain(mpps="28")}), "t.yaml")


def test_instance_bigger_than_any_host():
    assert errors_of(edited({13: "  firewall: {cores: 8, mpps: 10, config: generic-fw.rules}"})) == [
        "t.yaml:15: nf firewall needs 8 cores per instance but the largest "
        "host has 4"]


def test_every_error_is_collected():
    text = edited({4: "  - {name: s2, dpid: 0x101, colour: red}",
                   7: host2(mac='"bad"', ip="10.0.0.2", cores="0"),
                   16: chain(ingress="h1", nfs="[nat]")})
    assert errors_of(text) == [
        "t.yaml:4: switch s2: unknown key 'colour'; known keys: name, dpid",
        "t.yaml:4: switch s2: dpid 0x101 is already used by switch s1 (line 3)",
        "t.yaml:7: host h2: mac must be a MAC address like 02:00:00:00:00:01, not 'bad'",
        "t.yaml:7: host h2: ip must be an interface address with a prefix "
        "length, like 10.0.0.1/24, not '10.0.0.2'",
        "t.yaml:7: host h2: cores must be > 0, not 0",
        "t.yaml:16: chain web: ingress: 'h1' is not an edge of topology t; "
        "traffic enters the fabric only at edges: internet",
        "t.yaml:16: chain web: nfs[0]: NF type 'nat' is not in the catalog (nfs: "
        "firewall, monitor)",
    ]


def test_invalid_yaml_names_the_line():
    assert errors_of(edited({9: "  - {a: s1, a_port: 2, b: s2"})) == [
        "t.yaml:10: not valid YAML: did not find expected ',' or '}' "
        "(while parsing a flow mapping at line 9)"]


def test_not_a_mapping():
    assert errors_of("- just\n- a list\n") == [
        "t.yaml:1: topology: must be a mapping of keys, not ['just', 'a list']"]


def test_missing_file():
    with pytest.raises(TopologyError) as info:
        load_topology("/nonexistent/x.yaml")
    assert info.value.errors == [
        "/nonexistent/x.yaml: cannot read: No such file or directory"]


def test_nf_config_is_resolved_next_to_the_file(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "fw.rules").write_text("allow any any any\n")
    path = tmp_path / "t.yaml"
    path.write_text(edited({13: "  firewall: {cores: 1, mpps: 10, config: "
                                "rules/fw.rules}"}))
    topo = load_topology(path)
    assert topo.nfs["firewall"].config == str(tmp_path / "rules" / "fw.rules")
    assert topo.nfs["monitor"].config is None
    # Round trip from anywhere: a file outside the library is dumped by its
    # absolute path.
    dumped = dump_topology(topo)
    assert f'config: "{tmp_path / "rules" / "fw.rules"}"' in dumped
    elsewhere = str(tmp_path / "elsewhere" / "t.yaml")
    assert parse_topology(dumped, elsewhere) == dataclasses.replace(topo, source=elsewhere)


def test_nf_config_not_beside_the_file_comes_from_the_rule_library(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(edited({13: "  firewall: {cores: 1, mpps: 10, config: "
                                "generic-fw.rules}"}))
    library_file = os.path.join(RULE_LIBRARY, "generic-fw.rules")
    assert RULE_LIBRARY == os.path.join(REPO, "topologies", "rules")
    assert load_topology(path).nfs["firewall"].config == library_file
    # A file of that name beside the topology wins over the library's.
    (tmp_path / "generic-fw.rules").write_text("allow any any any\n")
    own = load_topology(path)
    assert own.nfs["firewall"].config == str(tmp_path / "generic-fw.rules")


def test_library_configs_are_dumped_by_name_and_load_anywhere(tmp_path):
    """A dump names library files relative to the library, so it loads back
    the same from any directory (a fresh clone at another path included)."""
    topo = load_topology(os.path.join(REPO, "topologies", "leaf-spine.yaml"))
    dumped = dump_topology(topo)
    assert "config: leaf-spine-fw.rules" in dumped and "config: nat.yaml" in dumped
    assert REPO not in dumped and 'config: "/' not in dumped
    for where in (tmp_path / "a.yaml", tmp_path / "deep" / "b.yaml"):
        where.parent.mkdir(exist_ok=True)
        where.write_text(dumped)
        assert load_topology(where) == dataclasses.replace(topo, source=str(where))


def test_nf_config_not_found_names_both_places(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(edited({13: "  firewall: {cores: 1, mpps: 10, config: "
                                "rules/none.rules}"}))
    run = _onvm("topo", "validate", str(path))
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"{path}:13: nf firewall: config file 'rules/none.rules' is neither "
        f"next to the topology file ({tmp_path}/rules/none.rules) nor in the "
        f"shipped rule library ({RULE_LIBRARY}/rules/none.rules)"]
    # Text with no file behind it resolves against the working directory.
    errors = errors_of(edited({13: "  firewall: {cores: 1, mpps: 10, config: "
                                   "none.rules}"}), "<stdin>")
    assert errors == [
        f"<stdin>:13: nf firewall: config file 'none.rules' is neither in the "
        f"working directory ({os.path.abspath('none.rules')}) nor in the "
        f"shipped rule library ({RULE_LIBRARY}/none.rules)"]


def test_shipped_files_hold_no_absolute_path():
    for path in SHIPPED:
        with open(path) as f:
            text = f.read()
        assert REPO not in text and ': "/' not in text and ": /" not in text, path


def test_round_trip_keeps_explicit_labels_and_spis():
    text = edited({7: host2(label="1000"), 16: chain(spi="4242")})
    topo = parse_topology(text, "t.yaml")
    assert topo.host("h2").label == 1000 and topo.chain("web").spi == 4242
    again = parse_topology(dump_topology(topo), "t.yaml")
    assert again == topo


def test_round_trip_quotes_what_yaml_would_misread():
    text = (BASE.replace("name: t\n", 'name: "my dc: east"\n')
                .replace("{name: internet,", '{name: "0x10",')
                .replace("ingress: internet", 'ingress: "0x10"')
                .replace("{name: web,", '{name: "yes",'))
    topo = parse_topology(text, "t.yaml")
    assert (topo.name, topo.edges[0].name, topo.chains[0].name) == (
        "my dc: east", "0x10", "yes")
    dumped = dump_topology(topo)
    assert '"0x10"' in dumped and '"yes"' in dumped
    assert parse_topology(dumped, "t.yaml") == topo


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_shipped_file_validates_and_round_trips(path):
    topo = load_topology(path)
    assert isinstance(topo, Topology) and topo.chains
    assert max(h.cores for h in topo.hosts) <= 4   # a 2-core box emulates it
    assert parse_topology(dump_topology(topo), path) == topo


def test_shipped_files_are_the_ones_asked_for():
    names = {os.path.basename(p) for p in SHIPPED}
    assert {"minimal.yaml", "leaf-spine.yaml", "fat-tree-k4.yaml"} <= names
    minimal = load_topology(os.path.join(REPO, "topologies", "minimal.yaml"))
    assert (len(minimal.hosts), len(minimal.switches), len(minimal.edges)) == (2, 1, 1)
    assert minimal.chains[0].nfs == ("firewall", "monitor")
    ls = load_topology(os.path.join(REPO, "topologies", "leaf-spine.yaml"))
    assert (len(ls.switches), len(ls.hosts), len(ls.links)) == (6, 8, 8)
    assert any("nat" in c.nfs or "ratelimit" in c.nfs for c in ls.chains)
    assert ls.chain("web").nfs == ("firewall", "ids", "lb")


def _onvm(*args):
    return subprocess.run([sys.executable, "-m", "onvm.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cli_validate_ok():
    run = _onvm("topo", "validate", "topologies/leaf-spine.yaml")
    assert run.returncode == 0, run.stderr
    assert run.stdout == ("topologies/leaf-spine.yaml: ok: 6 switches, 8 hosts, "
                          "8 links, 2 edges, 2 servers, 4 chains\n")


def test_cli_validate_errors_exit_1(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(edited({7: host2(switch="s9"), 16: chain(nfs="[nat]")}))
    run = _onvm("topo", "validate", str(path))
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        f"{path}:7: host h2: switch 's9' is not a switch of this topology",
        f"{path}:16: chain web: nfs[0]: NF type 'nat' is not in the catalog (nfs: "
        f"firewall, monitor)"]


@pytest.mark.parametrize("name", ["minimal.yaml", "leaf-spine.yaml"])
def test_shipped_firewall_rules_parse(name):
    """The catalog's config file is what the firewall NF reads."""
    fwrules = pytest.importorskip("nfs.fwrules",
                                  reason="the firewall NF's rule parser is absent")
    firewall = load_topology(os.path.join(REPO, "topologies", name)).nfs["firewall"]
    assert firewall.config.startswith(os.path.join(REPO, "topologies", "rules"))
    rules, default_allow = fwrules.load_rules({"rules": firewall.config})
    assert rules and not default_allow


def test_cli_validate_refuses_a_firewall_without_config(tmp_path):
    """What every agent would refuse (its plan names a firewall with no
    rules) validate refuses first, at the catalog entry's line."""
    path = tmp_path / "t.yaml"
    path.write_text(edited({13: "  firewall: {cores: 1, mpps: 10}"}))
    run = _onvm("topo", "validate", str(path))
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr.splitlines() == [
        f"{path}:13: nfs.firewall.config: missing, and firewall cannot start "
        f"without one: firewall config needs 'rules' (a rule file) or 'rules_text'"]


def test_nf_config_errors_name_the_catalog_line_and_the_config_line(tmp_path):
    (tmp_path / "fw.rules").write_text("allow tcp any any any 80\nallow all\n"
                                       "deny tcp any 10.0.0.0/33\n")
    (tmp_path / "lb.yaml").write_text("vip: 10.0.1\nbackends:\n"
                                      "  - {name: b1, ip: 10.0.1.1, mac: zz}\n")
    text = edited({13: "  firewall: {cores: 1, mpps: 10, config: fw.rules}\n"
                       "  lb: {cores: 1, mpps: 10,\n      config: lb.yaml}"})
    errors = errors_of(text, str(tmp_path / "t.yaml"))
    fw, lb = tmp_path / "fw.rules", tmp_path / "lb.yaml"
    assert errors == [
        f"{tmp_path}/t.yaml:13: nfs.firewall.config: {fw}:2: expected 'ACTION PROTO "
        f"SRC DST [SPORT DPORT]', got 2 fields",
        f"{tmp_path}/t.yaml:13: nfs.firewall.config: {fw}:3: bad address: '33' is "
        f"not a valid netmask",
        f"{tmp_path}/t.yaml:15: nfs.lb.config: {lb}:1: vip: must be an IPv4 address, "
        f"got '10.0.1'",
        f"{tmp_path}/t.yaml:15: nfs.lb.config: {lb}:3: backends[0].mac: must be a MAC "
        f"address like 02:00:00:00:00:01, not 'zz'",
    ]


def test_an_nf_type_nobody_here_can_check_is_a_warning(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(edited({14: "  monitor: {cores: 1, mpps: 14}\n"
                                "  acme-dpi: {cores: 1, mpps: 5}"}))
    topo = load_topology(path)
    assert len(topo.warnings) == 1 and topo.warnings[0].startswith(
        f"{path}:15: warning: nfs.acme-dpi.config: not checked: NF type 'acme-dpi' "
        f"is not installed here (installed: ")
    run = _onvm("topo", "validate", str(path))
    assert run.returncode == 0, run.stderr
    assert run.stderr == topo.warnings[0] + "\n"
    assert run.stdout.startswith(f"{path}: ok: ")


# --- servers, pools, symmetric chains, NAT slices (issue 9) -----------------

# Line numbers: 6-7 hosts, 11 the edge, 13-14 servers, 16-18 the catalog,
# 20 the chain.
SERVED = "".join(BASE.splitlines(True)[:11]) + """\
servers:
  - {name: web1, switch: s2, port: 5, mac: "02:00:00:00:01:10", ip: 10.0.1.10/24}
  - {name: web2, switch: s2, port: 6, mac: "02:00:00:00:01:11", ip: 10.0.1.11/24}
nfs:
  nat: {cores: 1, mpps: 1, config: nat.yaml}
  lb: {cores: 1, mpps: 1, config: generic-lb.yaml}
  monitor: {cores: 1, mpps: 14}
chains:
  - {name: web, ingress: internet, egress: [web1, web2], match: {ipv4_dst: 10.0.1.100/32}, nfs: [nat, lb], mpps: 1}
"""


def served(changes):
    return edit(SERVED, changes)


def web1(**fields):
    """Line 13 (server web1) with some fields changed."""
    return flow_item({"name": "web1", "switch": "s2", "port": "5",
                      "mac": '"02:00:00:00:01:10"', "ip": "10.0.1.10/24"}, fields)


def web(**fields):
    """Line 20 (chain web) with some fields changed."""
    return flow_item({"name": "web", "ingress": "internet", "egress": "[web1, web2]",
                      "match": "{ipv4_dst: 10.0.1.100/32}", "nfs": "[nat, lb]",
                      "mpps": "1"}, fields)


SERVER_CASES = [
    ("server-mac-of-a-host", {13: web1(mac='"02:00:00:00:00:02"')},
     ["t.yaml:13: server web1: mac 02:00:00:00:00:02 is already used by host h2 (line 7)"]),
    ("server-ip-of-a-host", {13: web1(ip="10.0.0.1/16")},
     ["t.yaml:13: server web1: address 10.0.0.1 is already used by host h1 (line 6)"]),
    ("server-mac-of-a-server", {14: "  - {name: web2, switch: s2, port: 6, mac: "
                                    '"02:00:00:00:01:10", ip: 10.0.1.11/24}'},
     ["t.yaml:14: server web2: mac 02:00:00:00:01:10 is already used by server web1 "
      "(line 13)"]),
    ("server-on-a-host-port", {13: web1(port="1")},
     ["t.yaml:13: server web1: port s2:1 is already used by host h2 (line 7)"]),
    ("edge-on-a-server-port", {11: "  - {name: internet, switch: s2, port: 5}"},
     ["t.yaml:11: edge internet: port s2:5 is already used by server web1 (line 13)"]),
    ("server-named-like-a-host", {13: web1(name="h1"), 20: web(egress="web2")},
     ["t.yaml:13: server h1: name h1 is already used by host h1 (line 6)"]),
    ("server-on-missing-switch", {13: web1(switch="s9"), 20: web(egress="web2")},
     ["t.yaml:13: server web1: switch 's9' is not a switch of this topology"]),
    ("server-missing-mac", {13: web1(mac=None), 20: web(egress="web2")},
     ["t.yaml:13: server web1: missing key 'mac'"]),
    ("symmetric-toward-an-edge", {20: web(egress="internet", symmetric="true")},
     ["t.yaml:20: chain web: symmetric needs a server or a pool of servers as "
      "egress; edge internet has no way back"]),
    ("symmetric-toward-a-host", {20: web(egress="h2", symmetric="true")},
     ["t.yaml:20: chain web: symmetric needs a server or a pool of servers as "
      "egress; host h2 has no way back"]),
    ("symmetric-not-a-boolean", {20: web(symmetric="3")},
     ["t.yaml:20: chain web: symmetric must be true or false, not 3"]),
    ("pool-without-lb", {20: web(nfs="[nat, monitor]")},
     ["t.yaml:20: chain web: egress: a pool of servers needs an lb in the chain's "
      "nfs to spread flows over its servers"]),
    ("pool-with-a-host", {20: web(egress="[web1, h2]")},
     ["t.yaml:20: chain web: egress[1]: host h2 is not a server of topology t; a "
      "pool holds servers only"]),
    ("pool-with-a-server-twice", {20: web(egress="[web1, web1]")},
     ["t.yaml:20: chain web: egress[1]: server web1 is in the pool twice"]),
    ("egress-not-a-name", {20: web(egress="3")},
     ["t.yaml:20: chain web: egress must be a name or a list of names, not 3"]),
    ("nat-needs-more-instances-than-slices",
     {6: "  - {name: h1, switch: s1, port: 1, mac: \"02:00:00:00:00:01\", ip: 10.0.0.1/24, cores: 40}",
      20: web(mpps="17")},
     ["t.yaml:16: nf nat: the chains through nat need at least 17 instances but "
      "port_range is cut into only 16 slices, one per instance (raise slices)"]),
]


@pytest.mark.parametrize("changes,expected", [c[1:] for c in SERVER_CASES],
                         ids=[c[0] for c in SERVER_CASES])
def test_server_error_case(changes, expected):
    assert errors_of(served(changes)) == expected


def test_servers_pools_and_symmetric_defaults():
    text = served({20: web() + "\n" + web(name="one", egress="web1", nfs="[nat]",
                                          match="{ipv4_dst: 10.0.1.10/32}") + "\n"
                   + web(name="plain", egress="web2", nfs="[monitor]",
                         match="{ipv4_dst: 10.0.1.11/32}") + "\n"
                   + web(name="out", egress="internet", nfs="[nat]",
                         match="{ipv4_dst: 10.0.0.1/32}") + "\n"
                   + web(name="asked", egress="web1", nfs="[nat]", symmetric="false",
                         match="{ipv4_dst: 10.0.1.12/32}")})
    topo = parse_topology(text, "t.yaml")
    assert topo.server("web2").ip == "10.0.1.11/24" and topo.server("web1").port == 5
    pool = topo.chain("web")
    assert (pool.egress, pool.pool, pool.symmetric) == ("web1", ("web1", "web2"), True)
    assert (topo.chain("one").pool, topo.chain("one").symmetric) == ((), True)
    assert topo.chain("plain").symmetric is False      # no stateful NF
    assert topo.chain("out").symmetric is False        # an edge answers nothing back
    assert topo.chain("asked").symmetric is False      # said so
    assert parse_topology(dump_topology(topo), "t.yaml") == topo
    assert "symmetric: false" in dump_topology(topo)
    assert "egress: [web1, web2]" in dump_topology(topo)


def test_servers_must_be_reachable():
    text = served({4: "  - {name: s2, dpid: 0x102}\n  - {name: s3, dpid: 0x103}",
                   13: web1(switch="s3")})
    assert errors_of(text) == [
        "t.yaml:14: server web1 cannot reach host h1: no path of links from "
        "switch s3; the fabric must be connected"]


def test_nat_port_range_too_small_for_its_slices(tmp_path):
    (tmp_path / "nat.yaml").write_text(
        "external_ip: 198.51.100.1\ninternal: 10.0.0.0/8\nport_range: [1024, 2000]\n")
    path = tmp_path / "t.yaml"
    path.write_text(SERVED)
    assert errors_of(SERVED, str(path)) == [
        f"{path}:16: nf nat: port_range [1024, 2000] cut into 16 slices gives each "
        f"nat instance 61 ports; a slice needs at least 64 (widen port_range or "
        f"lower slices)"]


def test_cli_validate_counts_servers(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(SERVED)
    done = _onvm("topo", "validate", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"{path}: ok: 2 switches, 2 hosts, 1 link, 1 edge, "
                           f"2 servers, 1 chain\n")
