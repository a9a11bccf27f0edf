"""nflib.sharing: the split of one budget among limiters by demand, and
sketches and block lists merged, without store, thread or clock."""
import ipaddress

import pytest

from nflib import sharing


def test_split_over_the_budget_goes_by_demand_after_a_floor():
    shares = sharing.split(3000, [6000, 3000, 0])
    assert sum(shares) == pytest.approx(3000)
    floor = 3000 * sharing.FLOOR / 3
    assert shares[2] == pytest.approx(floor), "an idle limiter keeps the floor"
    assert shares[0] == pytest.approx(floor + (3000 - 3 * floor) * 2 / 3)
    assert shares[0] == pytest.approx(2 * shares[1] - floor)


def test_split_under_the_budget_gives_each_its_demand_and_an_even_part_of_the_rest():
    assert sharing.split(3000, [1500, 600, 0]) == pytest.approx([1800, 900, 300])
    assert sharing.split(900, [0, 0, 0]) == [300, 300, 300]
    assert sharing.split(900, []) == []
    assert sharing.split(900, [5]) == [900]
    assert sharing.split(900, [900, 0]) == pytest.approx([810 + 45, 45]), "at the budget: floor"


def test_split_refuses_negative_figures():
    with pytest.raises(ValueError,
                       match=r"split: budget 10 and demands \[1, -1\] must not be negative"):
        sharing.split(10, [1, -1])


def test_chain_shares_sum_the_peers_budgets_and_split_by_demand():
    mine = {16: {"budget": 1000, "demand": 4000}, 17: {"budget": 50, "demand": 10}}
    peers = [{16: {"budget": 1000, "demand": 1000}}, {16: {"budget": 1000, "demand": 0}},
             {18: {"budget": 7, "demand": 7}}]
    got = sharing.chain_shares(mine, peers, floor=0.0)
    assert got[16] == (pytest.approx(3000 * 4 / 5), 3)
    assert got[17] == (50, 1), "a chain no peer limits keeps its whole budget"


def test_demand_is_a_smoothed_rate_and_starts_over_when_the_counter_goes_back():
    d = sharing.Demand()
    assert d.update(100, 10.0) == 0.0           # first sample: no rate yet
    assert d.update(200, 11.0) == pytest.approx(sharing.EWMA * 100)
    r = d.update(400, 12.0)
    assert r == pytest.approx(sharing.EWMA * 200 + (1 - sharing.EWMA) * sharing.EWMA * 100)
    assert d.update(5, 13.0) == r               # a new NF object: no sample
    assert d.update(105, 14.0) == pytest.approx(sharing.EWMA * 100 + (1 - sharing.EWMA) * r)


def test_sparse_sketches_add_and_keep_the_biggest_counters():
    a = [[3, 10], [7, 1]]
    b = [[3, 5], [9, 2]]
    assert sharing.add_sparse([a, b]) == {3: 15, 7: 1, 9: 2}
    assert sharing.sparse({3: 15, 7: 1, 9: 2, 4: 2}, cutoff=2, limit=2) == [[3, 15], [4, 2]]


def test_block_lists_unite_with_the_longest_hold():
    got = sharing.union_blocked([[["192.0.2.1", 2.0, 0], ["2001:db8::66", 5.0, 1]],
                                 [["192.0.2.1", 9.0, 1]], []])
    assert got == {"192.0.2.1": [9.0, 1], "2001:db8::66": [5.0, 1]}


def test_block_lists_carry_whole_addresses_and_take_older_agents_numbers():
    # Two IPv6 sources of one CRC digest (the fast path's meta.key.src)
    # stay two; an older agent's number for 192.0.2.1 (its bytes read
    # little-endian) is the same source as its text; junk is left out.
    from ipv6crc import collide, crc32c
    victim = "2001:db8:1::10"
    attacker = collide(victim, "2001:db8:66::")
    assert crc32c(ipaddress.IPv6Address(victim).packed) == \
        crc32c(ipaddress.IPv6Address(attacker).packed)
    old = int.from_bytes(bytes([192, 0, 2, 1]), "little")
    got = sharing.union_blocked([[[attacker, 4.0, 0], [old, 7.0, 1]],
                                 [["192.0.2.1", 3.0, 0], ["2001:DB8:1:0::10", 1.0, 1],
                                  ["not an address", 9.0, 0], [2 ** 40, 9.0, 0]]])
    assert got == {attacker: [4.0, 0], victim: [1.0, 1], "192.0.2.1": [7.0, 1]}


def test_peers_go_stale_unless_nobody_can_be_heard():
    p = sharing.Peers(stale_s=3.0)
    p.heard("/onvm/share/ratelimit/h2/1", {"x": 1}, 10.0)
    p.heard("/onvm/share/ddos/h2/2", {"y": 1}, 12.0)
    assert set(p.fresh(12.5, "/onvm/share/ratelimit/")) == {"/onvm/share/ratelimit/h2/1"}
    assert p.fresh(14.0, "/onvm/share/ratelimit/") == {}
    assert set(p.fresh(14.0)) == {"/onvm/share/ddos/h2/2"}
    p.heard("/onvm/share/ddos/h2/2", None, 14.0)
    assert p.fresh(14.0) == {}


def test_ddos_sketches_add_only_under_one_seed():
    from host_agent.sharer import ddos_peers, seed_digest
    mine = {"spis": [16], "shape": [4, 8192, seed_digest(7)]}
    same = {"spis": [16, 17], "shape": [4, 8192, seed_digest(7)]}
    other_seed = {"spis": [16], "shape": [4, 8192, seed_digest(8)]}
    old_agent = {"spis": [16], "shape": [4, 8192]}          # before seeds: never added
    other_chain = {"spis": [18], "shape": [4, 8192, seed_digest(7)]}
    assert ddos_peers(mine, [same, other_seed, old_agent, other_chain]) == [same]
    assert seed_digest(7) != seed_digest(8) and len(seed_digest(7)) == 16
