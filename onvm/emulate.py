"""`onvm emulate`: a whole data center on one machine, and `onvm bench
failover` on top of it.

One run starts, in a private network namespace of its own: a local etcd, a
private Open vSwitch (userspace datapath), Mininet built from the topology
file (switches with the file's dpids and port numbers, one Mininet host per
DPDK host with the file's MAC and IP, one Mininet host per edge as the
outside world), the controller (`onvm controller` on free ports), one agent
inside each host's namespace (DPDK `net_af_packet` on the host's
interface; it sleeps `--idle-us` when no packet comes, since the hosts
share the machine's cores), and a paced sender at each chain's ingress edge
with a counting sink at each egress (`onvm.traffic`).  Tests change what a
sender sends while it runs: `set_flows` (which flows, with what payload)
and `set_pps` / `raise_rate` (how fast).  It shows, every second, per chain
its rates, losses and where its NFs run, per host its instances and load,
and a summary at the end.

Every name it makes starts with a per-run prefix; teardown (on return,
error, Ctrl-C, SIGTERM or at exit) stops what it started, by pid, and
removes only what carries the prefix.  It never runs `mn -c`.

It decides nothing about placement or forwarding: it only starts the parts
and watches what they publish in the store.
"""
from __future__ import annotations

import atexit
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from controller.plans import edge_mac
from contracts.store import LEADER, open_store
from contracts.wire import SI_FIRST
from controller.topology import load_topology
from onvm import services
from onvm.services import free_port, wait_for
from onvm.traffic import MAGIC, MARK, read_status

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PPS_PER_MPPS = 100          # emulated packets a second per Mpps a chain asks for
IDLE_US = 200               # agents sleep this long when idle: hosts share two cores
PR_SET_PDEATHSIG = 1


def run_prefix():
    """Short, per run: it starts interface names (15 characters at most)."""
    return "o%03x" % (os.getpid() & 0xfff)


def _die_with_parent():
    """preexec_fn: a child gets SIGKILL if the emulator dies without tearing down."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ------------------------------------------------- the store inside host namespaces

CLONE_NEWNET = 0x40000000


def listen_in_netns(pid, port):
    """A listening TCP socket on 127.0.0.1:`port` inside the network namespace
    of process `pid`.  setns changes only the calling thread's namespace, so
    a short-lived thread enters, binds and leaves; the socket stays there."""
    result = {}

    def enter_and_bind():
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into netns of pid {pid}")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(64)
            result["sock"] = sock
        except OSError as err:
            result["error"] = err
        finally:
            libc.setns(own, CLONE_NEWNET)
            os.close(own)
            os.close(target)
    t = threading.Thread(target=enter_and_bind)
    t.start()
    t.join()
    if "error" in result:
        raise EmulationError(f"no store forwarder in the namespace of pid {pid}: "
                             f"{result['error']}")
    return result["sock"]


class StoreForwarder:
    """Makes 127.0.0.1:`port` inside each host's namespace reach the local
    etcd at 127.0.0.1:`port` of ours, so agents there use the same store URL.
    (A real data center has a management network; this is ours.)"""

    def __init__(self, port):
        self.port = port
        self.listeners = []
        self.conns = []

    def add(self, pid):
        sock = listen_in_netns(pid, self.port)
        self.listeners.append(sock)
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return              # closed by stop()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        for s in self.listeners + self.conns:
            try:
                s.close()
            except OSError:
                pass
        self.listeners, self.conns = [], []


# ------------------------------------------------------------ the controller

def controller_main():
    """ryu-manager's main, as `onvm controller` execs it (in-process here so
    the child dies with us; see _die_with_parent)."""
    from ryu.cmd.manager import main
    sys.argv[0] = "ryu-manager"
    sys.exit(main())


# ------------------------------------------------------------ traffic frames

def _address(net, i, default):
    """An address inside the classifier's network (the i-th host of it)."""
    if net is None:
        return str(ipaddress.IPv4Address(default) + i)
    net = ipaddress.IPv4Network(net, strict=False)
    if net.num_addresses <= 2:
        return str(net.network_address)
    return str(net.network_address + 1 + i % (net.num_addresses - 2))


