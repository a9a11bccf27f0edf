"""The host fast path through real DPDK: in memory (ring-backed ports, one
EAL for this test process) and as `onvm agent` processes on pcap ports.

Every test checks that the packet pool balances afterwards: no mbuf leaks
on any path, dropped packets included."""
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from scapy.all import ARP, IP, TCP, UDP, Ether, IPv6, raw, rdpcap, wrpcap
from scapy.contrib.mpls import MPLS

from host_agent import fastpath as fp
from host_agent.harness import HOST_MAC, NODE_LABEL, OUT_MAC, Harness, chain_plan
from contracts.plan import PlanError, check_plan
from nflib.api import PythonNF, make_nf

ONVM = [sys.executable, "-m", "onvm.cli"]


@pytest.fixture
def harnesses():
    made = []

    def make(*args, **kwargs):
        h = Harness(*args, **kwargs)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()
    avail, in_use = fp.pool_counts()
    assert in_use == 0, f"{in_use} mbufs leaked"


def udp(i=0, dst="10.2.0.1", dport=5000, **kw):
    return Ether(dst=HOST_MAC) / IP(src=f"10.1.0.{i % 250 + 1}", dst=dst) / UDP(sport=1000 + i, dport=dport, **kw) / b"payload!"


class Stamp(PythonNF):
    """Test NF: writes its position into the packet's last bytes, so the
    frame that comes out shows which NFs it went through, in which order."""

    def handle(self, batch):
        pos = self.config["pos"]
        for i in range(len(batch)):
            data = batch.data(i)
            data[len(data) - 8 + pos] = ord("A") + pos


def stamp_factory(inst):
    if inst["nf"] == "stamp":
        return Stamp(inst["config"])
    return make_nf(inst)


def test_three_nf_chain_in_order_and_firewall_drops(harnesses):
    rules = "deny udp any any any 53\ndefault allow"
    h = harnesses(plan=None, nfs=[("firewall", {"rules_text": rules}),
                                  ("monitor", None), ("forward", None)])
    frames = [udp(i, dport=53 if i % 4 == 0 else 5000) for i in range(200)]
    out = h.send(frames)
    assert len(out) == 150
    stats = h.stats()
    inst = stats["instances"]
    assert (inst[1]["rx"], inst[1]["drops"]) == (200, 50)
    assert inst[2]["rx"] == inst[3]["rx"] == 150
    assert stats["drops"]["nf_drop"] == 50
    assert inst[1]["counters"]["rules"][0]["hits"] == 50
    assert all(Ether(f)[UDP].dport != 53 for f in out)
    assert all(Ether(f).dst == OUT_MAC and Ether(f).src == HOST_MAC for f in out)


def test_nfs_run_in_chain_order(harnesses):
    plan_nfs = [("stamp", {"pos": p}) for p in (0, 1, 2)]
    h = harnesses(nfs=plan_nfs, nf_factory=stamp_factory)
    out = h.send([udp(i) for i in range(64)])
    assert len(out) == 64
    assert {bytes(f[-8:-5]) for f in out} == {b"ABC"}


