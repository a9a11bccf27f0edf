"""The host key table under the flow and pin tables (host_agent/keytab.pxd),
on its own: every add, find, delete and bulk lookup agrees with a dict,
positions stay put while keys move to make room, a full table refuses one
more key and keeps the rest, and its bulk lookup finds what rte_hash's
finds.  Through the fast path it is tested by every flow and pin test."""
import pytest

from host_agent import keybench
from host_agent.harness import ensure_eal


@pytest.mark.parametrize("entries,ops,seed", [(8, 5000, 1), (64, 20000, 2), (4096, 60000, 3)])
def test_agrees_with_a_dict_and_fills_to_its_size(entries, ops, seed):
    counts = keybench.check(entries, ops, seed=seed)
    assert counts["adds"] and counts["deletes"] and counts["bulk"]
    assert counts["refused"] > 0        # the table was full at times (universe 3x)


@pytest.mark.parametrize("entries,universe", [(64, 0), (256, 600)])
def test_crowded_keys_move_to_make_room_and_none_is_lost(entries, universe):
    """All keys in 8 first buckets with 15 tags: adds move keys to their
    other buckets to make room, lookups meet tags of other keys; a refused
    add changes nothing (check() finds every key it was told of)."""
    counts = keybench.check(entries, 30000, seed=7, universe=universe, crowded=True)
    assert counts["paths"] > 0 and counts["refused"] > 0
    if entries == 256:
        assert counts["moves"] > counts["paths"]    # paths of more than one move


def test_bulk_lookup_finds_every_key_as_rte_hash_does():
    ensure_eal()
    for table in ("keytab", "rte_hash"):
        # raises FastPathError if a key it holds is not found
        assert keybench.lookup_cycles(5000, bursts=200, table=table) > 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="table"):
        keybench.lookup_cycles(10, bursts=1, table="cuckoo")
    with pytest.raises(ValueError, match="flows"):
        keybench.lookup_cycles(0, bursts=1)


def test_bench_command_reports_both_tables_and_refuses_bad_flows(capsys):
    import json
    import subprocess
    import sys
    from onvm.cli import main
    assert main(["bench", "keytab", "--flows", "0"]) == 2
    assert "--flows must be 1 .. 1048576, not 0" in capsys.readouterr().err
    out = subprocess.run([sys.executable, "-m", "onvm.cli", "bench", "keytab", "--flows",
                          "3000", "--rounds", "2", "--bursts", "50", "--json"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    got = json.loads(out)["cycles_per_key"]["3000"]
    assert got["keytab"] > 0 and got["rte_hash"] > 0
