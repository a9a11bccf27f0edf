"""Cores: NF processes on cores of their own (host_agent.lcores), commands
that ask for cores the machine lacks, and the cycles a packet costs
(host_agent.cycles).  The processes run for real (DPDK EAL, huge pages
for NF processes); no speed is asserted."""
import itertools
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from scapy.all import IP, TCP, UDP, Ether, raw, rdpcap, wrpcap

from contracts.statsum import summarize
from host_agent import fastpath as fp
from host_agent import lcores
from host_agent.agent import LOOP_LCORE
from host_agent.cycles import cores_needed, line_rate_mpps, projection
from host_agent.harness import HOST_MAC, chain_plan, ensure_eal
from host_agent.workers import Workers, queue_of, spread
from nflib.api import PythonNF, make_nf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONVM = [sys.executable, "-m", "onvm.cli"]
CORES = lcores.machine_cores()
HAVE = f"{len(CORES)} core{'s' if len(CORES) != 1 else ''} ({lcores.format_cores(CORES)})"


def onvm(*args, timeout=300):
    return subprocess.run(ONVM + list(args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------ core lists

def test_core_lists_parse_and_format_as_the_eal_writes_them():
    assert lcores.parse_core_list("0,2-4,7") == [0, 2, 3, 4, 7]
    assert lcores.format_cores([7, 0, 2, 3, 4]) == "0,2-4,7"
    with pytest.raises(lcores.CoresError, match=r"'3-1': range 3-1 runs backwards"):
        lcores.parse_core_list("3-1")
    with pytest.raises(lcores.CoresError, match="'a' is not a core list"):
        lcores.parse_core_list("a")


def test_asking_for_cores_that_do_not_exist_names_them_and_the_cores_there():
    with pytest.raises(lcores.CoresError) as err:
        lcores.check_cores([1, 7], "--lcore 7", cores=[0, 1])
    assert str(err.value) == "--lcore 7: no core 7 here: this machine has 2 cores (0-1)"
    with pytest.raises(lcores.CoresError) as err:
        lcores.check_core_count(3, "--cores 3", cores=[0, 1])
    assert str(err.value) == "--cores 3: asks for 3 cores, but this machine has 2 cores (0-1)"
    lcores.check_core_count(2, "--cores 2", cores=[0, 1])


def test_the_budget_is_the_eal_list_or_else_the_machine():
    assert lcores.budget(["-l", "0"], cores=range(8)) == (0, [1, 2, 3, 4, 5, 6, 7])
    assert lcores.budget(["-l", "2-4"], cores=range(8)) == (2, [3, 4])
    assert lcores.budget([], cores=[3, 5]) == (3, [5])


def test_each_nf_process_gets_its_own_core_while_there_are_enough():
    cores, shared = lcores.assign([5, 1, 3], manager=0, free=[1, 2, 3, 4])
    assert cores == {1: 1, 3: 2, 5: 3} and shared == []
    # a running instance keeps its core; a new one takes a free one
    cores, shared = lcores.assign([3, 5, 9], manager=0, free=[1, 2, 3, 4], kept=cores)
    assert cores == {3: 2, 5: 3, 9: 1} and shared == []


def test_too_few_cores_share_round_robin_and_say_which():
    cores, shared = lcores.assign([1, 2, 3], manager=0, free=[1, 2])
    assert cores == {1: 1, 2: 2, 3: 1} and shared == [1]
    cores, shared = lcores.assign([1, 2], manager=0, free=[])
    assert cores == {1: 0, 2: 0} and shared == [0]


# ------------------------------------------------ commands asking for too many

def test_nf_run_on_a_core_that_does_not_exist_exits_1_naming_the_cores():
    missing = CORES[-1] + 5
    out = onvm("nf", "run", "forward", "--host", "nowhere", "--instance", "1",
               "--lcore", str(missing))
    assert out.returncode == 1
    assert out.stderr.strip() == (f"onvm nf run: --lcore {missing}: no core {missing} "
                                  f"here: this machine has {HAVE}")


def test_bench_with_more_worker_cores_than_the_machine_has_exits_1():
    n = len(CORES) + 1
    out = onvm("bench", "fastpath", "--chain", "forward", "--cores", str(n))
    assert out.returncode == 1
    assert out.stderr.strip() == (f"onvm bench fastpath: --cores {n}: asks for {n} "
                                  f"cores, but this machine has {HAVE}")


def test_an_agent_on_cores_that_do_not_exist_exits_1_naming_them(tmp_path):
    missing = CORES[-1] + 1
    (tmp_path / "plan.json").write_text(json.dumps(process_plan()))
    out = onvm("agent", "--host", "h1", "--plan", str(tmp_path / "plan.json"),
               "--seconds", "1", "--metrics-port", "0", "--", "-l", f"0,{missing}-{missing + 2}",
               "--no-huge", "-m", "256", "--vdev", "net_null0")
    assert out.returncode == 1
    assert (f"onvm agent: -l 0,{missing}-{missing + 2}: no core {missing}-{missing + 2} "
            f"here: this machine has {HAVE}") in out.stderr


# ------------------------------------------------------------ the agent

def process_plan():
    return {
        "host": "h1", "generation": 1, "node_label": 16, "mac": "02:00:00:00:00:01",
        "instances": [{"id": 1, "nf": "firewall", "mode": "process",
                       "config": {"rules_text": "deny tcp any any any 22\ndefault allow"}},
                      {"id": 2, "nf": "monitor", "mode": "process"},
                      {"id": 3, "nf": "forward"}],
        "classifiers": [{"spi": 16, "match": {"ipv4_dst": "10.0.1.0/24"}}],
        "hops": [{"spi": 16, "si": 255, "local": 1}, {"spi": 16, "si": 254, "local": 2},
                 {"spi": 16, "si": 253, "local": 3},
                 {"spi": 16, "si": 252, "end": {"port": 1, "dst_mac": "02:00:00:00:00:04"}}],
        "uplink": 1,
    }


def run_process_plan(tmp_path, *eal):
    """`onvm agent` on process_plan() for 10 s, 50 TCP frames in (10 to
    port 22, which the firewall denies), with `eal` added to its EAL
    arguments: (the finished process, its final counters, its out pcap)."""
    if fp.hugepages_available() < 300:
        pytest.skip("NF processes share the agent's memory through huge pages; "
                    "`make hugepages` (as root) reserves and mounts them")
    frames = [Ether(dst="02:00:00:00:00:01") / IP(src="10.0.0.5", dst="10.0.1.7")
              / TCP(sport=1000 + i, dport=22 if i % 5 == 0 else 80) for i in range(50)]
    wrpcap(str(tmp_path / "in.pcap"), frames)
    (tmp_path / "plan.json").write_text(json.dumps(process_plan()))
    out = tmp_path / "out.pcap"
    proc = onvm("agent", "--host", "h1", "--plan", str(tmp_path / "plan.json"),
                "--seconds", "10", "--metrics-port", "0", "--",
                "--vdev", f"net_pcap0,rx_pcap={tmp_path}/in.pcap",
                "--vdev", f"net_pcap1,tx_pcap={out}", *eal,
                "--file-prefix", f"onvmcores{os.getpid()}", timeout=90)
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stderr.rsplit("final counters ", 1)[1].splitlines()[0])
    assert final["instances"]["1"]["drops"] == 10
    assert final["instances"]["2"]["rx"] == final["instances"]["2"]["tx"] == 40
    assert len(rdpcap(str(out))) == 40
    return proc, final


def test_agent_pins_nf_processes_off_the_manager_core_and_reports_them(tmp_path):
    manager = CORES[0]
    proc, final = run_process_plan(tmp_path, "--socket-mem", "256", "-l", str(manager))
    cores = final["cores"]
    assert cores["manager"] == manager
    assert cores["loop_lcore"] is None          # its own -l: the loop on a thread
    given = {int(i): c for i, c in cores["nf_processes"].items()}
    assert set(given) == {1, 2}
    for iid, core in given.items():
        assert final["instances"][str(iid)]["core"] == core
        # the EAL of the NF process pinned it there
        assert f"h1 instance {iid} ({['firewall', 'monitor'][iid - 1]}) serving on cores " \
               f"{core}\n" in proc.stderr
    if len(CORES) >= 3:
        assert manager not in given.values() and len(set(given.values())) == 2
        assert cores["shared"] == []
    else:
        assert cores["shared"] != [] and "are shared" in proc.stderr
    summary, _ = summarize({**final, "instances": final["instances"]})
    assert summary["cores"] == cores and summary["instances"]["1"]["core"] == given[1]


def test_agent_loop_runs_on_an_eal_lcore_of_its_own_and_nf_processes_still_attach(tmp_path):
    """With no core list of the user's, the agent's EAL has lcore 0 (its
    control thread) and LOOP_LCORE, both on core 0; the loop runs on
    LOOP_LCORE, with a cache of the packet pool, and no thread registers,
    so NF processes (DPDK secondaries) still attach and run the chain."""
    proc, final = run_process_plan(tmp_path)
    assert final["cores"]["loop_lcore"] == LOOP_LCORE
    assert f"the fast path runs on lcore {LOOP_LCORE} (cores [0])" in proc.stderr


# ------------------------------------------------------------ cycles

def test_line_rates_and_cores_needed():
    assert [round(line_rate_mpps(g, "64"), 2) for g in (10, 40, 100)] == [14.88, 59.52, 148.81]
    # IMIX 7:4:1 of 64, 576, 1500: 354.33 bytes a frame, 374.33 on the wire
    assert round(line_rate_mpps(10, "imix"), 3) == 3.339
    assert cores_needed(278, 2.1e9, 14.88) == 2           # 1.97 cores
    assert cores_needed(141.1, 2.1e9, 14.88) == 1         # 0.9998
    assert cores_needed(200, 2e9, 10) == 1                # exactly one
    assert projection(278, 2.1e9, "64") == {"10": 2, "40": 8, "100": 20}


def test_bench_reports_the_cycles_its_timed_run_took_per_packet():
    out = onvm("bench", "fastpath", "--chain", "firewall,monitor,forward",
               "--packets", "200000", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["cores"] == 1 and r["tsc_hz"] > 0
    # seconds (rounded to 1 ms) x TSC rate / packets
    assert abs(r["cycles_per_packet"] * r["packets"] / r["tsc_hz"] - r["seconds"]) <= 0.0006
    # the loop thread's own CPU time is part of the wall-clock time
    assert 0 < r["cpu_cycles_per_packet"] <= r["cycles_per_packet"] * 1.01 + 1


def test_bench_cycles_projects_cores_from_what_it_measured():
    out = onvm("bench", "cycles", "--chain", "forward", "--mix", "imix",
               "--packets", "200000", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    (run,) = result["runs"]
    assert run["chain"] == ["forward"] and run["mix"] == "imix"
    assert run["cores"] == projection(run["cycles_per_packet"], run["tsc_hz"], "imix")
    assert result["line_rate_mpps"]["imix"]["100"] == 33.393


# ------------------------------------------------------------ worker cores

class Stamp(PythonNF):
    """Writes its position into the frame's last 3 bytes, so what comes
    out shows which NFs it went through, in which order."""

    def handle(self, batch):
        pos = self.config["pos"]
        for i in range(len(batch)):
            data = batch.data(i)
            if data[len(data) - 3 + pos] != ord("-") or (pos and data[len(data) - 4 + pos] == ord("-")):
                batch.drop(i)           # out of order: visible as an nf_drop
            data[len(data) - 3 + pos] = ord("A") + pos


def stamp_factory(inst):
    return Stamp(inst["config"])


def stamp_plan(port, generation=1):
    return chain_plan([("stamp", {"pos": p, "generation": generation}) for p in range(3)],
                      port, port, generation=generation)


def flow_frames(flows, per_flow, start=0):
    """`per_flow` frames of each flow, interleaved; the payload holds the
    flow and its sequence number, then "---" for the stamps."""
    return [raw(Ether(dst=HOST_MAC) / IP(src=f"10.1.{f // 250}.{f % 250 + 1}", dst="10.2.0.1")
                / UDP(sport=1000 + f, dport=5000) / f"{f:05d}{s:05d}---".encode())
            for s in range(start, start + per_flow) for f in range(flows)]


SEQ = itertools.count()


@pytest.fixture
def workers():
    if len(CORES) < 2:
        pytest.skip(f"worker cores need 2 cores; this machine has {HAVE}")
    ensure_eal()
    made = []

    def make(n=2):
        port, rxs, txs = fp.ring_queues_port(f"wq{next(SEQ)}", n, loop=False)
        w = Workers("t", [port], n, flow_entries=1 << 14)
        made.append((w, rxs, txs))
        return port, w, rxs, txs
    yield make
    for w, rxs, txs in made:
        w.stop()
        for r in rxs + txs:
            r.drain()
        w.close()
    avail, in_use = fp.pool_counts()
    assert in_use == 0, f"{in_use} mbufs leaked"


def test_a_flow_and_its_replies_hash_to_one_worker():
    for f in flow_frames(200, 1):
        pkt = Ether(f)
        reply = raw(Ether() / IP(src=pkt[IP].dst, dst=pkt[IP].src)
                    / UDP(sport=pkt[UDP].dport, dport=pkt[UDP].sport))
        for n in (2, 3, 4):
            assert queue_of(f, n) == queue_of(reply, n)
    assert {queue_of(f, 4) for f in flow_frames(200, 1)} == {0, 1, 2, 3}


def check_out(outs, flows, per_flow):
    """Every packet of every flow came out of one worker's queue, in
    order, stamped by the three NFs in order."""
    seen = {}
    for q, frames in enumerate(outs):
        for f in frames:
            payload = bytes(f)[-13:]
            assert payload[-3:] == b"ABC", payload
            flow, seq = int(payload[:5]), int(payload[5:10])
            queues, seqs = seen.setdefault(flow, (set(), []))
            queues.add(q)
            seqs.append(seq)
    assert sorted(seen) == list(range(flows))
    for flow, (queues, seqs) in seen.items():
        assert len(queues) == 1, f"flow {flow} on workers {queues}"
        assert seqs == list(range(per_flow)), f"flow {flow}: {seqs}"
    return seen


def test_workers_carry_every_flow_through_the_chain_in_order_each_on_one_worker(workers):
    port, w, rxs, txs = workers(2)
    w.apply_plan(stamp_plan(port), stamp_factory)
    frames = flow_frames(64, 20)
    for rx, share in zip(rxs, spread(frames, 2)):
        assert rx.fill(share, len(share)) == len(share)
    runs = w.run(idle_seconds=0.05)
    seen = check_out([tx.drain(keep=True) for tx in txs], 64, 20)
    for flow, (queues, _) in seen.items():
        assert queues == {queue_of(frames[flow], 2)}
    stats = w.stats()
    assert stats["processed"] == len(frames) and stats["drops"]["nf_drop"] == 0
    assert [x["processed"] for x in stats["workers"]] == [n for n, _ in runs]
    assert all(n > 0 for n, _ in runs)
    assert all(stats["instances"][i]["rx"] == len(frames) for i in (1, 2, 3))
    assert stats["flow_table"]["entries"] == 64      # each flow in one worker's table
    w.answer_probes = False                          # what the agent sets on leaving
    assert [m.answer_probes for m in w.managers] == [False, False]


def test_plan_swaps_pass_each_workers_quiescent_point_under_traffic(workers):
    port, w, rxs, txs = workers(2)
    w.apply_plan(stamp_plan(port), stamp_factory)
    runner = threading.Thread(target=w.run)
    runner.start()
    try:
        sent = 0
        for generation in range(2, 8):
            batch = flow_frames(40, 5, start=(generation - 2) * 5)
            for rx, share in zip(rxs, spread(batch, 2)):
                assert rx.fill(share, len(share)) == len(share)
            sent += len(batch)
            w.apply_plan(stamp_plan(port, generation), stamp_factory)
        deadline = time.monotonic() + 60
        while w.stats()["processed"] < sent and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        w.stop()
        runner.join()
    check_out([tx.drain(keep=True) for tx in txs], 40, 30)
    assert [m.generation for m in w.managers] == [7, 7]
    assert w.stats()["drops"] == {reason: 0 for reason in fp.DROP_REASONS}


def test_a_plan_one_worker_cannot_take_leaves_every_worker_on_the_old_one(workers):
    port, w, rxs, txs = workers(2)
    w.apply_plan(stamp_plan(port), stamp_factory)
    made = []

    def fails_on_the_second_worker(inst):
        made.append(inst["id"])
        if len(made) > 3:
            raise ValueError("no room for another stamp")
        return Stamp(inst["config"])
    with pytest.raises(ValueError, match="no room"):
        w.apply_plan(stamp_plan(port, generation=2), fails_on_the_second_worker)
    assert [m.generation for m in w.managers] == [1, 1]
    frames = flow_frames(16, 4)
    for rx, share in zip(rxs, spread(frames, 2)):
        rx.fill(share, len(share))
    w.run(idle_seconds=0.05)
    check_out([tx.drain(keep=True) for tx in txs], 16, 4)


def test_bench_on_two_worker_cores_keeps_each_flow_on_one():
    if len(CORES) < 2:
        pytest.skip(f"worker cores need 2 cores; this machine has {HAVE}")
    out = onvm("bench", "fastpath", "--chain", "firewall,monitor,forward", "--cores", "2",
               "--packets", "400000", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["cores"] == 2 and r["drops"] == {}
    assert [x["queue"] for x in r["workers"]] == [0, 1]
    assert r["handoffs"] == {"sent": 0, "received": 0}     # queue_of spread them right
    assert sum(x["processed"] for x in r["workers"]) >= r["packets"] >= 400000
    assert all(x["processed"] > 0 for x in r["workers"])
    # 1024 flows in the two workers' tables together: none in both
    assert r["flow_table"]["entries"] == 1024


def test_bench_refuses_worker_cores_with_what_they_do_not_take():
    out = onvm("bench", "fastpath", "--chain", "nat", "--cores", "2", "--flows", "5000")
    assert out.returncode == 2
    assert out.stderr.strip() == ("onvm bench fastpath: --cores 2: worker cores take inline "
                                  "chains of at most 4096 flows that keep their addresses, "
                                  "not more than 4096 --flows, nat")


# ------------------------------------------------- worker cores in the agent

def inline_plan():
    plan = process_plan()
    for inst in plan["instances"]:
        inst.pop("mode", None)
    plan["classifiers"] = [{"spi": 16, "match": {"ipv4_dst": "10.2.0.0/24"}}]
    return plan


def run_worker_agent(tmp_path, plan, frames, workers=2, eal=()):
    """`onvm agent --workers N` on pcap ports with N queues: the frames of
    queue q (spread as symmetric RSS would) in in{q}.pcap, what queue q
    sends in out{q}.pcap; `eal`: more EAL arguments."""
    for q, share in enumerate(spread(frames, workers)):
        wrpcap(str(tmp_path / f"in{q}.pcap"), [Ether(f) for f in share] or [Ether()])
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    rx = ",".join(f"rx_pcap={tmp_path}/in{q}.pcap" for q in range(workers))
    tx = ",".join(f"tx_pcap={tmp_path}/out{q}.pcap" for q in range(workers))
    proc = onvm("agent", "--host", "h1", "--plan", str(tmp_path / "plan.json"),
                "--seconds", "2", "--workers", str(workers), "--metrics-port", "0", "--",
                "--vdev", f"net_pcap0,{rx}", "--vdev", f"net_pcap1,{tx}", "--no-huge",
                "-m", "256", "--file-prefix", f"onvmwk{os.getpid()}", *eal, timeout=90)
    outs = [[raw(p) for p in rdpcap(str(tmp_path / f"out{q}.pcap"))]
            if (tmp_path / f"out{q}.pcap").exists() else [] for q in range(workers)]
    return proc, outs


def test_agent_on_two_workers_keeps_each_flow_on_one_through_the_chain(tmp_path):
    if len(CORES) < 2:
        pytest.skip(f"worker cores need 2 cores; this machine has {HAVE}")
    frames = flow_frames(32, 10)
    proc, outs = run_worker_agent(tmp_path, inline_plan(), frames)
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stderr.rsplit("final counters ", 1)[1].splitlines()[0])
    assert final["cores"]["workers"] == CORES[:2]
    assert [w["processed"] for w in final["workers"]] == [len(o) for o in outs]
    assert all(outs) and final["processed"] == len(frames)
    assert final["flow_table"]["entries"] == 32       # each flow in one worker's table
    assert final["instances"]["2"]["counters"]["flows"] == 32
    summary, _ = summarize(final)
    assert summary["workers"] == final["workers"] and summary["cores"] == final["cores"]
    seen = {}
    for q, frames_out in enumerate(outs):
        for f in frames_out:
            payload = f[-13:]
            flow, seq = int(payload[:5]), int(payload[5:10])
            seen.setdefault(flow, (set(), []))[0].add(q)
            seen[flow][1].append(seq)
    assert sorted(seen) == list(range(32))
    for flow, (queues, seqs) in seen.items():
        assert queues == {queue_of(frames[flow], 2)} and seqs == list(range(10))


def test_agent_on_workers_refuses_a_plan_with_nf_processes(tmp_path):
    if len(CORES) < 2:
        pytest.skip(f"worker cores need 2 cores; this machine has {HAVE}")
    proc, _ = run_worker_agent(tmp_path, process_plan(), flow_frames(2, 1))
    assert proc.returncode == 1
    assert ("instances 1, 2 run as NF processes, which take one worker; this host "
            "runs 2 (--workers)") in proc.stderr


def test_agent_with_more_workers_than_cores_exits_1_naming_them(tmp_path):
    n = len(CORES) + 1
    (tmp_path / "plan.json").write_text(json.dumps(inline_plan()))
    out = onvm("agent", "--host", "h1", "--plan", str(tmp_path / "plan.json"),
               "--seconds", "1", "--workers", str(n), "--metrics-port", "0", "--",
               "--no-huge", "-m", "256", "--vdev", "net_null0")
    assert out.returncode == 1
    assert (f"onvm agent: --workers {n}: asks for {n} cores, but the agent's budget has "
            f"{HAVE}") in out.stderr


def test_workers_run_nfs_whose_state_is_not_per_flow(workers):
    """ratelimit and ddos get an object on each worker; the agent shares
    their budget and sketches among them (tests/test_sharing_agents.py)."""
    port, w, rxs, txs = workers(2)
    w.apply_plan(stamp_plan(port), stamp_factory)
    for gen, nf in enumerate(("ratelimit", "ddos"), start=2):
        config = {"rate": 10, "burst": 1} if nf == "ratelimit" else {}
        w.apply_plan(chain_plan([(nf, config)], port, port, generation=gen), make_nf)
        objs = w.nf_objects(1)
        assert [m.generation for m in w.managers] == [gen, gen]
        assert len({id(o) for o in objs}) == 2 and all(hasattr(o, "counters") for o in objs)


# ------------------------------------------- catalog cores and worker cores

def test_a_plan_carries_catalog_cores_and_gives_them_out_against_the_budget():
    from controller import placement, plans
    from controller.topology import load_topology
    topo = load_topology(os.path.join(REPO, "topologies", "leaf-spine.yaml"))
    assert topo.nfs["ids"].cores == 2
    out = plans.host_plans(topo, placement.place(topo), 1)
    given = [i for p in out.values() for i in p["instances"]]
    assert {i["nf"] for i in given if i.get("cores") == 2} == {"ids"}
    assert all("cores" not in i for i in given if topo.nfs[i["nf"]].cores == 1)
    for host, plan in out.items():
        total, _ = lcores.plan_cores(plan)
        assert total == sum(topo.nfs[i["nf"]].cores for i in plan["instances"])
        assert total <= next(h.cores for h in topo.hosts if h.name == host)
    plan = {"generation": 4, "instances": [{"id": 1, "nf": "ids", "cores": 2},
                                           {"id": 2, "nf": "firewall"}]}
    assert lcores.plan_cores(plan) == (3, [(1, "ids", 2), (2, "firewall", 1)])
    lcores.check_plan_cores(plan, [0, 1, 2])
    with pytest.raises(lcores.CoresError) as err:
        lcores.check_plan_cores(plan, [0, 1])
    assert str(err.value) == ("plan generation 4 gives out 3 cores (instance (nf) cores: "
                              "1 (ids) 2, 2 (firewall) 1), but this host's budget has "
                              "2 cores (0-1)")
    assert lcores.auto_workers(["-l", "0"], plan, cores=range(4)) == 3
    assert lcores.auto_workers(["-l", "2-3"], None, cores=range(4)) == 2
    with pytest.raises(lcores.CoresError, match=r"^--workers auto: plan generation 4 gives "
                                                r"out 3 cores .* budget has 2 cores \(2-3\)$"):
        lcores.auto_workers(["-l", "2-3"], plan, cores=range(4))


def cores_plan(ids_cores):
    plan = inline_plan()
    plan["instances"][1]["cores"] = ids_cores      # the monitor as a 2-core type
    return plan


def test_agent_with_workers_auto_runs_as_many_as_its_plan_gives_out(tmp_path):
    if len(CORES) < 2:
        pytest.skip(f"worker cores need 2 cores; this machine has {HAVE}")
    plan = cores_plan(1)
    plan["instances"] = plan["instances"][1:]          # monitor (2 cores), forward: 3
    plan["instances"][0]["cores"] = 2
    plan["hops"] = [{"spi": 16, "si": 255, "local": 2}, {"spi": 16, "si": 254, "local": 3},
                    {"spi": 16, "si": 253, "end": {"port": 1, "dst_mac": "02:00:00:00:00:04"}}]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    args = ["agent", "--host", "h1", "--plan", str(tmp_path / "plan.json"), "--seconds", "1",
            "--workers", "auto", "--metrics-port", "0", "--", "--no-huge", "-m", "256",
            "--vdev", "net_null0", "--file-prefix", f"onvmauto{os.getpid()}"]
    if len(CORES) < 3:
        out = onvm(*args, timeout=90)
        assert out.returncode == 1
        assert (f"onvm agent: --workers auto: plan generation 1 gives out 3 cores (instance "
                f"(nf) cores: 2 (monitor) 2, 3 (forward) 1), but this host's budget has "
                f"{HAVE}") in out.stderr
        plan["instances"][0].pop("cores")               # 2 in all: two workers
        (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = onvm(*args, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    final = json.loads(out.stderr.rsplit("final counters ", 1)[1].splitlines()[0])
    want = min(3, len(CORES)) if len(CORES) >= 3 else 2
    assert final["cores"]["workers"] == CORES[:want]
    assert f"--workers auto: {want} workers" in out.stderr


def test_agent_on_workers_refuses_a_plan_giving_out_more_cores_than_the_host_has(tmp_path):
    if len(CORES) < 2:
        pytest.skip(f"worker cores need 2 cores; this machine has {HAVE}")
    proc, _ = run_worker_agent(tmp_path, cores_plan(len(CORES)), flow_frames(2, 1))
    assert proc.returncode == 1
    total = len(CORES) + 2
    assert (f"plan generation 1 gives out {total} cores (instance (nf) cores: 1 (firewall) 1, "
            f"2 (monitor) {len(CORES)}, 3 (forward) 1), but this host's budget has {HAVE}"
            ) in proc.stderr


def test_a_plan_that_names_no_cores_claims_none():
    plan = {"generation": 2, "instances": [{"id": i, "nf": "forward"} for i in (1, 2, 3)]}
    lcores.check_plan_cores(plan, [0, 1])
    assert lcores.auto_workers([], plan, cores=[0, 1]) == 2
    assert lcores.auto_workers([], {"instances": []}, cores=[0, 1]) == 1


def test_a_plans_instance_cores_must_be_a_count():
    from contracts.plan import PlanError, check_plan
    plan = inline_plan()
    plan["instances"][0]["cores"] = 0
    with pytest.raises(PlanError, match=r"plan\.instances\[0\]\.cores: must be an integer "
                                        r"1 or more, not 0"):
        check_plan(plan)
    plan["instances"][0]["cores"] = 2
    check_plan(plan)
