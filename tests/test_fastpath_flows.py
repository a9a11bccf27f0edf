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
from scapy.all import IP, TCP, UDP, Ether, raw

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
