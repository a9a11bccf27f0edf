"""The fast path answers liveness probes (contracts.wire.ETH_PROBE) in its
loop, with or without a plan, out of the port they came in by; chain
traffic in the same burst goes on as before; answers and garbage of the
probe EtherType are counted, never echoed.  Real DPDK, ring-backed ports;
the packet pool balances afterwards."""
import struct

from scapy.all import IP, UDP, Ether

from contracts import wire
from host_agent import fastpath as fp
from host_agent.harness import HOST_MAC, chain_plan, ensure_eal
from nflib.api import make_nf

CTL_MAC = "0e:00:00:00:00:01"


def probe(seq, kind=wire.PROBE_REQUEST, dst=HOST_MAC, length=wire.PROBE_LEN):
    body = struct.pack("!BBI8s", kind, 0, seq, b"opaque!!")
    frame = bytes(Ether(dst=dst, src=CTL_MAC, type=wire.ETH_PROBE)) + body
    return frame + bytes(max(0, length - len(frame)))


def run(manager):
    manager.run(idle_seconds=0.05)


UDP_FRAME = bytes(Ether(dst=HOST_MAC) / IP(src="10.1.0.1", dst="10.2.0.1")
                  / UDP(sport=1, dport=2) / b"payload!")


def forwarding(name, rx_ring, out_ring):
    """A manager whose chain forwards from one ring port to another:
    (manager, rx, tx of the first port, the second port's tx)."""
    port, rx, tx = fp.ring_pair_port(rx_ring)
    out_port, _, out = fp.ring_pair_port(out_ring)
    manager = fp.Manager(name, ports=[port, out_port])
    manager.apply_plan(chain_plan([("forward", None)], port, out_port), make_nf)
    return manager, rx, tx, out


def test_probes_are_answered_without_a_plan_on_their_own_port():
    ensure_eal()
    port, rx, tx = fp.ring_pair_port("prb0")
    manager = fp.Manager("probed", ports=[port])
    try:
        rx.fill([probe(seq) for seq in range(1, 11)], 10)
        run(manager)
        answers = [Ether(f) for f in tx.drain(keep=True)]
        assert len(answers) == 10
        for seq, a in zip(range(1, 11), answers):
            raw = bytes(a)
            assert (a.dst, a.src, a.type) == (CTL_MAC, HOST_MAC, wire.ETH_PROBE)
            kind, _, got, opaque = struct.unpack("!BBI8s", raw[14:28])
            assert (kind, got, opaque) == (wire.PROBE_ANSWER, seq, b"opaque!!")
            assert len(raw) == wire.PROBE_LEN
        st = manager.stats()
        assert st["probes"] == {"answered": 10, "ignored": 0}
        assert st["drops"]["no_plan"] == 0, "a probe is no packet of a chain"
    finally:
        manager.close()
    assert fp.pool_counts()[1] == 0, "mbufs leaked"


def test_answers_and_short_frames_are_counted_not_echoed_and_chains_go_on():
    ensure_eal()
    manager, rx, tx, out = forwarding("mixed", "prb1", "prb2")
    try:
        udp = UDP_FRAME
        frames = [probe(1), udp, probe(2, kind=wire.PROBE_ANSWER), udp,
                  probe(3)[:20], probe(4), udp]
        rx.fill(frames, len(frames))
        run(manager)
        answered = [struct.unpack("!I", f[16:20])[0] for f in tx.drain(keep=True)]
        assert answered == [1, 4]
        assert len(out.drain(keep=True)) == 3, "chain traffic is untouched"
        st = manager.stats()
        assert st["probes"] == {"answered": 2, "ignored": 2}
        assert st["instances"][1]["rx"] == 3
    finally:
        manager.close()
    assert fp.pool_counts()[1] == 0, "mbufs leaked"


def test_a_leaving_agent_answers_no_probe_and_its_chains_go_on():
    """host_agent.agent.leave: the controller must find the host gone while
    it still forwards what reaches it."""
    ensure_eal()
    manager, rx, tx, out = forwarding("leaving", "prb3", "prb4")
    try:
        manager.answer_probes = False
        rx.fill([probe(1), UDP_FRAME, probe(2)], 3)
        run(manager)
        assert tx.drain(keep=True) == [], "no probe answered"
        assert len(out.drain(keep=True)) == 1, "the chain's packet goes on"
        assert manager.stats()["probes"] == {"answered": 0, "ignored": 2}
    finally:
        manager.close()
    assert fp.pool_counts()[1] == 0, "mbufs leaked"
