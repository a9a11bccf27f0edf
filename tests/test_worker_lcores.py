"""Worker cores on DPDK lcores (host_agent.workers, nflib.eal): each worker
runs with an lcore id and a cache of its own of the packet pool, on an
EAL worker lcore where the EAL has one on its core, else on a thread
registered as an lcore; the pool's mbufs balance afterwards; the pool sits
on the ports' NUMA socket.  Real DPDK: this process's EAL (one lcore, no
huge pages) and, in subprocesses, EALs of their own with worker lcores
and huge pages, to which an NF process (a DPDK secondary) attaches or,
once a thread registered, cannot.  No speed is asserted."""
import itertools
import json
import os
import subprocess
import sys
import threading

import pytest
from scapy.all import IP, UDP, Ether, raw

from host_agent import fastpath as fp
from host_agent import lcores
from host_agent.harness import HOST_MAC, chain_plan, ensure_eal
from host_agent.workers import Workers, spread
from nflib import eal
from nflib.api import PythonNF
from test_cores import workers  # noqa: F401  (the fixture: 2 workers on ring queues)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORES = lcores.machine_cores()
SEQ = itertools.count()


class DropAll(PythonNF):
    """Drops every packet: the worker frees each mbuf (through its cache)."""

    def handle(self, batch):
        for i in range(len(batch)):
            batch.drop(i)


def frames(flows=64, per_flow=8):
    return [raw(Ether(dst=HOST_MAC) / IP(src=f"10.1.0.{f + 1}", dst="10.2.0.1")
                / UDP(sport=1000 + f, dport=5000) / (b"x" * 18))
            for _ in range(per_flow) for f in range(flows)]


def received(w):
    return sum(p["rx"] for p in w.stats()["ports"].values())


def expected_how(core):
    """Where Workers.run puts a worker of `core` in this process's EAL."""
    alone = [lc for lc, cpus in eal.worker_lcores().items() if cpus == [core]]
    return "eal lcore" if alone else "registered thread"


# --------------------------------------------------------------- sockets

def test_the_pool_goes_on_the_socket_most_ports_are_on():
    assert eal.pool_socket([], 0) == 0                 # no port: the EAL thread's
    assert eal.pool_socket([-1, -1], 1) == 1           # vdevs: SOCKET_ID_ANY
    assert eal.pool_socket([1, 0, 1], 0) == 1          # most ports
    assert eal.pool_socket([-1, 1, 0], 0) == 1         # a tie: the lowest port's
    assert eal.pool_socket([0, 1, 1, 0], 1) == 0
    ensure_eal()
    info = eal.pool_info()
    assert info["socket"] == eal.ports_socket()
    assert info["cache_size"] == eal.CACHE


def test_pool_churn_takes_and_gives_back_through_this_threads_cache():
    ensure_eal()
    before = eal.pool_info()
    assert eal.pool_churn(1000, 64) > 0
    info = eal.pool_info()
    assert info["in_use"] == before["in_use"]
    # the main lcore's cache kept what the last round gave back
    kept = eal.cache_count()
    assert kept >= 64 and info["cached"] >= kept
    assert eal.flush_cache() == kept and eal.cache_count() == 0
    with pytest.raises(fp.FastPathError, match="pool_churn: .* burst 513 not 1 to 512"):
        eal.pool_churn(1, 513)
    with pytest.raises(fp.FastPathError, match="the pool had no 512 mbufs free 5 times"):
        _hold_all_but(100, lambda: eal.pool_churn(5, 512))
    assert eal.pool_info()["in_use"] == before["in_use"]


def _hold_all_but(spare, fn):
    """Run fn while all but `spare` mbufs of the pool are taken."""
    port, ring = fp.ring_port(f"hold{next(SEQ)}", count=1 << 15)
    try:
        ring.fill([b"\0" * 60], eal.pool_info()["available"] - spare)
        fn()
    finally:
        ring.drain()


