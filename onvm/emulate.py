"""The emulated data center: `Emulation` starts one on this machine,
changes what it does while it runs, tells what it sees, and stops it.

One emulation starts, in the caller's (private, see onvm.netns) network
namespace: a local etcd (or a cluster of `etcd_members` on their own
ports, every part given all of their URLs), a private Open vSwitch (userspace datapath),
Mininet built from the topology file (switches with the file's dpids and
port numbers, one Mininet host per DPDK host with the file's MAC and IP,
one Mininet host per edge as the outside world, one per application server
with the file's MAC and IP, set up as onvm.webplan says), the controller (ryu-manager
with the onvm apps on free ports), one agent inside each host's namespace
(DPDK `net_af_packet` on the host's interface; it sleeps `idle_us` when no
packet comes, since the hosts share the machine's cores), and a paced sender
at each chain's ingress edge with a counting sink at each egress
(`onvm.traffic`), except for chains that carry TCP to a server or a
pool: those get real TCP instead, an HTTP server on each server and a
client at the ingress edge opening connections at a set rate (`onvm.web`,
`http()` for a client of a test's own).  Tests change what a sender sends while it runs:
`set_flows` (which flows, with what payload) and `set_pps` / `raise_rate`
(how fast).  `status()` is one snapshot, per chain and per host.

Every name it makes starts with a per-run prefix; `stop()` ends what it
started, by pid, and removes only what carries the prefix.  It never runs
`mn -c`.

Not here: the live view and the command (live.py), frames (frames.py),
the store's way into the hosts' namespaces (netns.py), the failover
benchmark (failover.py).  It decides nothing about placement or
forwarding: it only starts the parts and reads what they publish.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from contracts.statsum import PUBLISH_S
from contracts.store import LEADER, StoreError, open_store
from contracts.wire import SI_FIRST
from controller.plans import edge_mac
from controller.topology import load_topology
from onvm import certs, procs, services, webplan
from onvm.errors import EmulationError
from onvm.frames import chain_frames, default_flows
from onvm.joining import join_news
from onvm.netns import StoreForwarder
from onvm.services import free_port, wait_for
from onvm.storewatch import StoreWatch
from onvm.traffic import read_status

__all__ = ["Emulation", "EmulationError", "run_prefix", "default_flows"]

PPS_PER_MPPS = 100          # emulated packets a second per Mpps a chain asks for
CONTROLLER_LETTERS = "abcd"  # controllers a, b, ...: names in the leader key and logs
IDLE_US = 200               # agents sleep this long when idle: hosts share two cores
STATS_FRESH_MARGIN_S = 3.0  # stats older than publish_interval + this show no instances


def write_atomic(path, text):
    """Replace a file's content at once (readers see the old or the new)."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def run_prefix():
    """Short, per run: it starts interface names (15 characters at most)."""
    return "o%03x" % (os.getpid() & 0xfff)


def controller_main():
    """ryu-manager's main, as `onvm controller` execs it (in a child of
    ours, so that it dies with us: see procs.die_with_parent); returns its
    exit code."""
    from ryu.cmd.manager import main
    sys.argv[0] = "ryu-manager"
    return main()


