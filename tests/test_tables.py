"""The plan compiler (host_agent.tables) without DPDK: a checked plan in,
the flat arrays the fast path loads out.  What the loaded tables do with
real packets is tests/test_fastpath.py's."""
import pytest

from contracts.plan import PlanError, check_plan
from host_agent import tables
from host_agent.tables import HOP_END, HOP_LOCAL, HOP_REMOTE, SLOTS, compile_plan


def peer(label, weight=1.0):
    return {"host": f"h{label}", "label": label, "mac": f"02:00:00:00:00:{label:02x}",
            "weight": weight}


def plan(remote=None, instances=2, classifiers=None):
    insts = [{"id": 10 + i, "nf": "forward"} for i in range(instances)]
    insts[-1]["mode"] = "process"
    return check_plan({
        "host": "h1", "generation": 7, "node_label": 16, "mac": "02:00:00:00:00:01",
        "uplink": 2, "instances": insts,
        "classifiers": classifiers if classifiers is not None else [
            {"spi": 20, "match": {"ipv4_dst": "10.0.1.0/24", "tcp_dst": 80}},
            {"spi": 21, "match": {"udp_src": 53}}],
        "hops": [
            {"spi": 20, "si": 255, "local": 11},
            {"spi": 20, "si": 254, "remote": remote or [peer(17), peer(18, 3.0)]},
            {"spi": 20, "si": 253, "end": {"port": 1, "dst_mac": "02:00:00:00:00:aa"}},
            {"spi": 22, "si": 254, "local": 10},
        ],
    })


def test_header_and_instances():
    t = compile_plan(plan())
    assert (t.generation, t.node_label, t.uplink) == (7, 16, 2)
    assert t.mac == bytes.fromhex("020000000001")
    assert t.instances == ((10, "inline"), (11, "process"))


def test_hops_are_flat_columns_in_plan_order():
    t = compile_plan(plan())
    assert list(t.hop_spi) == [20, 20, 20, 22]
    assert list(t.hop_si) == [255, 254, 253, 254]
    assert list(t.hop_kind) == [HOP_LOCAL, HOP_REMOTE, HOP_END, HOP_LOCAL]
    # The slot is the instance's position in the plan, not its id.
    assert t.hop_slot[0] == 1 and t.hop_slot[3] == 0
    # Next hop: (SPI, SI - 1) where the plan has it, else -1.
    assert list(t.hop_next) == [1, 2, -1, -1]
    assert t.hop_port[2] == 1
    assert t.hop_dst_mac[12:18] == bytes.fromhex("0200000000aa")
    assert t.hop_of(20, 253) == 2 and t.hop_of(22, 255) is None


def test_remote_hop_slots_follow_the_weights():
    t = compile_plan(plan())
    assert t.hop_remote_off[1] == 0 and len(t.remote) == SLOTS
    assert list(t.peer_label) == [17, 18]
    assert t.peer_mac == bytes.fromhex("020000000011" "020000000012")
    share = sum(1 for p in t.remote if p == 1) / SLOTS
    assert 0.6 < share < 0.9        # weight 3 of 4


def test_reweighting_moves_only_the_slots_of_the_changed_peer():
    before = compile_plan(plan(remote=[peer(17), peer(18), peer(19)])).remote
    after = compile_plan(plan(remote=[peer(17), peer(18), peer(19, 2.0)])).remote
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    assert moved, "a heavier peer takes slots"
    assert all(a == 2 for _, a in moved)


def test_two_remote_hops_get_their_own_slots_and_peers():
    p = plan()
    p["hops"].append({"spi": 22, "si": 253, "remote": [peer(30)]})
    t = compile_plan(check_plan(p))
    assert t.hop_remote_off[4] == SLOTS
    assert set(t.remote[SLOTS:]) == {2}            # peers are numbered across hops
    assert list(t.peer_label) == [17, 18, 30]


def test_classifiers_as_acl_rules_and_first_hops():
    t = compile_plan(plan())
    assert t.acl_rules == ((6, None, "10.0.1.0/24", (0, 65535), (80, 80)),
                           (17, None, None, (53, 53), (0, 65535)))
    # SPI 21 has no hop here: its packets find no chain.
    assert list(t.class_hop) == [0, -1]


def test_too_many_instances_is_a_plan_error():
    p = plan(instances=tables.MAX_INSTANCES + 1)
    with pytest.raises(PlanError, match="at most 64 instances, this plan has 65"):
        compile_plan(p)


def test_no_classifiers_no_remote():
    p = plan(classifiers=[])
    p["hops"] = [h for h in p["hops"] if "remote" not in h]
    t = compile_plan(check_plan(p))
    assert t.acl_rules == () and len(t.class_hop) == 0
    assert len(t.remote) == 0 and len(t.peer_label) == 0 and t.peer_mac == b""
    assert list(t.hop_next) == [-1, -1, -1]


def test_symmetric_keys_as_columns():
    p = plan()
    p["hops"] += [
        {"spi": 20, "si": 252, "local": 10, "reverse": {"spi": 90, "si": 254}},
        {"spi": 20, "si": 251, "end": {"port": 1, "dst_mac": "02:00:00:00:00:aa", "reply": 90,
                                       "servers": [{"ip": "10.0.1.10", "mac": "02:00:00:00:01:10"},
                                                   {"ip": "10.0.1.11", "mac": "02:00:00:00:01:11"}]}},
        {"spi": 90, "si": 254, "remote": [peer(17)], "pinned": [peer(18), peer(19)]},
        {"spi": 90, "si": 253, "local": 10, "pinned": []},
    ]
    t = compile_plan(check_plan(p))
    # The remote hop's peers, then the pinned lists', each a run of the peer arrays.
    assert list(t.peer_label) == [17, 18, 17, 18, 19]
    assert (t.hop_peer_off[1], t.hop_npeers[1]) == (0, 2)
    assert (t.hop_peer_off[6], t.hop_npeers[6]) == (2, 1)
    assert (t.hop_pinned_off[6], t.hop_npinned[6]) == (3, 2)
    assert list(t.hop_flags) == [0, 0, 0, 0, 0, 0, tables.FLAG_PINNED, tables.FLAG_PINNED]
    assert t.hop_npinned[7] == 0, "an empty pinned list still means: look the pin up"
    assert list(t.hop_rev) == [-1, -1, -1, -1, 6, -1, -1, -1]
    assert list(t.hop_reply) == [0, 0, 0, 0, 0, 90, 0, 0]
    assert (t.hop_server_off[5], t.hop_nservers[5]) == (0, 2)
    assert list(t.server_ip) == [0x0a00010a, 0x0a00010b]
    assert t.server_mac == bytes.fromhex("020000000110" "020000000111")
