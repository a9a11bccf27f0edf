"""A store that lasts: `onvm emulate` (real etcd with a 16 MiB quota, real
agents, OVS, the controller) runs traffic through a chain whose firewall
has 1000 rules, and the store's size stays flat: etcd's dbSize and
dbSizeInUse (its /v3/maintenance/status) grow by less than 1 MiB over the
soak, no NOSPACE alarm is raised, and each host's key holds a small
summary (contracts.statsum), not the firewall's 1000 rule texts.

The soak lasts SOAK_SECONDS (20 s by default, for `make test`: the old
full stats, 74.6 KB a second a host, would grow the store by 3 MB); a longer
one: `ONVM_SOAK_SECONDS=600 python -m pytest -s tests/test_store_soak.py`
(BENCHMARKS.md, "Store size under stats").  With -s it prints the figures.
"""
import base64
import json
import os
import re
import subprocess
import sys
import time

import pytest

from onvm import procs
from onvm.services import wait_for
from test_emulate import need_root_and_tools
from test_emulate_cli import MINIMAL, REPO, _children, start_emulate

QUOTA = 16 * 1024 * 1024
SOAK_SECONDS = float(os.environ.get("ONVM_SOAK_SECONDS", "20"))
RULES = 1000

# Run inside etcd's network namespace: the store's status, alarms, and the
# size of every /onvm/stats/ value.
PROBE = """
import base64, json, sys, urllib.request
url = sys.argv[1]
def call(path, body):
    req = urllib.request.Request(url + "/v3" + path, data=json.dumps(body).encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)
key = base64.b64encode(b"/onvm/stats/").decode()
end = base64.b64encode(b"/onvm/stats0").decode()
kvs = call("/kv/range", {"key": key, "range_end": end}).get("kvs", [])
print(json.dumps({"status": call("/maintenance/status", {}),
                  "alarms": call("/maintenance/alarm", {"action": "GET"}).get("alarms", []),
                  "stats": {base64.b64decode(kv["key"]).decode():
                            base64.b64decode(kv["value"]).decode() for kv in kvs}}))
"""


def topology(tmp_path):
    """minimal.yaml with a firewall of RULES rules (the chain's own allow last)."""
    rules = [f"allow tcp any 10.{9 + i // 65536}.{i // 256 % 256}.{i % 256}/32 any {1024 + i}"
             for i in range(RULES - 3)]
    rules += ["allow tcp any 10.0.0.2/32 any 80", "allow icmp any any", "default deny"]
    (tmp_path / "fw1000.rules").write_text("\n".join(rules) + "\n")
    text = open(MINIMAL).read().replace("rules/minimal-fw.rules", "fw1000.rules")
    assert "fw1000.rules" in text
    path = tmp_path / "soak.yaml"
    path.write_text(text)
    return str(path)


def probe(etcd_pid, url):
    out = subprocess.run(["nsenter", f"--net=/proc/{etcd_pid}/ns/net", sys.executable,
                          "-c", PROBE, url], cwd=REPO, env=procs.child_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _option(argv, name):
    return argv[argv.index(name) + 1]


@pytest.mark.etcd
@pytest.mark.ovs
@pytest.mark.netns
@pytest.mark.timeout(SOAK_SECONDS + 300)
def test_the_store_stays_flat_under_a_soak_of_stats(tmp_path):
    need_root_and_tools()
    # The run: the soak, and before it the wait for both agents' stats
    # (they publish as soon as they apply their first plan, before the
    # live view shows), with room for a loaded machine.
    run = SOAK_SECONDS + 14
    proc, view, reader = start_emulate([topology(tmp_path), "--seconds", str(run), "--json",
                                        "--etcd-quota-bytes", str(QUOTA)])
    try:
        etcd, = [pid for pid, name in _children(proc.pid).items() if name == "etcd"]
        with open(f"/proc/{etcd}/cmdline") as f:
            argv = f.read().split("\0")
        assert _option(argv, "--quota-backend-bytes") == str(QUOTA)
        url = _option(argv, "--listen-client-urls")
        rundir = os.path.dirname(os.path.dirname(_option(argv, "--data-dir")))
        # Both agents have put a summary with the firewall running.
        wait_for(lambda: len(probe(etcd, url)["stats"]) == 2, 60, "both agents' stats")
        start, t0 = probe(etcd, url), time.monotonic()
        time.sleep(SOAK_SECONDS)
        end, t1 = probe(etcd, url), time.monotonic()
        stdout = proc.stdout.read()
        proc.wait(180)
        logs = {name: open(os.path.join(rundir, name)).read()
                for name in ("controller.log", "agent-h1.log", "agent-h2.log")}
    finally:
        procs.stop(proc, "onvm emulate", grace=30.0)   # it tears down on SIGTERM
    reader.join(10)
    text = "".join(view)
    assert proc.returncode == 0, text[-3000:]
    web = json.loads(stdout.strip().splitlines()[-1])["chains"]["web"]
    assert web["received"] > 0, (web, text[-3000:])

    assert start["alarms"] == [] and end["alarms"] == [], end["alarms"]
    size = {k: (int(start["status"][k]), int(end["status"][k]))
            for k in ("dbSize", "dbSizeInUse")}
    revisions = int(end["status"]["header"]["revision"]) - \
        int(start["status"]["header"]["revision"])
    for key, (a, b) in size.items():
        assert b - a < 1024 * 1024, f"{key} grew from {a} to {b} bytes in {t1 - t0:.0f} s"
    # Each host's key: a summary, without the rule texts, firewall counters in.
    summaries = {k: json.loads(v) for k, v in end["stats"].items()}
    firewalls = [i for s in summaries.values() for i in s["instances"].values()
                 if i["nf"] == "firewall"]
    assert firewalls and firewalls[0]["counters"]["passed"] > 0, summaries
    assert all("rules" not in v and len(v) < 16384 for v in end["stats"].values())
    # The agents' full stats (logged when a plan changed them): what they
    # put every second before.
    full = [int(re.findall(r"full stats: (\d+) bytes", logs[name])[-1])
            for name in ("agent-h1.log", "agent-h2.log")]
    assert len(full) == 2 and max(full) > 50 * max(len(v) for v in end["stats"].values())
    assert "NOSPACE" not in "".join(logs.values())
    print(f"\nsoak {t1 - t0:.0f} s, quota {QUOTA}: dbSize {size['dbSize'][0]} -> "
          f"{size['dbSize'][1]}, dbSizeInUse {size['dbSizeInUse'][0]} -> "
          f"{size['dbSizeInUse'][1]}, {revisions} revisions; summary bytes per host "
          f"{sorted(len(v) for v in end['stats'].values())}, full stats bytes per host "
          f"{sorted(full)}; web sent {web['sent']} received {web['received']}")
