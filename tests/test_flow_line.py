"""The host's flow line through the real fast path (host_agent/flowline.pxd):
the per-flow records of the NFs a host runs inline share the flow table's
64-byte line a flow while there is room, the rest keep arrays of their
own, and the records of an instance that was removed are never read as a
new instance's, whether or not it gets the same bytes."""
from scapy.all import IP, UDP, Ether, raw

from host_agent.bench import bench_frames
from host_agent.harness import HOST_MAC, chain_plan
from nflib.api import make_nf
from test_fastpath import harnesses  # noqa: F401  (the fixture: closes, checks mbufs)
from test_fastpath_flows import age_all, send_all

ALLOW = {"rules_text": "allow udp any any any any\n"}


def records(h):
    """{instance id: (bytes a flow, on the flow line)} of NFs with records."""
    return {iid: (e["flow_records"]["bytes"], e["flow_records"]["on_flow_line"])
            for iid, e in h.stats()["instances"].items() if "flow_records" in e}


def counts(mon, n):
    return sorted(mon.flow(i)[0] for i in range(n))


def test_nfs_share_the_flow_line_while_it_has_room_and_count_alike(harnesses):
    """firewall (8 bytes) and monitor (24) fit the line's 40 bytes; a second
    firewall takes the last 8; a second monitor finds no room and keeps its
    own array.  Both monitors count every flow alike, both firewalls drop
    what their rule says."""
    chain = [("firewall", ALLOW), ("monitor", None), ("firewall", ALLOW), ("monitor", None)]
    h = harnesses(chain, flow_entries=64)
    assert records(h) == {1: (8, True), 2: (24, True), 3: (8, True), 4: (24, False)}
    frames = bench_frames(16)
    for _ in range(3):
        assert send_all(h, frames) == 16
    assert counts(h.nf(2), 16) == counts(h.nf(4), 16) == [3] * 16
    assert h.nf(2).counters()["flows"] == h.nf(4).counters()["flows"] == 16
    drop = {"rules_text": "deny udp any any any any\nallow any any any any any\n"}
    h.manager.apply_plan(chain_plan([("firewall", ALLOW), ("monitor", None),
                                     ("firewall", drop), ("monitor", None)],
                                    h.in_port, h.out_port, generation=2), make_nf)
    assert send_all(h, frames) == 0
    assert counts(h.nf(2), 16) == [4] * 16          # kept its records (same object)
    assert h.nf(3).counters()["dropped"] == 16


def test_a_new_instance_on_a_removed_ones_bytes_starts_every_flow_from_zero(harnesses):
    """Monitor 2 counts 16 flows on the line; a plan without it frees its
    bytes; monitor 5, made later for the same live flows (same ids, same
    flow_gen), gets those bytes and counts from zero: they were zeroed.
    (Without zeroing it would read monitor 2's counts as its own.)"""
    h = harnesses([("firewall", ALLOW), ("monitor", None)], flow_entries=64)
    frames = bench_frames(16)
    for _ in range(3):
        assert send_all(h, frames) == 16
    assert counts(h.nf(2), 16) == [3] * 16
    h.manager.apply_plan(chain_plan([("firewall", ALLOW)], h.in_port, h.out_port,
                                    generation=2), make_nf)
    assert send_all(h, frames) == 16
    h.manager.apply_plan(chain_plan([("firewall", ALLOW), ("monitor", None)], h.in_port,
                                    h.out_port, generation=3, first_id=4), make_nf)
    assert records(h) == {4: (8, True), 5: (24, True)}
    assert send_all(h, frames) == 16
    assert counts(h.nf(5), 16) == [1] * 16
    assert h.nf(5).counters()["flow_ids_reused"] == 0
    assert h.nf(5).counters()["flows"] == 16


def test_an_id_a_new_flow_takes_on_the_line_holds_nothing_of_the_old_flow(harnesses):
    """Flows age out and new ones take their ids (and lines): the monitor
    counts them from one and says the ids were reused; the firewall answers
    them by its rules, not by the old flows' cached answer."""
    deny_new = {"rules_text": "deny udp any any any 5000\nallow any any any any any\n"}
    h = harnesses([("firewall", deny_new), ("monitor", None)], flow_entries=8)
    assert records(h) == {1: (8, True), 2: (24, True)}

    def frames(dport):
        return [raw(Ether(dst=HOST_MAC) / IP(src="10.1.0.1", dst="10.2.0.1") /
                    UDP(sport=1000 + i, dport=dport)) for i in range(8)]
    for _ in range(2):
        assert send_all(h, frames(6000)) == 8
    assert counts(h.nf(2), 8) == [2] * 8
    age_all(h, 31)
    assert send_all(h, frames(5000)) == 0           # every id reused: new answers
    assert h.nf(1).counters()["dropped"] == 8
    age_all(h, 31)
    assert send_all(h, frames(6000)) == 8
    assert counts(h.nf(2), 8) == [1] * 8
    assert h.nf(2).counters()["flow_ids_reused"] == 8
    assert h.nf(2).counters()["flows"] == 8          # ids with counts, not flows seen
