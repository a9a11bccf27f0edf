"""The agent's pin table through the real fast path (DPDK EAL, ring-backed
ports): a forward remote hop keeps each flow's host; a symmetric chain's
replies go back through the hosts their forward packets came from.

The two "hosts" of a symmetric chain are two Managers in this process; a
frame one sends is handed to the other by the test, as the fabric would.
Chain: NF0 on host A, NF1 on host B (and on host C, which is not here);
forward SPI S, reverse SPI R = reverse_spi(S):

    forward  (S,255) NF0 on A -> (S,254) NF1 on B|C -> (S,253) end: server
    reverse  (R,255) NF1      -> (R,254) NF0 on A   -> (R,253) end: edge
"""
import time
from socket import inet_aton

import pytest
from scapy.all import IP, TCP, UDP, Ether, IPv6
from scapy.contrib.mpls import MPLS

from contracts.plan import PlanError, check_plan
from contracts.wire import reverse_spi
from host_agent import fastpath as fp
from host_agent.harness import Harness
from nflib.api import PythonNF, make_nf

S = 100
R = reverse_spi(S)
A = {"host": "A", "label": 16, "mac": "02:00:00:00:00:0a"}
B = {"host": "B", "label": 17, "mac": "02:00:00:00:00:0b"}
C = {"host": "C", "label": 18, "mac": "02:00:00:00:00:0c"}
D = {"host": "D", "label": 19, "mac": "02:00:00:00:00:0d"}
EDGE_MAC = "02:00:00:00:00:e0"
WEB1 = {"ip": "10.0.1.10", "mac": "02:00:00:00:01:10"}
WEB2 = {"ip": "10.0.1.11", "mac": "02:00:00:00:01:11"}
CLIENT = "192.0.2.7"


@pytest.fixture
def harnesses():
    made = []

    def make():
        h = Harness(nfs=[("forward", None)])
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()
    assert fp.pool_counts()[1] == 0, "mbufs leaked"


def peer(p, weight=None):
    out = dict(p)
    if weight is not None:
        out["weight"] = weight
    return out


def plan_of(me, h, instances, hops, generation=1, classify=True):
    """A plan for host `me` (A, B, ...) on Harness `h`: its uplink and the
    end's port are h.out_port."""
    port = h.out_port if h is not None else 0
    for hop in hops:
        if "end" in hop:
            hop["end"]["port"] = port
    return check_plan({
        "host": me["host"], "generation": generation, "node_label": me["label"],
        "mac": me["mac"], "uplink": port,
        "instances": [{"id": iid, "nf": "monitor"} for iid in instances],
        "classifiers": [{"spi": S, "match": {"ipv4_dst": "10.0.1.0/24"}}] if classify else [],
        "hops": hops,
    })


def plan_a(h, generation=1):
    return plan_of(A, h, [1], [
        {"spi": S, "si": 255, "local": 1},
        {"spi": S, "si": 254, "remote": [peer(B)]},
        {"spi": S, "si": 253, "end": {"dst_mac": WEB1["mac"], "reply": R}},
        {"spi": R, "si": 255, "remote": [peer(B), peer(C)]},
        {"spi": R, "si": 254, "local": 1, "pinned": []},
        {"spi": R, "si": 253, "end": {"dst_mac": EDGE_MAC}},
    ], generation)


def plan_b(h, generation=1, pinned=(A,), servers=None):
    end = {"dst_mac": WEB1["mac"], "reply": R}
    if servers:
        end["servers"] = servers
    return plan_of(B, h, [2], [
        {"spi": S, "si": 255, "remote": [peer(A)]},
        {"spi": S, "si": 254, "local": 2, "reverse": {"spi": R, "si": 254}},
        {"spi": S, "si": 253, "end": end},
        {"spi": R, "si": 255, "local": 2},
        {"spi": R, "si": 254, "remote": [peer(A)], "pinned": [peer(p) for p in pinned]},
        {"spi": R, "si": 253, "end": {"dst_mac": EDGE_MAC}},
    ], generation, classify=False)


def request(i, dst=WEB1["ip"], to=A["mac"]):
    return Ether(src=EDGE_MAC, dst=to) / IP(src=CLIENT, dst=dst) / TCP(sport=40000 + i, dport=80, flags="S")


