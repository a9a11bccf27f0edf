"""The services tests build on: a real etcd and a private OVS start, answer,
and leave nothing behind when stopped."""
import json
import os
import signal
import subprocess
import urllib.request

import pytest

from onvm import procs, services


def test_wait_for_returns_value_and_names_what_timed_out():
    assert services.wait_for(lambda: 42, 1, "answer") == 42
    calls = []

    def probe():
        calls.append(1)
        raise ConnectionRefusedError("nobody home")
    with pytest.raises(TimeoutError, match=r"the thing: not done after 0.2 s "
                                           r"\(last error: nobody home\)"):
        services.wait_for(probe, 0.2, "the thing", interval=0.01)
    assert len(calls) > 1, "wait_for gave up without trying again"


def test_wait_for_returns_the_first_true_value_after_false_ones():
    answers = iter([None, 0, "", "ready", "later"])
    assert services.wait_for(lambda: next(answers), 5, "readiness", interval=0.01) == "ready"


def test_wait_for_gives_up_at_once():
    calls = []

    def probe():
        calls.append(1)
        raise services.GaveUp("process died")
    with pytest.raises(services.GaveUp, match="process died"):
        services.wait_for(probe, 10, "never")
    assert calls == [1], "a predicate that gave up was called again"


def test_free_port_is_a_port_nobody_listens_on():
    import socket
    port = services.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, f"someone listens on {port}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        assert s.getsockname() == ("127.0.0.1", port)


def test_etcd_serves_and_stop_removes_everything(tmp_path):
    with services.EtcdServer(workdir=str(tmp_path)) as server:
        with urllib.request.urlopen(server.url + "/health", timeout=2) as resp:
            assert json.load(resp)["health"] == "true"
        assert server.url.startswith("http://127.0.0.1:")
        proc, data = server.proc, server.dir
    assert proc.poll() is not None
    assert not os.path.exists(data)


def test_etcd_that_cannot_start_reports_its_log(tmp_path):
    # A port already taken makes etcd exit; the error must carry its log.
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        real = services.free_port
        services.free_port = lambda host="127.0.0.1": port
        try:
            with pytest.raises(RuntimeError, match=r"exited with code .*"
                                                   r"tail of .*m0.log"):
                services.EtcdServer(workdir=str(tmp_path), timeout=10)
        finally:
            services.free_port = real
    assert os.listdir(tmp_path) == []


# Runs before the module's shared `ovs` fixture starts: one datapath per netns.
def test_ovs_stop_removes_bridges_daemons_and_dir(run_prefix):
    server = services.OvsServer(run_prefix + "s")
    bridge = server.add_bridge(run_prefix + "sb0")
    # the bridge's internal port is a kernel tap device while it runs
    assert os.path.exists(f"/sys/class/net/{bridge}")
    server.stop()
    assert server.ovsdb.poll() is not None and server.vswitchd.poll() is not None
    assert not os.path.exists(server.dir)
    assert not os.path.exists(f"/sys/class/net/{bridge}")
    assert not services.netdev_datapath_busy()


def test_ovs_bridge_flows_and_cleanup(ovs, run_prefix):
    bridge = ovs.add_bridge(run_prefix + "b0", dpid=0x201)
    assert ovs.vsctl("get", "Bridge", bridge, "datapath_type").strip() == "netdev"
    ovs.ofctl("add-flow", bridge, "priority=5,in_port=LOCAL,actions=drop")
    assert "priority=5,in_port=LOCAL actions=drop" in ovs.ofctl("dump-flows", bridge)
    assert bridge in ovs.bridges()
    with pytest.raises(ValueError, match="lacks this OVS's prefix"):
        ovs.add_bridge("other0")


def test_ovs_env_points_plain_tools_at_private_instance(ovs, run_prefix):
    bridge = ovs.add_bridge(run_prefix + "b1")
    env = dict(os.environ, **ovs.env)
    out = subprocess.run(["ovs-vsctl", "list-br"], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert bridge in out
    ovs.activate()
    try:
        assert os.environ["OVS_RUNDIR"] == ovs.dir
        dpid = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "show", bridge],
                              capture_output=True, text=True, check=True).stdout
        assert "OFPT_FEATURES_REPLY" in dpid
    finally:
        ovs.deactivate()
    assert os.environ.get("OVS_RUNDIR") != ovs.dir


