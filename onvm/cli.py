"""The one program, `onvm`: parses the command line of DESIGN.md and hands
each subcommand to the module that owns it.  Nothing here decides anything;
imports are lazy so `onvm topo validate` does not load DPDK or Ryu.

It is also the one place that turns errors into exit codes: a handler
returns (or returns an exit code of its own) or raises; the errors meant
for people (EXPECTED) print as `onvm COMMAND: message` and exit 1, Ctrl-C
exits 130, anything else is a bug and keeps its traceback.
"""
import argparse
import importlib
import sys

# (module, error class) of the errors a command may end with, for people
# to read; imported only when one is raised.
EXPECTED = (
    ("onvm.errors", "EmulationError"),
    ("onvm.errors", "UsageError"),
    ("onvm.services", "GaveUp"),
    ("onvm.netns", "NamespaceError"),
    ("contracts.store", "StoreError"),
    ("controller.topology", "TopologyError"),
)


def add_store_credentials(parser):
    """The store's TLS files and etcd user (controller, status); without
    them open_store reads $ONVM_STORE_CA/CERT/KEY/USER/PASSWORD_FILE."""
    parser.add_argument("--store-ca", default=None, help="https etcd: its CA")
    parser.add_argument("--store-cert", default=None, help="https etcd: client certificate")
    parser.add_argument("--store-key", default=None, help="https etcd: client key")
    parser.add_argument("--store-user", default=None, help="etcd auth: user (e.g. root)")
    parser.add_argument("--store-password-file", default=None,
                        help="etcd auth: file with the user's password (mode 0600)")

