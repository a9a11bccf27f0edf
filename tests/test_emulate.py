"""The emulated data center end to end: etcd, Mininet with userspace OVS,
the controller, one DPDK agent in each host's namespace, and traffic from
an edge, all real and all started by `onvm.emulate.Emulation`.

Two emulations, one after the other (never both at once: two cores):

* `nf_emu` (class TestNFsAndScaleOut, first): three hosts of two cores and
  three chains, `guard` (firewall, ids), `spread` (lb) and `bulk`
  (monitor, whose catalog capacity is tiny so a raised rate needs a second
  instance): issue 5's tests 2 and 6.
* `emu`: one small leaf-spine (1 spine, 2 leaves, 2 hosts a leaf, one core
  a host) with one chain of three one-core NFs, so the three NFs land on
  three different hosts and one host stays spare for failover: tests 1, 3,
  5 and 4, the destructive ones (controller restart, host failure) last.

Each emulation takes ~15 s to start and is shared by its tests, which run
in file order.  Everything is torn down even when a test fails.
"""
import contextlib
import os
import signal
import subprocess
import time

import pytest

from contracts.model import NFType
from controller.plans import _config
from controller.topology import load_topology
from onvm.emulate import Emulation, default_flows, measure_failover
from onvm.services import wait_for
from onvm.traffic import MARK, MAGIC

pytestmark = [pytest.mark.ovs, pytest.mark.etcd, pytest.mark.netns,
              pytest.mark.timeout(240)]

TOPOLOGY = """\
name: emulate-test
switches:
  - {name: spine1, dpid: 0x101}
  - {name: leaf1, dpid: 0x201}
  - {name: leaf2, dpid: 0x202}
hosts:
  - {name: h1, switch: leaf1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.1.1/16, cores: 1}
  - {name: h2, switch: leaf1, port: 2, mac: "02:00:00:00:00:02", ip: 10.0.1.2/16, cores: 1}
  - {name: h3, switch: leaf2, port: 1, mac: "02:00:00:00:00:03", ip: 10.0.2.1/16, cores: 1}
  - {name: h4, switch: leaf2, port: 2, mac: "02:00:00:00:00:04", ip: 10.0.2.2/16, cores: 1}
links:
  - {a: leaf1, a_port: 3, b: spine1, b_port: 1}
  - {a: leaf2, a_port: 3, b: spine1, b_port: 2}
edges:
  - {name: internet, switch: spine1, port: 3}
  - {name: wan, switch: spine1, port: 4}
nfs:
  monitor: {cores: 1, mpps: 14}
  forward: {cores: 1, mpps: 20}
  monitor-py: {cores: 1, mpps: 1}
chains:
  - name: web
    ingress: internet
    egress: wan
    match: {ipv4_dst: 10.9.0.0/16, ip_proto: 6, tcp_dst: 80}
    nfs: [monitor, forward, monitor-py]
    mpps: 1.0
"""
CHAIN = "web"
PPS = 200                       # emulated packets a second for the chain


def _need_root_and_tools():
    if os.geteuid() != 0:
        pytest.skip("the emulation needs root (namespaces, OVS, Mininet)")
    for tool in ("/usr/bin/etcd", "/usr/sbin/ovs-vswitchd", "/usr/bin/mnexec"):
        if not os.path.exists(tool):
            pytest.skip(f"{tool} is not installed")


@contextlib.contextmanager
def _emulation(topo_path, prefix, pps_per_mpps):
    """A started Emulation; stopped, and checked to leave nothing behind."""
    _need_root_and_tools()
    emulation = Emulation(str(topo_path), prefix=prefix, workdir=str(topo_path.parent),
                          pps_per_mpps=pps_per_mpps)
    try:
        emulation.start()
        yield emulation
    finally:
        emulation.stop()
        emulation.remove_files()
    # nothing of this run is left: no bridge, no interface, no agent runtime dir
    leftovers = [n for n in os.listdir("/sys/class/net") if n.startswith(prefix)]
    assert not leftovers, f"interfaces left behind: {leftovers}"
    assert not [d for d in os.listdir("/var/run/dpdk") if d.startswith(prefix)] \
        if os.path.isdir("/var/run/dpdk") else True


@pytest.fixture(scope="module")
def emu(tmp_path_factory, run_prefix):
    workdir = tmp_path_factory.mktemp("emulate")
    topo_path = workdir / "emulate-test.yaml"
    topo_path.write_text(TOPOLOGY)
    with _emulation(topo_path, run_prefix, PPS) as emulation:
        yield emulation


