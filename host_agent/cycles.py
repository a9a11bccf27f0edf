"""`onvm bench cycles`: what each NF and a chain cost in CPU cycles per
packet, and from that how many cores a host needs at line rate.

Each figure is measured by `onvm bench fastpath` (one run per NF or chain
and frame mix, each in its own process: DPDK's EAL starts once per
process), inline on one polling core, so the cycles count the whole loop
(rx, parse, flow table, classifier, the NFs, rewrite, tx), not the NF
alone: the loop thread's own CPU seconds times the TSC frequency over the
packets it carried (what the packets cost, without what other processes
took of the core), and beside it the same of the run's wall-clock seconds.
The cores for 10, 40 and 100 GbE are projected from them, assuming the
work spreads evenly over worker cores at the TSC's rate (a core that turbos
above it, or hyperthreads sharing it, make the projection wrong both ways).

Not here: the measurement itself (host_agent.bench).
"""
import json
import math
import subprocess
import sys

from host_agent.bench import IMIX

WIRE_OVERHEAD = 20          # preamble, start of frame and inter-frame gap, bytes
LINKS_GBPS = (10, 40, 100)
DEFAULT_RUNS = ("firewall", "monitor", "forward", "firewall,monitor,forward")


def frame_bytes(mix):
    """Mean frame size with FCS: 64, or IMIX's 7:4:1 of 64, 576, 1500."""
    if mix == "64":
        return 64.0
    return sum(size + 4 for size in IMIX) / len(IMIX)


def line_rate_mpps(gbps, mix):
    """Frames a second a link of `gbps` carries at `mix`, in Mpps
    (64 bytes: 14.88 at 10 GbE)."""
    return gbps * 1e3 / ((frame_bytes(mix) + WIRE_OVERHEAD) * 8)


def cores_needed(cycles_per_packet, hz, mpps):
    """Whole cores of `hz` cycles a second that `mpps` packets a second
    of `cycles_per_packet` each need."""
    return math.ceil(mpps * 1e6 * cycles_per_packet / hz - 1e-9)


def projection(cycles_per_packet, hz, mix):
    """{"10": cores, ...} for LINKS_GBPS at `mix`."""
    return {str(g): cores_needed(cycles_per_packet, hz, line_rate_mpps(g, mix))
            for g in LINKS_GBPS}


def measure(chain, mix, packets):
    """`onvm bench fastpath --json` of `chain` at `mix`, in a process of
    its own; its result."""
    cmd = [sys.executable, "-m", "onvm.cli", "bench", "fastpath", "--chain", chain,
           "--mix", mix, "--packets", str(packets), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed: {out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_cycles(runs, packets, mixes=("64", "imix"), log=print):
    """{"runs": [{chain, mix, cycles_per_packet, mpps, tsc_hz, cores: {...}}]}."""
    rows = []
    for chain in runs:
        for mix in mixes:
            r = measure(chain, mix, packets)
            cycles = r["cpu_cycles_per_packet"]
            rows.append({"chain": chain.split(","), "mix": mix, "cycles_per_packet": cycles,
                         "wall_cycles_per_packet": r["cycles_per_packet"],
                         "mpps": r["mpps"], "tsc_hz": r["tsc_hz"], "packets": r["packets"],
                         "cores": projection(cycles, r["tsc_hz"], mix)})
            log(f"{','.join(rows[-1]['chain'])} at {mix}: {cycles} cycles/packet "
                f"({r['cycles_per_packet']} of wall-clock time; {r['mpps']} Mpps on one core)")
    return {"runs": rows,
            "line_rate_mpps": {mix: {str(g): round(line_rate_mpps(g, mix), 3)
                                     for g in LINKS_GBPS} for mix in mixes}}


def table(result):
    """The result as the Markdown table BENCHMARKS.md shows."""
    head = ("| NF or chain | frames | cycles/packet, CPU (measured) | cycles/packet, "
            "wall clock (measured) | Mpps on one core (measured) | cores for 10 / 40 / "
            "100 GbE (projected) |")
    lines = [head, "|---|---|---:|---:|---:|---|"]
    for r in result["runs"]:
        cores = " / ".join(str(r["cores"][str(g)]) for g in LINKS_GBPS)
        lines.append(f"| {','.join(r['chain'])} | {r['mix']} | {r['cycles_per_packet']} | "
                     f"{r['wall_cycles_per_packet']} | {r['mpps']} | {cores} |")
    return "\n".join(lines)


def cli_bench_cycles(args):
    runs = args.chain or list(DEFAULT_RUNS)
    result = bench_cycles(runs, args.packets, mixes=args.mix or ("64", "imix"),
                          log=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps(result) if args.json else table(result))
    return 0
