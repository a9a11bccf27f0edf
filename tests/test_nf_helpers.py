"""Helpers the NF suite's tests share (no tests here): scapy frames and a
Harness that always closes and checks the packet pool balances."""
import contextlib
import time

from scapy.all import ICMP, IP, TCP, UDP, Ether, raw

from host_agent import fastpath as fp
from host_agent.harness import Harness, chain_plan
from nflib.api import make_nf

CLIENT_MAC = "02:00:00:00:0a:01"
HOST_MAC = "02:00:00:00:00:01"


def eth():
    return Ether(src=CLIENT_MAC, dst=HOST_MAC)


def tcp(src, dst, sport, dport, flags="S", payload=b"", seq=1000, ack=0):
    return raw(eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags,
                                                  seq=seq, ack=ack) / payload)


def udp(src, dst, sport, dport, payload=b""):
    return raw(eth() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)


def ping(src, dst, ident, type_=8, seq=1):
    return raw(eth() / IP(src=src, dst=dst) / ICMP(type=type_, id=ident, seq=seq) / b"ping")


def checksums_ok(frame):
    """True if the IP and L4 checksums of a frame are right (scapy recomputes
    them on a copy with the checksum fields deleted)."""
    pkt = Ether(frame)
    ip = pkt[IP]
    fresh = ip.copy()
    del fresh.chksum
    layers = [(ip.chksum, lambda p: p.chksum)]
    for layer in (TCP, UDP, ICMP):
        if layer in ip:
            del fresh[layer].chksum
            layers.append((ip[layer].chksum, lambda p, l=layer: p[l].chksum))
    fresh = IP(raw(fresh))
    return all(old == get(fresh) for old, get in layers)


def wait_for(condition, what, seconds=30.0):
    """Poll `condition()` until true; fail naming `what` after `seconds`
    (generous: a loaded machine is slow, never wrong)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {seconds} s"
        time.sleep(0.01)


@contextlib.contextmanager
def harness(nfs, nf_factory=make_nf):
    """A Harness over `nfs`; closed, and the pool checked, even on failure."""
    free_before = fp.pool_counts()[0] if fp.eal_running() else None
    h = Harness(nfs, nf_factory=nf_factory)
    try:
        yield h
    finally:
        h.close()
    if free_before is not None:
        assert fp.pool_counts()[0] == free_before, "mbufs leaked"


def replan(h, nfs, generation=2):
    """Run a new chain on the same Harness, e.g. with the out port's id in an
    NF's config (known only once the Harness made its ports)."""
    h.manager.apply_plan(chain_plan(nfs, h.in_port, h.out_port, generation=generation), make_nf)
