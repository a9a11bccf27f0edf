"""`onvm bench flowcost`: two managers in one process, many flows against
few, taking turns; a short run gives both figures and their difference,
and bad arguments are refused with a clear message."""
import json
import subprocess
import sys

from onvm.cli import main


def test_short_run_reports_both_flow_counts():
    out = subprocess.run([sys.executable, "-m", "onvm.cli", "bench", "flowcost", "--chain",
                          "firewall,monitor,forward", "--flows", "20000", "--against", "1000",
                          "--turns", "2", "--turn-packets", "100000", "--json"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    got = json.loads(out)
    assert set(got["flows"]) == {"20000", "1000"}
    for r in got["flows"].values():
        assert r["fastpath_cycles_per_packet"] > 0 and r["drops"] == {}
    assert got["many_over_few_speed"] > 0


def test_bad_arguments_are_refused(capsys):
    assert main(["bench", "flowcost", "--chain", "firewall", "--against", "5000",
                 "--flows", "1000"]) == 2
    assert "--against (5000) must be at least 1 and below --flows (1000)" \
        in capsys.readouterr().err
    assert main(["bench", "flowcost", "--chain", "nosuchnf"]) == 2
    assert "no NF type nosuchnf" in capsys.readouterr().err
    assert main(["bench", "flowcost", "--chain", "firewall", "--turns", "1"]) == 2