def reply(i, src=WEB1["ip"], to=B["mac"]):
    """The server's answer to request(i): the reversed 5-tuple, untagged."""
    return Ether(src=WEB1["mac"], dst=to) / IP(src=src, dst=CLIENT) / TCP(sport=80, dport=40000 + i, flags="SA")


def tagged(node, spi, si, inner, src):
    return (Ether(src=src["mac"], dst=node["mac"], type=0x8847) / MPLS(label=node["label"], s=0, ttl=64)
            / MPLS(label=spi, s=0, ttl=64) / MPLS(label=si, s=1, ttl=64) / inner)


def stack(frame):
    """(transport, SPI, SI) labels of a tagged frame."""
    pkt = Ether(frame)
    assert pkt.type == 0x8847, pkt.summary()
    l1 = pkt[MPLS]
    return l1.label, l1.payload.label, l1.payload.payload.label


# -------------------------------------------------- forward hops keep a flow's pick

def remote_plan(h, remote, generation):
    return plan_of(A, h, [1], [
        {"spi": S, "si": 255, "local": 1},
        {"spi": S, "si": 254, "remote": remote},
    ], generation)


def picks(h, frames):
    """{(sport): transport label} of what the frames' flows were sent to."""
    out = h.send(frames)
    assert len(out) == len(frames)
    return {Ether(f)[TCP].sport: stack(f)[0] for f in out}


def test_a_flow_keeps_its_host_when_weights_change_and_re_picks_when_it_leaves(harnesses):
    h = harnesses()
    h.manager.apply_plan(remote_plan(h, [peer(B, 1.0), peer(C, 1.0)], 2), make_nf)
    flows = [request(i) for i in range(64)]
    before = picks(h, flows)
    assert set(before.values()) == {17, 18}
    assert h.stats()["pins"]["inserts"] == 64

    # C's weight drops to almost nothing: new flows go to B, running ones stay.
    h.manager.apply_plan(remote_plan(h, [peer(B, 1.0), peer(C, 0.001)], 3), make_nf)
    assert picks(h, flows) == before
    fresh = picks(h, [request(1000 + i) for i in range(64)])
    assert set(fresh.values()) == {17}, "weights steer new flows"

    # C leaves the hop: its flows pick again (B or the new D), B's stay.
    h.manager.apply_plan(remote_plan(h, [peer(B), peer(D)], 4), make_nf)
    after = picks(h, flows)
    assert {sport: 17 for sport, label in before.items() if label == 17}.items() <= after.items()
    assert {after[sport] for sport, label in before.items() if label == 18} <= {17, 19}
    # ... and keep the new pick when C comes back with a big weight.
    h.manager.apply_plan(remote_plan(h, [peer(B), peer(C, 100.0), peer(D)], 5), make_nf)
    assert picks(h, flows) == after
    assert h.stats()["pins"]["inserts"] == 128, "re-picks reuse the flow's pin"


def test_ipv6_flows_keep_their_host_when_weights_change(harnesses):
    """Pins key whole IPv6 addresses as they key IPv4 ones (the ingress
    switch sends an IPv6 chain's packets tagged)."""
    h = harnesses()
    h.manager.apply_plan(remote_plan(h, [peer(B, 1.0), peer(C, 1.0)], 2), make_nf)
    flows = [tagged(A, S, 255, IPv6(src="2001:db8:9::%x" % (i + 1), dst="2001:db8:1::5")
                    / TCP(sport=40000 + i, dport=80, flags="S"), {"mac": EDGE_MAC})
             for i in range(64)]
    before = picks(h, flows)
    assert set(before.values()) == {17, 18}
    assert h.stats()["pins"]["inserts"] == 64
    h.manager.apply_plan(remote_plan(h, [peer(B, 1.0), peer(C, 0.001)], 3), make_nf)
    assert picks(h, flows) == before


def test_the_pins_survive_weights_that_would_move_flows(harnesses):
    """Control for the test above: a second host with no pins picks, for
    the same flows under the changed weights, other hosts for some."""
    h1, h2 = harnesses(), harnesses()
    h1.manager.apply_plan(remote_plan(h1, [peer(B, 1.0), peer(C, 1.0)], 2), make_nf)
    flows = [request(i) for i in range(64)]
    before = picks(h1, flows)
    h2.manager.apply_plan(remote_plan(h2, [peer(B, 1.0), peer(C, 0.001)], 2), make_nf)
    assert picks(h2, flows) != before


