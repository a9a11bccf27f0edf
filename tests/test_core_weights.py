"""The remote-node weights follow measured load and queues (issue 14, part 3), through
a real etcd: controller.core.ClusterCore reads the hosts' stats summaries
as agents put them under /onvm/stats/ and writes plans whose remote hop
weighs the busier host down; when the load moves, the weights move back.
The placement is forced by cores: the forward NF on one host, the chain's
two monitor instances on the two others, so its host picks
between them per flow.  (`onvm bench weights` measures what such weights
do to skewed traffic on a real fast path.)"""
import pytest

from contracts.store import open_store
from controller.core import STATS_DECIDE_SECONDS
from controller.topology import load_topology
from test_core import Loop

TOPOLOGY = """\
name: weights
switches:
  - {name: s1, dpid: 0x1}
hosts:
  - {name: h1, switch: s1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.0.1/24, cores: 1}
  - {name: h2, switch: s1, port: 2, mac: "02:00:00:00:00:02", ip: 10.0.0.2/24, cores: 1}
  - {name: h3, switch: s1, port: 3, mac: "02:00:00:00:00:03", ip: 10.0.0.3/24, cores: 1}
links: []
edges:
  - {name: internet, switch: s1, port: 10}
nfs:
  forward: {cores: 1, mpps: 10}
  monitor: {cores: 1, mpps: 1}
chains:
  - name: web
    ingress: internet
    egress: internet
    match: {ipv4_dst: 10.0.1.0/24}
    nfs: [forward, monitor]
    mpps: 1.5
"""


@pytest.fixture
def loop(etcd, tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_text(TOPOLOGY)
    return Loop(load_topology(str(path)), store=open_store(etcd.url))


def stats(mpps, queue=0):
    return {"instances": {"1": {"nf": "monitor", "mpps": mpps, "queue": queue}}}


def remote_weights(loop):
    """{host: weight} of the first NF host's hop toward the monitors, as
    the plan in etcd says; and that host."""
    for host, plan in loop.store.plans().items():
        for hop in plan["hops"]:
            if "remote" in hop:
                return host, {p["host"]: p["weight"] for p in hop["remote"]}
    raise AssertionError(f"no remote hop in {loop.store.plans()}")


def decide_on(loop, loads, queues=None):
    """The agents put their stats; the core decides on them (one period)."""
    for host, mpps in loads.items():
        value = stats(mpps, (queues or {}).get(host, 0))
        loop.store.put_stats(host, value)
        loop.core.store_changed("/onvm/stats/" + host, value)
    for _ in range(int(STATS_DECIDE_SECONDS / 0.25) + 1):
        loop.step()


@pytest.mark.etcd
def test_remote_weights_follow_the_load_the_hosts_report(loop):
    loop.register("h1", "h2", "h3")
    loop.step()
    source, shares = remote_weights(loop)
    a, b = sorted(shares)
    assert source not in (a, b) and abs(sum(shares.values()) - 1) < 1e-5, shares
    decide_on(loop, {a: 0.95, b: 0.2})         # a's monitor near its 1 Mpps
    _, weights = remote_weights(loop)
    assert weights[a] < shares[a] / 2 and weights[b] > shares[b], (shares, weights)
    decide_on(loop, {a: 0.1, b: 0.95})         # the load moved
    _, weights = remote_weights(loop)
    assert weights[b] < shares[b] / 2 and weights[a] > shares[a], (shares, weights)
    # the same Mpps, but a's NF ring (an NF process's) fills: its queue is
    # load the Mpps do not show yet, and a weighs less (join the shortest queue)
    decide_on(loop, {a: 0.3, b: 0.3}, queues={a: 3900})
    _, weights = remote_weights(loop)
    assert weights[a] < shares[a] / 2 and weights[b] > shares[b], (shares, weights)
