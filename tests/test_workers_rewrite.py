"""NFs that rewrite addresses on a host of several workers
(host_agent.workers Steering, host_agent/handoff.pxd): nat's workers hand
out ports from disjoint shares of the instance's range and a reply to the
external address is steered to the worker whose share holds its port; an
lb backend's reply is hashed as its flow's packets to the VIP were, IPv4
and IPv6.  Real fast path: Workers on ring-backed ports with one queue
pair per worker (the fixture checks every mbuf went back to the pool)."""
import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, IPv6, raw

from host_agent import fastpath as fp
from host_agent.harness import HOST_MAC, chain_plan
from host_agent.workers import Steering, WorkerNFs, queue_of, spread
from nflib.api import make_nf
from nfs.configs import nat_worker_range
from test_cores import workers  # noqa: F401  (the fixture)
from test_handoff import tagged

EXT = "198.51.100.1"
RANGE = [4096, 4096 + 2 * 600 - 1]
NAT = {"external_ip": EXT, "internal": "10.0.0.0/8", "port_range": RANGE}


def inside(f):
    return f"10.0.{f // 200}.{f % 200 + 1}", 20000 + f


def nat_out(flows, per_flow=1, proto=UDP):
    """Outgoing frames of `flows` flows from the inside, `per_flow` each."""
    out = []
    for s in range(per_flow):
        for f in range(flows):
            ip, port = inside(f)
            out.append(raw(Ether(dst=HOST_MAC) / IP(src=ip, dst=f"203.0.113.{f % 50 + 1}")
                           / proto(sport=port, dport=53) / f"{f:05d}{s:05d}".encode()))
    return out


def mapped(outs):
    """{flow: (external port, worker)} of the frames nat let out, each
    flow always with one port on one worker; the frames' source is EXT."""
    got = {}
    for q, frames in enumerate(outs):
        for f in frames:
            pkt = Ether(f)
            assert pkt[IP].src == EXT
            l4 = pkt[IP].payload
            flow = int(bytes(l4.payload)[:5])
            assert got.setdefault(flow, (l4.sport, q)) == (l4.sport, q)
    return got


def replies(got, per_flow=1, proto=UDP):
    return [raw(Ether(dst=HOST_MAC) / IP(src=f"203.0.113.{f % 50 + 1}", dst=EXT)
                / proto(sport=53, dport=port) / f"{f:05d}{s:05d}".encode())
            for s in range(per_flow) for f, (port, _) in sorted(got.items())]


def run(w, rxs, txs, frames, steering=None):
    """Frames into queue 0 (as a NIC that does not hash them), or spread
    by queue_of with `steering`; what came out of each worker."""
    if steering is None:
        assert rxs[0].fill(frames, len(frames)) == len(frames)
    else:
        for rx, share in zip(rxs, spread(frames, len(rxs), steering)):
            assert rx.fill(share, len(share)) == len(share)
    w.run(idle_seconds=0.1)
    return [tx.drain(keep=True) for tx in txs]


def importing(state):
    """An nf_factory that imports `state`, as an agent's for a moved
    instance (host_agent.agent: each worker's object imports it)."""
    def make(inst):
        obj = make_nf(inst)
        obj.import_state(state)
        return obj
    return make


def no_drops(w):
    drops = w.stats()["drops"]
    assert drops == {reason: 0 for reason in fp.DROP_REASONS}, drops


