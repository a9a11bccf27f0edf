"""`onvm demo` (`make demo`): the shipped leaf-spine data center emulated
for a short while, with a host failure half way, then the summary.

It is `onvm emulate topologies/leaf-spine.yaml --seconds 25 --kill-host
HOST@12`, where HOST is one the controller gave NFs to.  Chains with an NF
that cannot start from the catalog's config are left out, and the demo says
which and why (an agent refuses a whole plan with such an NF in it).
"""
import dataclasses
import os
import subprocess
import sys
import tempfile

from onvm import emulate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = os.path.join(REPO, "topologies", "leaf-spine.yaml")
SECONDS = 25.0


PROBE = """
import sys
from controller.plans import _config
from controller.topology import load_topology
from nfs.api import make_nf
topo = load_topology(sys.argv[1])
make_nf({"nf": sys.argv[2], "config": _config(topo.nfs[sys.argv[2]])})
"""


def config_error(path, nf):
    """The NF's complaint about the catalog's config, or None.  Probed in a
    child: some NFs need DPDK's EAL to build at all (that is no config
    error, and a crash there must not take the demo down)."""
    res = subprocess.run([sys.executable, "-c", PROBE, path, nf], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    last = (res.stderr.strip().splitlines() or [""])[-1]
    return last.split(": ", 1)[-1] if res.returncode == 1 and "config>" in last else None


def runnable_topology(path, say):
    """The topology of `path` without the chains whose NFs refuse the
    catalog's config; written to a temporary file, whose path is returned."""
    from controller.topology import dump_topology, load_topology
    topo = load_topology(path)
    broken = {nf: err for nf in topo.nfs if (err := config_error(path, nf))}
    kept = [c for c in topo.chains if not set(c.nfs) & set(broken)]
    for c in topo.chains:
        for nf in sorted(set(c.nfs) & set(broken)):
            say(f"onvm demo: chain {c.name} left out: NF {nf} refuses the catalog's "
                f"config in {path}: {broken[nf]}")
    if not kept:
        raise emulate.EmulationError(f"no chain of {path} can run")
    fd, out = tempfile.mkstemp(prefix="onvm-demo-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(dump_topology(dataclasses.replace(topo, chains=tuple(kept))))
    return out


def cli_demo(args):
    seconds = args.seconds or SECONDS
    emulate.isolate()
    say = emulate._say
    say(f"onvm demo: emulating {TOPOLOGY} for {seconds:g} s; the agent of the "
        f"busiest NF host is killed at {seconds / 2:g} s")
    topo = None
    try:
        topo = runnable_topology(TOPOLOGY, say)
        final, done, emu = emulate.run(topo, seconds, [],
                                       on_start=_kill_busiest_half_way(seconds / 2))
    except (emulate.EmulationError, TimeoutError, emulate.services.GaveUp) as err:
        print(f"onvm demo: {err}", file=sys.stderr)
        return 1
    finally:
        if topo is not None:
            os.unlink(topo)
    if final is not None:
        print(emulate.summary(emu, final, done))
    return 0


def _kill_busiest_half_way(at):
    """Events are chosen once the controller has placed the chains."""
    def events(emu):
        host, chains = emulate.failover_victim(emu)
        return [(at, f"fail {host}: agent killed, link down (it runs NFs of {', '.join(chains)})",
                 "kill", host)]
    return events
