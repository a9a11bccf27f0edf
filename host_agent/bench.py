"""`onvm bench fastpath`: throughput of one host's fast path on generated
packets (64 bytes, or `--mix imix`), in memory, on one core.

Packets loop through a ring-backed port: what the chain sends out comes back
in, so the figure is the manager's (parse, flow table, classifier, NFs,
rewrite, rx/tx bursts) without a traffic generator sharing the core.
More flows than the ring holds (`--flows 1000000`): each looped packet gets
the next flow's addresses as it comes back in (host_agent/benchflows.pxd),
so each flow comes back only after all the others (`--zipf S`: drawn by
a skewed popularity instead; `--new-flows R`: the window of flows slides,
R new ones a second, the old ones aging out, occupancy sampled each
second); NFs that rewrite get rounds of distinct fresh packets.  The flow
table's occupancy and churn are reported.
Not here: the generator of traffic for emulated hosts (onvm.frames).
`--mode process` runs each NF as its own DPDK secondary process (needs huge
pages), each on a core of its own where the machine has one
(host_agent.lcores); `--python` uses the plain-Python version of each NF
(`TYPE-py`).  Besides Mpps it reports the cycles a packet took: the timed
run's seconds times the TSC's frequency over its packets (host_agent.cycles
projects cores from them).  `--cores N` is checked against the cores the
machine has (CoresError names both)."""
import ipaddress
import json
import os
import struct
import subprocess
import sys
import time

from host_agent import fastpath as fp
from contracts import replica
from contracts.replica import REPLICATED_NFS
from host_agent.harness import chain_plan
from host_agent import lcores
from host_agent.workers import Workers, spread
from host_agent.replicas import CHUNK, next_wait
from nflib.api import NFConfigError, make_nf, nf_types

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
    "firewall-stateful": {"rules_text": BENCH_RULES, "max_connections": 1 << 20},
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


SRC_NET = ipaddress.IPv4Network("10.1.0.0/16")   # inside BENCH_RULES' allow rule
DST_IP = "10.2.0.1"
BASE_SPORT = 1024


def flow_tuple(i):
    """The `i`th flow's (source address, source port, destination port):
    sources walk 10.1.0.0/16 (the firewall's allow rule, NAT's inside),
    then the source port steps, so 1M flows are 1M distinct valid 5-tuples."""
    hosts = SRC_NET.num_addresses - 2
    if not 0 <= i < hosts * (65536 - BASE_SPORT):
        raise ValueError(f"flow {i}: at most {hosts * (65536 - BASE_SPORT)} flows")
    src = SRC_NET.network_address + 1 + i % hosts
    return str(src), BASE_SPORT + i // hosts, 5000 + i % 1000


IMIX = (60, 60, 60, 60, 60, 60, 60, 572, 572, 572, 572, 1496)   # 7:4:1, without FCS


def bench_frames(flows, sizes=(60,)):
    """Frames of `flows` distinct UDP flows, flow i `sizes[i % len(sizes)]`
    bytes without FCS (60: the 64-byte minimum): one frame built by scapy,
    then its lengths, addresses, ports and IP checksum set per flow (scapy
    would take minutes for a million)."""
    from scapy.all import IP, UDP, Ether, raw
    template = raw(Ether(src="02:00:00:00:01:01", dst="02:00:00:00:00:01")
                   / IP(src=str(SRC_NET.network_address + 1), dst=DST_IP)
                   / UDP(sport=BASE_SPORT, dport=5000, chksum=0))
    frames = []
    for i in range(flows):
        size = sizes[i % len(sizes)]
        src, sport, dport = flow_tuple(i)
        f = bytearray(template + b"\0" * (size - len(template)))
        struct.pack_into("!H", f, 16, size - 14)            # IPv4 total length
        struct.pack_into("!H", f, 38, size - 34)            # UDP length
        f[26:30] = ipaddress.IPv4Address(src).packed
        struct.pack_into("!HH", f, 34, sport, dport)
        f[24:26] = b"\0\0"
        struct.pack_into("!H", f, 24, _ip_checksum(bytes(f[14:34])))
        frames.append(bytes(f))
    return frames


