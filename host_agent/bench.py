"""`onvm bench fastpath`: throughput of one host's fast path on generated
64-byte packets, in memory, on one core.

Packets loop through a ring-backed port: what the chain sends out comes back
in, so the figure is the manager's (parse, flow table, classifier, NFs,
rewrite, rx/tx bursts) without a traffic generator sharing the core.
`--mode process` runs each NF as its own DPDK secondary process (needs huge
pages); `--python` uses the plain-Python version of each NF (`TYPE-py`)."""
import json
import os
import subprocess
import sys
import time

from host_agent import fastpath as fp
from host_agent.harness import chain_plan
from nflib.api import make_nf, nf_types

# Rules of a realistic edge firewall; the generated traffic matches the
# allow rule near the end, so each packet is checked against all of them.
BENCH_RULES = """\
deny tcp any any any 23
deny tcp any any any 445
deny udp any any any 1900
deny any 192.168.0.0/16 any
allow udp 10.1.0.0/16 10.2.0.0/16 any 5000-6000
default deny
"""
# 100 payload signatures on HTTP and one pcre: the bench traffic (UDP)
# reaches the pcre rule's scan and matches nothing.
IDS_RULES = "\n".join(
    f'alert tcp any any -> any 80 (msg:"r{i}"; content:"attack-{i:03d}"; nocase; sid:{i + 1};)'
    for i in range(100)) + '\ndrop udp any any -> any any (msg:"u"; pcre:"/evil[0-9]{4}/i"; sid:999;)\n'
BENCH_CONFIGS = {
    "firewall": {"rules_text": BENCH_RULES},
    "firewall-stateful": {"rules_text": BENCH_RULES},
    "ids": {"rules_text": IDS_RULES},
    "lb": {"backends": [{"name": f"b{i}", "ip": f"10.3.0.{i}", "mac": f"02:00:00:00:03:0{i}"}
                        for i in range(1, 5)]},
    "nat": {"external_ip": "198.51.100.1", "internal": "10.1.0.0/16"},
    "ratelimit": {"rate": 1e9, "burst": 1000000},
    "ddos": {"syn_threshold": 10**9, "packet_threshold": 10**9},
}
# NFs that rewrite addresses: looped back, their own output would come in
# again as other traffic, so they get fresh packets each round instead.
REWRITING = {"nat", "lb"}


def bench_frames(flows):
    """64-byte frames (60 without FCS) of `flows` UDP flows."""
    from scapy.all import IP, UDP, Ether, raw
    frames = []
    for i in range(flows):
        pkt = (Ether(src="02:00:00:00:01:01", dst="02:00:00:00:00:01")
               / IP(src=f"10.1.{i // 250}.{i % 250 + 1}", dst="10.2.0.1")
               / UDP(sport=1024 + i % 30000, dport=5000 + i % 1000))
        frame = raw(pkt)
        frames.append(frame + b"\0" * (60 - len(frame)))
    return frames


def run_bench(chain, packets, flows=1024, mode="inline", python=False,
              in_flight=4096, log=print):
    hugepages = mode == "process" or fp.hugepages_available() >= 256
    eal = fp.default_eal_args(f"bench{os.getpid()}", hugepages=hugepages)
    fp.eal_init(eal)
    port, ring = fp.ring_port("benchloop")
    mgr = fp.Manager("bench", ports=[port])
    known = nf_types()
    nfs = []
    for name in chain:
        kind = f"{name}-py" if python and f"{name}-py" in known else name
        nfs.append((kind, BENCH_CONFIGS.get(name, {})))
    plan = chain_plan(nfs, port, port, mode=mode)
    plan["host"] = "bench"
    mgr.apply_plan(plan, make_nf)
    procs = []
    if mode == "process":
        prefix = eal[eal.index("--file-prefix") + 1]
        for inst in plan["instances"]:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "onvm.cli", "nf", "run", inst["nf"],
                 "--host", "bench", "--instance", str(inst["id"]),
                 "--config", json.dumps(inst["config"]), "--file-prefix", prefix]))
        time.sleep(2.0)
    try:
        frames = bench_frames(flows)
        fresh = bool(REWRITING & set(chain))
        if fresh:
            done, elapsed = _run_fresh(mgr, ring, frames, packets, in_flight)
        else:
            done, elapsed = _run_loop(mgr, ring, frames, packets, in_flight)
        stats = mgr.stats()
        drops = {k: v for k, v in stats["drops"].items() if v}
        result = {
            "mpps": round(done / elapsed / 1e6, 3), "chain": list(chain),
            "cores": min(os.cpu_count(), 1 + (1 if procs else 0)),
            "packets": done, "seconds": round(elapsed, 3), "mode": mode,
            "traffic": "fresh" if fresh else "loop",
            # looped packets: the ring holds in_flight of them, so at most
            # that many distinct flows go round
            "python": python, "flows": flows if fresh else min(flows, in_flight),
            "frame_bytes": 64,
            "drops": drops,
            "nfs": [n for n, _ in nfs],
            "machine": f"{os.cpu_count()} cores, {os.uname().machine}",
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        ring.drain()
        mgr.close()
        fp.eal_cleanup()
    return result


def _run_loop(mgr, ring, frames, packets, in_flight):
    """Packets go round: the chain's output is its next input."""
    ring.fill(frames, in_flight)
    mgr.run(max_packets=min(packets // 10, 1_000_000))    # warm caches, fill the flow table
    start = mgr.stats()["processed"]
    t0 = time.perf_counter()
    mgr.run(max_packets=packets)
    return mgr.stats()["processed"] - start, time.perf_counter() - t0


def _run_fresh(mgr, ring, frames, packets, chunk):
    """Rounds of fresh packets; only the fast path's time is counted."""
    done = 0
    elapsed = 0.0
    rounds = max(12, packets // chunk)
    for i in range(rounds):
        ring.drain()
        ring.fill(frames[(i * 97) % len(frames):] + frames, chunk)
        start = mgr.stats()["processed"]
        t0 = time.perf_counter()
        mgr.run(max_packets=chunk, idle_seconds=0.01)
        dt = time.perf_counter() - t0
        if i >= 2:                      # the first rounds fill the flow tables
            elapsed += dt
            done += mgr.stats()["processed"] - start
    return done, elapsed


def cli_bench_fastpath(args):
    chain = [c for c in args.chain.split(",") if c]
    result = run_bench(chain, args.packets, flows=args.flows, mode=args.mode,
                       python=args.python)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{' -> '.join(result['nfs'])}: {result['mpps']} Mpps "
              f"({result['packets']} packets of 64 bytes in {result['seconds']} s, "
              f"{result['flows']} flows, mode {result['mode']}, traffic {result['traffic']}, "
              f"{result['cores']} core(s), drops {result['drops'] or 'none'})")
    return 0
