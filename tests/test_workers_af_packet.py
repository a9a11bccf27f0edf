"""Worker cores on kernel interfaces: `onvm agent --workers 2` with
`net_af_packet` vdevs on veth pairs, as an agent runs on a server's NIC
without a DPDK driver.  The agent gives each af_packet vdev one socket a
worker (`qpairs`, host_agent.agent.with_queue_pairs); the kernel spreads
flows over them (PACKET_FANOUT_HASH) and the handoff puts each flow on its
own worker.  Real interfaces, real frames, the real agent."""
import json
import os
import subprocess
import sys
import time

import pytest
from scapy.all import IP, UDP, Ether, conf, raw, rdpcap, sendp

from host_agent.agent import with_queue_pairs
from test_cores import CORES, HAVE, REPO, flow_frames, inline_plan

ONVM = [sys.executable, "-m", "onvm.cli"]


def test_af_packet_vdevs_get_a_queue_pair_per_worker():
    eal = ["onvm-h1", "--vdev", "net_af_packet0,iface=eth1", "--vdev", "net_pcap0,iface=x",
           "--vdev", "net_af_packet1,iface=eth2,qpairs=4", "-l", "0"]
    assert with_queue_pairs(eal, 2) == [
        "onvm-h1", "--vdev", "net_af_packet0,iface=eth1,qpairs=2", "--vdev", "net_pcap0,iface=x",
        "--vdev", "net_af_packet1,iface=eth2,qpairs=4", "-l", "0"]
    with pytest.raises(ValueError) as err:
        with_queue_pairs(["x", "--vdev", "net_af_packet0,iface=eth1,qpairs=1"], 2)
    assert str(err.value) == ("--vdev net_af_packet0,iface=eth1,qpairs=1: qpairs=1 gives "
                              "fewer queue pairs than the 2 workers (--workers); leave "
                              "qpairs out or give at least 2")


@pytest.fixture
def veths():
    """Two veth pairs, (in, out): the agent takes in[0] and out[0]; the test
    sends on in[1] and listens on out[1].  Removed even on failure."""
    if os.geteuid() != 0:
        pytest.skip("veth pairs need root")
    tag = f"wq{os.getpid() % 10000}"
    pairs = [(f"{tag}i0", f"{tag}i1"), (f"{tag}o0", f"{tag}o1")]
    try:
        for a, b in pairs:
            subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b],
                           check=True, capture_output=True)
            for dev in (a, b):
                subprocess.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1"],
                               capture_output=True)
                subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        yield pairs
    finally:
        for a, _ in pairs:
            subprocess.run(["ip", "link", "del", a], capture_output=True)


def test_agent_on_two_workers_over_af_packet_keeps_each_flow_on_one(veths, tmp_path):
    if len(CORES) < 2:
        pytest.skip(f"worker cores need 2 cores; this machine has {HAVE}")
    (i0, i1), (o0, o1) = veths
    (tmp_path / "plan.json").write_text(json.dumps(inline_plan()))
    log = open(tmp_path / "agent.log", "w")
    dumps = []
    agent = subprocess.Popen(
        ONVM + ["agent", "--host", "h1", "--plan", str(tmp_path / "plan.json"), "--seconds", "8",
                "--workers", "2", "--metrics-port", "0", "--",
                "--vdev", f"net_af_packet0,iface={i0}", "--vdev", f"net_af_packet1,iface={o0}",
                "--no-huge", "-m", "256", "--file-prefix", f"onvmaf{os.getpid()}"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        # tcpdump listens on out[1] (scapy's sniffer loses frames at this rate)
        pcap = tmp_path / "out.pcap"
        dump = subprocess.Popen(["tcpdump", "-i", o1, "-U", "-n", "-w", str(pcap), "udp"],
                                stderr=subprocess.PIPE, text=True)
        dumps.append(dump)
        assert "listening on" in dump.stderr.readline()
        # Warm-up: one flow of its own until a frame of it comes out (the
        # agent is then up); then the counted flows.
        warm_pkt = Ether(flow_frames(1, 1)[0])
        warm_pkt[IP].src = "10.9.9.9"
        del warm_pkt[IP].chksum, warm_pkt[UDP].chksum
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and agent.poll() is None:
            sendp(warm_pkt, iface=i1, verbose=False)
            time.sleep(0.2)
            if pcap.stat().st_size > 24 and any(
                    p.haslayer(IP) and p[IP].src == "10.9.9.9" for p in rdpcap(str(pcap))):
                break
        else:
            pytest.fail(f"the agent never forwarded; its log:\n{open(tmp_path / 'agent.log').read()[-3000:]}")
        frames = flow_frames(32, 10)
        s = conf.L2socket(iface=i1)
        try:
            for k in range(0, len(frames), 32):
                for f in frames[k:k + 32]:
                    s.send(f)
                time.sleep(0.005)
        finally:
            s.close()
        agent.wait(timeout=60)
        time.sleep(0.3)
    finally:
        for d in dumps:
            d.terminate()
            d.wait(timeout=10)
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        log.close()
    text = open(tmp_path / "agent.log").read()
    assert agent.returncode == 0, text[-3000:]
    final = json.loads(text.rsplit("final counters ", 1)[1].splitlines()[0])
    # every worker had packets; each flow's entry in one worker's table only
    assert [w["queue"] for w in final["workers"]] == [0, 1]
    assert all(w["processed"] > 0 for w in final["workers"]), final["workers"]
    assert final["flow_table"]["entries"] == 33        # 32 flows and the warm-up's
    assert not any(final["drops"].values()), final["drops"]
    seqs = {}
    for p in rdpcap(str(pcap)):
        b = raw(p)
        if b[-3:] != b"---" or p[IP].src == "10.9.9.9":
            continue
        flow, seq = int(b[-13:-8]), int(b[-8:-3])
        seqs.setdefault(flow, []).append(seq)
    # every frame of every flow came out once, in its order
    assert sorted(seqs) == list(range(32))
    assert {f: s for f, s in seqs.items() if s != list(range(10))} == {}, (final["ports"], final["workers"], final["handoffs"])
