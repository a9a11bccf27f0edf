"""`onvm bench fastpath` with many flows: the generator writes valid,
distinct 5-tuples the bench firewall allows, and more flows than the ring
holds really go through the fast path (the flow table sees each of them).
No speed is asserted here (BENCHMARKS.md has the figures)."""
import ipaddress
import json
import os
import subprocess
import sys

import pytest
from scapy.all import IP, UDP, Ether

from host_agent.bench import IMIX, bench_frames, flow_tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generator_writes_distinct_valid_flows_past_65536():
    frames = bench_frames(200_000)
    assert len(set(frames)) == 200_000
    assert {len(f) for f in frames} == {60}
    inside = ipaddress.ip_network("10.1.0.0/16")
    for f in frames[::9973] + [frames[-1]]:
        pkt = Ether(f)
        ip, udp = pkt[IP], pkt[UDP]
        assert ipaddress.ip_address(ip.src) in inside
        assert ip.src not in (str(inside.network_address), str(inside.broadcast_address))
        assert ip.dst == "10.2.0.1" and 5000 <= udp.dport <= 6000
        sent = ip.chksum
        del ip.chksum
        assert IP(bytes(ip)).chksum == sent
    assert flow_tuple(199_999)[:2] == (str(Ether(frames[-1])[IP].src), Ether(frames[-1])[UDP].sport)


def test_generator_refuses_more_flows_than_it_can_make_distinct():
    with pytest.raises(ValueError, match="at most"):
        flow_tuple(65534 * (65536 - 1024))