# ------------------------------------------------------- a symmetric chain, two hosts

def forward_through(a, b, frames):
    """Requests in at A, A's output in at B; B's output (to the servers)."""
    from_a = a.send(frames)
    assert len(from_a) == len(frames)
    assert all(stack(f) == (B["label"], S, 254) for f in from_a)
    return b.send(from_a)


def test_a_reply_goes_back_to_the_host_its_request_came_from(harnesses):
    a, b = harnesses(), harnesses()
    a.manager.apply_plan(plan_a(a), make_nf)
    b.manager.apply_plan(plan_b(b), make_nf)
    out = forward_through(a, b, [request(i) for i in range(20)])
    assert len(out) == 20 and {Ether(f).dst for f in out} == {WEB1["mac"]}
    pins = b.stats()["pins"]
    assert pins["inserts"] == 40 and pins["entries"] == 40   # reverse + reply pin per flow

    # Untagged replies hit the end's reply pin: in at (R, 255), NF1 here,
    # then back to A by the pin the request left, with the labels of (R, 254).
    nf1_rx = b.stats()["instances"][2]["rx"]
    back = b.send([reply(i) for i in range(20)])
    assert len(back) == 20
    assert all(stack(f) == (A["label"], R, 254) for f in back)
    assert all(Ether(f).dst == A["mac"] and Ether(f).src == B["mac"] for f in back)
    assert b.stats()["instances"][2]["rx"] - nf1_rx == 20
    # A runs NF0 on them (no pin there: local) and sends them to the edge.
    to_edge = [Ether(f) for f in a.send(back)]
    assert len(to_edge) == 20 and {p.dst for p in to_edge} == {EDGE_MAC}
    assert {p[TCP].dport for p in to_edge} == {40000 + i for i in range(20)}
    assert a.stats()["instances"][1]["rx"] == 40
    assert sum(a.stats()["drops"].values()) == sum(b.stats()["drops"].values()) == 0


def test_a_reply_without_pin_on_a_remote_reverse_hop_is_dropped(harnesses):
    a, b = harnesses(), harnesses()
    a.manager.apply_plan(plan_a(a), make_nf)
    b.manager.apply_plan(plan_b(b), make_nf)
    forward_through(a, b, [request(1)])
    # A reply of a flow B never carried, tagged for (R, 255): NF1 runs,
    # then (R, 254) is remote and nothing says which instance has the state.
    stray = tagged(B, R, 255, IP(src=WEB1["ip"], dst=CLIENT) / TCP(sport=80, dport=9), D)
    assert b.send([stray]) == []
    assert b.stats()["drops"]["no_pin"] == 1
    # The known flow's reply, tagged the same way, goes to A.
    known = tagged(B, R, 255, IP(src=WEB1["ip"], dst=CLIENT) / TCP(sport=80, dport=40001), D)
    assert [stack(f) for f in b.send([known])] == [(A["label"], R, 254)]


def test_a_pinned_host_that_left_the_list_drops_as_pin_lost(harnesses):
    a, b = harnesses(), harnesses()
    a.manager.apply_plan(plan_a(a), make_nf)
    b.manager.apply_plan(plan_b(b), make_nf)
    forward_through(a, b, [request(i) for i in range(5)])
    b.manager.apply_plan(plan_b(b, generation=2, pinned=(C, D)), make_nf)
    assert b.send([reply(i) for i in range(5)]) == []
    assert b.stats()["drops"]["pin_lost"] == 5


def test_a_request_from_a_host_outside_the_pinned_list_learns_nothing(harnesses):
    a, b = harnesses(), harnesses()
    a.manager.apply_plan(plan_a(a), make_nf)
    b.manager.apply_plan(plan_b(b, pinned=(C,)), make_nf)
    forward_through(a, b, [request(1)])
    assert b.stats()["pins"]["inserts"] == 1                 # only the end's reply pin
    assert b.send([reply(1)]) == []
    assert b.stats()["drops"]["no_pin"] == 1


VIP = "10.0.1.99"


