"""`onvm emulate` as a command: its options, its live view and summary
(onvm.live, onvm.schedule) on plain data, its exit codes, and one real
run of topologies/minimal.yaml with `--json` during which the store stops
answering for 6 s (etcd SIGSTOPped, then SIGCONT): the run must go on,
say so, and end with the summary of DESIGN.md.

Whether the traffic survives such a pause is the controller's and the
agents' to promise (tests of their own); here the emulation must.
"""
import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from onvm import live, procs
from onvm.errors import UsageError
from onvm.schedule import schedule
from onvm.services import wait_for
from conftest import emulate_env
from test_emulate import need_root_and_tools

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINIMAL = os.path.join(REPO, "topologies", "minimal.yaml")
ONVM = [sys.executable, "-m", "onvm.cli"]


def _topo():
    from controller.topology import load_topology
    return load_topology(MINIMAL)


def _options(kill=(), restart=None, rate=()):
    return argparse.Namespace(kill_host=list(kill), restart_controller=restart,
                              raise_rate=list(rate))


# ---------------------------------------------------------------- options

def test_schedule_orders_events_by_time():
    events = schedule(_options(kill=["h1@12"], restart="3.5", rate=["web=2@7"]), _topo())
    assert events == [(3.5, "restart the controller", "restart", None),
                      (7.0, "raise web to 2.0 Mpps", "rate", ("web", 2.0)),
                      (12.0, "fail h1 (its agent killed, its link down)", "kill", "h1")]


@pytest.mark.parametrize("options, message", [
    (_options(kill=["h9@3"]), f"no host 'h9' in {MINIMAL}; known: h1, h2"),
    (_options(kill=["h1"]), "--kill-host 'h1': expected VALUE@SECONDS"),
    (_options(kill=["h1@soon"]), "--kill-host 'h1@soon': 'soon' is not a number of seconds"),
    (_options(rate=["web@3"]), "--raise-rate 'web@3': expected CHAIN=MPPS@SECONDS"),
    (_options(rate=["web=fast@3"]), "--raise-rate 'web=fast@3': expected CHAIN=MPPS@SECONDS"),
    (_options(rate=["mail=2@3"]), f"no chain 'mail' in {MINIMAL}; known: web"),
    (_options(restart="later"), "--restart-controller 'later': expected SECONDS"),
])
def test_schedule_names_the_option_that_does_not_fit(options, message):
    with pytest.raises(UsageError) as err:
        schedule(options, _topo())
    assert str(err.value) == message


