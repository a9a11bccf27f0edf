"""The services tests build on: a real etcd and a private OVS start, answer,
and leave nothing behind when stopped."""
import json
import os
import subprocess
import time
import urllib.request

import pytest

from onvm import services


def test_wait_for_returns_value_and_names_what_timed_out():
    assert services.wait_for(lambda: 42, 1, "answer") == 42

    def probe():
        raise ConnectionRefusedError("nobody home")
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"the thing: not done after 0.2 s "
                                           r"\(last error: nobody home\)"):
        services.wait_for(probe, 0.2, "the thing")
    assert time.monotonic() - start < 1.0


def test_wait_for_gives_up_at_once():
    def probe():
        raise services.GaveUp("process died")
    start = time.monotonic()
    with pytest.raises(services.GaveUp, match="process died"):
        services.wait_for(probe, 10, "never")
    assert time.monotonic() - start < 1.0


def test_free_port_is_bindable():
    import socket
    port = services.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


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
                                                   r"tail of .*etcd.log"):
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