class Proxy(PythonNF):
    """Test NF, a one-backend load balancer: going forward (SPI S) the VIP
    becomes WEB2's address; coming back, WEB2's source becomes the VIP."""

    def handle(self, batch):
        for i in range(len(batch)):
            data = batch.data(i)
            off = 14 + (16 if batch.spi_si(i)[0] == S else 12)
            old, new = (VIP, WEB2["ip"]) if batch.spi_si(i)[0] == S else (WEB2["ip"], VIP)
            if bytes(data[off:off + 4]) == inet_aton(old):
                data[off:off + 4] = inet_aton(new)


def test_pins_key_on_the_headers_the_nfs_leave(harnesses):
    """The end pins the reply of the packet as it leaves (after an NF
    rewrote it), the reverse hop the tuple the NF restores."""
    a, b = harnesses(), harnesses()
    a.manager.apply_plan(plan_a(a), make_nf)
    plan = plan_b(b)
    plan["instances"] = [{"id": 2, "nf": "proxy"}]
    b.manager.apply_plan(check_plan(plan), lambda inst: Proxy())
    out = forward_through(a, b, [request(i, dst=VIP) for i in range(4)])
    assert {Ether(f)[IP].dst for f in out} == {WEB2["ip"]}
    before = b.stats()["drops"]["no_chain"]
    back = b.send([reply(i, src=WEB2["ip"]) for i in range(4)])
    assert b.stats()["drops"]["no_chain"] == before
    assert len(back) == 4 and all(stack(f)[1:] == (R, 254) for f in back)
    # The proxy restored the VIP on the way back; A runs NF0 and sends the
    # replies to the edge.
    assert {Ether(f)[IP].src for f in a.send(back)} == {VIP}


def test_a_pool_end_picks_the_server_by_destination_and_drops_others(harnesses):
    a, b = harnesses(), harnesses()
    a.manager.apply_plan(plan_a(a), make_nf)
    b.manager.apply_plan(plan_b(b, servers=[WEB1, WEB2]), make_nf)
    frames = [request(0, dst=WEB1["ip"]), request(1, dst=WEB2["ip"]), request(2, dst="10.0.1.99")]
    out = [Ether(f) for f in forward_through(a, b, frames)]
    assert {(p[IP].dst, p.dst) for p in out} == {(WEB1["ip"], WEB1["mac"]), (WEB2["ip"], WEB2["mac"])}
    assert b.stats()["drops"]["no_server"] == 1


def test_idle_pins_are_swept(harnesses):
    a, b = harnesses(), harnesses()
    a.manager.apply_plan(plan_a(a), make_nf)
    b.manager.apply_plan(plan_b(b), make_nf)
    forward_through(a, b, [request(i) for i in range(10)])
    assert b.stats()["pins"]["entries"] == 20
    b.manager.pin_idle_seconds = 0.0
    deadline = time.monotonic() + 30
    while b.stats()["pins"]["entries"] and time.monotonic() < deadline:
        b.send([])                   # the loop runs, the sweep passes
    pins = b.stats()["pins"]
    assert (pins["entries"], pins["expired"]) == (0, 20)
    b.manager.pin_idle_seconds = 300.0
    # The reply pins are gone: a tagged reply finds no way back.
    late = tagged(B, R, 255, IP(src=WEB1["ip"], dst=CLIENT) / TCP(sport=80, dport=40001), D)
    assert b.send([late]) == []
    assert b.stats()["drops"]["no_pin"] == 1


def test_a_full_pin_table_still_forwards_and_counts(harnesses):
    harnesses()                                   # the EAL, and the leak check
    in_port, rx, _unused = fp.ring_pair_port("pinsmall_in")
    out_port, _unused2, tx = fp.ring_pair_port("pinsmall_out")
    mgr = fp.Manager("small", ports=[in_port, out_port], pin_entries=64)
    try:
        plan = plan_of(A, None, [1], [{"spi": S, "si": 255, "local": 1},
                                      {"spi": S, "si": 254, "remote": [peer(B), peer(C)]}])
        plan["uplink"] = out_port
        mgr.apply_plan(plan, make_nf)
        frames = [bytes(request(i)) for i in range(200)]
        rx.fill(frames, len(frames))
        mgr.run(idle_seconds=0.05)
        out = tx.drain(keep=True)
        assert len(out) == 200
        pins = mgr.stats()["pins"]
        assert pins["full"] > 0 and pins["inserts"] + pins["full"] == 200
        assert pins["entries"] == pins["inserts"] <= 64
    finally:
        mgr.close()