def test_tagged_packets_follow_spi_si_and_remote_hop_carries_label_stack(harnesses):
    h = harnesses(plan=None, nfs=[("forward", None)])
    plan = chain_plan([("forward", None)], h.in_port, h.out_port)
    plan["generation"] = 2
    plan["hops"] += [
        {"spi": 40, "si": 200, "local": 1},
        {"spi": 40, "si": 199, "remote": [
            {"host": "h2", "label": 17, "mac": "02:00:00:00:00:02", "weight": 1.0},
            {"host": "h3", "label": 18, "mac": "02:00:00:00:00:03", "weight": 1.0}]},
    ]
    h.manager.apply_plan(check_plan(plan), make_nf)
    tagged = [Ether(dst=HOST_MAC, type=0x8847) / MPLS(label=NODE_LABEL, s=0, ttl=64)
              / MPLS(label=40, s=0, ttl=64) / MPLS(label=200, s=1, ttl=64)
              / IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=1000 + i, dport=99)
              for i in range(64)]
    out = [Ether(f) for f in h.send(tagged)]
    assert len(out) == 64
    labels = set()
    for pkt in out:
        assert pkt.type == 0x8847 and pkt.src == HOST_MAC
        l1, l2, l3 = pkt[MPLS], pkt[MPLS].payload, pkt[MPLS].payload.payload
        assert (l1.s, l1.ttl, l2.label, l2.s, l2.ttl, l3.label, l3.s, l3.ttl) == \
            (0, 64, 40, 0, 64, 199, 1, 64)
        assert {17: "02:00:00:00:00:02", 18: "02:00:00:00:00:03"}[l1.label] == pkt.dst
        labels.add(l1.label)
    assert labels == {17, 18}, "weighted hashing should use both hosts for 64 flows"
    # A flow keeps its host: the same packets again go where they went.
    again = [Ether(f) for f in h.send(tagged)]
    assert [p[MPLS].label for p in again] == [p[MPLS].label for p in out]


def test_bad_frames_are_counted_never_crash(harnesses):
    h = harnesses(nfs=[("forward", None)])
    good = raw(udp(1))
    cases = {
        "truncated": [good[:10], good[:20], good[:36]],
        "not_ip": [raw(Ether() / ARP()), raw(Ether(type=0x88cc) / (b"x" * 50))],
        "bad_label_stack": [raw(Ether(type=0x8847) / MPLS(label=16, s=1, ttl=64) / MPLS(label=20, s=0, ttl=64) / MPLS(label=255, s=1, ttl=64) / IP() / UDP())],
        "ttl_zero": [raw(Ether(type=0x8847) / MPLS(label=16, s=0, ttl=0) / MPLS(label=16, s=0, ttl=64) / MPLS(label=255, s=1, ttl=64) / IP() / UDP())],
        "wrong_node": [raw(Ether(type=0x8847) / MPLS(label=99, s=0, ttl=64) / MPLS(label=16, s=0, ttl=64) / MPLS(label=255, s=1, ttl=64) / IP() / UDP())],
        "unknown_hop": [raw(Ether(type=0x8847) / MPLS(label=16, s=0, ttl=64) / MPLS(label=777, s=0, ttl=64) / MPLS(label=9, s=1, ttl=64) / IP() / UDP())],
    }
    for reason, frames in cases.items():
        before = h.stats()["drops"][reason]
        assert h.send(frames) == []
        assert h.stats()["drops"][reason] - before == len(frames), reason


def test_random_bytes_and_mutations_are_accounted_for(harnesses):
    h = harnesses(nfs=[("firewall", {"rules_text": "allow udp any any\ndefault deny"}),
                       ("monitor", None)])
    rng = random.Random(7)
    base = [raw(udp(i)) for i in range(8)] + [
        raw(Ether(type=0x8847) / MPLS(label=16, s=0, ttl=64) / MPLS(label=16, s=0, ttl=64) / MPLS(label=255, s=1, ttl=64) / IP() / UDP()),
        raw(Ether() / IPv6() / UDP())]
    frames = []
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.3:
            frames.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120))))
        else:
            f = bytearray(rng.choice(base))
            for _ in range(rng.randrange(1, 6)):
                f[rng.randrange(len(f))] = rng.randrange(256)
            frames.append(bytes(f[:rng.randrange(1, len(f) + 1)]))
    sent = 0
    out = 0
    for i in range(0, len(frames), 500):
        chunk = frames[i:i + 500]
        out += len(h.send(chunk))
        sent += len(chunk)
    stats = h.stats()
    assert sent == out + sum(stats["drops"].values())


