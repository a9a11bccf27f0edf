"""`onvm bench controller`: the figures it reports are the controller's
own, and the command prints DESIGN.md's object.  No speed is asserted here
(BENCHMARKS.md has the figures)."""
import json
import os
import subprocess
import sys

from controller import bench, fabric, flows, placement, plans, topogen

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"compile_ms", "host_loss_ms", "switches_changed", "rules_total",
        "rules_max_switch", "stats_ingest_ms_per_s"}


def test_reported_rules_and_changes_are_the_full_compiles():
    topo = topogen.fat_tree(4, chains=24)
    got = bench.bench_controller(topo)
    assert KEYS <= set(got)
    graph = fabric.build_graph(topo)
    placed = placement.place(topo)
    before = flows.switch_rules(topo, graph, plans.ingress_groups(topo, placed))
    assert got["rules_total"] == sum(len(r.flows) for r in before.values())
    assert got["rules_max_switch"] == max(len(r.flows) for r in before.values())
    after = flows.switch_rules(topo, graph, plans.ingress_groups(
        topo, placement.replace_after_host_loss(topo, placed, got["lost_host"])))
    differ = [d for d in before if before[d] != after[d]]
    assert got["switches_changed"] == len(differ) > 0


def test_cli_prints_the_object(tmp_path):
    path = tmp_path / "ft4.yaml"
    gen = subprocess.run([sys.executable, "-m", "onvm.cli", "topo", "gen", "fat-tree",
                          "--k", "4", "--chains", "8"], cwd=REPO, capture_output=True,
                         text=True, check=True)
    path.write_text(gen.stdout)
    out = subprocess.run([sys.executable, "-m", "onvm.cli", "bench", "controller",
                          "--topology", str(path), "--json"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert KEYS <= set(result) and result["hosts"] == 16 and result["chains"] == 8
