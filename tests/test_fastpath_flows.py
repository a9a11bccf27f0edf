"""The host's flow table through the real fast path (one EAL for this
process, ring-backed ports): entries age out (idle, sooner after a TCP
FIN or RST), a freed position serves a new flow with nothing of the old
one's, and a full table costs only the flows that find no room, counted,
until entries age.  The clock is moved with Manager.advance_clock: no
timed assertion."""
import time
import types

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from scapy.all import ICMP, IP, SCTP, TCP, UDP, Dot1Q, Ether, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, raw

from host_agent.bench import bench_frames
from host_agent.harness import HOST_MAC, chain_plan
from host_agent.metrics import AgentCollector
from nflib.api import make_nf
from test_fastpath import harnesses  # noqa: F401  (the fixture: closes, checks mbufs)

CHUNK = 4000        # frames per send: fits the ring (8192)


def send_all(h, frames):
    """Send in ring-sized chunks; returns how many came out."""
    out = 0
    for i in range(0, len(frames), CHUNK):
        out += len(h.send(frames[i:i + CHUNK]))
    return out


def age_all(h, seconds):
    """Move the loop's clock past the idle timeout and run the (idle) loop
    until its sweep has emptied the table."""
    h.manager.advance_clock(seconds)
    deadline = time.monotonic() + 60
    while h.stats()["flow_table"]["entries"]:
        assert time.monotonic() < deadline, h.stats()["flow_table"]
        h.manager.run(idle_seconds=0.02)


def test_200k_flows_through_65536_entries_are_all_cached_as_old_ones_age(harnesses):
    h = harnesses([("monitor", None)], flow_entries=1 << 16)
    frames = bench_frames(200_000)
    for first in range(0, len(frames), 40_000):
        assert send_all(h, frames[first:first + 40_000]) == 40_000
        table = h.stats()["flow_table"]
        assert table["entries"] == 40_000 and table["full"] == 0, (first, table)
        age_all(h, 31)
    table = h.stats()["flow_table"]
    assert (table["inserts"], table["expired"], table["full"], table["size"]) == \
        (200_000, 200_000, 0, 1 << 16)
    counters = h.nf(1).counters()
    assert counters["packets"] == 200_000 and counters["untracked"] == 0


def test_full_table_costs_each_flow_that_finds_no_room_and_recovers_after_aging(harnesses):
    h = harnesses([("monitor", None)], flow_entries=1024)
    frames = bench_frames(3000)
    assert send_all(h, frames[:2000]) == 2000        # served all the same
    table = h.stats()["flow_table"]
    assert table["entries"] == table["inserts"] <= 1024
    assert table["full"] == 2000 - table["inserts"] > 0
    assert h.nf(1).counters()["untracked"] == table["full"]
    # The same flows again, while the table is full of live entries: only
    # those that had no room are refused again.
    assert send_all(h, frames[:2000]) == 2000
    assert h.stats()["flow_table"]["full"] == 2 * table["full"]
    age_all(h, 31)
    assert send_all(h, frames[2000:2900]) == 900
    after = h.stats()["flow_table"]
    assert after["full"] == 2 * table["full"] and after["entries"] == 900
    assert h.nf(1).counters()["untracked"] == 2 * table["full"]


def test_a_flow_added_as_the_table_fills_is_found_by_its_next_packets(harnesses):
    """Three packets of each of 8 flows in one burst into an 8-entry table:
    the burst's lookups miss them all, the first packet of each adds it,
    and its later packets find it even though the table is now full."""
    h = harnesses([("monitor", None)], flow_entries=8)
    frames = bench_frames(8)
    assert send_all(h, frames * 3) == 24
    table = h.stats()["flow_table"]
    assert (table["entries"], table["inserts"], table["full"]) == (8, 8, 0)
    assert h.nf(1).counters()["untracked"] == 0


def test_a_reused_flow_id_keeps_nothing_of_the_old_flow(harnesses):
    """A position first held by a flow of the chain, then by a flow no
    classifier matches: the cached first hop is not inherited."""
    h = harnesses([("monitor", None)], flow_entries=8)
    plan = chain_plan([("monitor", None)], h.in_port, h.out_port,
                      match={"ipv4_dst": "10.2.0.0/16"}, generation=2)
    h.manager.apply_plan(plan, make_nf)
    ours = bench_frames(8)                  # to 10.2.0.1: the chain's
    assert send_all(h, ours) == 8
    assert h.stats()["flow_table"]["entries"] == 8
    age_all(h, 31)
    others = [raw(Ether(dst=HOST_MAC) / IP(src="10.1.0.1", dst="10.9.0.1") /
                  UDP(sport=1024 + i, dport=5000)) for i in range(8)]
    before = h.stats()["drops"]["no_chain"]
    assert send_all(h, others) == 0         # every position is reused
    assert h.stats()["drops"]["no_chain"] - before == 8
    table = h.stats()["flow_table"]
    assert (table["inserts"], table["full"]) == (16, 0)

def test_a_new_plan_classifies_live_flows_anew(harnesses):
    """A flow's first hop is cached in its flow record for the tables that
    classified it: a plan whose classifier no longer matches the flow
    takes it off the chain at once (no_chain), and one that matches again
    puts it back, while the flows live on in the table."""
    h = harnesses([("monitor", None)], flow_entries=64)
    def plan(dst, generation):
        return chain_plan([("monitor", None)], h.in_port, h.out_port,
                          match={"ipv4_dst": dst}, generation=generation)
    h.manager.apply_plan(plan("10.2.0.0/16", 2), make_nf)
    frames = bench_frames(8)                # to 10.2.0.1
    assert send_all(h, frames) == 8
    h.manager.apply_plan(plan("10.9.0.0/16", 3), make_nf)
    before = h.stats()["drops"]["no_chain"]
    assert send_all(h, frames) == 0
    assert h.stats()["drops"]["no_chain"] - before == 8
    h.manager.apply_plan(plan("10.2.0.0/16", 4), make_nf)
    assert send_all(h, frames) == 8
    table = h.stats()["flow_table"]
    assert (table["entries"], table["inserts"]) == (8, 8)


