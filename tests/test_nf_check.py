"""`onvm nf check`: an NF's config built as an agent builds it, reported
like `suricata -T`; exit 1 when it cannot run."""
import json
import os
import subprocess
import sys

RULES = os.path.join(os.path.dirname(__file__), "data", "et-style.rules")


def nf_check(*args):
    p = subprocess.run([sys.executable, "-m", "onvm.cli", "nf", "check", *args],
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def test_ids_ruleset_loaded_and_skipped_as_json():
    rc, out, _ = nf_check("ids", "--config", RULES, "--json")
    assert rc == 0
    result = json.loads(out)
    assert result["ok"] and result["loaded"] >= 10
    assert {(s["sid"], s["keyword"]) for s in result["skipped"]} == {
        (2900013, "xbits")}
    assert all(s["line"] > 0 and s["why"] for s in result["skipped"])


def test_ids_text_report_names_skipped_rules(tmp_path):
    rc, out, err = nf_check("ids", "--config", RULES)
    assert rc == 0 and "rules loaded, 1 skipped" in out
    assert "sid 2900013: xbits:" in err


def test_a_config_that_cannot_run_exits_1(tmp_path):
    bad = tmp_path / "bad.rules"
    bad.write_text('alert tcp any any -> any any (content:"x"; xbits:set,a,track ip_src; sid:1;)\n')
    rc, out, _ = nf_check("ids", "--config", str(bad), "--json")
    result = json.loads(out)
    assert rc == 1 and not result["ok"]
    assert result["error"].startswith(f"{bad}:1: option 'xbits' is not run")
    rc, _, err = nf_check("lb", "--config", '{"vip": "x"}')
    assert rc == 1 and "vip: must be an IPv4 address" in err
    rc, _, err = nf_check("firewall", "--config", "{not json")
    assert rc == 1 and "--config: not a JSON object" in err