def test_lcore_maps_are_read_for_the_budget():
    assert lcores.lcore_map("0@0,1@0,2@1") == {0: [0], 1: [0], 2: [1]}
    assert lcores.lcore_map("(0-1)@0,2") == {0: [0], 1: [0], 2: [2]}
    assert lcores.lcore_map("0@0,(1-2)@(0,1)") == {0: [0], 1: [0, 1], 2: [0, 1]}
    assert lcores.eal_core_list(["--lcores", "0@0,1@0,2@1"]) == [0, 1]
    assert lcores.budget(["--lcores", "0@0,1@0,2@1"], cores=[0, 1]) == (0, [1])
    with pytest.raises(lcores.CoresError) as err:
        lcores.lcore_map("0@x")
    assert str(err.value) == ('--lcores 0@x: \'0@x\' is not an lcore map item like '
                              '"1@0" or "(1-2)@(0,1)"')
    with pytest.raises(lcores.CoresError, match=r"--lcores 0@0,1@9: no core 9 here"):
        lcores.check_eal_cores(["--lcores", "0@0,1@9"])


# ------------------------------------------------------ in this process

def test_each_worker_has_an_lcore_and_frees_through_its_cache(workers):
    port, w, rxs, txs = workers(2)
    w.apply_plan(chain_plan([("drop", {})], port, port), lambda inst: DropAll({}))
    sent = frames()
    for rx, share in zip(rxs, spread(sent, 2)):
        assert rx.fill(share, len(share)) == len(share)
    before = eal.pool_info()
    assert before["in_use"] >= len(sent)
    w.run(idle_seconds=0.05)
    assert received(w) == w.stats()["drops"]["nf_drop"] == len(sent)
    main = eal.lcore_id()
    assert [p["how"] for p in w.placement] == [expected_how(c) for c in w.cores]
    got = [p["lcore"] for p in w.placement]
    assert None not in got and main not in got and len(set(got)) == 2, w.placement
    assert all(p["cache"] for p in w.placement), w.placement
    # the workers' frees went into their caches (an unregistered thread
    # frees straight into the ring: nothing to flush), then back to the pool
    assert sum(p["flushed"] for p in w.placement) > 0, w.placement
    assert all(eal.cache_count(lc) == 0 for lc in got)
    info = eal.pool_info()
    assert info["in_use"] == before["in_use"] - len(sent)
    assert info["available"] + info["in_use"] == info["size"]
    for rx in rxs:
        rx.drain()
    assert eal.pool_info()["available"] == info["size"]


def test_a_worker_that_fails_stops_the_others_and_fails_the_run(workers):
    port, w, rxs, txs = workers(2)

    class Boom(Exception):
        pass

    def fail(**kw):
        raise Boom("worker 1")
    w.managers = [w.managers[0], _Failing(w.managers[1], fail)]
    raised = []

    def run():
        try:
            w.run()                        # no limit: runs until stopped
        except Boom as err:
            raised.append(err)
    runner = threading.Thread(target=run)
    runner.start()
    runner.join(60)
    if runner.is_alive():
        w.stop()
        runner.join()
        pytest.fail("worker 0 went on after worker 1 failed")
    assert [str(e) for e in raised] == ["worker 1"]
    assert [p["how"] for p in w.placement] == [expected_how(c) for c in w.cores]


class _Failing:
    """A Manager whose run raises (the rest is the real Manager's)."""

    def __init__(self, manager, run):
        self._m, self.run = manager, run

    def __getattr__(self, name):
        return getattr(self._m, name)


# --------------------------------------------- EALs of their own (subprocess)

# Runs 2 workers on an EAL started with `eal_args`, their frees through
# their caches; then an NF process (a DPDK secondary) tries to attach.
SCRIPT = r"""
import json, os, subprocess, sys
from host_agent import fastpath as fp
from host_agent.harness import chain_plan
from host_agent.workers import Workers, spread
from nflib import eal
sys.path.insert(0, "tests")
from test_worker_lcores import DropAll, frames, received

args = json.loads(sys.argv[1])
fp.eal_init(args)
port, rxs, txs = fp.ring_queues_port("wl", 2, loop=False)
w = Workers("t", [port], 2, flow_entries=1 << 14, cores=[0, 1])
w.apply_plan(chain_plan([("drop", {})], port, port), lambda inst: DropAll({}))
sent = frames()
for rx, share in zip(rxs, spread(sent, 2)):
    rx.fill(share, len(share))
w.run(idle_seconds=0.05)
got = received(w)
prefix = args[args.index("--file-prefix") + 1]
nf = subprocess.run([sys.executable, "-c",
                     "from nflib import eal; eal.eal_init(['onvm-nf', '--proc-type=secondary', "
                     f"'--file-prefix', '{prefix}', '--no-pci', '--no-telemetry', '-l', '1', "
                     "'--log-level', 'lib.eal:error']); print(eal.pool_info()['size'])"],
                    capture_output=True, text=True, timeout=120)
w.close()
out = {"placement": w.placement, "received": got, "sent": len(sent),
       "workers": eal.worker_lcores(), "pool": eal.pool_info(),
       "multiprocess_off": eal.multiprocess_off(),
       "nf": [nf.returncode, nf.stdout.strip(), nf.stderr.strip()[-300:]]}
fp.eal_cleanup()
print(json.dumps(out))
"""


