"""Which chains of a topology can run: those whose NFs accept the config
the controller's plans give them from the topology's NF catalog.  An
agent refuses a whole plan with an NF that does not start, so `onvm demo`
and `onvm bench failover` leave such chains out, and say why.

Not here: checking a topology file (controller.topology), placing chains
(controller.placement).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile

from onvm import procs
from onvm.errors import EmulationError

REFUSED = 3                 # the probe's exit code when the NF refuses its config
PROBE = f"""
import json, sys
from nflib.api import NFConfigError, make_nf
try:
    make_nf({{"nf": sys.argv[1], "config": json.loads(sys.argv[2])}})
except NFConfigError as err:
    print(err)
    sys.exit({REFUSED})
"""


def instance_configs(topo):
    """{NF type: config} as the plans of the controller give them to the
    agents, for the NFs of the chains that can be placed."""
    from controller.placement import place_what_fits
    from controller.plans import host_plans
    placement, _, _ = place_what_fits(topo, list(topo.chains))
    if placement is None:
        return {}
    return {inst["nf"]: inst["config"]
            for plan in host_plans(topo, placement, 1).values() for inst in plan["instances"]}


def config_error(nf, config):
    """The NF's complaint about `config`, or None.  Probed in a child: some
    NFs need DPDK's EAL to build at all (that is no config error, and a
    crash there must not take the caller down)."""
    res = subprocess.run([sys.executable, "-c", PROBE, nf, json.dumps(config)],
                         capture_output=True, text=True, cwd=procs.REPO,
                         env=procs.child_env(), timeout=60)
    return res.stdout.strip() if res.returncode == REFUSED else None


def runnable_topology(path, say):
    """The topology of `path` without the chains whose NFs refuse their
    config (each said with `say`); written to a temporary file, whose path
    is returned (the caller removes it)."""
    from controller.topology import dump_topology, load_topology
    topo = load_topology(path)
    broken = {nf: err for nf, config in sorted(instance_configs(topo).items())
              if (err := config_error(nf, config))}
    kept = [c for c in topo.chains if not set(c.nfs) & set(broken)]
    for c in topo.chains:
        for nf in sorted(set(c.nfs) & set(broken)):
            say(f"chain {c.name} left out: NF {nf} refuses the catalog's config "
                f"in {path}: {broken[nf]}")
    if not kept:
        raise EmulationError(f"no chain of {path} can run")
    fd, out = tempfile.mkstemp(prefix="onvm-runnable-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(dump_topology(dataclasses.replace(topo, chains=tuple(kept))))
    return out