def test_nat_workers_hand_out_disjoint_ports_and_every_reply_finds_its_mapping(workers):
    port, w, rxs, txs = workers(2)
    w.apply_plan(chain_plan([("nat", NAT)], port, port), make_nf)
    flows = 500
    got = mapped(run(w, rxs, txs, nat_out(flows, 2)))
    assert len(got) == flows
    ports = [p for p, _ in got.values()]
    assert len(set(ports)) == flows                       # no two flows share a port
    shares = [nat_worker_range(RANGE, 2, q) for q in range(2)]
    for p, q in got.values():
        assert shares[q][0] <= p <= shares[q][1]          # each worker its own share
    assert {q for _, q in got.values()} == {0, 1}
    # the replies: the hash of their 5-tuple names the other worker for
    # about half of them; steered by port, each meets its mapping
    back = replies(got, 3)
    assert 0 < sum(queue_of(f, 2) != got[i % flows][1] for i, f in enumerate(back)) < len(back)
    outs = run(w, rxs, txs, back)
    assert sum(map(len, outs)) == len(back)
    for q, frames in enumerate(outs):
        for f in frames:
            pkt = Ether(f)
            flow = int(bytes(pkt[UDP].payload)[:5])
            assert (pkt[IP].dst, pkt[UDP].dport) == inside(flow)
            assert got[flow][1] == q                      # on the worker of its mapping
    no_drops(w)
    c = w.stats()["instances"][1]["counters"]
    assert c["udp"]["in"] == len(back) and c["udp"]["no_mapping"] == 0
    assert c["udp"]["mappings"] == flows and c["udp"]["allocated"] == flows
    assert [o.worker_ports for o in w.nf_objects(1)] == shares
    assert c["udp"]["pool"] == 1200 and c["udp"]["use"] == pytest.approx(flows / 1200, abs=1e-5)
    assert all(x["processed"] > 0 for x in w.stats()["workers"])


def test_queue_of_steers_nat_replies_as_the_loop_does(workers):
    """Replies spread by queue_of with the workers' steering stay on their
    queue (no handoff); tagged ones from the fabric go the same way."""
    port, w, rxs, txs = workers(2)
    w.apply_plan(chain_plan([("nat", NAT)], port, port), make_nf)
    got = mapped(run(w, rxs, txs, nat_out(300)))
    assert isinstance(w.steering, Steering)
    before = w.stats()["handoffs"]["sent"]
    back = replies(got)
    for f, (_, q) in zip(back, sorted(got.items())):
        assert queue_of(f, 2, w.steering) == q[1] == queue_of(tagged(f), 2, w.steering)
    outs = run(w, rxs, txs, back, steering=w.steering)
    assert w.stats()["handoffs"]["sent"] == before
    assert sum(map(len, outs)) == 300
    outs = run(w, rxs, txs, [tagged(f) for f in back])
    assert sum(map(len, outs)) == 300
    no_drops(w)


def test_nat_icmp_echo_and_tcp_replies_are_steered_by_identifier_and_port(workers):
    port, w, rxs, txs = workers(2)
    w.apply_plan(chain_plan([("nat", NAT)], port, port), make_nf)
    pings = [raw(Ether(dst=HOST_MAC) / IP(src=inside(f)[0], dst="203.0.113.7")
                 / ICMP(type=8, id=100 + f, seq=1) / f"{f:05d}".encode()) for f in range(200)]
    ids = {}
    for q, frames in enumerate(run(w, rxs, txs, pings)):
        for f in frames:
            pkt = Ether(f)
            ids[int(bytes(pkt[ICMP].payload)[:5])] = (pkt[ICMP].id, q)
    assert len({i for i, _ in ids.values()}) == 200 and {q for _, q in ids.values()} == {0, 1}
    echo = [raw(Ether(dst=HOST_MAC) / IP(src="203.0.113.7", dst=EXT)
                / ICMP(type=0, id=i, seq=1) / f"{f:05d}".encode()) for f, (i, _) in ids.items()]
    outs = run(w, rxs, txs, echo)
    for q, frames in enumerate(outs):
        for f in frames:
            pkt = Ether(f)
            flow = int(bytes(pkt[ICMP].payload)[:5])
            assert pkt[IP].dst == inside(flow)[0] and pkt[ICMP].id == 100 + flow
            assert ids[flow][1] == q
    assert sum(map(len, outs)) == 200
    got = mapped(run(w, rxs, txs, nat_out(200, proto=TCP)))
    outs = run(w, rxs, txs, replies(got, proto=TCP))
    assert sum(map(len, outs)) == 200
    no_drops(w)
    c = w.stats()["instances"][1]["counters"]
    assert c["icmp"]["in"] == 200 and c["tcp"]["in"] == 200


