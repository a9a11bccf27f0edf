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
from nfs.api import make_nf, nf_types

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
BENCH_CONFIGS = {"firewall": {"rules_text": BENCH_RULES}}


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
        ring.fill(bench_frames(flows), in_flight)
        mgr.run(max_packets=min(packets // 10, 1_000_000))       # warm caches, fill the flow table
        start_count = mgr.stats()["processed"]
        t0 = time.perf_counter()
        mgr.run(max_packets=packets)
        elapsed = time.perf_counter() - t0
        stats = mgr.stats()
        done = stats["processed"] - start_count
        dropped = sum(stats["drops"].values())
        result = {
            "mpps": round(done / elapsed / 1e6, 3), "chain": list(chain),
            "cores": 1 + (len(procs) if mode == "process" else 0),
            "packets": done, "seconds": round(elapsed, 3), "mode": mode,
            "python": python, "flows": flows, "frame_bytes": 64,
            "drops": dropped,
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
    return result


def cli_bench_fastpath(args):
    chain = [c for c in args.chain.split(",") if c]
    result = run_bench(chain, args.packets, flows=args.flows, mode=args.mode,
                       python=args.python)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{' -> '.join(result['nfs'])}: {result['mpps']} Mpps "
              f"({result['packets']} packets of 64 bytes in {result['seconds']} s, "
              f"{result['flows']} flows, mode {result['mode']}, {result['cores']} core(s), "
              f"{result['drops']} dropped)")
    return 0