HTTP_REQUEST = (b"GET /catalog/item.php?id=%07d&view=full HTTP/1.1\r\nHost: shop.example\r\n"
                b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 "
                b"Firefox/120.0\r\nAccept: text/html,*/*\r\nCookie: session=%08x\r\n\r\n")


def http_frames(flows):
    """Frames of `flows` distinct TCP flows to port 80, each an HTTP GET
    request of its own (about 240 bytes) picked up mid-stream; in the loop
    each pass is the next segment of its flow (benchflows.tcp_next)."""
    from scapy.all import IP, TCP, Ether, raw
    frames = []
    for i in range(flows):
        src, sport, _ = flow_tuple(i)
        frames.append(raw(Ether(src="02:00:00:00:01:01", dst="02:00:00:00:00:01")
                          / IP(src=src, dst=DST_IP)
                          / TCP(sport=sport, dport=80, flags="PA", seq=1000, ack=1)
                          / (HTTP_REQUEST % (i, i * 2654435761 & 0xFFFFFFFF))))
    return frames


def zipf_table(flows, s, length=1 << 20, seed=1):
    """`length` flow ids drawn with Zipf(s) popularity over `flows` flows
    (rank k has weight 1 / k**s), ranks shuffled over the flow ids so the
    popular flows are not neighbours."""
    import numpy as np
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, flows + 1, dtype=float) ** s
    ranks = rng.choice(flows, size=length, p=weights / weights.sum())
    return rng.permutation(flows)[ranks].astype("uint32")


def _ip_checksum(header):
    total = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Snapshots:
    """The replicas' snapshots of a bench's replicated instances, taken as
    an agent takes them (host_agent.replicas): reading the chunks counts
    in the run's time (the loop stands still for each), making the state
    of them and encoding it does not (an agent does that beside the
    running loop); the next is due after `replicas.next_wait` seconds."""

    def __init__(self, mgr, plan, interval):
        self.mgr, self.interval = mgr, interval
        self.ids = [i["id"] for i in plan["instances"] if i["nf"] in REPLICATED_NFS]
        self.taken, self.paused, self.encoding, self.bytes, self.entries = 0, 0.0, 0.0, 0, 0
        self.last_pause = self.last_work = 0.0
        self.at = 0.0                       # run time of the last snapshot

    def due(self, run_s):
        return bool(self.ids) and run_s - self.at >= self.wait()

    def wait(self):
        return next_wait(self.interval, self.last_pause, self.last_work)

    def take(self, run_s):
        """Snapshot now, `run_s` seconds into the run, in chunks as an agent
        reads them; returns the time the loop would stand still."""
        pause, states, self.last_work = 0.0, [], 0.0
        for iid in self.ids:
            nf, entries, cursor = self.mgr.nf_object(iid), [], 0
            while cursor is not None:
                t0 = time.perf_counter()
                cursor, chunk = nf.export_chunk(cursor, CHUNK)
                pause += time.perf_counter() - t0
                entries += chunk
            t1 = time.perf_counter()
            states.append(nf.state_of(entries))
            self.bytes = len(replica.encode(states[-1]))
            self.encoding += time.perf_counter() - t1
            self.last_work += time.perf_counter() - t1
        self.entries = sum(replica.entries(state) for state in states)
        self.last_pause = pause
        self.last_work += pause
        self.paused += pause
        self.taken += 1
        self.at = run_s + pause
        return pause

    def report(self):
        n = max(1, self.taken)
        return {"interval_s": self.interval, "snapshots": self.taken,
                "pause_ms_each": round(1000 * self.paused / n, 3),
                "encode_ms_each": round(1000 * self.encoding / n, 3),
                "entries": self.entries, "bytes": self.bytes, "nfs": len(self.ids)}


