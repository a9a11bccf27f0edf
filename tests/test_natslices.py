"""controller.natslices: the cut of the nat port range and the stable
assignment of slices to nat instances (kept, handed on when moved, lowest
free for new ones, read back from stored plans)."""
import pytest

from controller import natslices
from controller.natslices import SlicesExhausted, assign, from_plans, slice_range


def test_slices_are_equal_disjoint_and_inside_the_range():
    cut = [slice_range([1024, 65535], 16, n) for n in range(16)]
    assert cut[0] == [1024, 5055] and cut[15][1] <= 65535
    ports = [p for lo, hi in cut for p in range(lo, hi + 1)]
    assert len(ports) == len(set(ports)) == 16 * 4032


def test_range_problems_name_the_numbers():
    assert natslices.range_problems([1024, 65535], 16, 16) == []
    assert natslices.range_problems([1024, 2047], 16, 1) == []    # 64 ports each
    small, = natslices.range_problems([1024, 2046], 16, 1)
    assert "gives each nat instance 63 ports" in small
    many, = natslices.range_problems([1024, 65535], 4, 5)
    assert many.startswith("the chains through nat need at least 5 instances")


def test_new_instances_take_the_lowest_free_slices_in_key_order():
    assert assign({}, [("h2", 1), ("h1", 3)]) == {("h1", 3): 0, ("h2", 1): 1}


def test_an_instance_keeps_its_slice_and_a_gone_one_frees_it():
    first = assign({}, [("h1", 1), ("h2", 1), ("h3", 1)])
    second = assign(first, [("h1", 1), ("h3", 1), ("h4", 2)])
    assert second == {("h1", 1): 0, ("h3", 1): 2, ("h4", 2): 1}


def test_a_moved_instance_hands_its_slice_to_its_successor():
    first = assign({}, [("h1", 1), ("h2", 1)])
    moved = assign(first, [("h1", 1), ("h3", 4)], moves={("h2", 1): ("h3", 4)})
    assert moved == {("h1", 1): 0, ("h3", 4): 1}


def test_a_clash_in_previous_keeps_one_owner():
    assert assign({("a", 1): 0, ("b", 1): 0}, [("a", 1), ("b", 1)]) == {
        ("a", 1): 0, ("b", 1): 1}


def test_more_instances_than_slices_is_refused():
    with pytest.raises(SlicesExhausted, match="3 nat instances but the port range "
                                              "has only 2 slices"):
        assign({}, [("h1", 1), ("h2", 1), ("h3", 1)], slices=2)


def test_a_new_leader_reads_the_slices_back_from_the_plans():
    plans = {"h1": {"instances": [{"id": 1, "nf": "nat", "config": {"slice": 3}},
                                  {"id": 2, "nf": "monitor", "config": {}}]},
             "h2": {"instances": [{"id": 1, "nf": "nat", "config": {"file": "x.yaml"}}]}}
    assert from_plans(plans) == {("h1", 1): 3}
    assert assign(from_plans(plans), [("h1", 1), ("h2", 1)]) == {("h1", 1): 3, ("h2", 1): 0}