def test_cli_turns_a_usage_error_into_exit_code_1_and_a_message():
    res = subprocess.run(ONVM + ["emulate", MINIMAL, "--kill-host", "h9@3"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res
    assert res.stderr == f"onvm emulate: no host 'h9' in {MINIMAL}; known: h1, h2\n"
    assert res.stdout == ""


def test_cli_refuses_an_etcd_cluster_of_no_member():
    res = subprocess.run(ONVM + ["emulate", MINIMAL, "--etcd-members", "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res
    assert res.stderr == ("onvm emulate: --etcd-members 0: give 1 or more (3 survives "
                          "one member's loss)\n")


def test_emulation_timings_out_of_range_are_refused_before_anything_starts():
    from onvm.emulate import Emulation
    from onvm.errors import EmulationError
    with pytest.raises(EmulationError, match=r"^publish_interval: 0: seconds, more than 0$"):
        Emulation(MINIMAL, publish_interval=0)
    with pytest.raises(EmulationError, match=r"^drain_seconds: -1: seconds, 0 or more$"):
        Emulation(MINIMAL, drain_seconds=-1)


def test_cli_says_the_emulation_needs_root():
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"):
        pytest.skip("needs root to drop to another user (setpriv)")
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
                         + ONVM + ["emulate", MINIMAL, "--seconds", "1"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stderr) == (
        1, "onvm emulate: needs root (network namespaces, OVS, Mininet)\n"), res



SYMMETRIC = os.path.join(REPO, "topologies", "symmetric.yaml")


@pytest.mark.parametrize("old, new, at, message", [
    ("    egress: [web1, web2]      # a pool: the lb picks the server",
     "    egress: internet", "  - name: web",
     "chain web: symmetric needs a server or a pool of servers as egress; "
     "edge internet has no way back"),
    ('mac: "02:00:00:00:01:11", ip: 10.0.3.11/16}',
     'mac: "02:00:00:00:00:04", ip: 10.0.3.11/16}', "name: web2",
     "server web2: mac 02:00:00:00:00:04 is already used by host h4 (line 24)"),
])
def test_emulate_refuses_a_bad_symmetric_topology_before_starting_anything(
        tmp_path, old, new, at, message):
    """Bad input in a topology with servers stops `onvm emulate` at once
    with FILE:LINE (nothing is started)."""
    with open(SYMMETRIC) as f:
        text = f.read()
    assert old in text
    text = text.replace(old, new)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    (tmp_path / "rules").symlink_to(os.path.join(REPO, "topologies", "rules"))
    line = next(i for i, l in enumerate(text.splitlines(), 1) if at in l)
    res = subprocess.run(ONVM + ["emulate", str(path), "--seconds", "1"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout) == (1, ""), res
    assert f"onvm emulate: {path}:{line}: {message}" in res.stderr.splitlines(), res.stderr
    assert "starting etcd" not in res.stderr


# ------------------------------------------------------ view and summary

def _status(t, store=None, killed=False, alive=True, hosts=("h1",), sent=10, received=8):
    return {"time": t, "store": store or {"reachable": True},
            "chains": {"web": {"sent": sent, "received": received,
                               "lost": sent - received, "latency_ms": 0.5,
                               "nfs": [("firewall", list(hosts)), ("monitor", ["h2"])]}},
            "hosts": {"h1": {"alive": alive, "killed": killed, "exited": False,
                             "generation": 3, "instances": {}, "drops": {}},
                      "h2": {"alive": True, "killed": False, "exited": False,
                             "generation": 3, "instances": {}, "drops": {}}}}


class _Emu:
    dir = "/tmp/run"

    def __init__(self):
        self.topo = _topo()
        self.killed = set()


def test_record_keeps_instance_changes_and_store_outages_as_events():
    run = live.Run(_Emu())
    t0 = 1000.0
    down = {"reachable": False, "since": 1004.2, "error": "etcd does not answer"}
    for status in (_status(1001.0), _status(1002.0, hosts=("h1", "h2")),
                   # while the store is down, placement is as last seen
                   _status(1005.0, store=down, hosts=("h1", "h2")),
                   _status(1006.0, store=down, hosts=("h1", "h2")),
                   _status(1011.0, hosts=("h1", "h2"))):
        live.record(run, status, t0)
    assert run.timeline == {"web": [[1.0, 2], [2.0, 3]]}
    assert run.where == {"web": [[1.0, "firewall@h1 -> monitor@h2"],
                                 [2.0, "firewall@h1,h2 -> monitor@h2"]]}
    assert "chain web: where its NFs ran: from 1 s firewall@h1 -> monitor@h2; from 2 s " \
        "firewall@h1,h2 -> monitor@h2" in live.summary_text(
            dataclasses.replace(run, final=_status(1011.0)))
    assert live.summary_object(dataclasses.replace(run, final=_status(1011.0)))[
        "chains"]["web"]["nfs_timeline"] == run.where["web"]
    assert run.store_outages == [[4.2, 11.0]]
    assert run.events == ["t=4.2 s: the store stopped answering",
                          "t=11.0 s: the store answers again, after 6.8 s "
                          "(last error: etcd does not answer)"]


def test_render_says_the_store_is_unreachable():
    text = live.render(_status(1010.0, store={"reachable": False, "since": 1004.0,
                                              "error": "x"}), 1000.0)
    assert text.splitlines()[0].startswith(
        "--- t= 10.0 s  store unreachable for 6 s (placement as last seen) ")
    assert "h1     up          3" in text


def test_summary_object_has_the_keys_of_design():
    run = live.Run(_Emu(), final=_status(1010.0, killed=True),
                   events=["t=3.0 s: fail h1"], timeline={"web": [[0.0, 2]]})
    summary = live.summary_object(run)
    assert summary["chains"] == {"web": {
        "sent": 10, "received": 8, "lost": 2, "latency_ms": 0.5,
        "nfs": [{"nf": "firewall", "hosts": ["h1"]}, {"nf": "monitor", "hosts": ["h2"]}],
        "instances_timeline": [[0.0, 2]], "nfs_timeline": []}}
    assert summary["hosts"] == {"h1": {"state": "killed", "generation": 3},
                                "h2": {"state": "up", "generation": 3}}
    assert summary["events"] == ["t=3.0 s: fail h1"]
    assert json.loads(json.dumps(summary)) == summary


def test_tcp_counts_show_in_the_view_the_summary_and_the_json():
    status = _status(1010.0)
    status["chains"]["web"]["tcp"] = {
        "ok": 97, "failed": 3, "started": 100, "servers": {"web1": 50, "web2": 47},
        "seen_as": {"10.0.9.1": 97}, "errors": ["ConnectionResetError: reset"]}
    line = ("tcp connections ok 97, failed 3 (servers: web1 50, web2 47); servers saw "
            "10.0.9.1; last error: ConnectionResetError: reset")
    assert line in live.render(status, 1000.0)
    run = live.Run(_Emu(), final=status)
    assert f"chain web: {line}" in live.summary_text(run)
    tcp = live.summary_object(run)["chains"]["web"]["tcp"]
    assert (tcp["ok"], tcp["failed"]) == (97, 3)
    assert "tcp" not in live.summary_object(live.Run(_Emu(), final=_status(1010.0)))["chains"]["web"]
    tcp_only = _status(1010.0, sent=0, received=0)
    tcp_only["chains"]["web"]["tcp"] = status["chains"]["web"]["tcp"]
    assert f"chain web: {line}; firewall@h1 -> monitor@h2" in \
        live.summary_text(live.Run(_Emu(), final=tcp_only)).splitlines()


# ------------------------------------------------------ a real run

def _children(pid):
    """{pid: command name} of the children of `pid`."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out[int(entry)] = name
    return out


@pytest.mark.etcd
@pytest.mark.ovs
@pytest.mark.netns
@pytest.mark.timeout(300)
def start_emulate(args, within=150):
    """`onvm emulate ARGS` once its live view shows: (proc, view, reader),
    `view` the lines of its stderr as a thread reads them.  It is stopped
    if the view does not come."""
    proc = subprocess.Popen(ONVM + ["emulate"] + list(args), cwd=REPO, env=emulate_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    view = []
    reader = threading.Thread(target=lambda: view.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("--- t=") for line in view), within,
                 "the live view of onvm emulate")
    except BaseException:
        procs.stop(proc, "onvm emulate", grace=30.0)
        raise
    return proc, view, reader


def test_emulate_json_survives_a_store_that_stops_answering():
    need_root_and_tools()
    # 18 s: the 6 s outage, then ~10 s more, past the controller's grace
    # after an outage of the store (5 s): a wrong eviction would show.
    proc, view, reader = start_emulate([MINIMAL, "--seconds", "18", "--json"], within=120)
    try:
        etcd, = [pid for pid, name in _children(proc.pid).items() if name == "etcd"]
        os.kill(etcd, signal.SIGSTOP)
        try:
            time.sleep(6.0)
        finally:
            os.kill(etcd, signal.SIGCONT)
        stdout = proc.stdout.read()         # the reader has stderr
        proc.wait(180)
    finally:
        procs.stop(proc, "onvm emulate", grace=30.0)   # it tears down on SIGTERM
    reader.join(10)
    text = "".join(view)
    assert proc.returncode == 0, text[-3000:]
    assert "store unreachable" in text, text[-3000:]
    assert "=== summary" in text
    summary = json.loads(stdout.strip().splitlines()[-1])
    web = summary["chains"]["web"]
    assert set(web) >= {"sent", "received", "lost", "nfs", "instances_timeline"}
    assert web["sent"] > 0 and web["lost"] == max(0, web["sent"] - web["received"])
    assert [hop["nf"] for hop in web["nfs"]] == ["firewall", "monitor"]
    assert all(set(hop["hosts"]) <= {"h1", "h2"} for hop in web["nfs"])
    assert web["instances_timeline"] and web["instances_timeline"][0][1] >= 2
    assert all(t >= 0 and n >= 0 for t, n in web["instances_timeline"])
    assert set(summary["hosts"]) == {"h1", "h2"}
    # Fail-static (issue 10): agents forward on their plans through the
    # outage and register again; the controller evicts nobody for it, so
    # nothing is lost and no plan changes.
    assert web["lost"] == 0, text[-3000:]
    assert {h: v["state"] for h, v in summary["hosts"].items()} == {"h1": "up", "h2": "up"}
    assert {v["generation"] for v in summary["hosts"].values()} == {1}, summary["hosts"]
    outages = summary["store_outages"]
    assert len(outages) == 1 and outages[0][1] is not None and outages[0][1] > outages[0][0], \
        outages
    assert any("the store stopped answering" in e for e in summary["events"])
    assert any("the store answers again" in e for e in summary["events"])


def test_a_catalog_config_the_nf_refuses_stops_the_run_before_anything_starts(tmp_path):
    """onvm topo validate checks every catalog config the way agents will
    (nfs.configs), so the demo and the failover bench refuse such a
    topology at once, naming the catalog line and the rule line, instead
    of starting agents that would refuse their plans."""
    from controller.topology import TopologyError
    from onvm.catalog import runnable_topology
    (tmp_path / "rules").mkdir()
    with open(os.path.join(REPO, "topologies", "rules", "minimal-fw.rules")) as f:
        (tmp_path / "rules" / "minimal-fw.rules").write_text(f.read())
    (tmp_path / "rules" / "bad.rules").write_text("this is no rule\n")
    with open(MINIMAL) as f:
        text = f.read()
    text = text.replace("  monitor: {cores: 1, mpps: 14}",
                        "  monitor: {cores: 1, mpps: 14}\n"
                        "  ids: {cores: 1, mpps: 1, config: rules/bad.rules}")
    text += ("  - {name: mail, ingress: internet, egress: h1, nfs: [ids], mpps: 0.1,\n"
             "     match: {ipv4_dst: 10.0.0.1/32, ip_proto: 6, tcp_dst: 25}}\n")
    path = tmp_path / "two.yaml"
    path.write_text(text)
    line = text.splitlines().index("  ids: {cores: 1, mpps: 1, config: rules/bad.rules}") + 1
    with pytest.raises(TopologyError) as err:
        runnable_topology(str(path), lambda said: None)
    assert str(err.value).startswith(
        f"{path}:{line}: nfs.ids.config: {tmp_path}/rules/bad.rules:1: expected ")


class _Store:
    """A store that answers, or not (contracts.store's errors)."""
    down = False

    def plans(self):
        from contracts.store import StoreError
        if self.down:
            raise StoreError("http://127.0.0.1:1: get prefix /onvm/plan/ failed: ")
        return {"h1": {"generation": 1}}

    def stats(self):
        return {}

    def hosts(self):
        return ["h1"]


def test_store_watch_keeps_the_last_snapshot_and_says_since_when_the_store_is_silent():
    from onvm.storewatch import UNREACHABLE_AFTER_S, StoreWatch
    now = [100.0]
    store = _Store()
    watch = StoreWatch(store, clock=lambda: now[0])
    watch.poll()
    answer = {"plans": {"h1": {"generation": 1}}, "stats": {}, "alive": {"h1"}}
    assert watch.latest() == (answer, None)
    store.down, now[0] = True, 101.0
    watch.poll()
    assert watch.latest() == (answer, {"since": 100.0, "error": "http://127.0.0.1:1: get "
                                                                "prefix /onvm/plan/ failed"})
    store.down = False
    watch.poll()
    assert watch.latest() == (answer, None)
    # a read that hangs says nothing: the time since the last answer does
    now[0] += UNREACHABLE_AFTER_S + 0.1
    assert watch.latest() == (answer, {"since": 101.0, "error": "no answer yet"})


def test_the_summary_explains_a_loss_by_a_host_that_failed_carrying_the_chain():
    emu = _Emu()
    emu.started, emu.failures = 1000.0, [(1030.0, "h2"), (1031.0, "h9")]
    run = live.Run(emu, final=_status(1040.0),
                   where={"web": [[1.0, "firewall@h1 -> monitor@h2"],
                                  [35.0, "firewall@h1 -> monitor@h3"]]})
    text = live.summary_text(run)
    assert "chain web: lost 2: h2, which ran its NFs, failed at 30 s (what was in flight " \
           "to it, and sent there until the fabric re-steered, is lost)" in text
    assert "h9" not in text
    run.where = {"web": [[1.0, "firewall@h1 -> monitor@h3"]]}
    assert "chain web: lost 2: no host failure of this run explains it" in \
        live.summary_text(run)
    run.where = {"web": [[1.0, "firewall@h1,h20 -> monitor@h3"]]}     # h2 is not h20
    assert "chain web: lost 2: no host failure of this run explains it" in \
        live.summary_text(run)

