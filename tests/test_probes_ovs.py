"""Liveness from the data plane, end to end: etcd, Mininet with userspace
OVS, the controller with controller.apps.probes, a DPDK agent per host and
a chain carrying 500 packets a second across hosts (onvm.probebench's
data center).  An agent is SIGKILLed with its link up: its fast path stops
answering the controller's probes, the controller declares the host lost
because of the probes (its log says so, before the 1 s lease could) and
traffic comes back on the other hosts.
How fast is BENCHMARKS.md's ("Liveness probes"), never asserted here."""
import re

import pytest

from onvm.emulate import Emulation
from onvm.failover import measure_failover
from onvm.probebench import CHAIN, PPS, TOPOLOGY
from onvm.services import wait_for
from test_emulate import need_root_and_tools

pytestmark = [pytest.mark.ovs, pytest.mark.etcd, pytest.mark.netns,
              pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def emu(request, tmp_path_factory, run_prefix):
    need_root_and_tools()
    workdir = tmp_path_factory.mktemp("probes")
    topo_path = workdir / "probes-test.yaml"
    topo_path.write_text(TOPOLOGY)
    emulation = Emulation(str(topo_path), prefix=run_prefix, workdir=str(workdir),
                          pps_per_mpps=PPS)
    request.addfinalizer(emulation.remove_files)      # finalizers run last first
    request.addfinalizer(emulation.stop)
    emulation.start()
    return emulation


def controller_log(emu):
    with open(emu.file("controller.log"), errors="replace") as f:
        return f.read()


def test_every_host_answers_probes_before_anything_fails(emu):
    hosts = [h.name for h in emu.topo.hosts]
    wait_for(lambda: all(f"probe: host {h} reachable" in controller_log(emu)
                         for h in hosts), 30, "every host reachable by probes")


def test_an_agent_killed_with_its_link_up_is_lost_by_probes_and_traffic_returns(emu):
    result = measure_failover(emu, settle=2.0, how="crash")
    print("crash with link up, found by probes:", result)
    victim = result["host"]
    log = controller_log(emu)
    unreachable = re.search(rf"probe: host {victim} unreachable: (.*)", log)
    assert unreachable, f"no probe verdict on {victim} in the controller's log"
    lost = re.search(rf"host {victim} lost: (.*)", log)
    assert lost and lost.group(1).startswith("probes fail: its fast path answered none"), \
        f"{victim} was lost for another reason: {lost and lost.group(1)}"
    assert result["recover_s"] is not None and result["chains"] == [CHAIN]
    plans = emu.store.plans()
    assert victim not in plans and len(plans) == 2