def test_plan_swaps_under_traffic_lose_nothing(harnesses):
    h = harnesses(nfs=[("forward", None), ("monitor", None)])
    plans = [chain_plan([("forward", None), ("monitor", None)], h.in_port, h.out_port, generation=g)
             if g % 2 else
             chain_plan([("monitor", None), ("forward", None), ("forward", None)], h.in_port,
                        h.out_port, generation=g, first_id=10)
             for g in range(2, 42)]
    frames = [raw(udp(i)) for i in range(256)]
    runner = threading.Thread(target=h.manager.run, kwargs={"seconds": 30.0})
    runner.start()
    sent = received = 0
    try:
        while not h.manager.running:
            time.sleep(0.001)
        for plan in plans:
            sent += h.rx.fill(frames, 256)
            h.manager.apply_plan(plan, make_nf)
            received += len(h.tx.drain(keep=True))
        deadline = time.time() + 5
        while received < sent and time.time() < deadline:
            received += len(h.tx.drain(keep=True))
            time.sleep(0.01)
    finally:
        h.manager.stop()
        runner.join()
    received += len(h.tx.drain(keep=True))
    assert h.manager.generation == 41
    assert sum(h.stats()["drops"].values()) == 0
    assert received == sent == 40 * 256


def test_python_nf_that_raises_drops_its_batch_and_counts(harnesses):
    class Broken(PythonNF):
        def handle(self, batch):
            raise RuntimeError("boom")

    h = harnesses(nfs=[("broken", None)],
                  nf_factory=lambda inst: Broken() if inst["nf"] == "broken" else make_nf(inst))
    assert h.send([udp(i) for i in range(10)]) == []
    assert h.stats()["drops"]["nf_drop"] == 10