def _workers_arg(text):
    """--workers: a number, or "auto" (host_agent.lcores.auto_workers)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or auto, not {text!r}") from None


def _handler(target):
    module, func = target.split(":")
    return lambda args: getattr(importlib.import_module(module), func)(args)


def build_parser():
    p = argparse.ArgumentParser(prog="onvm", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    topo = sub.add_parser("topo", help="check or generate topology files")
    tsub = topo.add_subparsers(dest="topo_command", required=True)
    v = tsub.add_parser("validate", help="check a topology file")
    v.add_argument("file")
    v.set_defaults(run=_handler("controller.topology:cli_validate"))
    gen = tsub.add_parser("gen", help="write a topology as YAML on stdout")
    gsub = gen.add_subparsers(dest="kind", required=True)
    ft = gsub.add_parser("fat-tree")
    ft.add_argument("--k", type=int, required=True)
    ft.add_argument("--chains", type=int, default=None)
    ft.set_defaults(run=_handler("controller.topogen:cli_gen"))
    ls = gsub.add_parser("leaf-spine")
    ls.add_argument("--spines", type=int, required=True)
    ls.add_argument("--leaves", type=int, required=True)
    ls.add_argument("--hosts-per-leaf", type=int, required=True)
    ls.add_argument("--chains", type=int, default=None)
    ls.set_defaults(run=_handler("controller.topogen:cli_gen"))

    pl = sub.add_parser("place", help="offline placement and routing")
    pl.add_argument("--topology", required=True)
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(run=_handler("controller.placement:cli_place"))

    c = sub.add_parser("controller", help="ryu-manager with the onvm apps")
    c.add_argument("--topology", required=True)
    c.add_argument("--store", required=True)
    c.add_argument("--ofp-tcp-listen-port", type=int, default=6653)
    c.add_argument("--wsapi-port", type=int, default=8080)
    c.add_argument("--observe-links", action="store_true")
    c.add_argument("--wsapi-host", default="127.0.0.1",
                   help="REST API address (default 127.0.0.1: it changes forwarding, "
                        "expose it only on the management network)")
    c.add_argument("--api-token-file", default=None,
                   help="bearer token file, mode 0600 (default: made in --state-dir)")
    c.add_argument("--api-read-token-file", default=None,
                   help="read-only tokens (GET only), one a line")
    c.add_argument("--state-dir", default=None,
                   help="where a generated token goes (default $ONVM_STATE_DIR, "
                        "$STATE_DIRECTORY, ~/.onvm)")
    c.add_argument("--api-cert", default=None, help="REST over HTTPS: certificate")
    c.add_argument("--api-key", default=None, help="REST over HTTPS: key")
    c.add_argument("--ofp-cert", default=None, help="OpenFlow over TLS: certificate")
    c.add_argument("--ofp-key", default=None, help="OpenFlow over TLS: key")
    c.add_argument("--ofp-ca", default=None,
                   help="OpenFlow over TLS: CA the switches' certificates must chain to")
    add_store_credentials(c)
    c.set_defaults(run=_handler("controller.run:cli_controller"))

    a = sub.add_parser("agent", help="one host's agent",
                       usage="onvm agent (--config FILE | --host NAME (--store URL | "
                             "--plan FILE)) [options] [-- EAL-ARGS]")
    a.add_argument("--config", default=None, metavar="FILE",
                   help="a real server's settings in YAML (host_agent/agentconfig.py): "
                        "host, store endpoints and TLS files, NIC, cores, huge pages, "
                        "metrics port; flags given as well win")
    a.add_argument("--host", default=None)
    src = a.add_mutually_exclusive_group()
    src.add_argument("--store", help="etcd URL: take plans from the controller")
    src.add_argument("--plan", help="a local plan file: run with no controller")
    a.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus endpoint (default 9100; 0: none)")
    a.add_argument("--metrics-addr", default=None,
                   help="address of the Prometheus endpoint (default 127.0.0.1)")
    a.add_argument("--metrics-cert", default=None, help="metrics over HTTPS: certificate")
    a.add_argument("--metrics-key", default=None, help="metrics over HTTPS: key")
    a.add_argument("--metrics-token-file", default=None,
                   help="metrics need 'Authorization: Bearer TOKEN': file of tokens, "
                        "one a line, mode 0600")
    a.add_argument("--seconds", type=float, default=None,
                   help="stop after this long (default: until Ctrl-C)")
    a.add_argument("--mac", default=None,
                   help="this host's MAC, put in its /onvm/hosts/ key: a host the "
                        "topology file lacks joins with it (controller.joins)")
    a.add_argument("--ip", default=None, metavar="ADDR/LEN",
                   help="this host's IP with prefix length (like 10.0.0.9/24), for joining")
    a.add_argument("--label", type=int, default=None,
                   help="the node label this host asks for when it joins "
                        "(default: the controller gives the lowest free one)")
    a.add_argument("--idle-us", type=int, default=None,
                   help="sleep this many microseconds when no packet arrives "
                        "(default 0: poll, as DPDK does at line rate; use "
                        "100-500 where hosts share cores, as in emulation)")
    a.add_argument("--lease-ttl", type=float, default=None, metavar="SECONDS",
                   help="the host key's lease in the store (default 1 s): with the "
                        "controller's liveness probes on, a backstop that may be "
                        "several seconds")
    a.add_argument("--stats-publish", type=float, default=5.0, metavar="SECONDS",
                   help="put the stats summary in the store this often (default 5; "
                        "at once when the plan, a plan error or the instances change)")
    a.add_argument("--replicate-interval", type=float, default=1.0, metavar="SECONDS",
                   help="put a replica of each lb, nat and firewall-stateful instance's "
                        "flow state in the store this often, for a host that takes "
                        "over if this one fails (default 1; 0: off)")
    a.add_argument("--workers", type=_workers_arg, default=1, metavar="N|auto",
                   help="N worker loops, one per rx/tx queue pair of each port, on the "
                        "first N cores of the budget (symmetric RSS spreads flows, "
                        "tagged packets are handed over); inline instances only; auto: "
                        "the cores the --plan gives out (its instances' catalog cores), "
                        "else the whole budget (default 1)")
    a.add_argument("--flow-entries", type=int, default=1 << 20, metavar="N",
                   help="size of the host's flow table (default 1048576; idle "
                        "flows age out after 30 s)")
    a.set_defaults(run=_handler("host_agent.agentconfig:cli_agent"))

    nf = sub.add_parser("nf", help="network functions")
    nsub = nf.add_subparsers(dest="nf_command", required=True)
    nr = nsub.add_parser("run", help="an NF as its own DPDK secondary process")
    nr.add_argument("type")
    nr.add_argument("--host", required=True)
    nr.add_argument("--instance", type=int, required=True)
    nr.add_argument("--config", default=None, help="JSON config for the NF")
    nr.add_argument("--file-prefix", default=None)
    nr.add_argument("--lcore", type=int, default=None, metavar="L",
                    help="run on core L (the EAL pins it there; default: core 1 "
                         "where there is one); the agent gives each NF process its own")
    nr.set_defaults(run=_handler("host_agent.nfproc:cli_nf_run"))
    nc = nsub.add_parser("check", help="build an NF's config as an agent would and report "
                                       "(for ids: rules loaded and skipped)")
    nc.add_argument("type")
    nc.add_argument("--config", default=None,
                    help="a JSON object, or a file (a rule file for firewall and ids)")
    nc.add_argument("--json", action="store_true")
    nc.set_defaults(run=_handler("nfs.check:cli_nf_check"))
    nl = nsub.add_parser("list", help="NF types found through entry points")
    nl.set_defaults(run=_handler("nflib.api:cli_list"))

    e = sub.add_parser("emulate", help="a whole data center on this machine")
    e.add_argument("file")
    e.add_argument("--seconds", type=float, default=None)
    e.add_argument("--kill-host", action="append", default=[],
                   metavar="HOST@SECONDS")
    e.add_argument("--restart-controller", default=None, metavar="SECONDS")
    e.add_argument("--raise-rate", action="append", default=[],
                   metavar="CHAIN=MPPS@SECONDS")
    e.add_argument("--offer", action="append", default=[], metavar="CHAIN=MPPS@SECONDS",
                   help="the chain's senders offer this rate from then on, its declared "
                        "rate unchanged: a chain with an autoscale policy follows it")
    e.add_argument("--etcd-members", type=int, default=1, metavar="N",
                   help="run etcd as a cluster of N members on their own ports "
                        "(3 survives one member's loss); controller and agents get "
                        "every member's URL")
    e.add_argument("--etcd-quota-bytes", type=int, default=None, metavar="BYTES",
                   help="etcd's --quota-backend-bytes (default 256 MiB); past it "
                        "etcd refuses writes with a NOSPACE alarm")
    e.add_argument("--tls", action="store_true",
                   help="TLS on every control channel (OpenFlow, etcd with client "
                        "certificates and user/password auth, REST), with a CA, certificates "
                        "and etcd's root password made for the run")
    e.add_argument("--controllers", type=int, default=1, metavar="N",
                   help="run N controllers (1 to 4): one leads, the others stand by "
                        "and take over when it goes")
    e.add_argument("--drain-host", action="append", default=[], metavar="HOST@SECONDS",
                   help="drain HOST at SECONDS: its instances move to other hosts")
    e.add_argument("--undrain-host", action="append", default=[], metavar="HOST@SECONDS")
    e.add_argument("--add-host", action="append", default=[],
                   metavar="NAME@SWITCH:PORT@SECONDS",
                   help="plug a server the topology lacks into SWITCH port PORT at "
                        "SECONDS and start its agent: the controller takes it in")
    e.add_argument("--kill-leader", default=None, metavar="SECONDS",
                   help="SIGKILL the leading controller at SECONDS (needs --controllers 2)")
    e.add_argument("--json", action="store_true",
                   help="the live view on stderr; the last line of stdout is the "
                        "summary as JSON")
    e.set_defaults(run=_handler("onvm.live:cli_emulate"))

    st = sub.add_parser("status", help="the running cluster as the store sees it")
    st.add_argument("--store", required=True, help="etcd URL(s), as for the controller")
    add_store_credentials(st)
    st.add_argument("--json", action="store_true")
    st.add_argument("--watch", type=float, nargs="?", const=2.0, default=None,
                    metavar="SECONDS", help="refresh every SECONDS (default 2) until ^C")
    st.set_defaults(run=_handler("onvm.status:cli_status"))

    d = sub.add_parser("demo", help="the demo `make demo` runs")
    d.add_argument("--seconds", type=float, default=None)
    d.set_defaults(run=_handler("onvm.demo:cli_demo"))

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench_command", required=True)
    bf = bsub.add_parser("fastpath", help="fast-path throughput, 64-byte packets")
    bf.add_argument("--chain", required=True)
    bf.add_argument("--packets", type=int, default=10_000_000)
    bf.add_argument("--mode", choices=("inline", "process"), default="inline")
    bf.add_argument("--python", action="store_true",
                    help="use the plain-Python version of each NF")
    bf.add_argument("--flows", type=int, default=1024)
    bf.add_argument("--flow-entries", type=int, default=None,
                    help="the host flow table's size (default: the agent's)")
    bf.add_argument("--flow-idle", type=float, default=None, metavar="SECONDS",
                    help="the host flow table's idle timeout (default: the agent's)")
    bf.add_argument("--nf-config", action="append", default=[], metavar="NF=CONFIG",
                    help="an NF's config instead of the bench's (a JSON object or a file, "
                         "as for `onvm nf check`; for ids a rule file); repeatable")
    bf.add_argument("--mix", choices=("64", "imix"), default="64",
                    help="frame sizes: 64 bytes, or the simple IMIX (7:4:1 of 64, 576 "
                         "and 1500 bytes)")
    bf.add_argument("--zipf", type=float, default=0.0, metavar="S",
                    help="flow popularity skewed as Zipf(S) over --flows (0: uniform)")
    bf.add_argument("--new-flows", type=float, default=0.0, metavar="PER_S",
                    help="new flows a second: the window of --flows flows slides, old "
                         "ones stop and age out (see --flow-idle); occupancy is sampled")
    bf.add_argument("--payload", choices=("udp", "http"), default="udp",
                    help="udp: 64-byte (or --mix) UDP frames; http: TCP streams to port 80, "
                         "each segment an HTTP request, for the ids (at most 4096 flows)")
    bf.add_argument("--cores", type=int, default=1, metavar="N",
                    help="worker cores (default 1); more than the machine has is an error")
    bf.add_argument("--json", action="store_true")
    bf.add_argument("--replicate-interval", type=float, default=0.0, metavar="SECONDS",
                    help="take the replicas' snapshots of the lb, nat and firewall-stateful "
                         "instances this often during the timed run, as an agent does "
                         "(host_agent.replicas; default 0: none), their time counted")
    bf.set_defaults(run=_handler("host_agent.bench:cli_bench_fastpath"))
    bfc = bsub.add_parser("flowcost", help="what many flows cost a chain's fast path, "
                          "against few flows in the same process and minutes (turns)")
    bfc.add_argument("--chain", required=True)
    bfc.add_argument("--flows", type=int, default=1_000_000)
    bfc.add_argument("--against", type=int, default=1024, metavar="FLOWS")
    bfc.add_argument("--turns", type=int, default=20)
    bfc.add_argument("--turn-packets", type=int, default=2_000_000)
    bfc.add_argument("--json", action="store_true")
    bfc.set_defaults(run=_handler("host_agent.flowcost:cli_bench_flowcost"))
    bk = bsub.add_parser("keytab", help="the host flow table's bulk lookup, cycles a key: "
                         "its key table against DPDK's rte_hash")
    bk.add_argument("--flows", type=int, action="append", default=None, metavar="N",
                    help="keys in the table (repeatable; default 1024, 65536, 1000000)")
    bk.add_argument("--bursts", type=int, default=100_000, help="bursts of 64 a round")
    bk.add_argument("--rounds", type=int, default=5)
    bk.add_argument("--json", action="store_true")
    bk.set_defaults(run=_handler("host_agent.keybench:cli_bench_keytab"))
    bh = bsub.add_parser("handoff", help="what the worker handoff costs: a chain on N "
                         "workers, frames spread as RSS would, tagged on one queue, or "
                         "untagged on one queue")
    bh.add_argument("--chain", required=True)
    bh.add_argument("--cores", type=int, default=2)
    bh.add_argument("--rounds", type=int, default=40, help="rounds of 49152 frames")
    bh.add_argument("--json", action="store_true")
    bh.set_defaults(run=_handler("host_agent.handoffbench:cli_bench_handoff"))
    by = bsub.add_parser("cycles", help="cycles per packet of each NF and a chain, "
                                        "and the cores 10/40/100 GbE need")
    by.add_argument("--chain", action="append", default=[], metavar="A,B,...",
                    help="an NF or chain to measure (repeatable; default: firewall, "
                         "monitor, forward and firewall,monitor,forward)")
    by.add_argument("--mix", action="append", choices=("64", "imix"), default=[],
                    help="frame mix (repeatable; default both)")
    by.add_argument("--packets", type=int, default=10_000_000)
    by.add_argument("--json", action="store_true")
    by.set_defaults(run=_handler("host_agent.cycles:cli_bench_cycles"))
    bp = bsub.add_parser("placement", help="placement quality and speed")
    bp.add_argument("--json", action="store_true")
    bp.set_defaults(run=_handler("controller.bench:cli_bench_placement"))
    bc = bsub.add_parser("controller", help="the controller's decisions, no switches: "
                         "full compile, one host lost, a second of stats")
    bc.add_argument("--topology", required=True)
    bc.add_argument("--json", action="store_true")
    bc.set_defaults(run=_handler("controller.bench:cli_bench_controller"))
    bch = bsub.add_parser("chaos", help="faults made for real, one at a time, on an "
                                        "emulation with traffic: the invariants and loss")
    bch.add_argument("--topology", default="topologies/minimal.yaml")
    bch.add_argument("--json", action="store_true")
    bch.set_defaults(run=_handler("onvm.chaos:cli_bench_chaos"))
    ba = bsub.add_parser("autoscale", help="a step of offered traffic up and back down on "
                                           "an autoscaled chain: time to scale, loss")
    ba.add_argument("--topology", default="topologies/minimal.yaml")
    ba.add_argument("--chain", default=None, help="default: the first with a policy, "
                                                  "else the first")
    ba.add_argument("--step", type=float, default=12.0,
                    help="offered rate x this (12: minimal.yaml's web over its firewall)")
    ba.add_argument("--json", action="store_true")
    ba.set_defaults(run=_handler("onvm.scaling:cli_bench_autoscale"))
    bw = bsub.add_parser("weights", help="the remote-node choice under skewed traffic: "
                                         "weights from shares against measured load")
    bw.add_argument("--epochs", type=int, default=20, help="stats periods to run (default 20)")
    bw.add_argument("--elephants", type=int, default=4, help="long heavy flows (default 4)")
    bw.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    bw.add_argument("--runs", type=int, default=4, help="seeds to run (default 4)")
    bw.add_argument("--json", action="store_true")
    bw.set_defaults(run=_handler("onvm.weightbench:cli_bench_weights"))
    bo = bsub.add_parser("failover", help="host failure on the leaf-spine")
    bo.add_argument("--topology", default="topologies/leaf-spine.yaml")
    bo.add_argument("--connections", type=int, default=0, metavar="N",
                    help="instead: keep N TCP connections open through the topology's "
                         "TCP chain and fail the host of its --nf (e.g. with "
                         "topologies/stateful-failover.yaml); count those that go on")
    bo.add_argument("--nf", default="nat", help="with --connections: whose host fails")
    bo.add_argument("--json", action="store_true")
    bo.set_defaults(run=_handler("onvm.failover:cli_bench_failover"))
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` is for DPDK's EAL (agent, nf run).
    eal = []
    if "--" in argv:
        cut = argv.index("--")
        argv, eal = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    args.eal = eal
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        if not expected(err):
            raise
        print(f"onvm {args.command}: {err}", file=sys.stderr)
        return 1


def expected(err):
    """True when `err` is one of EXPECTED (or TimeoutError: a wait that gave
    up says what it waited for)."""
    if isinstance(err, TimeoutError):
        return True
    for module, name in EXPECTED:
        if module in sys.modules and isinstance(err, getattr(sys.modules[module], name)):
            return True
    return False


if __name__ == "__main__":
    sys.exit(main())
