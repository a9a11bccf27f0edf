"""Draining a host (POST /onvm/v1/hosts/NAME/drain and /undrain) through
the REST app and the real cluster core, stepped with a memory:// store:
its instances go to other hosts while the old ones drain on it (weight 0,
their pinned flows stay), it takes none until undrained; an unknown host
is a 404, a drain with nowhere to go a 409 that changes nothing."""
from contracts.store import open_store
from controller.moves import RETIRE_SECONDS
from controller.topology import load_topology
from test_rest_api import MINIMAL, _client, _cluster


def instances_on(cluster, host, draining=None):
    plan = cluster.store.plans().get(host) or {}
    return [i for i in plan.get("instances", [])
            if draining is None or bool(i.get("draining")) == draining]


def test_a_drained_host_hands_its_instances_over_and_takes_none_until_undrained():
    cluster = _cluster(load_topology(MINIMAL), open_store("memory://"))
    call = _client(cluster)
    busy = next(h for h in ("h1", "h2") if instances_on(cluster, h))
    other = "h2" if busy == "h1" else "h1"
    before = instances_on(cluster, busy)
    status, body = call("POST", f"/hosts/{busy}/drain")
    assert (status, body) == (200, {"host": busy, "drained": True, "changed": True})
    cluster.step()
    # what ran there now runs elsewhere (firewall and monitor hold no flow
    # state: they retire, listed by no hop, for what is in flight, then
    # stop; lb, nat and the stateful firewall would drain their flows)
    assert instances_on(cluster, busy, draining=False) == []
    assert {i["nf"] for i in instances_on(cluster, busy)} == {i["nf"] for i in before}
    assert not any("remote" in hop and busy in {p["host"] for p in hop["remote"]}
                   for plan in cluster.store.plans().values() for hop in plan["hops"])
    assert {i["nf"] for i in before} <= {i["nf"] for i in instances_on(cluster, other)}
    for _ in range(int(RETIRE_SECONDS / 0.25) + 1):
        cluster.step()
    assert instances_on(cluster, busy) == []
    status, hosts = call("GET", "/hosts")
    assert hosts[busy]["drained"] is True and hosts[busy]["serving"] is True
    assert call("POST", f"/hosts/{busy}/drain")[1]["changed"] is False
    # a second host has nowhere to send its instances: refused, nothing changed
    plans = cluster.store.plans()
    status, body = call("POST", f"/hosts/{other}/drain")
    assert status == 409 and f"host {other} not drained" in body["error"], body
    assert call("GET", "/hosts")[1][other]["drained"] is False
    assert cluster.store.plans() == plans
    status, body = call("POST", f"/hosts/{busy}/undrain")
    assert (status, body["changed"]) == (200, True)
    assert call("GET", "/hosts")[1][busy]["drained"] is False


def test_draining_an_unknown_host_is_a_404():
    cluster = _cluster(load_topology(MINIMAL), open_store("memory://"))
    call = _client(cluster)
    for verb in ("drain", "undrain"):
        status, body = call("POST", f"/hosts/h9/{verb}")
        assert status == 404 and body["error"] == "no host 'h9' in the topology"