class Stages:
    """Process mode as a pipeline: what each stage's packets cost it, and
    a floor for the Mpps the chain would reach with every stage on a core
    of its own (the slowest stage's rate), whatever cores it shares here.
    The manager's cost is its loop thread's CPU time over the timed run
    (the result's `cpu_cycles_per_packet`), an NF process's its user CPU
    time (clock ticks of 10 ms: runs of a few seconds or more) over the
    packets of the whole run, warm-up included.  Both are
    upper bounds of the work, never below it: a stage that waits for
    another still polls (the manager spins; an NF process checks its ring
    between yields of its core), so the projection is a floor."""

    def __init__(self, mgr, plan, procs):
        self.procs = procs
        self.names = [f"{i['id']} {i['nf']}" for i in plan["instances"]]
        self.start = (mgr.stats()["processed"], [_user_seconds(p.pid) for p in procs])
        self.cycles = None

    def end(self, processed, manager_cycles):
        n0, u0 = self.start
        n = max(1, processed - n0)
        hz = fp.tsc_hz()
        self.cycles = {"manager": manager_cycles}
        for name, p, u in zip(self.names, self.procs, u0):
            self.cycles[name] = round((_user_seconds(p.pid) - u) * hz / n, 1)

    def report(self):
        worst = max(v for v in self.cycles.values() if v is not None)
        return {"stage_cycles_per_packet": self.cycles,
                "projected_mpps_own_cores_at_least": round(fp.tsc_hz() / max(worst, 1) / 1e6, 2)}


