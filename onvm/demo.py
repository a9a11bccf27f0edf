"""`onvm demo` (`make demo`): the shipped leaf-spine data center emulated
for a short while, with a host failure half way, then the summary.

It is `onvm emulate topologies/leaf-spine.yaml --seconds 25 --kill-host
HOST@12`, where HOST is one the controller gave NFs to.  Chains with an NF
that cannot start from the catalog's config are left out, and the demo says
which and why (onvm.catalog).

Not here: the emulation (emulate.py), its view (live.py).
"""
import os

from onvm import netns
from onvm.catalog import runnable_topology
from onvm.emulate import Emulation
from onvm.failover import failover_victim
from onvm.live import say, stop_on_signals, summary_text, watch
from onvm.procs import REPO

TOPOLOGY = os.path.join(REPO, "topologies", "leaf-spine.yaml")
SECONDS = 25.0


def kill_busiest_at(at):
    """Events chosen once the controller has placed the chains: fail the
    busiest NF host at `at` seconds."""
    def events(emu):
        host, chains = failover_victim(emu)
        return [(at, f"fail {host}: agent killed, link down (it runs NFs of "
                     f"{', '.join(chains)})", "kill", host)]
    return events


def cli_demo(args):
    """`onvm demo [--seconds S]`."""
    seconds = args.seconds or SECONDS
    netns.enter_private_netns()
    say(f"onvm demo: emulating {TOPOLOGY} for {seconds:g} s; the busiest NF host "
        f"fails at {seconds / 2:g} s")
    topo = runnable_topology(TOPOLOGY, lambda text: say(f"onvm demo: {text}"))
    try:
        emu = Emulation(topo, say=say)
        stop_on_signals(emu)
        run = watch(emu, seconds, [], on_start=kill_busiest_at(seconds / 2))
    finally:
        os.unlink(topo)
    if run.final is not None:
        say(summary_text(run))
    if run.interrupted:
        raise KeyboardInterrupt("the demo was interrupted")