def test_udp_and_other_protocols_pin_too(harnesses):
    h = harnesses()
    h.manager.apply_plan(remote_plan(h, [peer(B), peer(C)], 2), make_nf)
    frames = [Ether(dst=A["mac"]) / IP(src=CLIENT, dst="10.0.1.10") / UDP(sport=5, dport=6),
              Ether(dst=A["mac"]) / IP(src=CLIENT, dst="10.0.1.10", proto=47) / (b"x" * 20)]
    assert len(h.send(frames)) == 2
    assert h.stats()["pins"]["entries"] == 2


# ------------------------------------------------------------------ plan checks

def good_plan():
    return {
        "host": "B", "generation": 1, "node_label": 17, "mac": B["mac"],
        "instances": [{"id": 2, "nf": "monitor"}],
        "hops": [
            {"spi": S, "si": 254, "local": 2, "reverse": {"spi": R, "si": 254}},
            {"spi": S, "si": 253, "end": {"port": 0, "dst_mac": WEB1["mac"], "reply": R,
                                          "servers": [WEB1, WEB2]}},
            {"spi": R, "si": 255, "local": 2},
            {"spi": R, "si": 254, "remote": [peer(A)], "pinned": [peer(A)]},
        ],
    }


def test_the_good_plan_is_good():
    check_plan(good_plan())


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p["hops"][3].update(pinned={"host": "A"}),
     "plan.hops[3].pinned: must be a list of objects {host, label, mac}"),
    (lambda p: p["hops"][3].update(pinned=[{"host": "A", "label": 3, "mac": A["mac"]}]),
     "plan.hops[3].pinned[0].label: must be an integer label in 16..1048575, not 3"),
    (lambda p: p["hops"][3].update(pinned=[peer(A), dict(peer(C), label=16)]),
     "plan.hops[3].pinned[1].label: duplicate label 16"),
    (lambda p: p["hops"][3].update(pinned=[dict(peer(A), mac="nope")]),
     "plan.hops[3].pinned[0].mac: must be a MAC address"),
    (lambda p: p["hops"][3].update(pinned=["A"]),
     "plan.hops[3].pinned[0]: must be an object {host, label, mac}"),
    (lambda p: p["hops"][0].update(reverse=[R, 254]),
     "plan.hops[0].reverse: must be an object {spi, si}"),
    (lambda p: p["hops"][0].update(reverse={"spi": R, "si": 256}),
     "plan.hops[0].reverse.si: must be an integer 1..255, not 256"),
    (lambda p: p["hops"][0].update(reverse={"si": 254}),
     "plan.hops[0].reverse.spi: must be an integer label"),
    (lambda p: p["hops"][0].update(reverse={"spi": R, "si": 250}),
     f"plan.hops[0].reverse: names hop SPI {R} SI 250, which the plan does not have"),
    (lambda p: p["hops"][1]["end"].update(reply="R"),
     "plan.hops[1].end.reply: must be an integer label"),
    (lambda p: p["hops"][1]["end"].update(servers=[]),
     "plan.hops[1].end.servers: must be a non-empty list of objects {ip, mac[, ip6]}"),
    (lambda p: p["hops"][1]["end"].update(servers=[dict(WEB1, ip="10.0.1.300")]),
     "plan.hops[1].end.servers[0].ip: must be an IPv4 address, not '10.0.1.300'"),
    (lambda p: p["hops"][1]["end"].update(servers=[WEB1, dict(WEB2, ip=WEB1["ip"])]),
     "plan.hops[1].end.servers[1].ip: duplicate server address 10.0.1.10"),
    (lambda p: p["hops"][1]["end"].update(servers=[dict(WEB1, mac=None)]),
     "plan.hops[1].end.servers[0].mac: must be a MAC address"),
])
def test_bad_symmetric_keys_name_the_key(mutate, message):
    plan = good_plan()
    mutate(plan)
    with pytest.raises(PlanError) as err:
        check_plan(plan)
    assert any(e.startswith(message) for e in err.value.errors), err.value.errors
