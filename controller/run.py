"""`onvm controller`: checks its inputs, then execs the virtual env's
ryu-manager with the onvm apps and a generated config file.

The config file is oslo.config INI; `onvm controller` writes this one (to an
in-memory file, so nothing is left behind), and it works as well with
plain `ryu-manager controller.apps.chain_manager controller.apps.rest_api
controller.apps.probes --config-file F`:

    [DEFAULT]
    # Ryu's own options (command-line flags of ryu-manager work too)
    ofp_tcp_listen_port = 6653
    wsapi_host = 127.0.0.1         # the REST API; 0.0.0.0 only behind a firewall
    wsapi_port = 8080
    observe_links = false          # true: add the ryu.topology.switches app
    # OpenFlow over TLS (then only on ofp_ssl_listen_port):
    # ofp_ssl_listen_port = 6653
    # ctl_privkey = /etc/onvm/tls/controller.key
    # ctl_cert = /etc/onvm/tls/controller.crt
    # ca_certs = /etc/onvm/tls/ca.crt   # switches must show a cert it signed

    [onvm]
    topology = /path/to/topologies/leaf-spine.yaml
    store = http://127.0.0.1:2379  # etcd; memory:// for a lone controller
    # name = ctl-a                 # in /onvm/leader (default host-pid)
    # leader_ttl = 1.0             # seconds
    # probe_interval_ms = 50       # liveness probes of each host's fast path; 0: off
    # probe_detect_mult = 3        # probes in a row that decide
    # api_token_file = /etc/onvm/api-token     # else made in state_dir/api-token
    # api_read_token_file = /etc/onvm/api-read-tokens
    # api_cert, api_key             # the REST API over HTTPS
    # store_ca, store_cert, store_key   # etcd over https with a client cert

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


WSAPI_HOST = "127.0.0.1"    # the REST API changes forwarding: local unless asked
OFP_TLS = ("ctl_privkey", "ctl_cert", "ca_certs")   # Ryu's names, in this order


def config_text(topology, store, ofp_port=6653, wsapi_port=8080,
                observe_links=False, wsapi_host=WSAPI_HOST, onvm=None, ofp_tls=None):
    """The INI text of the module docstring for these values.  `onvm`: more
    [onvm] options ({name: value}, None skipped: api_token_file, api_cert,
    store_ca, ...); `ofp_tls`: (key, cert, ca) to take OpenFlow over TLS
    only, on `ofp_port` (ca None: switches' certificates are not checked)."""
    lines = ["[DEFAULT]", f"ofp_tcp_listen_port = {int(ofp_port)}",
             f"wsapi_host = {wsapi_host}", f"wsapi_port = {int(wsapi_port)}",
             f"observe_links = {'true' if observe_links else 'false'}"]
    if ofp_tls is not None:
        lines.append(f"ofp_ssl_listen_port = {int(ofp_port)}")
        lines += [f"{name} = {os.path.abspath(path)}"
                  for name, path in zip(OFP_TLS, ofp_tls) if path]
    lines += ["", "[onvm]", f"topology = {os.path.abspath(topology)}", f"store = {store}"]
    lines += [f"{name} = {value}" for name, value in (onvm or {}).items()
              if value is not None]
    return "\n".join(lines) + "\n"


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


def check_inputs(topology, store, store_tls=None, store_auth=None):
    """Fail before Ryu starts when the topology or the store is unusable
    (a wrong etcd password too): their errors are clearer here than in a
    Ryu app's traceback."""
    from contracts.store import open_store
    from controller.topology import load_topology
    topo = load_topology(topology)
    open_store(store, tls=store_tls, auth=store_auth).close()
    return topo


def check_files(args):
    """The TLS files of `onvm controller`'s flags: readable, in pairs,
    certificates valid now and with their keys (contracts.tlsfiles);
    ValueError naming the file and flag."""
    from contracts.tlsfiles import check_ca, check_pair
    for flag in ("ofp_cert", "ofp_key", "ofp_ca", "api_cert", "api_key",
                 "store_ca", "store_cert", "store_key"):
        path = getattr(args, flag)
        if path is not None and not os.access(path, os.R_OK):
            raise ValueError(f"{path}: --{flag.replace('_', '-')}: cannot read the file")
    for pair in (("ofp_cert", "ofp_key"), ("api_cert", "api_key"),
                 ("store_cert", "store_key")):
        given = [getattr(args, flag) is not None for flag in pair]
        if any(given) and not all(given):
            raise ValueError(" and ".join(f"--{f.replace('_', '-')}" for f in pair)
                             + " go together")
    if args.ofp_ca and not args.ofp_cert:
        raise ValueError("--ofp-ca checks switches' certificates: it needs "
                         "--ofp-cert and --ofp-key")
    for cert, key in (("ofp_cert", "ofp_key"), ("api_cert", "api_key"),
                      ("store_cert", "store_key")):
        if getattr(args, cert):
            check_pair(getattr(args, cert), getattr(args, key),
                       f"--{cert.replace('_', '-')}", f"--{key.replace('_', '-')}")
    for ca in ("ofp_ca", "store_ca"):
        if getattr(args, ca):
            check_ca(getattr(args, ca), f"--{ca.replace('_', '-')}")


def security_options(args, tokens):
    """The [onvm] options of `onvm controller`'s security flags."""
    return {"api_token_file": os.path.abspath(tokens.source),
            "api_read_token_file": args.api_read_token_file and
            os.path.abspath(args.api_read_token_file),
            "api_cert": args.api_cert and os.path.abspath(args.api_cert),
            "api_key": args.api_key and os.path.abspath(args.api_key),
            "store_ca": args.store_ca and os.path.abspath(args.store_ca),
            "store_cert": args.store_cert and os.path.abspath(args.store_cert),
            "store_key": args.store_key and os.path.abspath(args.store_key),
            "store_user": args.store_user,
            "store_password_file": args.store_password_file and
            os.path.abspath(args.store_password_file)}


def cli_controller(args):
    from contracts.store import StoreAuth, StoreError, StoreTLS
    from controller.apiauth import AuthError, load_tokens
    from controller.topology import TopologyError
    store_tls = StoreTLS(args.store_ca, args.store_cert, args.store_key)
    store_auth = StoreAuth(args.store_user, args.store_password_file)
    try:
        check_files(args)
        topo = check_inputs(args.topology, args.store,
                            store_tls if any(store_tls) else None,
                            store_auth if any(store_auth) else None)
        manager = ryu_manager()
        # Last, as it may make the token file (its path is said below).
        tokens = load_tokens(args.api_token_file, args.api_read_token_file,
                             args.state_dir)
    except (TopologyError, StoreError, FileNotFoundError, AuthError, ValueError) as err:
        print(f"onvm controller: {err}", file=sys.stderr)
        return 1
    ofp_tls = (args.ofp_key, args.ofp_cert, args.ofp_ca) if args.ofp_cert else None
    text = config_text(args.topology, args.store, args.ofp_tcp_listen_port,
                       args.wsapi_port, args.observe_links, args.wsapi_host,
                       security_options(args, tokens), ofp_tls)
    # An in-memory file inherited across exec: nothing on disk to clean up.
    fd = os.memfd_create("onvm-controller.conf", 0)
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    argv, env = ryu_command(f"/proc/self/fd/{fd}", args.observe_links)
    scheme = "https" if args.api_cert else "http"
    print(f"onvm controller: topology {topo.name} ({len(topo.hosts)} hosts, "
          f"{len(topo.chains)} chains), store {args.store}, OpenFlow"
          f"{' over TLS' if ofp_tls else ''} on :{args.ofp_tcp_listen_port}, REST on "
          f"{scheme}://{args.wsapi_host}:{args.wsapi_port}/onvm/v1/ (bearer token in "
          f"{tokens.source})", file=sys.stderr, flush=True)
    os.execve(manager, argv, env)