class Emulation:
    """One emulated data center.  `start()`, then `status()` as often as
    wanted, then `stop()` (always: it is safe after a partial start)."""

    def __init__(self, topo_path, prefix=None, workdir=None, pps_per_mpps=PPS_PER_MPPS,
                 say=None, agent_nice=10, idle_us=IDLE_US, etcd_members=1,
                 etcd_quota_bytes=services.ETCD_QUOTA_BYTES, tls=False, controllers=1,
                 publish_interval=PUBLISH_S, drain_seconds=None):
        """`publish_interval`: how often each agent puts its stats summary
        in the store (its --stats-publish; the tests run shorter than the
        5 s default to wait less for fresh stats); `drain_seconds`: the
        controllers' [onvm] drain_seconds (None: their default, 30)."""
        if not publish_interval > 0:
            raise EmulationError(f"publish_interval: {publish_interval!r}: seconds, "
                                 "more than 0")
        if drain_seconds is not None and not drain_seconds >= 0:
            raise EmulationError(f"drain_seconds: {drain_seconds!r}: seconds, 0 or more")
        if not 1 <= controllers <= len(CONTROLLER_LETTERS):     # before any file is made
            raise EmulationError(f"controllers: {controllers}: between 1 and "
                                 f"{len(CONTROLLER_LETTERS)}")
        self.publish_interval = float(publish_interval)
        self.stats_fresh_s = self.publish_interval + STATS_FRESH_MARGIN_S
        self.drain_seconds = drain_seconds
        self.topo_path = os.path.abspath(topo_path)
        self.topo = load_topology(self.topo_path)
        self.prefix = prefix or run_prefix()
        self.dir = tempfile.mkdtemp(prefix=f"onvm-emu-{self.prefix}-", dir=workdir)
        self.pps_per_mpps = pps_per_mpps
        self.say = say or (lambda *a, **k: None)
        self.agent_nice = agent_nice
        self.idle_us = idle_us
        self.etcd_members = etcd_members
        self.etcd_quota_bytes = etcd_quota_bytes
        # The REST token always; with tls, certificates for every control channel.
        self.credentials = certs.RunCredentials(self.dir, tls=tls)
        self.etcd = self.ovs = self.net = self.store = None
        self.forwarders = []        # one StoreForwarder per etcd member
        self.n_controllers = controllers
        self.controllers = [None] * controllers   # Popen per controller, a, b, ...
        self.ctl_ports = []         # (OpenFlow port, REST port) per controller
        self.agents = {}            # host name -> Popen
        self.senders = {}           # chain name -> Popen
        self.sinks = {}             # place name -> Popen
        self.web_servers = {}       # server name -> Popen (onvm.web serve)
        self.clients = {}           # chain name -> Popen (onvm.web get)
        self.client_plans = {c.chain: c for c in webplan.clients(self.topo)}
        self.nodes = {}             # topology name -> Mininet node
        self.intf = {}              # topology name -> interface name in its node
        self.joined = {}            # name -> (switch, port, mac, ip) of hosts added (add_host)
        self.join_seen = {}         # name -> what its join events said (onvm.joining)
        self.killed = set()         # hosts failed on purpose (fail_host, kill_agent, ...)
        self.failures = []          # [(time, host)] of fail_host, for the summary's reasons
        self.exited = set()         # Popens of parts that ended unasked (see exits)
        self.watch = None           # StoreWatch, once started
        self.started = None
        self._stopped = False
        self._lock = threading.Lock()

    # -- names ----------------------------------------------------------
    def _node_name(self, kind, index):
        return f"{self.prefix}{kind}{index}"

    def file(self, name):
        return os.path.join(self.dir, name)

    # -- start ----------------------------------------------------------
    def start(self):
        self._step("starting etcd", self._start_etcd)
        self._step("starting Open vSwitch (userspace datapath)", self._start_ovs)
        # The controller comes last, so its first placement sees every host
        # (no chain placed on a partial cluster, then moved), and switches
        # connect once it listens.
        self.ctl_ports = [(free_port(), free_port()) for _ in range(self.n_controllers)]
        self._step("building Mininet", self._start_mininet)
        self._step("starting agents", self._start_agents)
        self._wait_hosts()
        self._step("starting the controller", self._start_controller)
        self._wait_switches()
        self._wait_plans()
        self._step("starting traffic", self._start_traffic)
        self.watch = StoreWatch(self.store).start()
        self.started = time.time()

    def _step(self, what, func):
        self.say(f"{what}... ", end="")
        t0 = time.monotonic()
        detail = func()
        self.say(f"ok ({detail + ', ' if detail else ''}{time.monotonic() - t0:.1f} s)")

    def _start_etcd(self):
        self.etcd = services.EtcdCluster(self.etcd_members, workdir=self.dir,
                                         quota_bytes=self.etcd_quota_bytes,
                                         tls=self.credentials if self.credentials.tls else None,
                                         auth=self.credentials.store_auth())
        self.store = open_store(self.etcd.url, tls=self.credentials.store_tls(),
                                auth=self.credentials.store_auth())
        return self.etcd.url

    def _start_ovs(self):
        self.ovs = services.OvsServer(self.prefix, workdir="/tmp")
        self.ovs.activate()          # Mininet's OVSSwitch shells out to ovs-vsctl
        if self.credentials.tls:     # the switches' side of OpenFlow over TLS
            self.ovs.vsctl("set-ssl", *self.credentials.ovs_ssl())
        return self.ovs.dir

    def _start_controller(self):
        for i in range(self.n_controllers):
            self._spawn_controller(i)
            self._wait_controller(i)
        return ", ".join(f"{self.controller_name(i)}: OpenFlow :{of}, REST :{ws}"
                         for i, (of, ws) in enumerate(self.ctl_ports))

    # The first controller keeps the names a one-controller run has always had.
    @property
    def controller(self):
        return self.controllers[0]

    @property
    def of_port(self):
        return self.ctl_ports[0][0] if self.ctl_ports else None

    @property
    def ws_port(self):
        return self.ctl_ports[0][1] if self.ctl_ports else None

    def controller_name(self, i):
        """Controller i's name in the store's leader key ({prefix}-ctl-a, ...)."""
        return f"{self.prefix}-ctl-{CONTROLLER_LETTERS[i]}"

    def controller_log(self, i):
        return "controller.log" if i == 0 else f"controller-{CONTROLLER_LETTERS[i]}.log"

    def _spawn_controller(self, i=0):
        """ryu-manager with the onvm apps, as `onvm controller` runs it, with
        its config in our run directory, under `controller_main`."""
        from controller.run import APPS, config_text
        conf = self.file(self.controller_log(i).replace(".log", ".conf"))
        of_port, ws_port = self.ctl_ports[i]
        config = self.credentials.controller_config()
        config["onvm"] = dict(config.get("onvm") or {}, name=self.controller_name(i),
                              pps_per_mpps=self.pps_per_mpps,
                              drain_seconds=self.drain_seconds)   # None: not written
        with open(conf, "w") as f:
            f.write(config_text(self.topo_path, self.etcd.url, of_port, ws_port, **config))
        cmd = [sys.executable, "-c",
               "import sys, onvm.emulate as e; sys.exit(e.controller_main())",
               "--config-file", conf, *APPS]
        self.controllers[i] = self._spawn(subprocess.Popen, cmd, self.controller_log(i),
                                          preexec_fn=procs.die_with_parent)

    def _spawn(self, popen, cmd, log_name, **kwargs):
        """`popen` (subprocess.Popen, or a Mininet node's popen to run in its
        namespace) of `cmd` in the repository, output to a log of our run."""
        with open(self.file(log_name), "ab") as log:
            return popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         cwd=procs.REPO, env=dict(procs.child_env(),
                                                  **self.credentials.store_env()), **kwargs)

    def _wait_controller(self, i=0, timeout=30):
        proc, log = self.controllers[i], self.file(self.controller_log(i))

        def ready():
            if proc.poll() is not None:
                raise services.GaveUp(f"controller {self.controller_name(i)} exited "
                                      f"with {proc.returncode}")
            self.rest("GET", "/topology", controller=i)
            return self.store.get(LEADER) is not None
        try:
            wait_for(ready, timeout, "the controller's REST API and leadership")
        except (TimeoutError, services.GaveUp) as err:
            raise EmulationError(f"{err}; tail of {log}:\n{procs.tail(log)}") from None

    def _start_mininet(self):
        from mininet.link import Link
        from mininet.net import Mininet
        from mininet.node import Host, OVSSwitch, RemoteController
        net = Mininet(build=False, autoSetMacs=False, autoStaticArp=False,
                      controller=None, switch=OVSSwitch, host=Host, link=Link,
                      waitConnected=False)
        self.net = net
        for i, (of_port, _) in enumerate(self.ctl_ports):
            net.addController(f"{self.prefix}c{i}", controller=RemoteController,
                              ip="127.0.0.1", port=of_port,
                              protocol="ssl" if self.credentials.tls else "tcp")
        switches = {}
        for i, sw in enumerate(self.topo.switches):
            switches[sw.name] = (net.addSwitch(
                self._node_name("s", i), cls=OVSSwitch, dpid="%016x" % sw.dpid,
                datapath="user", failMode="secure", protocols="OpenFlow13"), i)
        for i, h in enumerate(self.topo.hosts):
            node = net.addHost(self._node_name("h", i), ip=h.ip, mac=h.mac)
            self._attach(node, h.name, switches[h.switch], h.port)
        for i, e in enumerate(self.topo.edges):
            node = net.addHost(self._node_name("e", i), ip=None, mac=edge_mac(e.name))
            self._attach(node, e.name, switches[e.switch], e.port)
        for i, s in enumerate(self.topo.servers):
            node = net.addHost(self._node_name("v", i), ip=s.ip, mac=s.mac)
            self._attach(node, s.name, switches[s.switch], s.port)
        for link in self.topo.links:
            (a, ia), (b, ib) = switches[link.a], switches[link.b]
            net.addLink(a, b, port1=link.a_port, port2=link.b_port,
                        intfName1=f"{self.prefix}s{ia}p{link.a_port}",
                        intfName2=f"{self.prefix}s{ib}p{link.b_port}")
        net.build()
        net.start()
        for name, node in self.nodes.items():
            # Only the agent and our traffic should speak on these wires.
            node.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                     "net.ipv6.conf.default.disable_ipv6=1")
            node.cmd(f"ip link set {self.intf[name]} up")
        addresses6 = webplan.server_addresses6(self.topo)
        for s in self.topo.servers:
            self._node_cmds(s.name, webplan.server_setup(self.intf[s.name],
                                                         addresses6.get(s.name, ())))
        for e in self.topo.edges:
            self._node_cmds(e.name, webplan.edge_setup(
                self.intf[e.name], [c for c in self.client_plans.values() if c.edge == e.name]))
        return (f"{len(self.topo.switches)} switches, {len(self.topo.hosts)} hosts, "
                f"{len(self.topo.edges)} edges, {len(self.topo.servers)} servers, "
                f"{len(self.topo.links)} links")

    def _node_cmds(self, name, cmds):
        """Run shell commands in a node's namespace; EmulationError on the first that fails."""
        for cmd in cmds:
            out = self.nodes[name].cmd(cmd + " 2>&1; echo rc=$?").strip()
            if not out.endswith("rc=0"):
                raise EmulationError(f"in the namespace of {name}: `{cmd}` failed: {out}")

    def _attach(self, node, name, switch, port):
        sw, index = switch
        self.nodes[name] = node
        self.intf[name] = node.name
        self.net.addLink(node, sw, port1=0, port2=port, intfName1=node.name,
                         intfName2=f"{self.prefix}s{index}p{port}")

    def _wait_count(self, count, total, what, timeout):
        """Wait until `count()` reaches `total`, saying each new count
        ("switches 2/3 connected") and giving up when a part died."""
        seen = [-1]

        def done():
            self._check_alive()
            n = count()
            if n != seen[0]:
                self.say(f"{what.split()[0]} {n}/{total} {' '.join(what.split()[1:])}")
                seen[0] = n
            return n >= total
        wait_for(done, timeout, f"{what}: all {total}", interval=0.2)

    def _wait_switches(self, timeout=30):
        self._wait_count(lambda: self.ovs.vsctl("--columns=is_connected", "list",
                                                "Controller", check=False).count("true"),
                         len(self.topo.switches), "switches connected", timeout)

    def _start_agents(self):
        self.forwarders = [StoreForwarder(port) for port in self.etcd.client_ports]
        for forwarder in self.forwarders:
            for h in self.topo.hosts:
                forwarder.add(self.nodes[h.name].pid)
        for name in (h.name for h in self.topo.hosts):
            self.start_agent(name)
        return f"{len(self.agents)} agents"

    def add_host(self, name, switch, port, mac, ip):
        """A server the topology file lacks, plugged in now: a Mininet host
        with a link to `switch` port `port` of the running OVS, and its
        agent registering `mac` and `ip` to join (controller.joins)."""
        if name in self.nodes:
            raise EmulationError(f"--add-host {name}: the emulation has a {name} already")
        names = [sw.name for sw in self.topo.switches]
        if switch not in names:
            raise EmulationError(f"--add-host {name}: no switch {switch!r} in {self.topo.source}")
        index = names.index(switch)
        node = self.net.addHost(f"{self.prefix}j{len(self.joined)}", ip=ip, mac=mac)
        bridge_side = f"{self.prefix}s{index}p{port}"
        self.net.addLink(node, self.net.get(self._node_name("s", index)), port1=0,
                         port2=port, intfName1=node.name, intfName2=bridge_side)
        self.ovs.vsctl("add-port", self._node_name("s", index), bridge_side, "--",
                       "set", "Interface", bridge_side, f"ofport_request={port}")
        self.nodes[name], self.intf[name] = node, node.name
        node.configDefault()        # its address and loopback, as net.start() does
        node.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                 "net.ipv6.conf.default.disable_ipv6=1")
        node.cmd(f"ip link set {node.name} up; ip link set {bridge_side} up")
        for forwarder in self.forwarders:
            forwarder.add(node.pid)
        self.joined[name] = (switch, port, mac, ip)
        self.start_agent(name, ["--mac", mac, "--ip", ip])

    def join_news(self):
        """What the hosts added did since the last call (onvm.joining)."""
        if not self.joined:
            return []
        with open(self.file(self.controller_log(0)), errors="replace") as f:
            log = f.read()
        return join_news(self.joined, self.watch.latest()[0]["plans"], log, self.join_seen)

    def start_agent(self, name, extra=()):
        if name in self.joined and not extra:
            _, _, mac, ip = self.joined[name]
            extra = ["--mac", mac, "--ip", ip]
        cmd = ["nice", "-n", str(self.agent_nice), sys.executable, "-m", "onvm.cli",
               "agent", "--host", name, "--store", self.etcd.url, "--metrics-port", "0",
               "--idle-us", str(self.idle_us),
               "--stats-publish", f"{self.publish_interval:g}", *extra,
                  "--", "--vdev", f"net_af_packet0,iface={self.intf[name]}", "--no-huge",
               "-m", "256", "--file-prefix", f"{self.prefix}_{name}"]
        self.agents[name] = self._spawn(self.nodes[name].popen, cmd, f"agent-{name}.log")
        self.killed.discard(name)

    def _wait_hosts(self, timeout=60):
        names = {h.name for h in self.topo.hosts}
        self._wait_count(lambda: len(names & set(self.store.hosts())), len(names),
                         "agents registered", timeout)

    def _wait_plans(self, timeout=30):
        def applied():
            self._check_alive()
            plans = self.store.plans()
            if not plans:
                return False
            return all(self.store.get_applied(h) == p["generation"]
                       for h, p in plans.items() if h not in self.killed)
        try:
            wait_for(applied, timeout, "agents to apply the controller's plans", interval=0.2)
        except TimeoutError as err:
            refused = {h: (st or {}).get("plan_error") for h, st in self.store.stats().items()
                       if (st or {}).get("plan_error")}
            why = "".join(f"\n  {h}: {e}" for h, e in sorted(refused.items()))
            raise EmulationError(f"{err}; agents refusing their plan:{why or ' none'}; "
                                 f"logs in {self.dir}") from None
        self.say(f"plans applied on {len(self.store.plans())} hosts")

    def _start_traffic(self):
        addresses6 = webplan.server_addresses6(self.topo)
        for name, ports in webplan.server_ports(self.topo).items():
            cmd = [sys.executable, "-m", "onvm.web", "serve", "--name", name,
                   "--status", self.file(f"web-{name}.json")]
            for port in ports:
                cmd += ["--port", str(port)]
            if name in addresses6:
                cmd.append("--ipv6")
            self.web_servers[name] = self._spawn(self.nodes[name].popen, cmd, f"web-{name}.log")
        for chain in self.topo.chains:
            if chain.name in self.client_plans:
                continue            # its traffic is real TCP, started below
            self._start_sink(chain.egress)
            self._start_sender(chain)
        if self.web_servers:
            wait_for(lambda: self._check_alive() or all(
                read_status(self.file(f"web-{n}.json")) for n in self.web_servers),
                30, "the HTTP servers to listen")
        for plan in self.client_plans.values():
            self._start_client(plan)
        return (f"{len(self.senders)} senders, {len(self.sinks)} sinks, "
                f"{len(self.web_servers)} HTTP servers, {len(self.clients)} TCP clients")

    def _start_client(self, plan):
        self.set_connection_rate(plan.chain, plan.rate)
        cmd = [sys.executable, "-m", "onvm.web", "get", "--dst", plan.dst,
               "--port", str(plan.port), "--src", plan.src, "--rate", "0",
               "--rate-file", self.file(f"tcprate-{plan.chain}"),
               "--status", self.file(f"tcp-{plan.chain}.json")]
        self.clients[plan.chain] = self._spawn(self.nodes[plan.edge].popen, cmd,
                                               f"tcp-{plan.chain}.log")

    def set_connection_rate(self, chain, per_s):
        """The TCP connections a second chain's client opens (0 pauses it)."""
        write_atomic(self.file(f"tcprate-{chain}"), str(per_s))

    def pause_traffic(self):
        """Pause every sender and TCP client (for exact final counts)."""
        for chain in self.topo.chains:
            self.set_pps(chain.name, 0)
        for chain in self.clients:
            self.set_connection_rate(chain, 0)

    def http(self, chain, count, rate=20.0, path="/2000", timeout=60.0):
        """Run a TCP client of `chain` (as its own, from its ingress edge, with
        the same source address) for `count` connections to the chain's
        destination, one GET of `path` each; returns its final status
        ({"ok", "failed", "servers", "seen_as", "errors", ...})."""
        plan = self.client_plans[chain]
        status = self.file(f"http-{chain}-{time.monotonic_ns()}.json")
        cmd = [sys.executable, "-m", "onvm.web", "get", "--dst", plan.dst,
               "--port", str(plan.port), "--src", plan.src, "--rate", str(rate),
               "--count", str(count), "--path", path, "--status", status]
        proc = self._spawn(self.nodes[plan.edge].popen, cmd, f"http-{chain}.log")
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            procs.stop(proc, f"the HTTP client of {chain}")
        return read_status(status) or {}

    def hold(self, chain, connections, every=0.5, path="/2000"):
        """Start a client of `chain` (from its ingress edge, with its
        source address) that keeps `connections` TCP connections open, a
        GET on each every `every` seconds (onvm.web hold); returns a
        function that reads its status, and with `stop=True` stops it
        first and returns the final status."""
        plan = self.client_plans[chain]
        status = self.file(f"hold-{chain}-{time.monotonic_ns()}.json")
        cmd = [sys.executable, "-m", "onvm.web", "hold", "--dst", plan.dst,
               "--port", str(plan.port), "--src", plan.src, "--path", path,
               "--connections", str(connections), "--every", str(every),
               "--status", status]
        proc = self._spawn(self.nodes[plan.edge].popen, cmd, f"hold-{chain}.log")

        def read(stop=False):
            if stop:
                procs.stop(proc, f"the connection holder of {chain}", grace=15.0)
            return read_status(status) or {}
        return read

    def inject(self, place, frames, times=1):
        """Send these frames (bytes), each `times` times, from the interface
        of `place` (an edge or a server) as raw Ethernet."""
        # The frames go through a file: Mininet types a command into a
        # shell, whose line holds about 4 KB.
        path = self.file(f"inject-{place}.json")
        write_atomic(path, json.dumps([bytes(f).hex() for f in frames]))
        out = self.nodes[place].cmd(
            f"{sys.executable} -c \"import json, socket; s=socket.socket(socket.AF_PACKET, "
            f"socket.SOCK_RAW); s.bind(('{self.intf[place]}', 0)); "
            f"hexes=json.load(open('{path}')); "
            f"[s.send(bytes.fromhex(h)) for _ in range({int(times)}) for h in hexes]"
            f"\" 2>&1; echo rc=$?").strip()
        if not out.endswith("rc=0"):
            raise EmulationError(f"sending frames from {place} failed: {out}")

    def web_server(self, name):
        """What HTTP server `name` reports: {"served", "clients": {ip: n}, ...}."""
        return read_status(self.file(f"web-{name}.json")) or {}

    def tcp(self, chain):
        """What chain's TCP client reports, or None without one."""
        if chain not in self.clients:
            return None
        return read_status(self.file(f"tcp-{chain}.json")) or {"ok": 0, "failed": 0}

    def _start_sink(self, place):
        if place in self.sinks:
            return
        cmd = [sys.executable, "-m", "onvm.traffic", "sink", "--iface", self.intf[place],
               "--status", self.file(f"sink-{place}.json")]
        self.sinks[place] = self._spawn(self.nodes[place].popen, cmd, f"sink-{place}.log")

    def _start_sender(self, chain):
        ingress = self.topo.edge(chain.ingress)
        self.set_flows(chain.name, default_flows(chain))
        self.set_rate(chain.name, chain.mpps)
        cmd = [sys.executable, "-m", "onvm.traffic", "send", "--iface", self.intf[ingress.name],
               "--frames", self.file(f"frames-{chain.name}.json"),
               "--status", self.file(f"send-{chain.name}.json"),
               "--rate-file", self.file(f"rate-{chain.name}"),
               "--spi", str(chain.spi), "--pps", str(self.pps(chain.mpps))]
        self.senders[chain.name] = self._spawn(self.nodes[ingress.name].popen, cmd,
                                               f"send-{chain.name}.log")

    def set_flows(self, name, flows):
        """Make chain `name`'s sender send these flow specs (see
        chain_frames) from now on; it picks them up within half a second and
        counts per flow afresh (`sent(name)["per_frame"]`, in this order)."""
        chain = self.topo_chain(name)
        places = {p.name: p.mac for p in self.topo.hosts + self.topo.servers}
        dst_mac = places.get(chain.egress) or edge_mac(chain.egress)
        frames = chain_frames(chain, edge_mac(chain.ingress), dst_mac, flows)
        write_atomic(self.file(f"frames-{name}.json"), json.dumps([fr.hex() for fr in frames]))

    def pps(self, mpps):
        return max(10.0, round(mpps * self.pps_per_mpps, 1))

    def set_rate(self, chain, mpps):
        self.set_pps(chain, self.pps(mpps))

    def set_pps(self, chain, pps):
        """The sender's rate in packets a second (0 pauses it), read within
        half a second."""
        write_atomic(self.file(f"rate-{chain}"), str(pps))

    # -- watching ----------------------------------------------------------
    def _check_alive(self):
        """Raise GaveUp when a part we did not stop has died (while starting)."""
        dead = self.exits()
        if dead:
            raise services.GaveUp("; ".join(dead))

    def exits(self):
        """Why each part we did not stop has ended since the last call (each
        is told once): the controller's or an agent's exit is an event of the
        run (fail-static: traffic may well go on), a sender's or a sink's
        ends it (nothing is measured any more): EmulationError."""
        for what, children, log in (("traffic sender", self.senders, "send"),
                                    ("traffic sink", self.sinks, "sink"),
                                    ("HTTP server", self.web_servers, "web"),
                                    ("TCP client", self.clients, "tcp")):
            for name, proc in children.items():
                if proc.poll() is not None:
                    raise EmulationError(f"the {what} for {name} exited with "
                                         f"{proc.returncode}; its log: "
                                         f"{self.file(f'{log}-{name}.log')}")
        found = []
        parts = [(f"the controller {self.controller_name(i)}" if i else "the controller",
                  proc, self.controller_log(i))
                 for i, proc in enumerate(self.controllers)] + [
            (f"the agent of {name}", proc, f"agent-{name}.log")
            for name, proc in self.agents.items() if name not in self.killed]
        for what, proc, log in parts:
            if proc is not None and proc.poll() is not None and proc not in self.exited:
                self.exited.add(proc)
                found.append(f"{what} exited with {proc.returncode}; tail of "
                             f"{self.file(log)}:\n{procs.tail(self.file(log))}")
        return found

    def sent(self, chain):
        return read_status(self.file(f"send-{chain}.json")) or {}

    def received(self, chain):
        spi = self.topo_chain(chain).spi
        status = read_status(self.file(f"sink-{self.topo_chain(chain).egress}.json")) or {}
        return status.get("chains", {}).get(str(spi), {})

    def sink_status(self, place):
        return read_status(self.file(f"sink-{place}.json"))

    def topo_chain(self, name):
        return self.topo.chain(name)

    def placement(self, plans=None):
        """{chain: [(nf, [hosts])]} from the plans in the store."""
        plans = self.store.plans() if plans is None else plans
        out = {}
        for chain in self.topo.chains:
            hops = []
            for j, nf in enumerate(chain.nfs):
                si = SI_FIRST - j
                hosts = sorted(h for h, p in plans.items()
                               for hop in p["hops"]
                               if hop["spi"] == chain.spi and hop["si"] == si and "local" in hop)
                hops.append((nf, hosts))
            out[chain.name] = hops
        return out

    def status(self):
        """One snapshot, per chain and per host, as plain data.  Counts come
        from the senders and sinks; placement, generations and instances
        from the store, as its StoreWatch last read them: when the store
        does not answer, they are the last ones it gave, and "store" says
        since when it is unreachable."""
        if self.watch is None:
            raise EmulationError("status() of an emulation that has not started")
        now = time.time()
        seen, lost = self.watch.latest()
        plans, stats, alive = seen["plans"], seen["stats"], seen["alive"]
        placement = self.placement(plans)
        chains = {}
        for chain in self.topo.chains:
            s, r = self.sent(chain.name), self.received(chain.name)
            chains[chain.name] = {
                "sent": s.get("sent", 0), "pps_target": s.get("pps"),
                "received": r.get("received", 0), "last": r.get("last"),
                "lost": max(0, s.get("sent", 0) - r.get("received", 0)),
                "latency_ms": r.get("latency_ms"), "gaps": r.get("gaps", []),
                "nfs": placement[chain.name]}
            tcp = self.tcp(chain.name)
            if tcp is not None:
                chains[chain.name]["tcp"] = {
                    k: tcp.get(k, {} if k in ("servers", "seen_as") else 0)
                    for k in ("ok", "failed", "started", "servers", "seen_as")}
                chains[chain.name]["tcp"]["errors"] = tcp.get("errors", [])[-3:]
        hosts = {}
        for name in [h.name for h in self.topo.hosts] + sorted(self.joined):
            st = stats.get(name) or {}
            fresh = bool(st) and now - st.get("time", 0) < self.stats_fresh_s
            insts = st.get("instances", {}) if fresh else {}
            hosts[name] = {
                "alive": name in alive, "killed": name in self.killed,
                "exited": self.agents.get(name) in self.exited,
                "generation": (plans.get(name) or {}).get("generation"),
                "instances": {i: {"nf": v["nf"], "rx": v["rx"], "tx": v.get("tx", 0),
                                  "drops": v["drops"], "pps": 0.0}
                              for i, v in insts.items()},
                "drops": {k: v for k, v in (st.get("drops") or {}).items() if v} if fresh else {}}
        store = {"reachable": True} if lost is None else {"reachable": False, **lost}
        return {"time": now, "chains": chains, "hosts": hosts, "store": store}

    # -- actions -------------------------------------------------------------
    def kill_agent(self, name):
        """Crash a host's agent (SIGKILL): its lease runs out, as a dead host's would."""
        self.killed.add(name)
        procs.kill(self.agents[name])

    def stop_agent(self, name):
        """Stop a host's agent as an operator would (SIGTERM): it revokes
        its lease on the way out, so the controller knows at once."""
        self.killed.add(name)
        procs.stop(self.agents[name], f"the agent of {name}", grace=10.0)

    def fail_host(self, name):
        """A host failure, as when a server loses power: its agent dies
        (SIGKILL, no goodbye) and its link goes down, which its switch
        reports at once (OpenFlow port status)."""
        self.failures.append((time.time(), name))
        self.kill_agent(name)
        self._host_link(name, "down")

    def power_on_host(self, name):
        """A failed host back: its link up, its agent started again."""
        self._host_link(name, "up")
        self.start_agent(name)

    def _host_link(self, name, state):
        switch, port = self.joined[name][:2] if name in self.joined else \
            (self.topo.host(name).switch, self.topo.host(name).port)
        self._switch_port(switch, port, state)

    def fabric_link(self, link, state):
        """A link between two switches (a topology Link) "up" or "down":
        one end's interface, whose peer loses its carrier with it."""
        self._switch_port(link.a, link.a_port, state)

    def _switch_port(self, switch, port, state):
        index = [s.name for s in self.topo.switches].index(switch)
        subprocess.run(["ip", "link", "set", f"{self.prefix}s{index}p{port}", state],
                       check=True)

    def node_cmd(self, name, cmd):
        """Run a shell command in the namespace of host, edge or server
        `name`; EmulationError if it fails."""
        self._node_cmds(name, [cmd])

    def restart_controller(self, i=0):
        """Stop controller i and start a new one on the same ports."""
        self.stop_controller(i)
        self.start_controller(i)

    def kill_controller(self, i):
        """Crash controller i (SIGKILL): its leadership ends with its lease."""
        self.exited.add(self.controllers[i])        # on purpose: not an event
        procs.kill(self.controllers[i])

    def stop_controller(self, i):
        """Stop controller i as an operator would (SIGTERM)."""
        self.exited.add(self.controllers[i])
        procs.stop(self.controllers[i], f"the controller {self.controller_name(i)}",
                   grace=5.0)

    def start_controller(self, i):
        """Start controller i again on its ports; returns once it answers
        REST and some controller leads."""
        self._spawn_controller(i)
        self._wait_controller(i)

    def leader(self):
        """The index of the controller whose name the store's leader key
        holds, or None (no leader, or one of another run)."""
        name = (self.store.get(LEADER) or {}).get("name")
        names = [self.controller_name(i) for i in range(self.n_controllers)]
        return names.index(name) if name in names else None

    def drain_host(self, name, drain=True):
        """POST the host's drain (or undrain) to the REST API."""
        return self.rest("POST", f"/hosts/{name}/{'drain' if drain else 'undrain'}")

    def raise_rate(self, chain, mpps):
        """PUT the chain with a new rate to the REST API; the senders follow."""
        body = dict(self.rest("GET", f"/chains/{chain}"), mpps=float(mpps))
        result = self.rest("PUT", f"/chains/{chain}", body)
        self.set_rate(chain, mpps)
        return result

    def rest(self, method, path, body=None, controller=None):
        """A REST call to `controller` (an index), by default the leading
        one (the first while none leads)."""
        if controller is None:
            try:
                controller = self.leader() or 0
            except StoreError:
                controller = 0
        req = self.credentials.rest_request(self.ctl_ports[controller][1], method, path, body)
        try:
            with urllib.request.urlopen(req, timeout=10,
                                        context=self.credentials.client_context()) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as err:
            raise EmulationError(f"{method} {path}: HTTP {err.code}: "
                                 f"{err.read().decode(errors='replace')}") from None

    # -- stop ----------------------------------------------------------------
    def stop(self):
        """Stop everything this run started; safe to call twice or after a
        partial start."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        for kind, children, sig in (
                ("TCP client", self.clients, signal.SIGTERM),
                ("HTTP server", self.web_servers, signal.SIGTERM),
                ("sender", self.senders, signal.SIGTERM), ("sink", self.sinks, signal.SIGTERM),
                # every agent stops at once and none hands over: nobody is
                # left to take its traffic (SIGUSR1, host_agent.agent)
                ("agent", self.agents, signal.SIGUSR1)):
            procs.stop_all({f"the {kind} of {name}": proc for name, proc in children.items()},
                           grace=5.0, sig=sig)
        if self.net is not None:
            try:
                self.net.stop()
            except Exception as err:         # go on: the rest must still go
                print(f"onvm emulate: Mininet stop failed: {err}", file=sys.stderr)
        for i, proc in enumerate(self.controllers):
            procs.stop(proc, f"the controller {self.controller_name(i)}")
        if self.watch is not None:
            self.watch.stop()
        for forwarder in self.forwarders:
            forwarder.stop()
        if self.store is not None:
            self.store.close()
        if self.ovs is not None:
            self.ovs.stop()
        if self.etcd is not None:
            self.etcd.stop()
        for name in [h.name for h in self.topo.hosts] + list(self.joined):
            shutil.rmtree(f"/var/run/dpdk/{self.prefix}_{name}", ignore_errors=True)

    def remove_files(self):
        shutil.rmtree(self.dir, ignore_errors=True)