# The restart tests run last: they restart the module's shared OVS.

def _accept(listener, what):
    """The next connection to `listener` (non-blocking), waited for."""
    def probe():
        try:
            return listener.accept()[0]
        except BlockingIOError:
            return None
    return services.wait_for(probe, 20, what)


def test_ovs_restart_keeps_config_loses_flows_and_reconnects(ovs, run_prefix):
    import socket
    bridge = ovs.add_bridge(run_prefix + "r0", dpid=0x301)
    ovs.ofctl("add-flow", bridge, "priority=5,in_port=LOCAL,actions=drop")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        target = "tcp:127.0.0.1:%d" % listener.getsockname()[1]
        ovs.vsctl("set-controller", bridge, target)
        first = _accept(listener, "the switch connecting to its controller")
        old_db, old_vswitchd = ovs.pids
        ovs.restart()
        assert ovs.pids[0] == old_db and ovs.pids[1] != old_vswitchd
        assert ovs.vswitchd.poll() is None
        # the old daemon's connection is closed, a new one comes
        first.settimeout(10)
        with first:
            while first.recv(4096):
                pass
        _accept(listener, "the restarted switch reconnecting").close()
    assert bridge in ovs.bridges()
    assert ovs.vsctl("get-controller", bridge).strip() == target
    assert ovs.vsctl("get", "Bridge", bridge, "datapath_type").strip() == "netdev"
    assert "in_port=LOCAL" not in ovs.ofctl("dump-flows", bridge)
    assert "n_packets" not in ovs.ofctl("dump-flows", bridge), "flows survived"


def test_ovs_restart_like_ovs_ctl_keeps_flows_and_groups(ovs, run_prefix):
    bridge = ovs.add_bridge(run_prefix + "r1", dpid=0x302)
    ovs.ofctl("add-group", bridge,
              "group_id=17,type=select,bucket=weight:7,actions=output:LOCAL")
    ovs.ofctl("add-flow", bridge, "cookie=0x6f6e000000000001,table=1,priority=5,"
                                  "in_port=LOCAL,actions=group:17")
    # OVS itself flushes a bridge whose controller comes back when the
    # restore ends (no controller -> controller): restart's docstring says so.
    managed = ovs.add_bridge(run_prefix + "r2", controller="tcp:127.0.0.1:9")
    ovs.ofctl("add-flow", managed, "priority=5,in_port=LOCAL,actions=drop")
    old_db, old_vswitchd = ovs.pids
    ovs.restart(keep_flows=True, ovsdb=True)
    assert "in_port=LOCAL" not in ovs.ofctl("dump-flows", managed)
    assert ovs.pids[0] != old_db and ovs.pids[1] != old_vswitchd
    flows = ovs.ofctl("dump-flows", bridge)
    assert "cookie=0x6f6e000000000001" in flows
    assert "table=1" in flows and "priority=5,in_port=LOCAL actions=group:17" in flows
    assert "group_id=17,type=select,bucket=weight:7,actions=LOCAL" in \
        ovs.ofctl("dump-groups", bridge)
    # vswitchd must not be left waiting for a restore that is over
    assert "flow-restore-wait" not in ovs.vsctl("get", "Open_vSwitch", ".",
                                                "other_config")
    assert not [f for f in os.listdir(ovs.dir) if f.endswith(".dump")]


def _child(code):
    """A Python child that says "ready" once `code` has run, then sleeps."""
    import sys
    proc = subprocess.Popen([sys.executable, "-c", code + "\nprint('ready', flush=True)\n"
                             "import time\ntime.sleep(60)"], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    return proc


def test_stop_ends_a_child_with_sigterm_and_reaps_it():
    proc = _child("")
    assert procs.stop(proc, "sleeper") == -signal.SIGTERM
    assert proc.returncode == -signal.SIGTERM
    assert procs.stop(proc, "sleeper") == -signal.SIGTERM      # again: nothing to do
    assert procs.stop(None) is None


def test_stop_kills_a_child_that_ignores_sigterm(caplog):
    proc = _child("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)")
    assert procs.stop(proc, "stubborn child", grace=0.3) == -signal.SIGKILL
    assert "stubborn child (pid %d) still runs 0.3 s after signal 15; killing it" \
        % proc.pid in caplog.text