def run_primary(lcore_args):
    if len(CORES) < 2:
        pytest.skip(f"worker cores need 2 cores; this machine has {len(CORES)}")
    if fp.hugepages_available() < 96:
        pytest.skip("an NF process attaches only through huge pages: "
                    f"{fp.hugepages_available()} free 2 MiB pages, 96 needed")
    prefix = f"wlc{os.getpid()}_{next(SEQ)}"
    args = ["onvm-wl"] + lcore_args + ["--file-prefix", prefix, "--no-pci", "--no-telemetry",
                                       "--log-level", "lib.eal:error", "--socket-mem", "160"]
    try:
        proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    finally:
        fp.remove_runtime_files(prefix)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def check_balanced(out):
    assert out["received"] == out["sent"]
    assert all(p["cache"] and p["lcore"] is not None for p in out["placement"])
    assert sum(p["flushed"] for p in out["placement"]) > 0
    pool = out["pool"]
    assert pool["in_use"] == 0 and pool["available"] == pool["size"], pool


def test_workers_run_on_the_eals_worker_lcores_and_nf_processes_still_attach():
    out = run_primary(["--lcores", "0@0,1@0,2@1"])
    # the main lcore (lcore 0) is the control thread; workers on lcores 1, 2
    assert out["workers"] == {"1": [0], "2": [1]}
    assert [(p["how"], p["lcore"], p["core"]) for p in out["placement"]] == \
        [("eal lcore", 1, 0), ("eal lcore", 2, 1)]
    check_balanced(out)
    assert out["multiprocess_off"] is False
    assert out["nf"][:2] == [0, "16383"], out["nf"]


def test_threads_registered_as_lcores_keep_nf_processes_out():
    # -l 0-1: worker 1 has EAL lcore 1; worker 0's core is the main
    # lcore's, so its thread registers (and multi-process goes off)
    out = run_primary(["-l", "0-1"])
    assert [(p["how"], p["core"]) for p in out["placement"]] == \
        [("registered thread", 0), ("eal lcore", 1)]
    assert out["placement"][1]["lcore"] == 1
    assert out["placement"][0]["lcore"] not in (0, 1)
    check_balanced(out)
    assert out["multiprocess_off"] is True
    assert out["nf"][0] != 0, out["nf"]            # the secondary was refused


def test_an_agent_given_an_lcore_map_runs_its_workers_on_eal_lcores(tmp_path):
    """`onvm agent --workers 2 -- --lcores 0@0,1@0,2@1`: the main lcore is
    the agent's control thread, the workers are launched on lcores 1 and 2
    (from the agent's fast-path thread), each flow through the chain."""
    if len(CORES) < 2:
        pytest.skip(f"worker cores need 2 cores; this machine has {len(CORES)}")
    from test_cores import flow_frames, inline_plan, run_worker_agent
    sent = flow_frames(32, 10)
    proc, outs = run_worker_agent(tmp_path, inline_plan(), sent,
                                  eal=["--lcores", "0@0,1@0,2@1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "h1/w0: on core 0, eal lcore 1, with a mempool cache" in proc.stderr
    assert "h1/w1: on core 1, eal lcore 2, with a mempool cache" in proc.stderr
    final = json.loads(proc.stderr.rsplit("final counters ", 1)[1].splitlines()[0])
    assert final["cores"]["workers"] == [0, 1]
    assert all(outs) and final["processed"] == len(sent) == sum(map(len, outs))