def _plan_hops(emu, chain=CHAIN):
    """{si: [(host, instance id)]} of the chain's local hops, from the plans
    in the store."""
    spi = emu.topo.chain(chain).spi
    out = {}
    for host, plan in emu.store.plans().items():
        for hop in plan["hops"]:
            if hop["spi"] == spi and "local" in hop:
                out.setdefault(hop["si"], []).append((host, hop["local"]))
    return out


def _instance(emu, host, iid):
    """The agent's last published stats of one NF instance ({} if none)."""
    stats = emu.store.get_stats(host) or {}
    return stats.get("instances", {}).get(str(iid)) or {}


def _instance_rx(emu, host, iid):
    return _instance(emu, host, iid).get("rx", 0)


def _flowing(emu, since):
    r = emu.received(CHAIN)
    return r.get("received", 0) > 0 and r.get("last", 0) > since


def _capture(emu, intf, path):
    return subprocess.Popen(["tcpdump", "-i", intf, "-U", "-n", "-w", path, "mpls"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_capture(proc):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _spine_links(emu):
    """Interface names, in our namespace, of the spine's ports to the leaves."""
    spine = [i for i, s in enumerate(emu.topo.switches) if s.name == "spine1"][0]
    return [f"{emu.prefix}s{spine}p{link.b_port}" for link in emu.topo.links]


# ------------------------------------------ NFs at work and scale-out (tests 2, 6)

NF_TOPOLOGY = """\
name: emulate-nfs
switches:
  - {name: spine1, dpid: 0x101}
  - {name: leaf1, dpid: 0x201}
  - {name: leaf2, dpid: 0x202}
hosts:
  - {name: h1, switch: leaf1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.1.1/16, cores: 2}
  - {name: h2, switch: leaf1, port: 2, mac: "02:00:00:00:00:02", ip: 10.0.1.2/16, cores: 2}
  - {name: h3, switch: leaf2, port: 1, mac: "02:00:00:00:00:03", ip: 10.0.2.1/16, cores: 2}
links:
  - {a: leaf1, a_port: 3, b: spine1, b_port: 1}
  - {a: leaf2, a_port: 3, b: spine1, b_port: 2}
edges:
  - {name: internet, switch: spine1, port: 3}
  - {name: wan, switch: spine1, port: 4}
nfs:
  firewall: {cores: 1, mpps: 10, config: fw.rules}
  ids: {cores: 1, mpps: 10, config: ids.rules}
  lb: {cores: 1, mpps: 10%(lb_config)s}
  monitor: {cores: 1, mpps: 0.001}     # one instance serves 50 emulated pps
chains:
  - name: guard
    ingress: internet
    egress: wan
    match: {ipv4_dst: 10.9.0.0/16, ip_proto: 6, tcp_dst: 80}
    nfs: [firewall, ids]
    mpps: 0.003
  - name: spread
    ingress: internet
    egress: wan
    match: {ipv4_dst: 10.7.0.0/16, ip_proto: 6, tcp_dst: 80}
    nfs: [lb]
    mpps: 0.002
  - name: bulk
    ingress: internet
    egress: wan
    match: {ipv4_dst: 10.8.0.0/16, ip_proto: 17, udp_dst: 5000}
    nfs: [monitor]
    mpps: 0.0008
"""
NF_PPS = 50000                  # emulated pps per Mpps: guard 150, spread 100, bulk 40
DENIED_NET = "192.0.2.128/25"
FW_RULES = f"""\
# the sources of {DENIED_NET} are denied; the test chains' traffic is allowed
deny   tcp  {DENIED_NET}  any          any  any
allow  tcp  any             10.9.0.0/16  any  80
allow  tcp  any             10.7.0.0/16  any  80
default deny
"""
SIGNATURE = b"EVIL-SIGNATURE"
IDS_RULES = ('drop tcp any any -> 10.9.0.0/16 80 (msg:"emulation test signature"; '
             f'content:"{SIGNATURE.decode()}"; sid:9001; rev:1;)\n')
BACKENDS = {"b1": "10.7.1.1", "b2": "10.7.1.2", "b3": "10.7.1.3"}
LB_CONFIG = "backends:\n" + "".join(
    f'  - {{name: {n}, ip: {ip}, mac: "02:00:00:00:07:0{i}"}}\n'
    for i, (n, ip) in enumerate(sorted(BACKENDS.items()), 1))


def _lb_config_error(path):
    """Why the lb cannot take its catalog config file through a plan, or None.
    controller/plans.py `_config` turns a catalog config path into
    {"rules": PATH}, a key the lb (an NF configured by keys, nfs/nfconfig.py)
    rejects; it takes {"file": PATH}."""
    from nfs.api import NFConfigError
    from nfs.lb import parse_config
    try:
        parse_config(_config(NFType("lb", 1, 10.0, str(path))))
    except NFConfigError as err:
        return str(err)
    return None


def _lb_refused():
    """_lb_config_error for the test's lb config, checked once at import."""
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(LB_CONFIG)
        f.flush()
        return _lb_config_error(f.name)


LB_REFUSED = _lb_refused()


def _write_nf_topology(workdir):
    (workdir / "fw.rules").write_text(FW_RULES)
    (workdir / "ids.rules").write_text(IDS_RULES)
    (workdir / "lb.yaml").write_text(LB_CONFIG)
    # an lb config the agent refuses would stop every plan of its host, so
    # it is left out while plans cannot carry it (test_lb_* then xfails)
    lb_config = "" if LB_REFUSED else ", config: lb.yaml"
    path = workdir / "emulate-nfs.yaml"
    path.write_text(NF_TOPOLOGY % {"lb_config": lb_config})
    return path


def _counters(emu, chain, si):
    """Sum of the counters of a hop's instances, and their placement."""
    hops = _plan_hops(emu, chain)[si]
    total = {}
    for host, iid in hops:
        for k, v in (_instance(emu, host, iid).get("counters") or {}).items():
            if isinstance(v, int):
                total[k] = total.get(k, 0) + v
    return total, hops


def _flow_key(spec):
    return f"{spec['src']}:{spec['sport']}"


def _send_for(emu, chain, flows, seconds):
    """Send only `flows` for `seconds`, then pause the chain's sender and
    let the sink and the agents' stats catch up.  Returns packets sent per
    flow key."""
    version = emu.sent(chain).get("frames_version")
    emu.set_flows(chain, flows)
    wait_for(lambda: emu.sent(chain).get("frames_version") != version
             and len(emu.sent(chain).get("per_frame", [])) == len(flows), 5,
             f"the sender of {chain} to take the new flows")
    time.sleep(seconds)
    emu.set_pps(chain, 0)
    sent = [-1]

    def settled():
        now = emu.sent(chain)["sent"]
        done, sent[0] = now == sent[0], now
        return done
    wait_for(settled, 5, f"the sender of {chain} to pause", interval=0.6)
    time.sleep(1.5)             # in flight, and the agents' stats a second behind
    per_frame = emu.sent(chain)["per_frame"]
    return {_flow_key(f): n for f, n in zip(flows, per_frame)}


def _resume(emu, chain):
    emu.set_flows(chain, default_flows(emu.topo.chain(chain)))
    emu.set_rate(chain, emu.topo.chain(chain).mpps)


def _sink_flows(emu, chain):
    return emu.received(chain).get("flows", {})


@pytest.fixture(scope="class")
def nf_emu(tmp_path_factory, run_prefix):
    topo_path = _write_nf_topology(tmp_path_factory.mktemp("emulate-nfs"))
    # its own prefix (one letter more): the two emulations never share a name
    with _emulation(topo_path, run_prefix + "n", NF_PPS) as emulation:
        yield emulation


class TestNFsAndScaleOut:
    """Issue 5, tests 2 and 6, on the `nf_emu` emulation."""

    def test_firewall_drops_denied_and_ids_drops_signatures(self, nf_emu):
        emu = nf_emu
        allowed = [{"src": f"192.0.2.{10 + i}", "sport": 30000 + i} for i in range(8)]
        denied = [{"src": f"192.0.2.{200 + i}", "sport": 31000 + i} for i in range(4)]
        marked = [{"src": f"192.0.2.{40 + i}", "sport": 32000 + i,
                   "payload": b"GET /x?q=" + SIGNATURE + b" HTTP/1.1\r\n"} for i in range(4)]
        fw0, fw_at = _counters(emu, "guard", 255)
        ids0, ids_at = _counters(emu, "guard", 254)
        sink0 = _sink_flows(emu, "guard")
        try:
            sent = _send_for(emu, "guard", allowed + denied + marked, 3.0)
        finally:
            _resume(emu, "guard")
        fw1, _ = _counters(emu, "guard", 255)
        ids1, _ = _counters(emu, "guard", 254)
        sink1 = _sink_flows(emu, "guard")
        n_denied = sum(sent[_flow_key(f)] for f in denied)
        n_marked = sum(sent[_flow_key(f)] for f in marked)
        print(f"firewall on {fw_at}: {fw1}\nids on {ids_at}: {ids1}\nsent {sent}")
        assert n_denied > 20 and n_marked > 20, f"too little traffic sent: {sent}"
        # every denied packet sent is dropped by the firewall (none is lost on
        # the way: the default flows are allowed, so nothing else is denied)
        fw_dropped = fw1.get("dropped", 0) - fw0.get("dropped", 0)
        assert 0.98 * n_denied <= fw_dropped <= n_denied, \
            f"firewall dropped {fw_dropped} of {n_denied} denied packets"
        ids_dropped = ids1.get("dropped", 0) - ids0.get("dropped", 0)
        assert 0.98 * n_marked <= ids_dropped <= n_marked, \
            f"ids dropped {ids_dropped} of {n_marked} packets with the signature"
        assert ids1.get("alerts", 0) - ids0.get("alerts", 0) == ids_dropped
        # at the egress: the allowed flows arrive, the others never
        for f in denied + marked:
            assert _flow_key(f) not in sink1, f"{_flow_key(f)} reached the egress"
        for f in allowed:
            key = _flow_key(f)
            got = sum(sink1.get(key, {}).values()) - sum(sink0.get(key, {}).values())
            assert got >= 0.98 * sent[key], f"flow {key}: {got} of {sent[key]} arrived"

    @pytest.mark.xfail(LB_REFUSED is not None, strict=True,
                       reason="controller/plans.py _config gives the lb its catalog config "
                              f"as {{'rules': PATH}}; the lb takes {{'file': PATH}}: {LB_REFUSED}")
    def test_lb_spreads_flows_over_backends_and_keeps_each_on_one(self, nf_emu):
        emu = nf_emu
        flows = [{"src": f"192.0.2.{60 + i}", "sport": 33000 + i} for i in range(24)]
        lb0, lb_at = _counters(emu, "spread", 255)
        try:
            sent = _send_for(emu, "spread", flows, 3.0)
        finally:
            _resume(emu, "spread")
        lb1, _ = _counters(emu, "spread", 255)
        sink = _sink_flows(emu, "spread")
        print(f"lb on {lb_at}: {lb1}\nsink: {sink}")
        balanced = lb1.get("balanced", 0) - lb0.get("balanced", 0)
        assert balanced >= 0.98 * sum(sent.values()), \
            f"lb balanced {balanced} of {sum(sent.values())} packets: {lb1}"
        chosen = {}
        for f in flows:
            dsts = sink.get(_flow_key(f), {})
            assert sum(dsts.values()) >= 0.98 * sent[_flow_key(f)], \
                f"flow {_flow_key(f)}: {dsts} of {sent[_flow_key(f)]} sent"
            assert len(dsts) == 1, f"flow {_flow_key(f)} reached several backends: {dsts}"
            chosen[_flow_key(f)] = next(iter(dsts))
        assert set(chosen.values()) <= set(BACKENDS.values()), chosen
        assert len(set(chosen.values())) >= 2, f"all 24 flows on one backend: {chosen}"

    def test_scale_out_adds_an_instance_and_running_flows_keep_theirs(self, nf_emu):
        """Issue 5, test 6.  `bulk` asks 0.0008 Mpps of `monitor`, whose
        instance serves 0.001; raised to 0.0016 it needs two.  While only
        the flows that ran before are sent, the new instance must see none
        of them; new flows then reach it."""
        emu = nf_emu
        before = _plan_hops(emu, "bulk")[255]
        assert len(before) == 1, f"bulk starts on one monitor instance: {before}"
        (host0, iid0), = before
        old = default_flows(emu.topo.chain("bulk"))      # what the sender sends now
        # running means: every one of them has reached the egress already
        wait_for(lambda: all(_flow_key(f) in _sink_flows(emu, "bulk") for f in old), 10,
                 "every flow of bulk at the egress before the scale-out")
        emu.raise_rate("bulk", 0.0016)
        try:
            wait_for(lambda: len(_plan_hops(emu, "bulk")[255]) == 2, 10,
                     "a second monitor instance for bulk in the plans")
            wait_for(lambda: all(emu.store.get_applied(h) == p["generation"]
                                 for h, p in emu.store.plans().items()), 10,
                     "the agents to apply the scale-out plans")
            after = _plan_hops(emu, "bulk")[255]
            assert (host0, iid0) in after, f"the original instance moved: {before} -> {after}"
            (host1, iid1), = [x for x in after if x != (host0, iid0)]
            rx0 = _instance_rx(emu, host0, iid0)
            sent = _send_for(emu, "bulk", old, 3.0)
            moved = _instance_rx(emu, host1, iid1)
            kept = _instance_rx(emu, host0, iid0) - rx0
            print(f"bulk: {before} -> {after}; old flows sent {sum(sent.values())}, "
                  f"original instance +{kept}, new instance {moved}")
            assert moved == 0, (
                f"{moved} packets of flows that ran before the scale-out reached the new "
                f"instance {host1}#{iid1}; the original {host0}#{iid0} got {kept}")
            assert kept >= 0.98 * sum(sent.values())
            # new flows may use the new instance: that is what it is for
            new = [{"src": f"192.0.2.{100 + i}", "sport": 34000 + i} for i in range(16)]
            emu.set_rate("bulk", 0.0016)
            sent_new = _send_for(emu, "bulk", new, 3.0)
            # else "old flows keep their instance" above held only because no
            # flow ever leaves the first instance
            reached = _instance_rx(emu, host1, iid1)
            print(f"new flows sent {sum(sent_new.values())}, new instance {reached}")
            assert reached > 0, (
                f"none of {len(new)} new flows ({sum(sent_new.values())} packets) reached "
                f"the new instance {host1}#{iid1}: the ingress does not spread flows")
        finally:
            _resume(emu, "bulk")


# ------------------------------------------------------------------ tests

def test_three_nf_chain_runs_in_order_on_three_hosts_with_design_labels(emu, tmp_path):
    """Issue 5, test 1."""
    hops = _plan_hops(emu)
    assert sorted(hops) == [253, 254, 255], f"plan hops {hops}"
    hosts = [hops[si][0][0] for si in (255, 254, 253)]
    assert len(set(hosts)) == 3, f"the three NFs should run on three hosts: {hosts}"
    wait_for(lambda: _flowing(emu, time.time() - 0.5), 10, "traffic at the egress")

    pcaps = [str(tmp_path / f"link{i}.pcap") for i in range(2)]
    captures = [_capture(emu, intf, p) for intf, p in zip(_spine_links(emu), pcaps)]
    def quiet_counts():
        """Pause the sender and wait until nothing is in flight and the
        agents have published their last counts (they publish every
        second): then NF counters and the sink count the same packets."""
        emu.set_pps(CHAIN, 0)
        last = None
        deadline = time.time() + 15
        while time.time() < deadline:
            time.sleep(1.2)
            now = ([_instance_rx(emu, h, i) for si in (255, 254, 253) for h, i in hops[si]],
                   emu.received(CHAIN)["received"])
            if now == last:
                return now
            last = now
        raise AssertionError(f"counters still moving after the sender paused: {last}")

    try:
        before_nf, before_out = quiet_counts()
        emu.set_pps(CHAIN, PPS)
        time.sleep(3.0)
        after_nf, after_out = quiet_counts()
    finally:
        emu.set_pps(CHAIN, PPS)
        for c in captures:
            _stop_capture(c)
    passed = [a - b for a, b in zip(after_nf, before_nf)]
    delivered = after_out - before_out
    assert delivered > 0.5 * PPS * 3, f"only {delivered} packets reached the egress in 3 s"
    # every NF, in chain order, saw every packet that came out at the end
    assert all(p >= delivered for p in passed), (
        f"per-NF packets {dict(zip(hosts, passed))} vs {delivered} delivered")

    from scapy.contrib.mpls import MPLS
    from scapy.utils import rdpcap
    topo = load_topology(emu.topo_path)
    label_of = {h.name: h.label for h in topo.hosts}
    mac_of = {h.mac: h.name for h in topo.hosts}
    stacks = []
    for pcap in pcaps:
        for pkt in rdpcap(pcap):
            if pkt.type != 0x8847:
                continue
            t, spi, si = pkt[MPLS], pkt[MPLS].payload, pkt[MPLS].payload.payload
            stacks.append((mac_of.get(pkt.dst), t.label, t.s, t.ttl,
                           spi.label, spi.s, spi.ttl, si.label, si.s, si.ttl))
            assert MAGIC in bytes(si.payload)
    assert stacks, "no labelled frame seen on the leaf-spine links"
    spi = topo.chain(CHAIN).spi
    seen_si = set()
    for dst, tl, ts, tt, sl, ss, st, il, is_, it in stacks:
        assert dst is not None and tl == label_of[dst], "transport label is the next host's"
        assert (ts, tt, sl, ss, st, is_, it) == (0, 64, spi, 0, 64, 1, 64)
        assert il in (255, 254, 253)
        seen_si.add(il)
    # the classifier's frames (SI 255 to the first NF's host) cross the spine
    assert 255 in seen_si


def test_forged_mpls_at_an_edge_never_reaches_an_nf(emu):
    """Issue 5, test 3: frames that already carry labels are dropped at the
    edge switch; none reaches an NF or comes out at the egress."""
    from scapy.contrib.mpls import MPLS
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from controller.plans import edge_mac
    topo = emu.topo
    hops = _plan_hops(emu)
    first = topo.host(hops[255][0][0])
    forged_spi = 4242           # the marker's SPI: the sink would count it apart
    frame = (Ether(src=edge_mac("internet"), dst=first.mac, type=0x8847)
             / MPLS(label=first.label, s=0, ttl=64)
             / MPLS(label=topo.chain(CHAIN).spi, s=0, ttl=64)
             / MPLS(label=255, s=1, ttl=64)
             / IP(src="192.0.2.9", dst="10.9.0.1") / TCP(dport=80)
             / (MARK.pack(MAGIC, forged_spi, 1, time.time()) + bytes(8)))
    node = emu.nodes["internet"]
    switch = [i for i, s in enumerate(topo.switches) if s.name == "spine1"][0]
    bridge = f"{emu.prefix}s{switch}"

    def edge_drops():
        out = emu.ovs.ofctl("dump-flows", bridge, "table=0,mpls")
        return sum(int(x.split("=")[1].rstrip(","))
                   for x in out.split() if x.startswith("n_packets="))
    before = edge_drops()
    count = 50
    raw = bytes(frame).hex()
    node.cmd(f"python3 -c \"import socket; s=socket.socket(socket.AF_PACKET, "
             f"socket.SOCK_RAW); s.bind(('{emu.intf['internet']}', 0)); "
             f"[s.send(bytes.fromhex('{raw}')) for _ in range({count})]\"")
    wait_for(lambda: edge_drops() - before >= count, 5,
             f"{count} forged frames counted by the edge drop rule of {bridge}")
    time.sleep(1.0)
    sink = emu.received(CHAIN)
    assert edge_drops() - before == count
    assert str(forged_spi) not in (emu.sink_status("wan") or {}).get("chains", {}), \
        "a forged frame came out at the egress"
    assert sink["received"] > 0


def test_controller_restart_keeps_traffic_and_plans(emu):
    """Issue 5, test 5: agents forward on their plans while no controller
    runs; the new controller rewrites no plan."""
    gens = {h: p["generation"] for h, p in emu.store.plans().items()}
    s0, r0 = emu.sent(CHAIN)["sent"], emu.received(CHAIN)["received"]
    emu.restart_controller()
    time.sleep(3.0)
    s1, r1 = emu.sent(CHAIN)["sent"], emu.received(CHAIN)["received"]
    assert {h: p["generation"] for h, p in emu.store.plans().items()} == gens, \
        "the new controller rewrote plans it found in force"
    lost = (s1 - s0) - (r1 - r0)
    # what was in flight at the two reads may differ by a few packets
    assert lost <= 0.02 * (s1 - s0) + 5, f"{lost} of {s1 - s0} packets lost"


def test_host_failure_replaces_nfs_and_traffic_returns(emu):
    """Issue 5, test 4: a host that runs an NF fails (its agent killed, its
    link down, as when a server loses power); its NF runs elsewhere and the
    chain carries traffic again within 1 s.  Measured, not assumed.  (An
    agent that crashes while its link stays up is found only when its lease
    runs out: `onvm bench failover` measures that too.)"""
    result = measure_failover(emu, settle=1.0, how="host")
    print("failover:", result)
    victim = result["host"]
    hosts_now = {h for hs in _plan_hops(emu).values() for h, _ in hs}
    assert victim not in hosts_now and len(hosts_now) == 3, \
        f"NFs should have left {victim}: now on {sorted(hosts_now)}"
    # the switch reports the port down at once: no lease to wait for
    assert result["detect_s"] < 1.0, result
    assert result["recover_s"] < 1.0, result
    t = time.time()
    wait_for(lambda: _flowing(emu, t), 5, "traffic after failover")
