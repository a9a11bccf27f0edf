"""The monitor through the real fast path: a flow id the host's flow table
gives to a new flow after the old one aged out starts from zero, so no
counts leak from the old flow to the new."""
from host_agent.harness import Harness
from test_fastpath_flows import age_all
from test_nf_helpers import udp


def test_a_reused_flow_id_counts_the_new_flow_from_zero():
    h = Harness([("monitor", None)], flow_entries=8)
    try:
        old = [udp("10.1.0.1", "10.2.0.1", 1000 + i, 5000) for i in range(8)]
        for _ in range(3):
            assert len(h.send(old)) == 8
        mon = h.nf(1)
        assert sorted(mon.flow(i)[0] for i in range(8)) == [3] * 8
        age_all(h, 31)
        new = [udp("10.1.0.2", "10.2.0.1", 2000 + i, 5000) for i in range(8)]
        assert len(h.send(new)) == 8
        assert sorted(mon.flow(i)[0] for i in range(8)) == [1] * 8
        assert mon.counters()["flow_ids_reused"] == 8
    finally:
        h.close()