def test_nat_state_moved_into_two_workers_keeps_every_flows_port(workers):
    """Mappings made by one worker, moved to a host of two: each lands in
    the worker whose share holds its port (replies find it there), the
    other keeps a foreign copy (the flow's outgoing packets keep their
    port); the union exports each mapping once."""
    port1, w1, rxs1, txs1 = workers(1)
    one = dict(NAT)
    w1.apply_plan(chain_plan([("nat", one)], port1, port1), make_nf)
    flows = 650             # one worker hands out ports from the range's start:
    rxs1[0].fill(nat_out(flows), flows)       # both shares of two workers get some
    w1.run(idle_seconds=0.1)
    before = mapped([txs1[0].drain(keep=True)])
    state = w1.nf_object(1).export_state()
    assert len(state["mappings"]) == flows
    ports = sorted(p for p, _ in before.values())
    assert ports[0] < nat_worker_range(RANGE, 2, 1)[0] <= ports[-1]

    port2, w2, rxs2, txs2 = workers(2)
    w2.apply_plan(chain_plan([("nat", NAT)], port2, port2), importing(state))
    nf = w2.nf_object(1)
    assert isinstance(nf, WorkerNFs)
    assert len(nf.export_state()["mappings"]) == flows     # each once
    assert sum(len(o.export_state()["mappings"]) for o in w2.nf_objects(1)) == flows
    # replies to every moved port come back rewritten
    back = replies({f: (p, None) for f, (p, _) in before.items()}, 2)
    outs = run(w2, rxs2, txs2, back)
    assert sum(map(len, outs)) == len(back)
    shares = [nat_worker_range(RANGE, 2, q) for q in range(2)]
    for q, frames in enumerate(outs):
        for f in frames:
            pkt = Ether(f)
            flow = int(bytes(pkt[UDP].payload)[:5])
            assert (pkt[IP].dst, pkt[UDP].dport) == inside(flow)
            assert shares[q][0] <= before[flow][0] <= shares[q][1]     # by its owner
    # and the flows' outgoing packets keep their ports, whichever worker
    after = mapped(run(w2, rxs2, txs2, nat_out(flows)))
    assert {f: p for f, (p, _) in after.items()} == {f: p for f, (p, _) in before.items()}
    no_drops(w2)
    c = w2.stats()["instances"][1]["counters"]
    assert c["udp"]["no_mapping"] == 0 and c["udp"]["allocated"] == 0
    # a new flow still gets a port no moved flow has (worker 0's share is
    # all taken by moved flows: one of worker 1's)
    new = [f for f in nat_out(flows + 50)[flows:] if queue_of(f, 2, w2.steering) == 1][0]
    fresh = mapped(run(w2, rxs2, txs2, [new]))
    (p, q), = fresh.values()
    assert q == 1 and p not in ports
    # a replica's adoption imports through the instance's WorkerNFs: each
    # worker takes the mappings of its share, the count is their sum
    port3, w3, _, _ = workers(2)
    w3.apply_plan(chain_plan([("nat", NAT)], port3, port3), make_nf)
    assert w3.nf_object(1).import_state(state) == flows
    assert [len(o.export_state()["mappings"]) for o in w3.nf_objects(1)] == [600, 50]


LB = {"vip": "203.0.113.9", "vip6": "2001:db8:1::10", "table_size": 4093,
      "backends": [{"name": f"web{i}", "ip": f"10.0.2.{i}", "ip6": f"2001:db8:2::{i}",
                    "mac": f"02:00:00:00:02:0{i}"} for i in range(1, 5)]}


def clients(flows, six=False, reply_from=None):
    """TCP packets of `flows` clients to the VIP, or with `reply_from`
    ({flow: backend address}) the backends' replies to them."""
    out = []
    for f in range(flows):
        if six:
            c, vip, ip = f"2001:db8:9::{f + 1:x}", LB["vip6"], IPv6
        else:
            c, vip, ip = f"192.0.2.{f % 250 + 1}", LB["vip"], IP
        cport = 30000 + f
        if reply_from is None:
            pkt = ip(src=c, dst=vip) / TCP(sport=cport, dport=80, flags="S")
        else:
            pkt = ip(src=reply_from[f], dst=c) / TCP(sport=80, dport=cport, flags="SA")
        out.append(tagged(Ether(dst=HOST_MAC) / pkt / f"{f:05d}".encode()))
    return out


def balanced(outs, six=False):
    """{flow: backend address}, each flow on one worker."""
    ip = IPv6 if six else IP
    got = {}
    for q, frames in enumerate(outs):
        for f in frames:
            pkt = Ether(f)
            flow = int(bytes(pkt[TCP].payload)[:5])
            assert got.setdefault(flow, (pkt[ip].dst, q)) == (pkt[ip].dst, q)
    return {f: b for f, (b, _) in got.items()}


