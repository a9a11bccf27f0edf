"""The liveness-probe benchmark (BENCHMARKS.md, "Liveness probes"): on a
small emulated data center (three one-core hosts, one chain of two NFs
across them at 500 packets a second), SIGKILL the agent of a host that
runs an NF, its link staying up, and measure with onvm.failover when the
controller re-placed (detect), when the chain's traffic came back, and
the packets lost; `--runs` times, each on a fresh emulation.
`--probe-interval-ms 0` runs the controller without probes: the lease
alone finds the crash, as before probes.

    python -m onvm.probebench [--runs N] [--probe-interval-ms MS] [--json]

tests/test_probes_ovs.py runs the same data center and checks that the
host is lost because of the probes; speed is measured only here.

Not here: the probes (controller.probing, controller.apps.probes), the
emulation (onvm.emulate), the measuring (onvm.failover).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

from controller import run as controller_run
from onvm import netns
from onvm.emulate import Emulation
from onvm.failover import measure_failover

HOSTS = [("p1", "leafa", 1), ("p2", "leafa", 2), ("p3", "leafb", 1)]
# Two one-core NFs on three one-core hosts (two leaves under one spine):
# one host is spare, so the NF of the host whose agent dies can move.
TOPOLOGY = "\n".join(
    ["name: probes-bench", "switches:"]
    + [f"  - {{name: {sw}, dpid: {dpid:#x}}}" for sw, dpid in
       (("spine", 0x301), ("leafa", 0x311), ("leafb", 0x312))]
    + ["hosts:"]
    + [f"  - {{name: {n}, switch: {sw}, port: {port}, mac: '02:00:00:00:03:0{i}', "
       f"ip: 10.3.{i}.1/16, cores: 1}}" for i, (n, sw, port) in enumerate(HOSTS, 1)]
    + ["links:", "  - {a: leafa, a_port: 5, b: spine, b_port: 1}",
       "  - {a: leafb, a_port: 5, b: spine, b_port: 2}",
       "edges:", "  - {name: outside, switch: spine, port: 7}",
       "  - {name: inside, switch: leafb, port: 7}",
       "nfs: {monitor: {cores: 1, mpps: 14}, forward: {cores: 1, mpps: 20}}",
       "chains:",
       "  - {name: probed, ingress: outside, egress: inside, nfs: [monitor, forward],",
       "     match: {ipv4_dst: 10.9.0.0/16, ip_proto: 17}, mpps: 1.0}", ""])
CHAIN = "probed"
PPS = 500       # the chain's packets a second (its mpps is 1.0)


def with_probe_interval(ms):
    """controller.run.config_text, with [onvm] probe_interval_ms = `ms`."""
    plain = controller_run.config_text

    def config_text(*args, **kwargs):
        return plain(*args, **kwargs) + f"probe_interval_ms = {int(ms)}\n"
    return config_text


def one_run(topo_path, workdir):
    emu = Emulation(topo_path, workdir=workdir, pps_per_mpps=PPS)
    try:
        emu.start()
        return measure_failover(emu, settle=3.0, how="crash")
    finally:
        emu.stop()
        emu.remove_files()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m onvm.probebench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--probe-interval-ms", type=int, default=None,
                    help="the controller's [onvm] probe_interval_ms (default: its own)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.probe_interval_ms is not None:
        controller_run.config_text = with_probe_interval(args.probe_interval_ms)
    netns.enter_private_netns()
    results = []
    with tempfile.TemporaryDirectory(prefix="onvm-probebench-") as workdir:
        topo_path = os.path.join(workdir, "probes-bench.yaml")
        with open(topo_path, "w") as f:
            f.write(TOPOLOGY)
        for i in range(args.runs):
            r = one_run(topo_path, workdir)
            print(f"run {i + 1}: {r['host']} crashed: detected {r['detect_s']} s, "
                  f"traffic again {r['recover_s']} s, {r['lost_packets']} packets lost",
                  file=sys.stderr, flush=True)
            results.append(r)
    summary = {k: statistics.median(r[k] for r in results)
               for k in ("detect_s", "recover_s", "lost_packets")}
    out = {"probe_interval_ms": args.probe_interval_ms, "pps": PPS, "runs": results,
           "median": summary}
    print(json.dumps(out) if args.json else
          f"median of {len(results)}: detected {summary['detect_s']} s, traffic "
          f"again {summary['recover_s']} s, {summary['lost_packets']} packets lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