def _user_seconds(pid):
    """A process's user CPU seconds (/proc/PID/stat, field 14)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK")


def run_bench(chain, packets, flows=1024, mode="inline", python=False,
              in_flight=4096, log=print, flow_entries=None, flow_idle=None, configs=None,
              replicate=0.0, mix="64", zipf=0.0, new_flows=0.0, payload="udp", cores=1):
    lcores.check_core_count(cores, f"--cores {cores}")
    if payload == "http" and (mix != "64" or zipf or new_flows or flows > in_flight
                              or cores > 1):
        raise ValueError(f"--payload http takes at most {in_flight} flows (each a stream "
                         f"going round once per pass), one core, and no --mix, --zipf "
                         f"or --new-flows")
    refusal = workers_refusal(cores, chain, flows, mode, zipf, new_flows, replicate, in_flight)
    if refusal:
        raise ValueError(refusal)
    hugepages = mode == "process" or fp.hugepages_available() >= 256
    eal = fp.default_eal_args(f"bench{os.getpid()}", hugepages=hugepages)
    fp.eal_init(eal)
    sizes = {} if flow_entries is None else {"flow_entries": flow_entries}
    if cores > 1:
        port, rings, _ = fp.ring_queues_port("benchloop", cores)
        mgr = Workers("bench", [port], cores, **sizes)
    else:
        port, ring = fp.ring_port("benchloop")
        rings, mgr = [ring], fp.Manager("bench", ports=[port], **sizes)
    for m in getattr(mgr, "managers", [mgr]):
        m.flow_idle_seconds = m.flow_idle_seconds if flow_idle is None else flow_idle
    known = nf_types()
    nfs = []
    for name in chain:
        kind = f"{name}-py" if python and f"{name}-py" in known else name
        nfs.append((kind, (configs or {}).get(name, BENCH_CONFIGS.get(name, {}))))
    plan = chain_plan(nfs, port, port, mode=mode)
    plan["host"] = "bench"
    mgr.apply_plan(plan, make_nf)
    procs, nf_cores, shared = [], {}, []
    if mode == "process":
        prefix = eal[eal.index("--file-prefix") + 1]
        manager, free = lcores.budget(eal)
        nf_cores, shared = lcores.assign([i["id"] for i in plan["instances"]], manager, free)
        if shared:
            log(f"bench: {len(nf_cores)} NF processes and the manager share cores "
                f"{lcores.format_cores(shared)}: too few cores for one each")
        for inst in plan["instances"]:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "onvm.cli", "nf", "run", inst["nf"],
                 "--host", "bench", "--instance", str(inst["id"]),
                 "--config", json.dumps(inst["config"]), "--file-prefix", prefix,
                 "--lcore", str(nf_cores[inst["id"]])]))
        time.sleep(2.0)
    snaps = Snapshots(mgr, plan, replicate) if replicate > 0 else None
    stages = Stages(mgr, plan, procs) if procs else None
    try:
        fresh = bool(REWRITING & set(chain))
        generator = False           # looped packets rewritten to further flows
        sizes = IMIX if mix == "imix" else (60,)
        samples = []
        if payload == "http":
            if fresh:
                raise ValueError(f"--payload http needs a chain that does not rewrite "
                                 f"addresses (not {', '.join(REWRITING & set(chain))})")
            mgr.set_bench(tcp_next=True)
            frames = http_frames(flows)
            done, elapsed, cpu = _run_loop(mgr, rings[0], frames, packets, flows, flows, snaps)
        elif fresh:
            if zipf or new_flows:
                raise ValueError(f"--zipf and --new-flows need a chain that does not "
                                 f"rewrite addresses (not {', '.join(REWRITING & set(chain))})")
            frames = bench_frames(flows, sizes)
            done, elapsed, cpu = _run_rounds(mgr, rings[0], frames, packets, in_flight, snaps)
        else:
            # More flows than the ring holds (or skewed, or sliding): the
            # loop gives each packet the next flow's addresses as it comes
            # back in (host_agent/benchflows.pxd).
            frames = bench_frames(min(flows, in_flight), sizes)
            if cores > 1:
                done, elapsed, cpu = _run_workers(mgr, rings, frames, packets, in_flight,
                                                  flows)
            else:
                generator = flows > in_flight or zipf or new_flows
                table = zipf_table(flows, zipf) if zipf else None
                mgr.set_bench(flows if generator else 0, new_flows, table)
                done, elapsed, cpu = _run_loop(mgr, rings[0], frames, packets, in_flight,
                                               flows, snaps, samples if new_flows else None)
        stats = mgr.stats()
        cpu_cycles = None if cpu is None else round(cpu * fp.tsc_hz() / max(done, 1), 1)
        if stages is not None:
            stages.end(stats["processed"], cpu_cycles)
        drops = {k: v for k, v in stats["drops"].items() if v}
        mean_bytes = sum(len(f) for f in frames) / len(frames)
        result = {
            "mpps": round(done / elapsed / 1e6, 3), "chain": list(chain),
            # L2 bits with the FCS; on the wire add 20 bytes a frame
            "gbps": round(done / elapsed * (mean_bytes + 4) * 8 / 1e9, 3),
            "mix": mix, "zipf": zipf, "new_flows_per_s": new_flows, "payload": payload,
            # cycles per packet at the TSC's rate: of the timed run's time,
            # and of the loop thread's own CPU time (without what other
            # processes took of its core; inline mode: all the work)
            "cycles_per_packet": round(elapsed * cores * fp.tsc_hz() / max(done, 1), 1),
            "cpu_cycles_per_packet": cpu_cycles,
            "tsc_hz": fp.tsc_hz(),
            "cores": cores,
            "nf_cores": {str(k): v for k, v in nf_cores.items()}, "shared_cores": shared,
            "packets": done, "seconds": round(elapsed, 3), "mode": mode,
            # loop: the ring's packets go round (more flows than it holds:
            # rewritten as they come back, host_agent/benchflows.pxd);
            # fresh: batches of distinct packets, each passing once
            "traffic": "fresh" if fresh else "loop",
            "python": python, "flows": flows,
            "frame_bytes": round(mean_bytes + 4, 1),
            "drops": drops,
            "flow_table": stats.get("flow_table", {"entries": stats["flows"],
                                                   "full": stats["flow_table_full"]}),
            "nfs": [n for n, _ in nfs],
            # the NFs' own flow tables (nflib.flowtab), by instance id
            "nf_flow_tables": {str(iid): e["counters"]["flow_table"]
                               for iid, e in stats["instances"].items()
                               if "flow_table" in e.get("counters", {})},
            "machine": f"{os.cpu_count()} cores, {os.uname().machine}",
        }
        if generator:
            # Loop mode rewrote looped packets to further flows (benchflows.pxd)
            # inside the timed loop: that work's own cycles a packet, and the
            # fast path's figures without them.
            gen = fp.rewrite_cycles(frames, flows, table, sliding=bool(new_flows))
            own = max(elapsed - done * gen / fp.tsc_hz() / cores, 1e-9)
            result["generator_cycles_per_packet"] = round(gen, 1)
            result["fastpath_mpps"] = round(done / own / 1e6, 3)
            if cpu_cycles is not None:
                result["fastpath_cpu_cycles_per_packet"] = round(cpu_cycles - gen, 1)
        if payload == "http":
            # the ids's view of the streams: each pass new data, not a repeat
            keys = ("packets", "http_requests", "reassembled", "retransmitted", "stale",
                    "out_of_order", "scanned_bytes", "alerts")
            seen = [e["counters"] for e in stats["instances"].values()
                    if "http_requests" in e.get("counters", {})]
            result["streams"] = {k: sum(c[k] for c in seen) for k in keys}
        if "workers" in stats:
            result["workers"] = stats["workers"]     # each worker's queue, core, packets
            result["handoffs"] = stats["handoffs"]   # host_agent.handoff: 0 when spread right
        if snaps is not None:
            result["replication"] = snaps.report()
        if stages is not None:
            result.update(stages.report())
        if samples:
            result["occupancy"] = samples     # [(seconds, live flows)] while flows come and go
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        for ring in rings:
            ring.drain()
        mgr.close()
        fp.eal_cleanup()
    return result


def workers_refusal(cores, chain, flows, mode, zipf, new_flows, replicate, in_flight=4096):
    """Why `--cores` above 1 cannot run with these options (None if it
    can): the workers take only looped packets whose flows stay as they
    are (host_agent.workers)."""
    if cores <= 1:
        return None
    why = [what for what, bad in (
        ("--mode process", mode != "inline"), (f"more than {in_flight} --flows", flows > in_flight),
        ("--zipf", zipf), ("--new-flows", new_flows), ("--replicate-interval", replicate),
        (" or ".join(sorted(REWRITING & set(chain))), REWRITING & set(chain))) if bad]
    if why:
        return (f"--cores {cores}: worker cores take inline chains of at most {in_flight} "
                f"flows that keep their addresses, not {', '.join(why)}")
    return None


def _run_workers(workers, rings, frames, packets, in_flight, flows):
    """Packets go round on each worker's queue: the frames spread over the
    queues by flow (host_agent.workers.queue_of), each queue's ring filled
    with its share of `in_flight`.  Returns (packets, seconds, CPU seconds
    of all workers)."""
    shares = spread(frames, len(workers))
    if not all(shares):
        raise ValueError(f"{len(frames)} flows leave a worker without any: use more --flows")
    for ring, share in zip(rings, shares):
        ring.fill(share, in_flight // len(workers))
    workers.run(max_packets=max(flows, min(packets // 10, 1_000_000)) // len(workers))
    t0 = time.perf_counter()
    runs = workers.run(max_packets=packets // len(workers))
    elapsed = time.perf_counter() - t0
    return sum(n for n, _ in runs), elapsed, sum(c for _, c in runs)


def _run_loop(mgr, ring, frames, packets, in_flight, flows, snaps=None, samples=None):
    """Packets go round: the chain's output is its next input.  With
    `samples` (a list), the flow table's live entries are sampled a second
    apart into it."""
    ring.fill(frames, in_flight)
    # warm caches, fill the flow table (every flow once)
    mgr.run(max_packets=max(flows, min(packets // 10, 1_000_000)))
    start = mgr.stats()["processed"]
    t0, c0 = time.perf_counter(), time.thread_time()
    if snaps is None and samples is None:
        mgr.run(max_packets=packets)
        return (mgr.stats()["processed"] - start, time.perf_counter() - t0,
                time.thread_time() - c0)
    elapsed = 0.0
    while mgr.stats()["processed"] - start < packets:
        t1 = time.perf_counter()
        left = 1.0 if snaps is None else snaps.at + snaps.wait() - elapsed
        mgr.run(max_packets=packets - (mgr.stats()["processed"] - start),
                seconds=max(1e-3, min(left, 1.0) if samples is not None else left))
        elapsed += time.perf_counter() - t1
        if samples is not None:
            samples.append((round(elapsed, 2), mgr.stats()["flow_table"]["entries"]))
        if snaps is not None and snaps.due(elapsed):
            elapsed += snaps.take(elapsed)
    return mgr.stats()["processed"] - start, elapsed, None


def _run_rounds(mgr, ring, frames, packets, chunk, snaps=None):
    """Rounds of `chunk` distinct packets that pass once, walking through
    all the flows in order, so every flow comes back only after all the
    others (the flow table holds all of them or churns).  The first walk
    (at least two rounds) fills the tables and is not timed; only the fast
    path's time is counted, not the refilling of the ring."""
    done = 0
    elapsed = cpu = 0.0
    warm = max(2, -(-len(frames) // chunk))
    rounds = warm + max(10, packets // chunk)
    offset = 0
    for i in range(rounds):
        ring.drain()
        batch = frames[offset:offset + chunk]
        if len(batch) < chunk:
            batch += frames[:chunk - len(batch)]
        offset = (offset + chunk) % len(frames)
        ring.fill(batch, chunk)
        start = mgr.stats()["processed"]
        t0, c0 = time.perf_counter(), time.thread_time()
        mgr.run(max_packets=chunk, idle_seconds=0.01)
        dt = time.perf_counter() - t0
        if i >= warm:
            elapsed += dt
            cpu += time.thread_time() - c0
            if snaps is not None and snaps.due(elapsed):
                elapsed += snaps.take(elapsed)
            done += mgr.stats()["processed"] - start
    return done, elapsed, (None if snaps is not None else cpu)


def nf_configs_of(items):
    """--nf-config NF=CONFIG arguments -> {NF: config}; CONFIG is a JSON
    object or a file, as for `onvm nf check` (a rule file for ids)."""
    from nfs.check import parse_config_arg
    out = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise NFConfigError(f"--nf-config takes NF=CONFIG, got {item!r}")
        out[name] = parse_config_arg(text)
    return out


def cli_bench_fastpath(args):
    chain = [c for c in args.chain.split(",") if c]
    try:
        configs = nf_configs_of(args.nf_config)
    except NFConfigError as err:
        print(f"onvm bench fastpath: {err}", file=sys.stderr)
        return 2
    if (args.zipf or args.new_flows) and REWRITING & set(chain):
        print(f"onvm bench fastpath: --zipf and --new-flows need a chain that does not "
              f"rewrite addresses (not {', '.join(sorted(REWRITING & set(chain)))})",
              file=sys.stderr)
        return 2
    refusal = workers_refusal(args.cores, chain, args.flows, args.mode, args.zipf,
                              args.new_flows, getattr(args, "replicate_interval", 0.0))
    if refusal:
        print(f"onvm bench fastpath: {refusal}", file=sys.stderr)
        return 2
    if args.zipf < 0 or args.new_flows < 0:
        print("onvm bench fastpath: --zipf and --new-flows must be >= 0", file=sys.stderr)
        return 2
    try:
        result = run_bench(chain, args.packets, flows=args.flows, mode=args.mode,
                           python=args.python, flow_entries=args.flow_entries,
                           flow_idle=args.flow_idle, configs=configs,
                           replicate=getattr(args, "replicate_interval", 0.0),
                           mix=args.mix, zipf=args.zipf, new_flows=args.new_flows,
                           payload=getattr(args, "payload", "udp"), cores=args.cores,
                           # with --json, stdout is the result's line alone
                           log=(lambda m: print(m, file=sys.stderr)) if args.json else print)
    except lcores.CoresError as err:
        print(f"onvm bench fastpath: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"onvm bench fastpath: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{' -> '.join(result['nfs'])}: {result['mpps']} Mpps, {result['gbps']} Gbps, "
              f"{result['cycles_per_packet']} cycles/packet "
              f"({result['cpu_cycles_per_packet']} of the loop's own CPU time) "
              f"({result['packets']} packets of {result['frame_bytes']} bytes on average "
              f"in {result['seconds']} s, "
              f"{result['flows']} flows, mode {result['mode']}, traffic {result['traffic']}, "
              f"payload {result['payload']}, "
              f"{result['cores']} core(s), drops {result['drops'] or 'none'}, "
              f"flow table {result['flow_table']})")
        if "generator_cycles_per_packet" in result:
            print(f"of which the bench's rewriting of looped packets to further flows: "
                  f"{result['generator_cycles_per_packet']} cycles/packet; the fast path "
                  f"without it: {result['fastpath_mpps']} Mpps")
        if "replication" in result:
            print(f"replicas' snapshots: {result['replication']}")
    return 0
