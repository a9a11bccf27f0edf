"""`onvm controller`: checks its inputs, then execs the virtual env's
ryu-manager with the onvm apps and a generated config file.

The config file is oslo.config INI; `onvm controller` writes this one (to an
in-memory file, so nothing is left behind), and it works as well with
plain `ryu-manager controller.apps.chain_manager controller.apps.rest_api
controller.apps.probes --config-file F`:

    [DEFAULT]
    # Ryu's own options (command-line flags of ryu-manager work too)
    ofp_tcp_listen_port = 6653
    wsapi_port = 8080
    observe_links = false          # true: add the ryu.topology.switches app

    [onvm]
    topology = /path/to/topologies/leaf-spine.yaml
    store = http://127.0.0.1:2379  # etcd; memory:// for a lone controller
    # name = ctl-a                 # in /onvm/leader (default host-pid)
    # leader_ttl = 1.0             # seconds
    # probe_interval_ms = 50       # liveness probes of each host's fast path; 0: off
    # probe_detect_mult = 3        # probes in a row that decide

Plain ryu-manager must find the `controller` package: run it from the
virtual env after `make build` (which installs the package), or with
PYTHONPATH set to the repository.

This module starts nothing but ryu-manager; the apps decide everything.
"""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = ("controller.apps.chain_manager", "controller.apps.rest_api",
        "controller.apps.probes")
LINK_DISCOVERY_APP = "ryu.topology.switches"


def config_text(topology, store, ofp_port=6653, wsapi_port=8080,
                observe_links=False):
    """The INI text of the module docstring for these values."""
    return (f"[DEFAULT]\n"
            f"ofp_tcp_listen_port = {int(ofp_port)}\n"
            f"wsapi_port = {int(wsapi_port)}\n"
            f"observe_links = {'true' if observe_links else 'false'}\n"
            f"\n[onvm]\n"
            f"topology = {os.path.abspath(topology)}\n"
            f"store = {store}\n")


def ryu_manager():
    """The ryu-manager of the interpreter running us (the virtual env's)."""
    path = os.path.join(os.path.dirname(sys.executable), "ryu-manager")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: Ryu is not installed in "
                                f"this environment; run `make deps`")
    return path


def ryu_command(config_path, observe_links=False, apps=APPS):
    """argv and environment that run ryu-manager with `apps`."""
    argv = [ryu_manager(), "--config-file", config_path, *apps]
    if observe_links:
        argv.append(LINK_DISCOVERY_APP)
    env = dict(os.environ)
    # The repository first: the apps, and onvm_compat for the venv's .pth
    # (which runs before the current directory would be on sys.path).
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO, env.get("PYTHONPATH")) if p)
    return argv, env


def check_inputs(topology, store):
    """Fail before Ryu starts when the topology or the store is unusable:
    their errors are clearer here than in a Ryu app's traceback."""
    from contracts.store import open_store
    from controller.topology import load_topology
    topo = load_topology(topology)
    open_store(store).close()
    return topo


def cli_controller(args):
    from contracts.store import StoreError
    from controller.topology import TopologyError
    try:
        topo = check_inputs(args.topology, args.store)
        manager = ryu_manager()
    except (TopologyError, StoreError, FileNotFoundError) as err:
        print(f"onvm controller: {err}", file=sys.stderr)
        return 1
    text = config_text(args.topology, args.store, args.ofp_tcp_listen_port,
                       args.wsapi_port, args.observe_links)
    # An in-memory file inherited across exec: nothing on disk to clean up.
    fd = os.memfd_create("onvm-controller.conf", 0)
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    argv, env = ryu_command(f"/proc/self/fd/{fd}", args.observe_links)
    print(f"onvm controller: topology {topo.name} ({len(topo.hosts)} hosts, "
          f"{len(topo.chains)} chains), store {args.store}, OpenFlow on "
          f":{args.ofp_tcp_listen_port}, REST on :{args.wsapi_port}/onvm/v1/",
          file=sys.stderr, flush=True)
    os.execve(manager, argv, env)
