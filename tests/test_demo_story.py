"""The demo's story picks its hosts when it runs (onvm.failover): the host
to fail is the busiest NF host that is no chain's egress (a chain of real
TCP connections counts, so the demo shows connections surviving), and the
host to drain is another such host.  A unit test of that choice on the
shipped leaf-spine and a placement like the controller's; the demo itself
runs as `make demo`."""
import types

from controller.topology import load_topology
from onvm.demo import TOPOLOGY, story
from onvm.failover import drain_candidate, failover_victim


def emu_with(placement, killed=()):
    topo = load_topology(TOPOLOGY)
    return types.SimpleNamespace(topo=topo, killed=set(killed), client_plans={"web": object()},
                                 placement=lambda: placement)


PLACEMENT = {   # chain -> [(nf, [hosts])], as Emulation.placement() gives it
    "web": [("firewall", ["h4"]), ("ids", ["h3", "h4"]), ("lb", ["h3", "h4"])],
    "vpn": [("firewall", ["h7"]), ("nat", ["h7"]), ("monitor", ["h7"])],
    "api": [("ddos", ["h5"]), ("ratelimit", ["h5", "h6"])],
    "transit": [("ddos", ["h6"]), ("monitor", ["h6"])],
}


def test_the_demo_fails_a_busy_nf_host_that_is_no_egress_and_drains_another():
    emu = emu_with(PLACEMENT)
    # h6 (api's egress) and h7 (vpn's) are egresses: never chosen while
    # another NF host is there; web's TCP chain counts for the demo only
    assert failover_victim(emu) == ("h5", ["api"])
    assert failover_victim(emu, tcp=True) == ("h3", ["web"])     # ties: by name
    assert drain_candidate(emu) == "h4"
    assert drain_candidate(emu_with(PLACEMENT, killed={"h3"})) == "h5"


def test_no_host_to_drain_but_the_busiest():
    only = {"web": [("firewall", ["h4"]), ("ids", ["h4"]), ("lb", ["h4"])]}
    assert drain_candidate(emu_with(only)) is None


def test_the_story_ramps_joins_drains_undrains_then_fails_in_that_order():
    events = story(45.0)(emu_with(PLACEMENT))
    assert [(at, action) for at, _, action, _ in sorted(events, key=lambda e: e[0])] == [
        (4.0, "offer"), (8, "add-host"), (20.0, "offer"), (21, "drain-other"),
        (27, "undrain-other"), (30, "fail-busiest")]
    (name, switch, port, mac, ip), = [arg for _, _, action, arg in events
                                       if action == "add-host"]
    topo = load_topology(TOPOLOGY)
    # a port nobody has, and addresses nobody has
    assert (name, switch, port) == ("h9", "leaf2", 7)
    assert (switch, port) not in {(p.switch, p.port) for p in (*topo.hosts, *topo.servers,
                                                                 *topo.edges)}
    assert (switch, port) not in {(l.a, l.a_port) for l in topo.links} | \
        {(l.b, l.b_port) for l in topo.links}
    assert mac not in {h.mac for h in topo.hosts}
    assert ip.split("/")[0] not in {p.ip.split("/")[0] for p in (*topo.hosts, *topo.servers)}