def default_flows(chain, flows=8):
    """Flow specs of `flows` flows inside `chain`'s classifier: one source
    address and source port each."""
    m = dict(chain.match)
    return [{"src": _address(m.get("ipv4_src"), i, "192.0.2.1"), "sport": 20000 + i}
            for i in range(flows)]


def chain_frames(chain, src_mac, dst_mac, flows):
    """Frames (bytes) that match `chain`'s classifier, one per flow spec
    {"src": IPv4, "sport": port, "payload": bytes (optional, after the
    marker)}, each with a marker field for the sender to fill.  A
    classifier's port fields win over a spec's; its source network is the
    caller's to respect (default_flows does)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    m = dict(chain.match)
    udp = any(k.startswith("udp_") for k in m)
    proto = m.get("ip_proto", 17 if udp else 6)
    dst = _address(m.get("ipv4_dst"), 0, "198.51.100.1")
    frames = []
    for spec in flows:
        ip = IP(src=spec["src"], dst=dst, proto=proto, ttl=64)
        if proto == 6:
            l4 = TCP(sport=m.get("tcp_src", spec["sport"]), dport=m.get("tcp_dst", 80),
                     flags="A")
        elif proto == 17:
            l4 = UDP(sport=m.get("udp_src", spec["sport"]), dport=m.get("udp_dst", 53))
        else:
            l4 = None
        payload = MAGIC + bytes(MARK.size - len(MAGIC)) + bytes(8) + spec.get("payload", b"")
        pkt = Ether(src=src_mac, dst=dst_mac) / ip
        pkt = pkt / l4 / payload if l4 is not None else pkt / payload
        frames.append(bytes(pkt))
    return frames


# -------------------------------------------------------------- the emulation

class EmulationError(RuntimeError):
    """A part failed to start or died; the message says which and why."""


class Emulation:
    """One emulated data center.  `start()`, then `status()` as often as
    wanted, then `stop()` (always: it is safe after a partial start)."""

    def __init__(self, topo_path, prefix=None, workdir=None, pps_per_mpps=PPS_PER_MPPS,
                 say=None, agent_nice=10, idle_us=IDLE_US):
        self.topo_path = os.path.abspath(topo_path)
        self.topo = load_topology(self.topo_path)
        self.prefix = prefix or run_prefix()
        self.dir = tempfile.mkdtemp(prefix=f"onvm-emu-{self.prefix}-", dir=workdir)
        self.pps_per_mpps = pps_per_mpps
        self.say = say or (lambda *a, **k: None)
        self.agent_nice = agent_nice
        self.idle_us = idle_us
        self.etcd = self.ovs = self.net = self.store = self.forwarder = None
        self.controller = None
        self.of_port = self.ws_port = None
        self.agents = {}            # host name -> Popen
        self.senders = {}           # chain name -> Popen
        self.sinks = {}             # place name -> Popen
        self.nodes = {}             # topology name -> Mininet node
        self.intf = {}              # topology name -> interface name in its node
        self.killed = set()
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
        self.of_port, self.ws_port = free_port(), free_port()
        self._step("building Mininet", self._start_mininet)
        self._step("starting agents", self._start_agents)
        self._wait_hosts()
        self._step("starting the controller", self._start_controller)
        self._wait_switches()
        self._wait_plans()
        self._step("starting traffic", self._start_traffic)
        self.started = time.time()

    def _step(self, what, func):
        self.say(f"{what}... ", end="")
        t0 = time.monotonic()
        detail = func()
        self.say(f"ok ({detail + ', ' if detail else ''}{time.monotonic() - t0:.1f} s)")

    def _start_etcd(self):
        self.etcd = services.EtcdServer(workdir=self.dir)
        self.store = open_store(self.etcd.url)
        return self.etcd.url

    def _start_ovs(self):
        self.ovs = services.OvsServer(self.prefix, workdir="/tmp")
        self.ovs.activate()          # Mininet's OVSSwitch shells out to ovs-vsctl
        return self.ovs.dir

    def _start_controller(self):
        self._spawn_controller()
        self._wait_controller()
        return f"OpenFlow :{self.of_port}, REST :{self.ws_port}"

    def _spawn_controller(self):
        """ryu-manager with the onvm apps, as `onvm controller` runs it, with
        its config in our run directory, under `controller_main`."""
        from controller.run import APPS, config_text
        conf = self.file("controller.conf")
        with open(conf, "w") as f:
            f.write(config_text(self.topo_path, self.etcd.url, self.of_port, self.ws_port))
        log = open(self.file("controller.log"), "ab")
        cmd = [sys.executable, "-c", "import onvm.emulate as e; e.controller_main()",
               "--config-file", conf, *APPS]
        self.controller = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, cwd=REPO, env=_env(),
                                           preexec_fn=_die_with_parent)
        log.close()

    def _wait_controller(self, timeout=30):
        def ready():
            if self.controller.poll() is not None:
                raise services.GaveUp(f"controller exited with {self.controller.returncode}")
            self.rest("GET", "/topology")
            return self.store.get(LEADER) is not None
        try:
            wait_for(ready, timeout, "the controller's REST API and leadership")
        except (TimeoutError, services.GaveUp) as err:
            raise EmulationError(f"{err}; tail of {self.file('controller.log')}:\n"
                                 f"{services._tail(self.file('controller.log'))}") from None

    def _start_mininet(self):
        from mininet.link import Link
        from mininet.net import Mininet
        from mininet.node import Host, OVSSwitch, RemoteController
        net = Mininet(build=False, autoSetMacs=False, autoStaticArp=False,
                      controller=None, switch=OVSSwitch, host=Host, link=Link,
                      waitConnected=False)
        self.net = net
        net.addController(f"{self.prefix}c0", controller=RemoteController,
                          ip="127.0.0.1", port=self.of_port)
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
        return (f"{len(self.topo.switches)} switches, {len(self.topo.hosts)} hosts, "
                f"{len(self.topo.edges)} edges, {len(self.topo.links)} links")

    def _attach(self, node, name, switch, port):
        sw, index = switch
        self.nodes[name] = node
        self.intf[name] = node.name
        self.net.addLink(node, sw, port1=0, port2=port, intfName1=node.name,
                         intfName2=f"{self.prefix}s{index}p{port}")

    def _wait_switches(self, timeout=30):
        total = len(self.topo.switches)
        seen = [-1]

        def connected():
            out = self.ovs.vsctl("--columns=is_connected", "list", "Controller", check=False)
            n = out.count("true")
            if n != seen[0]:
                self.say(f"switches {n}/{total} connected")
                seen[0] = n
            self._check_alive()
            return n >= total
        wait_for(connected, timeout, f"all {total} switches to connect to the controller",
                 interval=0.2)

    def _start_agents(self):
        self.forwarder = StoreForwarder(self.etcd.client_port)
        for h in self.topo.hosts:
            self.forwarder.add(self.nodes[h.name].pid)
        for name in (h.name for h in self.topo.hosts):
            self.start_agent(name)
        return f"{len(self.agents)} agents"

    def start_agent(self, name):
        node = self.nodes[name]
        log = open(self.file(f"agent-{name}.log"), "ab")
        cmd = ["nice", "-n", str(self.agent_nice), sys.executable, "-m", "onvm.cli",
               "agent", "--host", name, "--store", self.etcd.url, "--metrics-port", "0",
               "--idle-us", str(self.idle_us),
               "--", "--vdev", f"net_af_packet0,iface={self.intf[name]}", "--no-huge", "-m", "256", "--file-prefix", f"{self.prefix}_{name}",
               "-l", "0"]
        self.agents[name] = node.popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=REPO, env=_env())
        log.close()
        self.killed.discard(name)

    def _wait_hosts(self, timeout=60):
        names = {h.name for h in self.topo.hosts}
        seen = [-1]

        def registered():
            self._check_alive()
            n = len(names & set(self.store.hosts()))
            if n != seen[0]:
                self.say(f"agents {n}/{len(names)} registered")
                seen[0] = n
            return n == len(names)
        wait_for(registered, timeout, "every agent to register in the store", interval=0.2)

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
        for chain in self.topo.chains:
            self._start_sink(chain.egress)
            self._start_sender(chain)
        return f"{len(self.senders)} senders, {len(self.sinks)} sinks"

    def _start_sink(self, place):
        if place in self.sinks:
            return
        node = self.nodes[place]
        log = open(self.file(f"sink-{place}.log"), "ab")
        cmd = [sys.executable, "-m", "onvm.traffic", "sink", "--iface", self.intf[place],
               "--status", self.file(f"sink-{place}.json")]
        self.sinks[place] = node.popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=REPO, env=_env())
        log.close()

    def _start_sender(self, chain):
        ingress = self.topo.edge(chain.ingress)
        self.set_flows(chain.name, default_flows(chain))
        self.set_rate(chain.name, chain.mpps)
        node = self.nodes[ingress.name]
        log = open(self.file(f"send-{chain.name}.log"), "ab")
        cmd = [sys.executable, "-m", "onvm.traffic", "send", "--iface", self.intf[ingress.name],
               "--frames", self.file(f"frames-{chain.name}.json"),
               "--status", self.file(f"send-{chain.name}.json"),
               "--rate-file", self.file(f"rate-{chain.name}"),
               "--spi", str(chain.spi), "--pps", str(self.pps(chain.mpps))]
        self.senders[chain.name] = node.popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, cwd=REPO, env=_env())
        log.close()

    def set_flows(self, name, flows):
        """Make chain `name`'s sender send these flow specs (see
        chain_frames) from now on; it picks them up within half a second and
        counts per flow afresh (`sent(name)["per_frame"]`, in this order)."""
        chain = self.topo_chain(name)
        try:
            dst_mac = self.topo.host(chain.egress).mac
        except KeyError:
            dst_mac = edge_mac(chain.egress)
        frames = chain_frames(chain, edge_mac(chain.ingress), dst_mac, flows)
        path = self.file(f"frames-{name}.json")
        with open(path + ".tmp", "w") as f:
            json.dump([fr.hex() for fr in frames], f)
        os.replace(path + ".tmp", path)

    def pps(self, mpps):
        return max(10.0, round(mpps * self.pps_per_mpps, 1))

    def set_rate(self, chain, mpps):
        self.set_pps(chain, self.pps(mpps))

    def set_pps(self, chain, pps):
        """The sender's rate in packets a second (0 pauses it), read within
        half a second."""
        path = self.file(f"rate-{chain}")
        with open(path + ".tmp", "w") as f:
            f.write(str(pps))
        os.replace(path + ".tmp", path)

    # -- watching ----------------------------------------------------------
    def _check_alive(self):
        """Raise EmulationError when a part we did not stop has died."""
        if self.controller is not None and self.controller.poll() is not None:
            raise services.GaveUp(f"the controller exited with {self.controller.returncode}; "
                                  f"tail of its log:\n{services._tail(self.file('controller.log'))}")
        for name, proc in self.agents.items():
            if name not in self.killed and proc.poll() is not None:
                log = self.file(f"agent-{name}.log")
                raise services.GaveUp(f"the agent of {name} exited with {proc.returncode}; "
                                      f"tail of {log}:\n{services._tail(log)}")
        for what, procs in (("sender", self.senders), ("sink", self.sinks)):
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise services.GaveUp(f"the traffic {what} for {name} exited with "
                                          f"{proc.returncode}")

    def check(self):
        try:
            self._check_alive()
        except services.GaveUp as err:
            raise EmulationError(str(err)) from None

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
        """One snapshot: per chain and per host, as plain data."""
        plans, stats, alive = self.store.plans(), self.store.stats(), set(self.store.hosts())
        now = time.time()
        chains = {}
        for chain in self.topo.chains:
            s, r = self.sent(chain.name), self.received(chain.name)
            chains[chain.name] = {
                "sent": s.get("sent", 0), "pps_target": s.get("pps"),
                "received": r.get("received", 0), "last": r.get("last"),
                "lost": max(0, s.get("sent", 0) - r.get("received", 0)),
                "latency_ms": r.get("latency_ms"), "gaps": r.get("gaps", []),
                "nfs": self.placement(plans)[chain.name]}
        hosts = {}
        for h in self.topo.hosts:
            st = stats.get(h.name) or {}
            fresh = bool(st) and now - st.get("time", 0) < 3
            insts = st.get("instances", {}) if fresh else {}
            hosts[h.name] = {
                "alive": h.name in alive, "killed": h.name in self.killed,
                "generation": (plans.get(h.name) or {}).get("generation"),
                "instances": {i: {"nf": v["nf"], "rx": v["rx"], "tx": v.get("tx", 0),
                                  "drops": v["drops"], "pps": 0.0}
                              for i, v in insts.items()},
                "drops": {k: v for k, v in (st.get("drops") or {}).items() if v} if fresh else {}}
        return {"time": now, "chains": chains, "hosts": hosts}

    # -- actions -------------------------------------------------------------
    def kill_agent(self, name):
        """Crash a host's agent (SIGKILL): its lease runs out, as a dead host's would."""
        proc = self.agents[name]
        self.killed.add(name)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def stop_agent(self, name):
        """Stop a host's agent as an operator would (SIGTERM): it revokes
        its lease on the way out, so the controller knows at once."""
        proc = self.agents[name]
        self.killed.add(name)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def fail_host(self, name):
        """A host failure, as when a server loses power: its agent dies
        (SIGKILL, no goodbye) and its link goes down, which its switch
        reports at once (OpenFlow port status)."""
        self.kill_agent(name)
        host = self.topo.host(name)
        index = [s.name for s in self.topo.switches].index(host.switch)
        subprocess.run(["ip", "link", "set", f"{self.prefix}s{index}p{host.port}", "down"],
                       check=True)

    def restart_controller(self):
        """Kill the controller and start a new one on the same ports."""
        if self.controller.poll() is None:
            self.controller.terminate()
            try:
                self.controller.wait(5)
            except subprocess.TimeoutExpired:
                self.controller.kill()
                self.controller.wait(5)
        self._spawn_controller()
        self._wait_controller()

    def raise_rate(self, chain, mpps):
        """PUT the chain with a new rate to the REST API; the senders follow."""
        body = dict(self.rest("GET", f"/chains/{chain}"), mpps=float(mpps))
        result = self.rest("PUT", f"/chains/{chain}", body)
        self.set_rate(chain, mpps)
        return result

    def rest(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.ws_port}/onvm/v1{path}",
                                     data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
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
        for procs in (self.senders, self.sinks, self.agents):
            for proc in procs.values():
                _terminate(proc)
        if self.net is not None:
            try:
                self.net.stop()
            except Exception as err:         # go on: the rest must still go
                print(f"onvm emulate: Mininet stop failed: {err}", file=sys.stderr)
        if self.controller is not None:
            _terminate(self.controller)
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.store is not None:
            self.store.close()
        if self.ovs is not None:
            self.ovs.stop()
        if self.etcd is not None:
            self.etcd.stop()
        for h in self.topo.hosts:
            shutil.rmtree(f"/var/run/dpdk/{self.prefix}_{h.name}", ignore_errors=True)

    def remove_files(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def _terminate(proc, grace=3.0):
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


# ---------------------------------------------------------------- display

def render(status, since):
    """The live view: text lines."""
    t = status["time"] - since
    lines = [f"--- t={t:5.1f} s " + "-" * 50,
             f"{'chain':<10} {'in pps':>8} {'out pps':>8} {'sent':>8} {'recv':>8} "
             f"{'lost':>6}  NFs (host)"]
    for name, c in status["chains"].items():
        nfs = " -> ".join(f"{nf}@{','.join(hosts) or '?'}" for nf, hosts in c["nfs"])
        lines.append(f"{name:<10} {c.get('in_pps', 0):>8.0f} {c.get('out_pps', 0):>8.0f} "
                     f"{c['sent']:>8} {c['received']:>8} {c['lost']:>6}  {nfs}")
    lines.append(f"{'host':<6} {'state':<8} {'gen':>4}  instances (pps)")
    for name, h in status["hosts"].items():
        state = "killed" if h["killed"] else ("up" if h["alive"] else "down")
        insts = ", ".join(f"{v['nf']}#{i} {v['pps']:.0f}" for i, v in h["instances"].items())
        drops = " drops " + json.dumps(h["drops"]) if h["drops"] else ""
        lines.append(f"{name:<6} {state:<8} {h['generation'] or '-':>4}  {insts or '-'}{drops}")
    return "\n".join(lines)


def add_rates(status, previous):
    """Per-chain in/out pps and per-instance pps since the previous snapshot.
    (Instance rates are taken from counters here: the agent's own "mpps"
    per instance is not a rate, see the report of this module's author.)"""
    if previous is None:
        return status
    dt = max(1e-3, status["time"] - previous["time"])
    for name, h in status["hosts"].items():
        old = previous["hosts"][name]["instances"]
        for iid, inst in h["instances"].items():
            if iid in old:
                inst["pps"] = max(0.0, (inst["rx"] - old[iid]["rx"]) / dt)
    for name, c in status["chains"].items():
        old = previous["chains"][name]
        c["in_pps"] = (c["sent"] - old["sent"]) / dt
        c["out_pps"] = (c["received"] - old["received"]) / dt
    return status


def summary(emu, status, events):
    lines = ["=== summary " + "=" * 56]
    egress = {c.name: c.egress for c in emu.topo.chains}
    for name, c in status["chains"].items():
        lost_pct = 100.0 * c["lost"] / c["sent"] if c["sent"] else 0.0
        where = " -> ".join(f"{nf}@{','.join(h) or '?'}" for nf, h in c["nfs"])
        why = (f" (its egress {egress[name]} failed: nothing receives its traffic)"
               if egress.get(name) in emu.killed else "")
        lines.append(f"chain {name}: sent {c['sent']}, received {c['received']}, "
                     f"lost {c['lost']} ({lost_pct:.1f} %){why}, latency "
                     f"{c['latency_ms'] if c['latency_ms'] is not None else '-'} ms; {where}")
    for text in events:
        lines.append(f"event: {text}")
    lines.append(f"logs in {emu.dir}")
    return "\n".join(lines)


# ------------------------------------------------------------------ the command

def _parse_at(text, what):
    """'X@S' -> (X, seconds)."""
    if "@" not in text:
        raise SystemExit(f"onvm emulate: {what} {text!r}: expected VALUE@SECONDS")
    value, at = text.rsplit("@", 1)
    try:
        return value, float(at)
    except ValueError:
        raise SystemExit(f"onvm emulate: {what} {text!r}: {at!r} is not a number "
                         "of seconds") from None


def schedule(args, topo):
    """[(seconds, description, action name, argument)] from the options."""
    events = []
    for text in args.kill_host:
        host, at = _parse_at(text, "--kill-host")
        if host not in {h.name for h in topo.hosts}:
            _no(host, "host", topo)
        events.append((at, f"fail {host} (its agent killed, its link down)", "kill", host))
    if args.restart_controller is not None:
        events.append((float(args.restart_controller), "restart the controller",
                       "restart", None))
    for text in args.raise_rate:
        spec, at = _parse_at(text, "--raise-rate")
        if "=" not in spec:
            raise SystemExit(f"onvm emulate: --raise-rate {text!r}: expected CHAIN=MPPS@SECONDS")
        chain, mpps = spec.split("=", 1)
        if chain not in {c.name for c in topo.chains}:
            _no(chain, "chain", topo)
        events.append((at, f"raise {chain} to {float(mpps)} Mpps", "rate", (chain, float(mpps))))
    return sorted(events, key=lambda e: e[0])


def _no(name, kind, topo):
    known = [h.name for h in topo.hosts] if kind == "host" else [c.name for c in topo.chains]
    raise SystemExit(f"onvm emulate: no {kind} {name!r} in {topo.source}; "
                     f"known: {', '.join(known)}")


def _act(emu, action, arg):
    if action == "kill":
        emu.fail_host(arg)
    elif action == "restart":
        emu.restart_controller()
    elif action == "rate":
        emu.raise_rate(*arg)


class _Teardown:
    """Signals and exit run the emulation's stop() once."""

    def __init__(self, emu):
        self.emu = emu
        atexit.register(emu.stop)
        # SIGINT too: a shell may start us with it ignored (background jobs)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")


def _say(*parts, end="\n"):
    print(*parts, end=end, flush=True)


def isolate():
    """Run in a private network namespace (see services.enter_private_netns):
    the userspace datapath needs one per run, and every interface this run
    makes is gone with it."""
    if os.geteuid() != 0:
        raise SystemExit("onvm emulate: needs root (network namespaces, OVS, Mininet)")
    services.enter_private_netns()


def run(topo_path, seconds, events, out=_say, pps_per_mpps=PPS_PER_MPPS, on_start=None):
    """Start, watch until `seconds` (None: until Ctrl-C), act on events, stop.
    `on_start(emu)` may return more events, chosen once all runs.
    Returns (final status, event log lines, the emulation)."""
    emu = Emulation(topo_path, say=out, pps_per_mpps=pps_per_mpps)
    _Teardown(emu)
    done, last, final = [], None, None
    try:
        emu.start()
        t0 = emu.started
        pending = sorted(list(events) + (on_start(emu) if on_start else []),
                         key=lambda e: e[0])
        while seconds is None or time.time() - t0 < seconds:
            time.sleep(max(0.0, 1.0 - (time.time() - t0) % 1.0))
            while pending and time.time() - t0 >= pending[0][0]:
                at, text, action, arg = pending.pop(0)
                out(f">>> t={time.time() - t0:.1f} s: {text}")
                _act(emu, action, arg)
                done.append(f"t={at:g} s: {text}")
            emu.check()
            last = add_rates(emu.status(), last)
            out(render(last, t0))
        final = _quiet_status(emu, out)
    except KeyboardInterrupt:
        out("\ninterrupted; tearing down")
        final = _safe_status(emu)
    finally:
        emu.stop()
    return final, done, emu


def _quiet_status(emu, out, timeout=5.0):
    """The final counts, exact: pause every sender, then wait until what is
    in flight has arrived and the counts stop moving."""
    out("pausing traffic for the final counts...")
    chains = list(emu.status()["chains"])
    for name in chains:
        emu.set_pps(name, 0)

    def counts(status):
        return {n: (c["sent"], c["received"]) for n, c in status["chains"].items()}
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        time.sleep(0.7)
        status = emu.status()
        if last is not None and counts(status) == counts(last):
            return status
        last = status
    return last


def _safe_status(emu):
    try:
        return emu.status() if emu.started else None
    except Exception:
        return None


def cli_emulate(args):
    topo = load_topology(args.file)
    events = schedule(args, topo)
    isolate()
    try:
        final, done, emu = run(args.file, args.seconds, events)
    except (EmulationError, TimeoutError, services.GaveUp) as err:
        print(f"onvm emulate: {err}", file=sys.stderr)
        return 1
    if final is not None:
        print(summary(emu, final, done))
    return 0


# ------------------------------------------------------------ bench failover

def failover_victim(emu):
    """A host that runs an NF of a chain with traffic, and those chains; the
    host whose loss moves the most chains, ties broken by name."""
    # A chain whose egress is the failed host loses its sink with it: only
    # chains that can carry traffic again are counted and measured.
    egress = {c.name: c.egress for c in emu.topo.chains}
    counts = {}
    for name, hops in emu.placement().items():
        for _, hosts in hops:
            for h in hosts:
                if (h != egress.get(name) and h not in emu.killed
                        and egress.get(name) not in emu.killed):
                    counts.setdefault(h, set()).add(name)
    if not counts:
        raise EmulationError("no NF runs away from its chain's egress: "
                             "no failover to measure")
    # Prefer a host that is no chain's egress: failing it breaks no sink.
    egresses = set(egress.values())
    host = sorted(counts, key=lambda h: (h in egresses, -len(counts[h]), h))[0]
    return host, sorted(counts[host])


FAILURES = {
    "host": ("fail_host", "the host fails: agent killed, link down"),
    "crash": ("kill_agent", "the agent crashes: SIGKILL, link up, its lease runs out"),
    "stop": ("stop_agent", "the agent is stopped: SIGTERM, it revokes its lease"),
}


def measure_failover(emu, settle=3.0, timeout=15.0, how="host"):
    """Fail one NF host (`how`: a key of FAILURES) and measure, for the
    chains it served: detection (failure -> a new plan generation in the
    store for a surviving host), recovery (failure -> first packet at the
    egress after the outage) and packets lost."""
    time.sleep(settle)
    host, chains = failover_victim(emu)
    before_gen = {h: p["generation"] for h, p in emu.store.plans().items()}
    before = {c: (emu.sent(c).get("sent", 0), emu.received(c).get("received", 0))
              for c in chains}
    t_kill = time.time()
    getattr(emu, FAILURES[how][0])(host)

    def replanned():
        plans = emu.store.plans()
        return host not in plans and any(
            p["generation"] != before_gen.get(h) for h, p in plans.items())
    wait_for(replanned, timeout, f"a new plan after {host}'s agent was killed", 0.01)
    detect = time.time() - t_kill

    def recovered(chain):
        """Seconds from the kill to the first packet after the outage, once
        traffic flows again; None while it does not."""
        r = emu.received(chain)
        gaps = [g for g in r.get("gaps", []) if g[1] > t_kill]
        if gaps:
            return gaps[0][1] - t_kill
        quiet_since = time.time() - (r.get("last") or 0)
        if time.time() - t_kill > detect + 1.0 and quiet_since < 0.05:
            return 0.0          # no outage at all: the chain never stopped
        return None
    recover = {}
    for chain in chains:
        recover[chain] = wait_for(lambda: _some(recovered(chain)), timeout,
                                  f"traffic of {chain} again after {host} failed", 0.02)[0]
    time.sleep(2.0)                 # let the sink count what is in flight
    lost = {}
    for c in chains:
        s0, r0 = before[c]
        s1, r1 = emu.sent(c).get("sent", 0), emu.received(c).get("received", 0)
        lost[c] = max(0, (s1 - s0) - (r1 - r0))
    return {"how": how, "host": host, "chains": chains, "detect_s": round(detect, 3),
            "recover_s": round(max(recover.values()), 3),
            "recover_per_chain_s": {c: round(v, 3) for c, v in recover.items()},
            "lost_packets": sum(lost.values()), "lost_per_chain": lost,
            "pps_per_chain": {c: emu.sent(c).get("pps") for c in chains}}


def _some(value):
    """wait_for stops on true values: wrap a value that may be 0.0."""
    return None if value is None else (value,)


def cli_bench_failover(args):
    from onvm.demo import runnable_topology
    load_topology(args.topology)
    isolate()
    topo_path = runnable_topology(args.topology, lambda text: print(text, file=sys.stderr))
    atexit.register(os.unlink, topo_path)
    quiet = (lambda *a, **k: print(*a, **k, file=sys.stderr, flush=True))
    emu = Emulation(topo_path, say=quiet)
    _Teardown(emu)
    try:
        emu.start()
        # Three failures in turn, each of the then busiest NF host.
        result = {"topology": emu.topo.name}
        for how in ("host", "stop", "crash"):
            quiet(f"failover: {FAILURES[how][1]}")
            result[how] = measure_failover(emu, how=how)
    except (EmulationError, TimeoutError, services.GaveUp) as err:
        print(f"onvm bench failover: {err}", file=sys.stderr)
        return 1
    finally:
        emu.stop()
    if args.json:
        print(json.dumps(result))
    else:
        for how in ("host", "stop", "crash"):
            r = result[how]
            print(f"{FAILURES[how][1]}: {r['host']} on {result['topology']}: detected in "
                  f"{r['detect_s']} s, traffic again after {r['recover_s']} s, "
                  f"{r['lost_packets']} packets lost")
    return 0