def test_the_flow_table_hashes_a_flow_as_the_parser_does(harnesses):
    """The loop looks flows up with the parser's hash (meta.flow_hash,
    keytab.pxd kt_lookup_bulk); the table hashes the keys it adds and
    deletes with its own function (pinkey.pxd flow_key_hash).  Were they
    to differ for some packet, its flow would be found only by the slow
    insert path, every packet: checked for each kind of packet the parser
    reads."""
    h = harnesses([("monitor", None)])
    e = Ether(dst=HOST_MAC)
    v4, v6 = dict(src="10.1.0.7", dst="10.2.0.9"), dict(src="2001:db8::7", dst="2001:db8:1::9")
    frames = [e / IP(**v4) / UDP(sport=1234, dport=53),
              e / IP(**v4) / TCP(sport=40000, dport=443, flags="S"),
              e / IP(**v4) / SCTP(sport=5000, dport=5001),
              e / IP(**v4) / ICMP(),
              e / IP(**v4, proto=47) / b"gre",
              e / IP(**v4, flags="MF") / UDP(sport=7, dport=9) / (b"x" * 40),
              e / IP(**v4, frag=3) / b"later fragment",
              e / Dot1Q(vlan=7) / IP(**v4) / UDP(sport=1, dport=2),
              e / IPv6(**v6) / UDP(sport=1234, dport=53),
              e / IPv6(**v6) / TCP(sport=40000, dport=443),
              e / IPv6(**v6) / IPv6ExtHdrHopByHop() / UDP(sport=3, dport=4),
              e / IPv6(**v6) / IPv6ExtHdrFragment(offset=0, m=1) / UDP(sport=5, dport=6),
              e / IPv6(**v6) / IPv6ExtHdrFragment(offset=8) / b"later fragment"]
    frames += [e / IP(src=f"10.{i % 250}.{i // 250}.1", dst="10.2.0.1") /
               UDP(sport=1024 + i, dport=5000 + i) for i in range(0, 5000, 7)]
    frames += [e / IPv6(src=f"2001:db8::{i:x}", dst="2001:db8:1::1") /
               TCP(sport=2000 + i, dport=80) for i in range(0, 5000, 7)]
    for f in frames:
        pair = h.manager.flow_hashes(raw(f))
        assert pair is not None, f.summary()
        assert pair[0] == pair[1], f.summary()
    assert len({h.manager.flow_hashes(raw(f))[0] for f in frames}) > len(frames) - 3


def tcp(flags, sport):
    return raw(Ether(dst=HOST_MAC) / IP(src="10.1.0.1", dst="10.2.0.1") /
               TCP(sport=sport, dport=80, flags=flags))


def test_fin_and_rst_shorten_a_flows_life(harnesses):
    h = harnesses([("monitor", None)])
    h.manager.flow_fin_seconds = 2
    assert len(h.send([tcp("S", 1000), tcp("S", 1001), tcp("S", 1002)])) == 3
    assert len(h.send([tcp("FA", 1000), tcp("R", 1001)])) == 2
    h.manager.advance_clock(3)
    deadline = time.monotonic() + 60
    while h.stats()["flow_table"]["entries"] != 1:
        assert time.monotonic() < deadline, h.stats()["flow_table"]
        h.manager.run(idle_seconds=0.02)
    assert h.stats()["flow_table"]["expired"] == 2
    age_all(h, 31)
    assert h.stats()["flow_table"]["expired"] == 3


def test_flow_table_in_prometheus(harnesses):
    h = harnesses([("monitor", None)], flow_entries=1024)
    send_all(h, bench_frames(1100))
    registry = CollectorRegistry()
    registry.register(AgentCollector(types.SimpleNamespace(manager=h.manager, host="h")))
    body = generate_latest(registry).decode()
    full = h.stats()["flow_table"]["full"]
    assert f'onvm_flow_table_entries{{host="h"}} {1100 - full}.0' in body
    assert f'onvm_flow_table_events_total{{event="inserts",host="h"}} {1100 - full}.0' in body
    assert f'onvm_flow_table_events_total{{event="full",host="h"}} {full}.0' in body
    assert 'onvm_flow_table_events_total{event="expired",host="h"} 0.0' in body


def test_a_reused_flow_id_gets_no_firewall_answer_of_the_old_flow(harnesses):
    """The firewall keeps its cached answer with the flow it was for
    (nfs/firewall.pyx flow_cached): a new flow on an aged id is classified
    afresh."""
    h = harnesses([("firewall", {"rules_text": "deny udp any any any 23\ndefault allow\n"})],
                  flow_entries=8)
    allowed = [raw(Ether(dst=HOST_MAC) / IP(src="10.1.0.1", dst="10.2.0.1") /
                   UDP(sport=1000 + i, dport=5000)) for i in range(8)]
    denied = [raw(Ether(dst=HOST_MAC) / IP(src="10.1.0.1", dst="10.2.0.1") /
                  UDP(sport=2000 + i, dport=23)) for i in range(8)]
    assert send_all(h, allowed) == 8
    age_all(h, 31)
    assert send_all(h, denied) == 0