def test_bad_plan_keeps_running_tables(harnesses):
    h = harnesses(nfs=[("forward", None)])
    bad = chain_plan([("forward", None)], h.in_port, h.out_port, generation=5)
    bad["instances"][0]["config"] = {}
    bad["instances"][0]["nf"] = "firewall"       # no rules: refused by the NF
    with pytest.raises(ValueError, match="firewall config needs 'rules'"):
        h.manager.apply_plan(bad, make_nf)
    assert h.manager.generation == 1
    assert len(h.send([udp(1)])) == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.pop("mac"), "plan: missing field 'mac'"),
    (lambda p: p["hops"].append({"spi": 16, "si": 255, "local": 1}), "duplicate hop for SPI 16 SI 255"),
    (lambda p: p["hops"][0].update(local=9), "plan.hops[0].local: names instance 9"),
    (lambda p: p["hops"][0].update(spi=3), "plan.hops[0].spi: must be an integer label in 16..1048575"),
])
def test_plan_errors_name_the_field(mutate, message):
    plan = chain_plan([("forward", None)], 0, 1)
    mutate(plan)
    with pytest.raises(PlanError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_plan(plan)


# ------------------------------------------------------- onvm agent, pcap

def write_plan(path, plan):
    path.write_text(json.dumps(plan))
    return str(path)


def run_agent(tmp_path, plan, frames, extra=()):
    wrpcap(str(tmp_path / "in.pcap"), frames)
    plan_file = write_plan(tmp_path / "plan.json", plan)
    out = tmp_path / "out.pcap"
    proc = subprocess.run(
        ONVM + ["agent", "--host", plan["host"], "--plan", plan_file, "--seconds", "1.5",
                *extra, "--", "--vdev", f"net_pcap0,rx_pcap={tmp_path}/in.pcap",
                "--vdev", f"net_pcap1,tx_pcap={out}", "--no-huge", "-m", "256",
                "--file-prefix", f"onvmtest{tmp_path.name[-12:]}"],
        capture_output=True, text=True, timeout=60)
    return proc, (rdpcap(str(out)) if out.exists() else [])


def agent_plan():
    return {
        "host": "h1", "generation": 1, "node_label": 16, "mac": "02:00:00:00:00:01",
        "instances": [{"id": 1, "nf": "firewall",
                       "config": {"rules_text": "deny tcp any any any 22\ndefault allow"}},
                      {"id": 2, "nf": "monitor"}, {"id": 3, "nf": "forward"}],
        "classifiers": [{"spi": 16, "match": {"ipv4_dst": "10.0.1.0/24"}}],
        "hops": [{"spi": 16, "si": 255, "local": 1}, {"spi": 16, "si": 254, "local": 2},
                 {"spi": 16, "si": 253, "remote": [{"host": "h2", "label": 17,
                                                    "mac": "02:00:00:00:00:02"}]},
                 {"spi": 16, "si": 252, "local": 3},
                 {"spi": 16, "si": 251, "end": {"port": 1, "dst_mac": "02:00:00:00:00:04"}}],
        "uplink": 1,
    }


def test_agent_sends_remote_hop_with_exact_label_stack_to_pcap(tmp_path):
    frames = [Ether(dst="02:00:00:00:00:01") / IP(src="10.0.0.5", dst="10.0.1.7")
              / TCP(sport=1000 + i, dport=22 if i % 5 == 0 else 80) for i in range(50)]
    frames += [Ether(dst="02:00:00:00:00:01", type=0x8847) / MPLS(label=16, s=0, ttl=64)
               / MPLS(label=16, s=0, ttl=64) / MPLS(label=252, s=1, ttl=64)
               / IP(src="10.0.0.6", dst="10.0.1.8") / UDP(sport=7, dport=9)]
    proc, out = run_agent(tmp_path, agent_plan(), frames)
    assert proc.returncode == 0, proc.stderr
    assert len(out) == 41
    remote = [p for p in out if p.type == 0x8847]
    assert len(remote) == 40
    for pkt in remote:
        stack = bytes(pkt)[14:26]
        # transport 17 S=0 TTL 64 | SPI 16 S=0 TTL 64 | SI 253 S=1 TTL 64
        assert stack == bytes.fromhex("00011040" "00010040" "000fd140")
        assert (pkt.dst, pkt.src) == ("02:00:00:00:00:02", "02:00:00:00:00:01")
        inner = IP(bytes(pkt)[26:])
        assert inner.dst == "10.0.1.7" and inner[TCP].dport == 80
    end = [p for p in out if p.type == 0x0800]
    assert len(end) == 1 and end[0].dst == "02:00:00:00:00:04" and end[0][UDP].dport == 9
    final = json.loads(proc.stderr.rsplit("final counters ", 1)[1].splitlines()[0])
    assert final["instances"]["1"]["drops"] == 10


def test_agent_rejects_a_bad_plan_file_with_its_name(tmp_path):
    plan = agent_plan()
    plan["hops"][0]["local"] = 42
    proc, _ = run_agent(tmp_path, plan, [Ether() / IP()])
    assert proc.returncode == 1
    assert "plan.json: plan.hops[0].local: names instance 42" in proc.stderr


def test_agent_reports_a_bad_rule_file_line(tmp_path):
    rules = tmp_path / "fw.rules"
    rules.write_text("allow tcp any any any 80\nallow tcpp any any\n")
    plan = agent_plan()
    plan["instances"][0]["config"] = {"rules": str(rules)}
    proc, _ = run_agent(tmp_path, plan, [Ether() / IP()])
    assert proc.returncode == 1
    assert f"{rules}:2: unknown protocol 'tcpp'" in proc.stderr


def test_agent_prometheus_endpoint(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wrpcap(str(tmp_path / "in.pcap"), [Ether() / IP(dst="10.0.1.1") / UDP()] * 5)
    plan_file = write_plan(tmp_path / "plan.json", agent_plan())
    proc = subprocess.Popen(
        ONVM + ["agent", "--host", "h1", "--plan", plan_file, "--seconds", "20",
                "--metrics-port", str(port), "--", "--vdev",
                f"net_pcap0,rx_pcap={tmp_path}/in.pcap", "--vdev", f"net_null0",
                "--no-huge", "-m", "256", "--file-prefix", f"onvmprom{os.getpid()}"],
        stderr=subprocess.PIPE, text=True)
    try:
        body = None
        pinned = 'onvm_pin_events_total{event="inserts",host="h1"} 1.0'
        deadline = time.time() + 20
        # until the five packets went through (the endpoint may be up before)
        while time.time() < deadline and (body is None or pinned not in body):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
            except OSError:
                time.sleep(0.2)
        assert body is not None, "no metrics endpoint"
        assert 'onvm_plan_generation{host="h1"} 1.0' in body
        assert 'onvm_instance_packets_total{chain="16",direction="rx",host="h1",instance="1",nf="firewall"}' in body
        assert 'onvm_drops_total{host="h1",reason="no_chain"}' in body
        # five packets of one flow over the remote hop: one pin
        assert pinned in body
        assert 'onvm_pins{host="h1"} 1.0' in body
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_agent_runs_nf_as_its_own_process(tmp_path):
    # Counted now, not when the tests are collected: earlier tests' EALs
    # may hold huge pages then and have freed them by now (or the reverse).
    if fp.hugepages_available() < 300:
        pytest.skip("NF processes share the agent's memory through huge pages; "
                    "`make hugepages` (as root) reserves and mounts them")
    plan = agent_plan()
    plan["instances"][1]["mode"] = "process"         # monitor in its own process
    plan["hops"][2] = {"spi": 16, "si": 253, "local": 3}
    frames = [Ether(dst="02:00:00:00:00:01") / IP(src="10.0.0.5", dst="10.0.1.7")
              / TCP(sport=1000 + i, dport=22 if i % 5 == 0 else 80) for i in range(50)]
    wrpcap(str(tmp_path / "in.pcap"), frames)
    plan_file = write_plan(tmp_path / "plan.json", plan)
    out = tmp_path / "out.pcap"
    proc = subprocess.run(
        ONVM + ["agent", "--host", "h1", "--plan", plan_file, "--seconds", "10",
                "--metrics-port", "0", "--", "--vdev", f"net_pcap0,rx_pcap={tmp_path}/in.pcap",
                "--vdev", f"net_pcap1,tx_pcap={out}", "--socket-mem", "256",
                "--file-prefix", f"onvmproc{os.getpid()}"],
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "starting NF process for instance 2 (monitor)" in proc.stderr
    assert "h1 instance 2 (monitor) serving" in proc.stderr
    final = json.loads(proc.stderr.rsplit("final counters ", 1)[1].splitlines()[0])
    assert final["instances"]["2"]["mode"] == "process"
    assert final["instances"]["2"]["rx"] == final["instances"]["2"]["tx"] == 40
    assert len(rdpcap(str(out))) == 40


# ------------------------------------------- the agent carries NF state on moves

LB_VIP = "10.0.1.10"
LB_POOL = [{"name": f"web{i}", "ip": f"10.0.2.{i}", "mac": f"02:00:00:00:02:0{i}"}
           for i in range(1, 5)]
# The same backends listed in another order plus one: Maglev alone maps some
# flows elsewhere, so only imported state keeps every flow's backend.
LB_OTHER_POOL = list(reversed(LB_POOL)) + [
    {"name": "web9", "ip": "10.0.2.9", "mac": "02:00:00:00:02:09"}]


def lb_plan(h, generation, pool=LB_POOL, **fields):
    """A plan running one lb on Harness `h`; `fields` go on its instance."""
    config = {"vip": LB_VIP, "backends": pool, "table_size": 4093}
    plan = chain_plan([("lb", config)], h.in_port, h.out_port, generation=generation)
    plan["instances"][0].update(fields)
    return check_plan(plan)


def lb_flows(n=120):
    return [Ether(dst=HOST_MAC) / IP(src=f"192.0.2.{1 + i % 200}", dst=LB_VIP)
            / TCP(sport=20000 + i, dport=80, flags="A") for i in range(n)]


def backends(frames):
    """{(src, sport): backend IP} of the frames that came out."""
    return {(Ether(f)[IP].src, Ether(f)[IP].sport): Ether(f)[IP].dst for f in frames}


def test_agent_exports_lb_state_and_a_new_manager_imports_it(harnesses):
    from contracts.store import open_store
    from host_agent.agent import Agent
    store = open_store("memory://")
    frames = lb_flows()
    old = harnesses(nfs=[("forward", None)])
    a = Agent("harness", old.manager, store=store)
    assert a.apply(lb_plan(old, 2))
    before = backends(old.send(frames))
    assert len(before) == len(frames) and len(set(before.values())) == 4
    assert a.apply(lb_plan(old, 3, export=True))
    published = store.get_stats("harness")["instances"]["1"]
    assert published["state_generation"] == 3
    assert len(published["state"]["flows"]) == len(frames)
    assert backends(old.send(frames)) == before, "exporting changed the old instance"

    fresh = harnesses(nfs=[("lb", {"vip": LB_VIP, "backends": LB_OTHER_POOL,
                                   "table_size": 4093})])
    assert backends(fresh.send(frames)) != before, \
        "a fresh lb with the other pool maps every flow as before: the test proves nothing"
    new = harnesses(nfs=[("forward", None)])
    b = Agent("harness", new.manager, store=None)
    assert b.apply(lb_plan(new, 4, LB_OTHER_POOL, state=published["state"]))
    assert backends(new.send(frames)) == before
    assert new.nf(1).counters()["flows"] == len(frames)

    assert a.apply(lb_plan(old, 5))                 # no longer marked: nothing published
    assert "state" not in a.stats()["instances"]["1"]


def test_agent_exports_from_a_running_loop_and_resumes_it(harnesses):
    from host_agent.agent import Agent
    h = harnesses(nfs=[("forward", None)])
    agent = Agent("harness", h.manager)
    agent.apply(lb_plan(h, 2))
    agent.start()
    try:
        h.rx.fill([bytes(f) for f in lb_flows(40)], 40)
        wait = time.monotonic() + 5
        while h.manager.stats()["instances"][1]["rx"] < 40 and time.monotonic() < wait:
            time.sleep(0.01)
        assert agent.apply(lb_plan(h, 3, export=True))
        assert len(agent.exported[1]["state"]["flows"]) == 40
        assert agent._thread.is_alive(), "the loop did not resume after the export"
        h.rx.fill([bytes(f) for f in lb_flows(40)], 40)
        while h.manager.stats()["instances"][1]["rx"] < 80 and time.monotonic() < wait:
            time.sleep(0.01)
        assert h.manager.stats()["instances"][1]["rx"] == 80
    finally:
        agent.stop()
    h.tx.drain(keep=False)


def test_agent_without_export_state_publishes_null_and_moves_on(harnesses, caplog):
    from host_agent.agent import Agent
    h = harnesses(nfs=[("forward", None)])
    agent = Agent("harness", h.manager)
    plan = chain_plan([("forward", None)], h.in_port, h.out_port, generation=2)
    plan["instances"][0]["export"] = True
    with caplog.at_level("WARNING", logger="onvm.agent"):
        assert agent.apply(plan)
    assert agent.stats()["instances"]["1"]["state"] is None
    assert agent.stats()["instances"]["1"]["state_generation"] == 2
    assert "instance 1 (forward) is to move but its NF cannot export state" in caplog.text
    # the new side: a null state starts the NF empty, and says so
    other = harnesses(nfs=[("monitor", None)])
    plan = chain_plan([("forward", None)], other.in_port, other.out_port, generation=2)
    plan["instances"][0]["state"] = None
    with caplog.at_level("INFO", logger="onvm.agent"):
        assert Agent("harness", other.manager).apply(plan)
    assert "instance 1 (forward) starts without state" in caplog.text


def test_firewall_decides_each_packet_of_a_flow_alike_and_counts_every_hit(harnesses):
    # The firewall keeps rte_acl's answer per flow: the second and later
    # packets of a flow must get the same verdict and still count.
    rules = "deny udp any any any 53\nallow udp any any any 5000\ndefault deny"
    h = harnesses(nfs=[("firewall", {"rules_text": rules})])
    frames = [udp(1, dport=53)] * 10 + [udp(2, dport=5000)] * 10 + [udp(3, dport=7)] * 5
    out = h.send(frames)
    assert len(out) == 10 and {Ether(f)[UDP].dport for f in out} == {5000}
    counters = h.nf(1).counters()
    assert [r["hits"] for r in counters["rules"]] == [10, 10]
    assert counters["default"] == 5
    assert (counters["passed"], counters["dropped"]) == (10, 15)
