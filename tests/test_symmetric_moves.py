"""Issue 9, test 5: moving the nat and the lb of a symmetric chain, and
scaling its nat out, while real HTTP connections open and close through it
loses none of them.  A moved instance drains (controller/moves.py): the
old one keeps the flows pinned to it, those opened after its snapshot
included, while new flows go to the new one; a moved nat's successor
takes a slice of its own while the draining nat keeps its slice until it
goes, and a new nat instance takes a slice of its own.

topologies/symmetric.yaml with one more host (h5, on leaf2), so one host
is spare and an instance can move there, and a nat that serves 1.2 Mpps
(two instances carry the chain's 2 Mpps, three carry 2.6); everything real (etcd, OVS,
ryu-manager, agents, HTTP), as in tests/test_symmetric.py, whose
emulation ends before this one starts (one per namespace).
"""
import os

import pytest

from onvm import procs
from onvm.services import wait_for
from test_symmetric import CHAIN, instances, running

pytestmark = [pytest.mark.ovs, pytest.mark.etcd, pytest.mark.netns,
              pytest.mark.timeout(400)]

H4 = '  - {name: h4, switch: leaf2, port: 2, mac: "02:00:00:00:00:04", ip: 10.0.2.2/16, cores: 2}'
H5 = '  - {name: h5, switch: leaf2, port: 5, mac: "02:00:00:00:00:05", ip: 10.0.2.3/16, cores: 2}'
NAT = "nat: {cores: 1, mpps: 1.5,"
NAT_SLOWER = "nat: {cores: 1, mpps: 1.2,"
RATE = 8.0                      # connections a second during the moves
# A moved instance drains this long (users' default: 30 s): its pinned
# connections, opened before the new plans took effect, last milliseconds.
DRAIN_S = 8.0


@pytest.fixture(scope="module")
def emu(tmp_path_factory, run_prefix):
    workdir = tmp_path_factory.mktemp("symmetric-moves")
    with open(os.path.join(procs.REPO, "topologies", "symmetric.yaml")) as f:
        text = f.read()
    assert H4 in text
    topo = workdir / "symmetric-spare.yaml"
    assert NAT in text
    topo.write_text(text.replace(H4, H4 + "\n" + H5).replace(NAT, NAT_SLOWER))
    (workdir / "rules").symlink_to(os.path.join(procs.REPO, "topologies", "rules"))
    with running(topo, run_prefix, workdir, drain_seconds=DRAIN_S) as emulation:
        yield emulation


def move_under_load(emu, nf):
    """Move the first instance of `nf` to a host with a free core while the client
    opens RATE connections a second; returns (from host, to host, the
    instance's config before, the new instance's plan entry while the old
    one drained, the new instance's stats after the drain)."""
    plans = emu.store.plans()
    host, inst = next((h, i) for h, p in sorted(plans.items())
                      for i in p["instances"] if i["nf"] == nf)
    spare = next(h.name for h in emu.topo.hosts
                 if h.name not in dict(emu.placement(plans)[CHAIN])[nf]
                 and h.cores - sum(emu.topo.nfs[i["nf"]].cores for i in
                                   plans.get(h.name, {}).get("instances", [])) >= 1)
    before = emu.tcp(CHAIN)["ok"]
    emu.rest("POST", "/moves", {"host": host, "instance": inst["id"], "to": spare})
    wait_for(lambda: spare in dict(emu.placement()[CHAIN])[nf], 60,
             f"{nf} moved from {host} to {spare}")
    # the old instance drains beside the new one: in its host's plan, marked
    plans = emu.store.plans()
    old = [i for i in plans[host]["instances"] if i["id"] == inst["id"]]
    assert old and old[0].get("draining") is True, old
    assert old[0]["config"] == inst["config"], "a draining instance keeps its config"
    new = next(i for i in plans[spare]["instances"] if i["nf"] == nf)
    assert emu.rest("GET", "/moves")["draining"], "GET /moves lists the drain"
    wait_for(lambda: host not in dict(emu.placement()[CHAIN])[nf], DRAIN_S + 30,
             f"the drain of {nf}#{inst['id']} on {host} to end")
    # the moved instance carries new connections too
    wait_for(lambda: emu.tcp(CHAIN)["ok"] >= before + 5 * RATE, 60,
             "connections going on after the move")
    moved = next(v for (h, _), v in instances(emu, nf).items() if h == spare)
    return host, spare, inst["config"], new, moved


def test_moving_nat_and_lb_during_http_load_loses_no_connection(emu):
    emu.set_connection_rate(CHAIN, RATE)
    _, _, config, new, moved = move_under_load(emu, "nat")
    # both ran at once: the new nat took a slice of its own, disjoint
    assert new["config"]["slice"] != config["slice"]
    lo, hi = sorted([config["port_range"], new["config"]["port_range"]])
    assert lo[1] < hi[0], (config["port_range"], new["config"]["port_range"])
    assert moved["counters"]["slice"] == new["config"]["slice"]
    # the old slice is free again once the drain is over
    assert config["slice"] not in {i["config"]["slice"] for p in emu.store.plans().values()
                                   for i in p["instances"] if i["nf"] == "nat"}
    move_under_load(emu, "lb")
    emu.set_connection_rate(CHAIN, 0)
    wait_for(lambda: (lambda t: t["ok"] + t["failed"] == t["started"])(emu.tcp(CHAIN)), 30,
             "the last connections to finish")
    tcp = emu.tcp(CHAIN)
    assert tcp["ok"] > 10 * RATE, tcp
    # a connection opened after the old instance's snapshot stays on it
    # while it drains: none is lost
    assert tcp["failed"] == 0, tcp
    print(f"planned moves of nat and lb under load: {tcp}")


def test_scaling_the_nat_out_during_http_load_loses_no_connection(emu):
    """The chain asks for more than two nat instances carry: a third starts
    on a host with a free core and takes a free slice; the running
    connections keep their instances (pins), new ones reach the third too."""
    failed_before = emu.tcp(CHAIN)["failed"]       # a planned move's, above
    emu.set_connection_rate(CHAIN, RATE)
    nats = lambda: dict(emu.placement()[CHAIN])["nat"]
    assert len(nats()) == 2
    emu.rest("PUT", f"/chains/{CHAIN}", dict(emu.rest("GET", f"/chains/{CHAIN}"), mpps=2.6))
    wait_for(lambda: len(nats()) == 3, 60, "a third nat instance")
    wait_for(lambda: len(instances(emu, "nat")) == 3
             and all(v.get("rx", 0) > 0 for v in instances(emu, "nat").values()), 90,
             "the third nat instance carrying connections")
    ranges = sorted(tuple(v["counters"]["port_range"]) for v in instances(emu, "nat").values())
    assert len(set(ranges)) == 3
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:])), ranges    # disjoint slices
    emu.set_connection_rate(CHAIN, 0)
    wait_for(lambda: (lambda t: t["ok"] + t["failed"] == t["started"])(emu.tcp(CHAIN)), 30,
             "the last connections to finish")
    tcp = emu.tcp(CHAIN)
    assert tcp["failed"] == failed_before, tcp