def check_replies(outs, flows, six=False):
    ip = IPv6 if six else IP
    vip = LB["vip6"] if six else LB["vip"]
    n = 0
    for frames in outs:
        for f in frames:
            pkt = Ether(f)
            assert pkt[ip].src == vip and pkt[TCP].sport == 80
            n += 1
    assert n == flows


@pytest.mark.parametrize("six", [False, True], ids=["ipv4", "ipv6"])
def test_lb_backends_replies_reach_the_worker_of_their_flow(workers, six):
    port, w, rxs, txs = workers(2)
    w.apply_plan(chain_plan([("lb", LB)], port, port), make_nf)
    flows = 400
    to = balanced(run(w, rxs, txs, clients(flows, six)), six)
    assert len(to) == flows and len(set(to.values())) == 4
    back = clients(flows, six, reply_from=to)
    # unsteered, many replies hash to the other worker than their flow's
    fwd = clients(flows, six)
    assert any(queue_of(r, 2) != queue_of(f, 2) for r, f in zip(back, fwd))
    assert all(queue_of(r, 2, w.steering) == queue_of(f, 2, w.steering)
               for r, f in zip(back, fwd))
    check_replies(run(w, rxs, txs, back), flows, six)
    no_drops(w)
    c = w.stats()["instances"][1]["counters"]
    assert c["replies6" if six else "replies"] == flows
    assert c["flows6" if six else "flows"] == flows
    assert all(x["processed"] > 0 for x in w.stats()["workers"])


def test_lb_state_moved_into_two_workers_is_used_by_the_replies(workers):
    port1, w1, rxs1, txs1 = workers(1)
    w1.apply_plan(chain_plan([("lb", LB)], port1, port1), make_nf)
    flows = 200
    rxs1[0].fill(clients(flows) + clients(flows, True), 2 * flows)
    w1.run(idle_seconds=0.1)
    outs = [txs1[0].drain(keep=True)]
    to4 = balanced([[f for f in outs[0] if Ether(f).haslayer(IP)]])
    to6 = balanced([[f for f in outs[0] if Ether(f).haslayer(IPv6)]], True)
    state = w1.nf_object(1).export_state()
    assert len(state["flows"]) == 2 * flows

    port2, w2, rxs2, txs2 = workers(2)
    # a fifth backend: Maglev alone would send some replies' flows elsewhere
    bigger = dict(LB, backends=LB["backends"] + [
        {"name": "web5", "ip": "10.0.2.5", "ip6": "2001:db8:2::5", "mac": "02:00:00:00:02:05"}])
    w2.apply_plan(chain_plan([("lb", bigger)], port2, port2), importing(state))
    check_replies(run(w2, rxs2, txs2, clients(flows, reply_from=to4)), flows)
    check_replies(run(w2, rxs2, txs2, clients(flows, True, reply_from=to6)), flows, True)
    assert balanced(run(w2, rxs2, txs2, clients(flows))) == to4
    no_drops(w2)


def test_what_steering_cannot_make_right_is_refused_naming_instance_and_workers(workers):
    port, w, rxs, txs = workers(2)
    novip = {k: v for k, v in LB.items() if k != "vip"}
    with pytest.raises(fp.FastPathError, match=r"instance 1 \(lb\): IPv4 backends and no "
                       r"vip.*this host runs 2 workers"):
        w.apply_plan(chain_plan([("lb", novip)], port, port), make_nf)
    with pytest.raises(fp.FastPathError, match=r"instance 2 \(lb\): backend 10.0.2.1 is also "
                       r"a backend of instance 1 \(lb\) with another VIP.*2 workers"):
        w.apply_plan(chain_plan([("lb", LB), ("lb", dict(LB, vip="203.0.113.10"))],
                                port, port), make_nf)
    with pytest.raises(fp.FastPathError, match=r"instance 1 \(nat\): port_range \[5000, "
                       r"5000\] has 1 ports, fewer than this host's 2 workers"):
        w.apply_plan(chain_plan([("nat", dict(NAT, port_range=[5000, 5000]))], port, port),
                     make_nf)
    assert w.generation is None                           # no worker took any of them
    # the same plans on one worker are fine
    port1, w1, _, _ = workers(1)
    w1.apply_plan(chain_plan([("lb", novip)], port1, port1), make_nf)
    assert w1.generation == 1
