"""`onvm demo` (`make demo`): the shipped leaf-spine data center
(topologies/demo.yaml: two cores a host, so the longer chains span hosts)
emulated for a short while, then the summary: chains spanning hosts; chain `api`
(with an autoscale policy) offered six times its declared rate for a while,
so it scales out and back in; a new server, h9, is plugged into leaf2 (beside web's servers) and
joins the cluster; then another NF host is drained for maintenance (its
instances move with their state, onto h9 where the placement says so) and
undrained; then the busiest NF host fails.

It is `onvm emulate topologies/demo.yaml --seconds 45 --offer
api=6@4 --offer api=1@20 --add-host h9@leaf2:7@8 --drain-host OTHER@21
--undrain-host OTHER@27 --kill-host HOST@30`, where HOST is the busiest
host the controller gave NFs to that is no chain's egress, and OTHER
another such host.  Chains with an NF
that cannot start from the catalog's config are left out, and the demo says
which and why (onvm.catalog).

Not here: the emulation (emulate.py), its view (live.py).
"""
import os

from onvm import netns
from onvm.catalog import runnable_topology
from onvm.emulate import Emulation
from onvm.joining import addresses
from onvm.live import say, stop_on_signals, summary_text, watch
from onvm.procs import REPO

TOPOLOGY = os.path.join(REPO, "topologies", "demo.yaml")
SECONDS = 45.0
RAMP = ("api", 6.0, 4.0, 20.0)     # chain, offered Mpps, from, until (seconds)
DRAIN = (0.47, 0.6)                # drain and undrain, as shares of the run
JOIN = ("h9", "leaf2", 7, 0.18)    # a host plugged in: name, switch, port, share of the run


def story(seconds):
    """Events chosen once the controller has placed the chains: the ramp of
    offered traffic on RAMP's chain (when the topology has it), then the
    busiest NF host fails at two thirds of the run."""
    def events(emu):
        out = []
        chain, mpps, start, end = RAMP
        if chain in {c.name for c in emu.topo.chains} and end < seconds:
            declared = emu.topo.chain(chain).mpps
            out += [(start, f"offer {chain} {mpps:g} Mpps ({mpps / declared:g} x its "
                            f"declared rate): it scales out", "offer", (chain, mpps)),
                    (end, f"offer {chain} {declared:g} Mpps again: it scales back in",
                     "offer", (chain, declared))]
        name, switch, port, share = JOIN
        if switch in {sw.name for sw in emu.topo.switches}:
            mac, ip = addresses(emu.topo, 0)
            out.append((round(seconds * share), f"plug in a new server, {name}, at {switch} "
                        f"port {port}: it joins the cluster", "add-host",
                        (name, switch, port, mac, ip)))
        # chosen when they happen: by then scaling has moved instances
        out.append((round(seconds * DRAIN[0]), "drain an NF host for maintenance (not "
                    "the busiest, no chain's egress)", "drain-other", None))
        out.append((round(seconds * DRAIN[1]), "undrain it", "undrain-other", None))
        out.append((round(seconds * 2 / 3), "fail the busiest NF host (no chain's "
                    "egress where one can be): agent killed, link down", "fail-busiest", None))
        return out
    return events


def cli_demo(args):
    """`onvm demo [--seconds S]`."""
    seconds = args.seconds or SECONDS
    netns.enter_private_netns()
    say(f"onvm demo: emulating {TOPOLOGY} for {seconds:g} s: chain {RAMP[0]} offered "
        f"{RAMP[1]:g} Mpps from {RAMP[2]:g} s to {RAMP[3]:g} s; {JOIN[0]} plugged into "
        f"{JOIN[1]} at {round(seconds * JOIN[3]):g} s; another NF host drained "
        f"at {round(seconds * DRAIN[0]):g} s and undrained at {round(seconds * DRAIN[1]):g} s; "
        f"the busiest NF host fails at {round(seconds * 2 / 3):g} s")
    topo = runnable_topology(TOPOLOGY, lambda text: say(f"onvm demo: {text}"))
    try:
        emu = Emulation(topo, say=say)
        stop_on_signals(emu)
        run = watch(emu, seconds, [], on_start=story(seconds))
    finally:
        os.unlink(topo)
    if run.final is not None:
        say(summary_text(run))
    if run.interrupted:
        raise KeyboardInterrupt("the demo was interrupted")