def test_more_flows_than_the_ring_holds_reach_the_flow_table():
    out = subprocess.run(
        [sys.executable, "-m", "onvm.cli", "bench", "fastpath",
         "--chain", "firewall-stateful,monitor", "--flows", "10000",
         "--packets", "40000", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["traffic"] == "loop" and result["flows"] == 10000
    assert result["drops"] == {}
    assert result["packets"] >= 40000 - 4096
    assert result["flow_table"]["entries"] == 10000
    assert result["nf_flow_tables"]["1"]["entries"] == 10000    # firewall-stateful
    # the rewriting of looped packets is the bench's, reported apart
    assert result["generator_cycles_per_packet"] > 0
    assert result["fastpath_mpps"] > result["mpps"]
    assert result["fastpath_cpu_cycles_per_packet"] < result["cpu_cycles_per_packet"]


def test_a_small_table_churns_and_says_so():
    out = subprocess.run(
        [sys.executable, "-m", "onvm.cli", "bench", "fastpath",
         "--chain", "monitor", "--flows", "20000", "--packets", "40000",
         "--flow-entries", "8192", "--flow-idle", "0", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    table = json.loads(out.stdout.strip().splitlines()[-1])["flow_table"]
    assert table["size"] == 8192
    assert table["entries"] <= 8192
    assert table["inserts"] + table["full"] >= 20000
    assert table["expired"] > 0


def bench(*args):
    out = subprocess.run([sys.executable, "-m", "onvm.cli", "bench", "fastpath", *args,
                          "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_imix_frames_are_valid_and_sized_7_4_1():
    frames = bench_frames(12, IMIX)
    assert sorted(len(f) for f in frames) == [60] * 7 + [572] * 4 + [1496]
    for f in frames:
        pkt = Ether(f)
        assert pkt[IP].len == len(f) - 14 and pkt[UDP].len == len(f) - 34
    result = bench("--chain", "monitor", "--mix", "imix", "--packets", "20000")
    ring = bench_frames(1024, IMIX)             # the flows the ring holds
    assert result["frame_bytes"] == round(sum(map(len, ring)) / len(ring) + 4, 1)
    assert result["drops"] == {} and result["gbps"] > 0


def test_http_streams_go_round_as_new_segments_through_the_ids():
    """--payload http: every pass of a flow's request is the next segment
    of its stream, so the ids (with HTTP rules) parses and scans each one
    (none taken for a retransmission or out of order)."""
    rules = os.path.join(REPO, "tests", "data", "et-style.rules")
    result = bench("--chain", "ids", "--payload", "http", "--flows", "64",
                   "--packets", "20000", "--nf-config", f"ids={rules}")
    streams = result["streams"]
    assert result["drops"] == {} and result["payload"] == "http"
    assert streams["packets"] >= 20000 and streams["http_requests"] == streams["packets"]
    assert streams["retransmitted"] == streams["stale"] == streams["out_of_order"] == 0
    assert streams["reassembled"] >= streams["packets"] - 64    # each joined its tail
    refused = subprocess.run([sys.executable, "-m", "onvm.cli", "bench", "fastpath",
                              "--chain", "ids", "--payload", "http", "--flows", "5000"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "at most 4096 flows" in refused.stderr


def test_skewed_flows_repeat_popular_ones_and_sliding_flows_age_out():
    skewed = bench("--chain", "monitor", "--flows", "50000", "--zipf", "1.2",
                   "--packets", "200000")
    assert 0 < skewed["flow_table"]["inserts"] < 50000, "Zipf: popular flows repeat"
    sliding = bench("--chain", "monitor", "--flows", "5000", "--new-flows", "20000",
                    "--flow-idle", "0.2", "--packets", "8000000")
    assert sliding["flow_table"]["inserts"] > 5000 and sliding["flow_table"]["expired"] > 0
    assert sliding["occupancy"], "occupancy sampled while flows come and go"
    refused = subprocess.run([sys.executable, "-m", "onvm.cli", "bench", "fastpath",
                              "--chain", "nat", "--zipf", "1"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "rewrite addresses" in refused.stderr


def test_the_loop_rewrites_looped_packets_to_the_next_flows_with_valid_checksums():
    """More flows than the ring holds: each packet that comes back in gets
    the next flow's source and ports (host_agent/benchflows.pxd), its IP
    checksum updated incrementally; every packet still valid and the flows
    the ones bench_frames would write, the cursor wrapping at `flows`."""
    from host_agent import fastpath as fp
    from host_agent.harness import chain_plan, ensure_eal
    from nflib.api import make_nf
    ensure_eal()
    port, ring = fp.ring_port(f"rewrite{os.getpid()}")
    mgr = fp.Manager("rw", ports=[port])
    try:
        plan = chain_plan([("forward", {})], port, port)
        mgr.apply_plan(plan, make_nf)
        ring.fill(bench_frames(16), 16)
        mgr.set_bench(flows=40)
        mgr.run(max_packets=16 * 7)         # 112 rewrites: flows 0..39, 0..39, 0..31
        out = ring.drain(keep=True)
    finally:
        mgr.close()
    assert len(out) == 16
    seen = []
    for f in out:
        ip = Ether(f)[IP]
        sent = ip.chksum
        del ip.chksum
        assert IP(bytes(ip)).chksum == sent
        seen.append((ip.src, ip[UDP].sport, ip[UDP].dport))
    # the last pass gave the 16 packets flows 16..31 (the third time round)
    assert sorted(seen) == sorted(flow_tuple(i) for i in range(16, 32))


def test_process_mode_reports_each_stage_and_a_floor_for_own_cores():
    from host_agent import fastpath as fp
    if fp.hugepages_available() < 300:
        pytest.skip("NF processes share the bench's memory through huge pages; "
                    "`make hugepages` (as root) reserves and mounts them")
    r = bench("--chain", "firewall,monitor", "--mode", "process", "--packets", "2000000")
    cycles = r["stage_cycles_per_packet"]
    assert sorted(cycles) == ["1 firewall", "2 monitor", "manager"]
    assert all(v > 0 for v in cycles.values()), cycles
    assert r["projected_mpps_own_cores_at_least"] == round(
        r["tsc_hz"] / max(cycles.values()) / 1e6, 2)
