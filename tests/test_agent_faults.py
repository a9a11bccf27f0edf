"""A real `onvm agent` (DPDK, --no-huge, ring ports) against a real etcd
that pauses longer than the agent's lease: the agent stays up, keeps the
plan it runs, registers again under a new lease, and goes on taking plans
from its watch."""
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from contracts.store import open_store
from host_agent.harness import chain_plan
from onvm.services import free_port, wait_for

ONVM = [sys.executable, "-m", "onvm.cli"]


def plan_for(host, nfs=("monitor",)):
    plan = chain_plan([(nf, None) for nf in nfs], in_port=0, out_port=1)
    return dict(plan, host=host)


def metrics_generation(port):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
    for line in body.decode().splitlines():
        if line.startswith("onvm_plan_generation{"):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def start_agent(etcd_per_test, tmp_path):
    """Starts `onvm agent --host h1` on the test's etcd; stopped at the end."""
    started = []

    def start():
        metrics = free_port()
        log_path = tmp_path / "agent.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                ONVM + ["agent", "--host", "h1", "--store", etcd_per_test.url,
                        "--metrics-port", str(metrics), "--idle-us", "300", "--",
                        "--vdev", "net_ring0", "--vdev", "net_ring1", "--no-huge",
                        "-m", "256", "--file-prefix", f"onvmfault{os.getpid()}"],
                stdout=log, stderr=subprocess.STDOUT)
        proc.metrics, proc.log_path = metrics, log_path
        started.append(proc)
        return proc
    yield start
    etcd_per_test.proc.send_signal(signal.SIGCONT)
    for proc in started:
        proc.terminate()            # the agent's clean exit is part of the test
        try:
            code = proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert code == 0, proc.log_path.read_text()[-3000:]


def test_agent_rides_out_a_paused_store_on_its_plan_and_registers_again(
        etcd_per_test, start_agent):
    agent = start_agent()
    store = open_store(etcd_per_test.url)
    log = lambda: agent.log_path.read_text()
    wait_for(lambda: "h1" in store.hosts(), 30, f"agent registered; log:\n{log()}")
    first_lease = store.hosts()["h1"]
    generation = store.put_plan("h1", plan_for("h1"))
    wait_for(lambda: store.get_applied("h1") == generation, 20,
             f"plan applied; log:\n{log()}")
    assert metrics_generation(agent.metrics) == generation

    etcd_per_test.proc.send_signal(signal.SIGSTOP)      # three 1 s leases long
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:              # forwarding on, same plan
            assert agent.poll() is None, log()
            assert metrics_generation(agent.metrics) == generation
            time.sleep(0.3)
    finally:
        etcd_per_test.proc.send_signal(signal.SIGCONT)

    wait_for(lambda: "re-registered under lease" in log(), 15,
             f"the agent to register again; log:\n{log()}")
    wait_for(lambda: store.hosts().get("h1") == first_lease, 10, "host key back")
    assert agent.poll() is None
    assert metrics_generation(agent.metrics) == generation
    wait_for(lambda: store.get_applied("h1") == generation, 10, "applied reported")
    # the plan watch goes on: the next plan is applied
    newer = store.put_plan("h1", plan_for("h1", ("monitor", "forward")))
    wait_for(lambda: store.get_applied("h1") == newer, 20,
             f"plan written after the outage applied; log:\n{log()}")
    assert metrics_generation(agent.metrics) == newer
    # a deleted plan changes nothing: fail-static
    store.delete_plan("h1")
    wait_for(lambda: "was deleted; keeping plan generation" in log(), 10, "deletion seen")
    assert metrics_generation(agent.metrics) == newer and agent.poll() is None


def test_agent_started_before_the_store_answers_waits_for_it(etcd_per_test, start_agent):
    """The store paused from the agent's start: the agent runs (no plan),
    then registers once the store answers."""
    etcd_per_test.proc.send_signal(signal.SIGSTOP)
    try:
        agent = start_agent()
        wait_for(lambda: "store: " in agent.log_path.read_text(), 30,
                 "the agent to find the store unreachable")
        assert agent.poll() is None, agent.log_path.read_text()
    finally:
        etcd_per_test.proc.send_signal(signal.SIGCONT)
    store = open_store(etcd_per_test.url)
    wait_for(lambda: "h1" in store.hosts(), 30,
             f"agent registered; log:\n{agent.log_path.read_text()}")


# ------------------------------------------- the link alone, memory://, no DPDK

class FakeManager:
    generation = None


class FakeAgent:
    """What StoreLink uses of host_agent.agent.Agent."""

    def __init__(self):
        self.host, self.store, self.manager, self.applied = "h1", None, FakeManager(), []

    def apply(self, plan, source):
        self.applied.append((source, plan["generation"]))
        self.manager.generation = plan["generation"]
        self.store.put_applied(self.host, plan["generation"])
        return True


def test_a_garbage_plan_at_start_does_not_keep_the_link_from_watching(monkeypatch):
    from contracts.store_memory import MemoryStore
    from host_agent import storelink
    store = MemoryStore()
    store._put("/onvm/plan/h1", "{garbage", None)
    monkeypatch.setattr(storelink, "open_store", lambda url: store)
    agent = FakeAgent()
    link = storelink.StoreLink(agent, "memory://", lambda: {"host": "h1"})
    link.start()
    try:
        assert link.connected.wait(10), "the link never connected"
        assert agent.applied == [] and store.garbage == 1
        store.put_plan("h1", plan_for("h1"))
        wait_for(lambda: agent.applied == [("/onvm/plan/h1", 1)], 5, "plan applied")
        assert store.get_applied("h1") == 1 and "h1" in store.hosts()
        store.put_plan("h1", plan_for("h1"))    # generation 2
        wait_for(lambda: len(agent.applied) == 2, 5, "second plan applied")
    finally:
        link.stop()
    assert store.hosts() == {}
