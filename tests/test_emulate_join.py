"""`onvm emulate --add-host NAME@SWITCH:PORT@S` (onvm.joining,
onvm.schedule): the option read and checked, the new host's addresses,
the run's events about it on plain data, and one real run of
topologies/minimal.yaml in which a server plugged in at 4 s joins and,
once the file's hosts are drained, runs the chain."""
import argparse
import json
import os
import subprocess
import sys

import pytest

from onvm.errors import UsageError
from onvm.joining import join_news
from onvm.schedule import schedule
from conftest import emulate_env
from test_emulate import need_root_and_tools

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINIMAL = os.path.join(REPO, "topologies", "minimal.yaml")


def _topo():
    from controller.topology import load_topology
    return load_topology(MINIMAL)


def _options(add=(), drain=()):
    return argparse.Namespace(kill_host=[], restart_controller=None, raise_rate=[],
                              add_host=list(add), drain_host=list(drain))


def test_add_host_is_scheduled_with_addresses_nobody_has():
    events = schedule(_options(add=["h9@s1:5@4", "h8@s1:6@2.5"]), _topo())
    assert events == [
        (2.5, "plug in host h8 at s1 port 6 (mac 02:00:00:00:fe:01, ip 10.0.0.253/24) "
              "and start its agent", "add-host",
         ("h8", "s1", 6, "02:00:00:00:fe:01", "10.0.0.253/24")),
        (4.0, "plug in host h9 at s1 port 5 (mac 02:00:00:00:fe:00, ip 10.0.0.254/24) "
              "and start its agent", "add-host",
         ("h9", "s1", 5, "02:00:00:00:fe:00", "10.0.0.254/24"))]


@pytest.mark.parametrize("spec, message", [
    ("h9@s1:5", "--add-host 'h9@s1:5': 's1:5' is not a number of seconds"),
    ("h9@s1@4", "--add-host 'h9@s1': expected NAME@SWITCH:PORT@SECONDS (PORT a switch "
                "port number of 1 or more)"),
    ("h9@s1:0@4", "--add-host 'h9@s1:0': expected NAME@SWITCH:PORT@SECONDS (PORT a "
                  "switch port number of 1 or more)"),
    ("h9@s7:5@4", f"--add-host 'h9@s7:5': no switch 's7' in {MINIMAL}; known: s1"),
])
def test_add_host_names_what_does_not_fit(spec, message):
    with pytest.raises(UsageError) as err:
        schedule(_options(add=[spec]), _topo())
    assert str(err.value) == message


def test_join_news_says_each_thing_once():
    seen = {}
    assert join_news({"h9": 0}, {}, "", seen) == []
    plan = {"node_label": 18, "instances": []}
    assert join_news({"h9": 0}, {"h9": plan}, "", seen) == \
        ["host h9 joined (node label 18): it runs no instance yet"]
    assert join_news({"h9": 0}, {"h9": plan}, "", seen) == []
    plan = {"node_label": 18, "instances": [{"nf": "monitor", "id": 2},
                                            {"nf": "firewall", "id": 1}]}
    assert join_news({"h9": 0}, {"h9": plan}, "", seen) == \
        ["host h9 now runs firewall#1, monitor#2"]
    log = ("x\nINFO join refused, nothing changed: host h8 (seen at s1 port 6): mac: "
           "02:00:00:00:00:01 is already host h1's\nmore\n")
    assert join_news({"h8": 0}, {}, log, seen) == [
        "host h8 refused by the controller: mac: 02:00:00:00:00:01 is already host h1's"]
    assert join_news({"h8": 0}, {}, log, seen) == []


@pytest.mark.ovs
@pytest.mark.etcd
@pytest.mark.netns
@pytest.mark.timeout(180)
def test_emulate_add_host_joins_and_the_summary_says_what_it_received():
    need_root_and_tools()
    res = subprocess.run(
        [sys.executable, "-m", "onvm.cli", "emulate", MINIMAL, "--seconds", "24", "--json",
         "--add-host", "h9@s1:5@3", "--drain-host", "h1@11", "--drain-host", "h2@11"],
        cwd=REPO, env=emulate_env(), capture_output=True, text=True, timeout=170)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    events = summary["events"]
    joined = [e for e in events if "host h9 joined (node label 18)" in e]
    assert joined, events
    runs = [e for e in events if "host h9 now runs" in e]
    assert runs and "firewall#" in runs[-1] and "monitor#" in runs[-1], events
    assert summary["hosts"]["h9"]["state"] == "up"
    assert {"h9"} == {h for nf in summary["chains"]["web"]["nfs"] for h in nf["hosts"]}
    assert summary["chains"]["web"]["received"] > 0
