"""The generators: right sizes, valid (proved by the loader, not assumed),
deterministic, chains that vary and fit, fast enough for the placement
benchmark, and `onvm topo gen` as a user runs it."""
import ipaddress
import os
import subprocess
import sys

import pytest
import yaml

from controller.topogen import CATALOG, GENERIC_CONFIGS, fat_tree, leaf_spine
from controller.topology import (RULE_LIBRARY, dump_topology, load_topology,
                                 parse_topology)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reparsed(topo):
    """Through YAML and the loader: every check of a hand-written file."""
    return parse_topology(dump_topology(topo), topo.source)


@pytest.mark.parametrize("k", [2, 4, 6, 8])
def test_fat_tree_sizes(k):
    topo = reparsed(fat_tree(k))
    assert len(topo.hosts) == k ** 3 // 4
    assert len(topo.switches) == 5 * k * k // 4
    assert len(topo.links) == k ** 3 // 2
    assert len(topo.edges) == min(2, (k // 2) ** 2)
    assert all(e.switch.startswith("core") for e in topo.edges)


def test_fat_tree_ports_follow_the_layout():
    topo = fat_tree(4)
    assert topo.host("h1").switch == "pod1-tor1" and topo.host("h1").port == 1
    tor_uplinks = sorted(l.a_port for l in topo.links if l.a == "pod1-tor1")
    assert tor_uplinks == [3, 4]
    core_ports = sorted(l.b_port for l in topo.links if l.b == "core1")
    assert core_ports == [1, 2, 3, 4]     # one per pod
    assert topo.edge("internet").port == 5


@pytest.mark.parametrize("spines,leaves,per_leaf", [(1, 1, 1), (2, 4, 2), (4, 16, 8)])
def test_leaf_spine_sizes(spines, leaves, per_leaf):
    topo = reparsed(leaf_spine(spines, leaves, per_leaf))
    assert len(topo.hosts) == leaves * per_leaf
    assert len(topo.switches) == spines + leaves
    assert len(topo.links) == spines * leaves
    assert [e.switch for e in topo.edges] == [f"spine{i + 1}" for i in
                                              range(min(2, spines))]


def test_catalog_is_realistic_and_complete():
    assert set(CATALOG) == {"firewall", "ids", "lb", "nat", "ratelimit", "ddos",
                            "monitor", "forward"}
    # The IDS is the slowest per core, the forwarder the fastest.
    per_core = {n: t.mpps / t.cores for n, t in CATALOG.items()}
    assert min(per_core, key=per_core.get) == "ids"
    assert max(per_core, key=per_core.get) == "forward"


def test_chains_vary_fit_and_reach_hosts_and_edges():
    topo = reparsed(fat_tree(4, chains=30))
    assert len(topo.chains) == 30
    assert len({c.nfs for c in topo.chains}) >= 6
    assert {c.ingress for c in topo.chains} == {"internet", "wan"}
    egress_kinds = {"edge" if c.egress in ("internet", "wan") else "host"
                    for c in topo.chains}
    assert egress_kinds == {"edge", "host"}
    assert len({c.mpps for c in topo.chains}) > 10
    assert [c.spi for c in topo.chains] == list(range(16, 46))


def test_more_chains_than_hosts_keep_classifiers_distinct():
    topo = reparsed(leaf_spine(1, 2, 2, chains=40))   # 4 hosts, one edge
    keys = {(c.ingress, tuple(sorted(c.match.items()))) for c in topo.chains}
    assert len(keys) == 40


def test_too_many_chains_for_the_cluster_is_refused():
    with pytest.raises(ValueError, match="ask for fewer chains or more hosts"):
        fat_tree(2, chains=20)


@pytest.mark.parametrize("bad", [0, 3, 66])
def test_fat_tree_rejects_bad_k(bad):
    with pytest.raises(ValueError, match=f"k must be an even number 2..64, not {bad}"):
        fat_tree(bad)


def test_deterministic():
    assert dump_topology(fat_tree(4, chains=24)) == dump_topology(fat_tree(4, chains=24))
    assert dump_topology(leaf_spine(2, 4, 2, 5)) == dump_topology(leaf_spine(2, 4, 2, 5))


def test_shipped_fat_tree_is_what_the_generator_makes():
    shipped = load_topology(os.path.join(REPO, "topologies", "fat-tree-k4.yaml"))
    made = fat_tree(4, chains=8)
    assert shipped.with_chains(()) == parse_topology(
        dump_topology(made.with_chains(())), shipped.source)
    assert shipped.chains == made.chains


def test_fat_tree_k16_with_2000_chains_is_valid():
    topo = fat_tree(16, chains=2000)
    text = dump_topology(topo)
    assert len(topo.hosts) == 1024 and len(topo.switches) == 320
    again = parse_topology(text, topo.source)
    assert len(again.chains) == 2000
    # 100 nat instances: more than nat.yaml's 16 port slices
    assert again.nfs["nat"].config.endswith("/nat.many.yaml")
    assert fat_tree(4, chains=24).nfs["nat"].config.endswith("/nat.yaml")


def _onvm(*args):
    return subprocess.run([sys.executable, "-m", "onvm.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cli_gen_fat_tree(tmp_path):
    run = _onvm("topo", "gen", "fat-tree", "--k", "4", "--chains", "6")
    assert run.returncode == 0, run.stderr
    path = tmp_path / "ft.yaml"
    path.write_text(run.stdout)
    topo = load_topology(path)
    assert (len(topo.hosts), len(topo.chains)) == (16, 6)
    check = _onvm("topo", "validate", str(path))
    assert check.returncode == 0 and "16 hosts" in check.stdout


def test_cli_gen_leaf_spine():
    run = _onvm("topo", "gen", "leaf-spine", "--spines", "2", "--leaves", "3",
                "--hosts-per-leaf", "2")
    assert run.returncode == 0, run.stderr
    topo = parse_topology(run.stdout, "<stdout>")
    assert (len(topo.switches), len(topo.hosts), len(topo.chains)) == (5, 6, 0)


def test_cli_gen_bad_arguments():
    run = _onvm("topo", "gen", "fat-tree", "--k", "5")
    assert run.returncode == 2
    assert run.stderr == "onvm topo gen: fat tree: k must be an even number 2..64, not 5\n"


# Big enough that chains reach later rounds (high ports) and transit chains.
MANY = [pytest.param(lambda: fat_tree(8, chains=300), id="fat-tree-k8"),
        pytest.param(lambda: leaf_spine(2, 8, 4, chains=100), id="leaf-spine-2x8")]


def test_catalog_configs_come_from_the_rule_library():
    """Every NF that refuses to start without a config gets a generic one,
    by an absolute path (agents open it as is) into the shipped library."""
    assert set(GENERIC_CONFIGS) == {"firewall", "ids", "lb", "nat", "ratelimit", "ddos"}
    for name, nf in CATALOG.items():
        if name in GENERIC_CONFIGS:
            assert nf.config == os.path.join(RULE_LIBRARY, GENERIC_CONFIGS[name])
            assert os.path.isfile(nf.config), nf.config
        else:
            assert nf.config is None
    dumped = dump_topology(fat_tree(4, chains=8))
    for name, file in GENERIC_CONFIGS.items():
        assert f"config: {file}}}" in dumped      # by bare name, no path
    assert RULE_LIBRARY not in dumped


def _first_match(rules, default_allow, proto, dst, dport):
    """The firewall's semantics (nfs/fwrules.py): first matching rule wins."""
    for rule in rules:
        if rule.proto not in (None, proto):
            continue
        if rule.dst is not None and ipaddress.ip_address(dst) not in \
                ipaddress.ip_network(rule.dst):
            continue
        if not rule.dport[0] <= dport <= rule.dport[1]:
            continue
        return rule.allow
    return default_allow


def _classified(chain):
    """(proto, destination address, destination port) of a chain's traffic."""
    proto = chain.match["ip_proto"]
    port = chain.match.get("tcp_dst", chain.match.get("udp_dst"))
    return proto, chain.match["ipv4_dst"].split("/")[0], port


@pytest.mark.parametrize("make", MANY)
def test_generic_firewall_passes_every_generated_chain(make):
    fwrules = pytest.importorskip("nfs.fwrules")
    topo = make()
    rules, default_allow = fwrules.load_rules({"rules": topo.nfs["firewall"].config})
    walled = [c for c in topo.chains if "firewall" in c.nfs]
    assert len({_classified(c)[2] for c in walled}) >= 5   # well-known and high ports
    for chain in walled:
        assert _first_match(rules, default_allow, *_classified(chain)), chain
    # ICMP passes; what no chain sends is refused.
    assert _first_match(rules, default_allow, 1, "10.0.0.2", 0)
    assert not _first_match(rules, default_allow, 6, "10.0.0.2", 22)
    assert not _first_match(rules, default_allow, 17, "192.0.2.1", 53)


def test_generic_ids_rules_are_web_signatures():
    idsrules = pytest.importorskip("nfs.idsrules")
    rules, _ = idsrules.load_rules({"rules": CATALOG["ids"].config})
    web = [r for r in rules if r.proto == 6 and r.dport == [(80, 80, False)]]
    assert any(r.action == "drop" for r in web) and any(r.action == "alert" for r in web)
    assert all(r.patterns for r in rules)


@pytest.mark.parametrize("make", MANY)
def test_generic_lb_passes_generated_chains_untouched(make):
    """The lb balances only packets to its VIP: no generated chain or host
    uses that address, so each chain's packets reach its egress host."""
    with open(CATALOG["lb"].config) as f:
        config = yaml.safe_load(f)
    vip = ipaddress.ip_address(config["vip"])
    topo = make()
    for chain in topo.chains:
        if "lb" in chain.nfs:
            assert vip not in ipaddress.ip_network(chain.match["ipv4_dst"]), chain
    assert all(ipaddress.ip_interface(h.ip).ip != vip for h in topo.hosts)


def test_cli_gen_output_loads_from_any_directory(tmp_path):
    """`onvm topo gen` writes to stdout: the file lands wherever the user
    puts it, and its configs still resolve (to the library)."""
    run = _onvm("topo", "gen", "leaf-spine", "--spines", "2", "--leaves", "2",
                "--hosts-per-leaf", "2", "--chains", "4")
    assert run.returncode == 0, run.stderr
    assert REPO not in run.stdout
    path = tmp_path / "deep" / "dc.yaml"
    path.parent.mkdir()
    path.write_text(run.stdout)
    topo = load_topology(path)
    assert {n: t.config for n, t in topo.nfs.items()} == \
        {n: t.config for n, t in CATALOG.items()}
