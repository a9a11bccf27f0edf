"""The REST API: webob requests through Ryu's WSGIApplication against the
real cluster core (controller.core.ClusterCore) with a real topology,
real placement and a memory:// store (one test with a real etcd), stepped
by hand as the chain manager's loop steps it.  ryu-manager serving the
API is tested at the end of this file; the core inside ryu-manager with
switches in test_chain_manager_ovs."""
import dataclasses
import json
import os

import pytest
from webob import Request

from contracts.store import open_store
from controller import apiauth
from controller.apps import rest_api
from controller.core import ClusterCore
from controller.topology import load_topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINIMAL = os.path.join(ROOT, "topologies", "minimal.yaml")
TOKEN = "test-write-token-0123456789"
TOKENS = apiauth.Tokens(TOKEN.encode())


class Cluster:
    """A core and its store, stepped one loop turn at a time (fake clock)."""

    def __init__(self, topo, store):
        self.store = store
        self.core = ClusterCore(topo, store)
        self.now = 0.0
        self.leases = {}

    def step(self):
        self.now += 0.25
        return self.core.step(self.now, leading=True)

    def register(self, *hosts):
        for host in hosts:
            self.leases[host] = self.store.register_host(
                host, {"version": "t"}, ttl=60, keepalive=False)
        self.core.store_changed("/onvm/hosts/")

    def lose(self, host):
        """Its key goes, and the clock moves past the liveness policy's
        grace and settle times (controller.liveness), so the next step
        believes it."""
        self.leases.pop(host).stop(revoke=True)
        self.core.store_changed("/onvm/hosts/" + host)
        self.step()
        self.now += self.core.liveness.grace_s + self.core.liveness.settle_s


def _cluster(topo, store, hosts=("h1", "h2")):
    cluster = Cluster(topo, store)
    cluster.register(*hosts)
    cluster.step()          # leads: seeds the file's chain, places, writes plans
    return cluster


@pytest.fixture
def manager():
    return _cluster(load_topology(MINIMAL), open_store("memory://"))


def _client(cluster):
    app = rest_api.WSGIApplication()
    rest_api.register(app, lambda: cluster.core, TOKENS)

    def call(method, path, body=None, raw=None):
        """One request, then one turn of the controller's loop."""
        req = Request.blank("/onvm/v1" + path, method=method,
                            headers={"Authorization": f"Bearer {TOKEN}"})
        if body is not None or raw is not None:
            req.body = raw if raw is not None else json.dumps(body).encode()
            req.content_type = "application/json"
        resp = req.get_response(app)
        cluster.step()
        assert resp.content_type == "application/json", resp.body
        return resp.status_int, json.loads(resp.body) if resp.body else None
    return call


@pytest.fixture
def call(manager):
    return _client(manager)


NEW = {"name": "mail", "ingress": "internet", "egress": "h1",
       "match": {"ipv4_dst": "10.0.0.1/32", "ip_proto": 6, "tcp_dst": 25},
       "nfs": ["firewall"], "mpps": 0.5}


def test_get_topology_hosts_placement_stats(call, manager):
    status, topo = call("GET", "/topology")
    assert status == 200 and topo["name"] == "minimal"
    assert [h["name"] for h in topo["hosts"]] == ["h1", "h2"]
    assert topo["nfs"]["firewall"]["cores"] == 1
    manager.store.put_applied("h1", 1)
    status, hosts = call("GET", "/hosts")
    assert status == 200
    plans = manager.store.plans()
    for name in ("h1", "h2"):
        assert hosts[name]["alive"] is hosts[name]["serving"] is True
        assert hosts[name]["plan_generation"] == plans[name]["generation"]
    assert hosts["h1"]["applied_generation"] == 1
    assert hosts["h2"]["applied_generation"] is None
    assert hosts["h1"]["topology"]["label"] == 16
    status, placement = call("GET", "/placement")
    assert status == 200 and set(placement) == {"chains", "cost", "hosts", "solve_ms"}
    assert placement["chains"]["web"][0]["nf"] == "firewall"
    assert placement["solve_ms"] > 0, "the placement's solve time is measured"
    assert placement["solve_ms"] == round(manager.core.solve_ms, 3)
    manager.store.put_stats("h1", {"ports": {"0": {"rx": 1}}})
    assert call("GET", "/stats") == (200, {"h1": {"ports": {"0": {"rx": 1}}}})


def test_a_lost_host_shows_and_loses_its_plan(call, manager):
    manager.lose("h1")
    manager.step()
    status, hosts = call("GET", "/hosts")
    assert status == 200
    assert (hosts["h1"]["alive"], hosts["h1"]["serving"]) == (False, False)
    assert hosts["h1"]["plan_generation"] is None
    assert hosts["h2"]["serving"] is True
    status, placement = call("GET", "/placement")
    assert placement["hosts"]["h1"]["cores_used"] == 0


@pytest.fixture(params=["memory", "etcd"])
def any_store(request):
    if request.param == "memory":
        yield open_store("memory://")
        return
    store = open_store(request.getfixturevalue("etcd").url)
    for key in store.get_prefix("/onvm/"):
        store.delete(key)
    yield store
    store.close()


def test_create_get_change_delete_chain(any_store):
    manager = _cluster(load_topology(MINIMAL), any_store)
    call = _client(manager)
    status, body = call("POST", "/chains", NEW)
    assert status == 201
    assert body == dict(NEW, mpps=0.5, spi=17)      # web has 16
    assert manager.store.get("/onvm/chains/mail") == body
    assert call("GET", "/chains/mail") == (200, body)
    assert set(call("GET", "/chains")[1]) == {"web", "mail"}
    assert "mail" in call("GET", "/placement")[1]["chains"]
    assert any(c["spi"] == 17 for p in manager.store.plans().values()
               for c in p["classifiers"]) or any(
        h["spi"] == 17 for p in manager.store.plans().values() for h in p["hops"])

    status, changed = call("PUT", "/chains/mail", dict(NEW, mpps=2.0, nfs=["monitor"]))
    assert status == 200 and changed["spi"] == 17 and changed["nfs"] == ["monitor"]
    assert manager.store.get_chain("mail")["mpps"] == 2.0
    mail = call("GET", "/placement")[1]["chains"]["mail"]
    assert [hop["nf"] for hop in mail] == ["monitor"]

    status, reply = call("DELETE", "/chains/mail")
    assert status == 200 and (reply["retired"], reply["traffic"]) == (True, "dropped")
    assert manager.store.get_chain("mail") == dict(changed, retired=True)
    assert call("GET", "/chains/mail") == (200, dict(changed, retired=True))
    assert set(call("GET", "/placement")[1]["chains"]) == {"web"}
    status, reply = call("DELETE", "/chains/mail?traffic=forward")
    assert status == 200 and (reply["retired"], reply["traffic"]) == (False, "forwarded")
    assert manager.store.get_chain("mail") is None
    assert call("GET", "/chains/mail") == (404, {"error": "no chain mail"})


def _refused(call, manager, method, path, body=None, raw=None):
    before = manager.store.chains()
    placement = manager.core.placement()
    status, reply = call(method, path, body, raw)
    assert set(reply) == {"error"}
    assert manager.store.chains() == before, "a refused request changed chains"
    assert manager.core.placement() == placement
    return status, reply["error"]


@pytest.mark.parametrize("body, status, message", [
    (dict(NEW, colour="red"), 400, "chain: unknown field(s) colour; known: name,"),
    ({"name": "x"}, 400, "chain: missing field(s) ingress, egress, match, nfs, mpps"),
    (dict(NEW, name="a b"), 400, "chain.name: must be 1..64 letters"),
    ([1, 2], 400, "chain: must be a JSON object"),
    (dict(NEW, match={"tcp_dst": 70000}), 400, "chain.match.tcp_dst: must be 0..65535"),
    (dict(NEW, match={"vlan": 3}), 400, "chain.match.vlan: unknown match field"),
    (dict(NEW, match={"ipv4_dst": "10.0.0.300/32"}), 400, "chain.match.ipv4_dst:"),
    (dict(NEW, match={}), 400, "chain.match: must be a non-empty mapping"),
    (dict(NEW, nfs=["firewall", "dpi"]), 400,
     "chain.nfs[1]: NF type 'dpi' is not in the catalog (nfs: firewall, monitor)"),
    (dict(NEW, nfs=[]), 400, "chain.nfs: must be a list of 1..255 NF types"),
    (dict(NEW, mpps=0), 400, "chain.mpps: must be a number > 0, not 0"),
    (dict(NEW, ingress="h1"), 400, "chain.ingress: 'h1' is not an edge of topology minimal"),
    (dict(NEW, egress="nowhere"), 400, "chain.egress: 'nowhere' is not a host, a server or an edge"),
    (dict(NEW, spi=5), 400, "chain.spi: must be an integer 16..524287 (a symmetric chain's replies use SPI + 2^19), not 5"),
    (dict(NEW, spi=16), 409, "chain.spi: SPI 16 is already used by chain web"),
    (dict(NEW, name="web"), 409, "chain web exists; change it with PUT /onvm/v1/chains/web"),
    (dict(NEW, match={"ipv4_dst": "10.0.0.2/32", "ip_proto": 6, "tcp_dst": 80}), 409,
     "chain.match: same ingress and match as chain web"),
    (dict(NEW, mpps=100.0), 409, "chain mail: cannot be placed: "),
])
def test_wrong_chain_is_refused_and_changes_nothing(call, manager, body, status, message):
    got_status, error = _refused(call, manager, "POST", "/chains", body)
    assert (got_status, error[:len(message)]) == (status, message), error


def test_bad_json_and_unknown_chains(call, manager):
    status, error = _refused(call, manager, "POST", "/chains", raw=b"{nope")
    assert status == 400 and error.startswith("body is not JSON: Expecting property name")
    assert _refused(call, manager, "PUT", "/chains/nope", NEW) == (404, "no chain nope")
    assert _refused(call, manager, "DELETE", "/chains/nope") == (404, "no chain nope")
    status, error = _refused(call, manager, "PUT", "/chains/web", dict(NEW, name="other"))
    assert status == 400 and "cannot be renamed" in error
    status, error = _refused(call, manager, "PUT", "/chains/web",
                             dict(NEW, name="web", mpps=100.0))
    assert status == 409 and error.startswith("chain web: cannot be placed: ")


def _at_ingress(core, tcp_dst):
    """Kinds of the ingress rules (classifier or chain_drop) for `tcp_dst`
    that the core wants on the switches now."""
    return sorted(f.kind for rules in core.desired.values() for f in rules.flows
                  if f.kind in ("classifier", "chain_drop")
                  and dict(f.match).get("tcp_dst") == tcp_dst)


def test_delete_retires_the_chain_its_traffic_dropped_until_released(call, manager):
    """DELETE fails closed: the chain is placed nowhere, its record stays
    (retired), its match is dropped at its ingress; its SPI and match stay
    reserved; only ?traffic=forward lets the traffic go, and says so."""
    status, mail = call("POST", "/chains", NEW)
    assert status == 201 and _at_ingress(manager.core, 25) == ["classifier"]
    cores = sum(h["cores_used"] for h in call("GET", "/placement")[1]["hosts"].values())
    status, reply = call("DELETE", "/chains/mail")
    assert status == 200, reply
    assert reply == {"deleted": "mail", "retired": True, "traffic": "dropped",
                     "detail": "chain mail retired: placed nowhere; its traffic is "
                               "dropped and counted at ingress internet until "
                               "released with DELETE /onvm/v1/chains/mail?traffic=forward"}
    assert manager.store.get("/onvm/chains/mail") == dict(mail, retired=True)
    assert _at_ingress(manager.core, 25) == ["chain_drop"]
    placed = call("GET", "/placement")[1]
    assert set(placed["chains"]) == {"web"}
    assert sum(h["cores_used"] for h in placed["hosts"].values()) < cores
    assert call("GET", "/chains")[1]["mail"] == dict(mail, retired=True)
    assert set(manager.core.chains()) == {"web"}
    assert set(manager.core.retired_chains()) == {"mail"}
    # a second plain DELETE (a retry) changes nothing
    status, reply = call("DELETE", "/chains/mail?traffic=drop")
    assert (status, reply["retired"]) == (200, True)
    assert reply["detail"].startswith("chain mail was retired already")
    assert _at_ingress(manager.core, 25) == ["chain_drop"]
    # its match and SPI stay reserved; PUT is refused
    hint = "(retired: its traffic is dropped until released with DELETE " \
           "/onvm/v1/chains/mail?traffic=forward)"
    other = dict(NEW, name="smtp")
    assert _refused(call, manager, "POST", "/chains", other) == (
        409, f"chain.match: same ingress and match as chain mail {hint}; the edge "
             "switch could not tell them apart")
    assert _refused(call, manager, "POST", "/chains", dict(
        other, match={"ipv4_dst": "10.0.0.1/32", "ip_proto": 6, "tcp_dst": 26},
        spi=17)) == (409, f"chain.spi: SPI 17 is already used by chain mail {hint}")
    assert _refused(call, manager, "PUT", "/chains/mail", NEW) == (
        409, "chain mail is retired (its traffic is dropped); create it again with "
             "POST /onvm/v1/chains, or release its traffic with DELETE "
             "/onvm/v1/chains/mail?traffic=forward")
    assert _refused(call, manager, "DELETE", "/chains/mail?traffic=open")[0] == 400
    assert _refused(call, manager, "DELETE", "/chains/mail?force=1") == (
        400, "unknown query parameter(s) force; known: traffic")
    # a new controller (restart, failover) reads it back from the store
    again = ClusterCore(manager.core.topo, manager.store)
    again.step(manager.now, leading=True)
    assert _at_ingress(again, 25) == ["chain_drop"]
    # released: the record goes, and nothing holds the match any more
    status, reply = call("DELETE", "/chains/mail?traffic=forward")
    assert status == 200, reply
    assert reply == {"deleted": "mail", "retired": False, "traffic": "forwarded",
                     "detail": "chain mail deleted: its traffic now takes plain "
                               "forwarding to its destination, through none of its NFs"}
    assert manager.store.get_chain("mail") is None
    assert _at_ingress(manager.core, 25) == []
    assert call("POST", "/chains", other)[0] == 201


def test_post_creates_a_retired_chain_again_with_its_spi(call, manager):
    assert call("POST", "/chains", NEW)[1]["spi"] == 17
    assert call("DELETE", "/chains/mail")[1]["retired"] is True
    status, body = call("POST", "/chains", dict(NEW, nfs=["monitor"]))
    assert (status, body["spi"], body["nfs"]) == (201, 17, ["monitor"])
    assert "retired" not in manager.store.get_chain("mail")
    assert _at_ingress(manager.core, 25) == ["classifier"]
    assert [hop["nf"] for hop in call("GET", "/placement")[1]["chains"]["mail"]] == \
        ["monitor"]


def test_a_malformed_stored_chain_is_not_retired_but_can_be_deleted(call, manager):
    manager.store.put_chain({"name": "bad", "spi": 30})
    assert _refused(call, manager, "DELETE", "/chains/bad") == (
        409, "chain bad is malformed in the store, so nothing steers or drops its "
             "traffic; delete it with DELETE /onvm/v1/chains/bad?traffic=forward")
    assert call("DELETE", "/chains/bad?traffic=forward")[0] == 200
    assert manager.store.get_chain("bad") is None


def test_deleting_with_forward_at_once_skips_retiring(call, manager):
    assert call("POST", "/chains", NEW)[0] == 201
    assert call("DELETE", "/chains/mail?traffic=forward")[1]["traffic"] == "forwarded"
    assert manager.store.get_chain("mail") is None
    assert _at_ingress(manager.core, 25) == []


SERVED = os.path.join(ROOT, "tests", "served.yaml")
SHOP = {"name": "shop", "ingress": "internet", "egress": ["web1", "web2"],
        "match": {"ipv4_dst": "10.0.1.101/32", "ip_proto": 6, "tcp_dst": 80},
        "nfs": ["nat", "lb"], "mpps": 0.5}


@pytest.fixture
def served():
    cluster = _cluster(load_topology(SERVED), open_store("memory://"),
                       hosts=("h1", "h2", "h3", "h4"))
    return cluster, _client(cluster)


def test_a_pool_chain_is_symmetric_by_default_and_gets_its_reverse_path(served):
    manager, call = served
    status, body = call("POST", "/chains", SHOP)
    assert status == 201 and body == dict(SHOP, spi=18, symmetric=True)
    assert manager.store.get_chain("shop") == body
    chain = manager.core.chains()["shop"]
    assert (chain.egress, chain.pool, chain.symmetric) == ("web1", ("web1", "web2"), True)
    hops = [h for p in manager.store.plans().values() for h in p["hops"]]
    assert any(h["spi"] == 18 | (1 << 19) for h in hops)
    assert any(h.get("end", {}).get("reply") == 18 | (1 << 19) for h in hops)
    status, body = call("PUT", "/chains/shop", dict(SHOP, symmetric=False))
    assert status == 200 and body["symmetric"] is False
    assert not any(h["spi"] == 18 | (1 << 19) for p in manager.store.plans().values()
                   for h in p["hops"])


@pytest.mark.parametrize("body, message", [
    (dict(SHOP, egress="internet", symmetric=True),
     "chain: symmetric needs a server or a pool of servers as egress; edge internet "
     "has no way back"),
    (dict(SHOP, egress="h2", symmetric=True),
     "chain: symmetric needs a server or a pool of servers as egress; host h2 has no "
     "way back"),
    (dict(SHOP, symmetric="yes"), "chain.symmetric: must be true or false, not 'yes'"),
    (dict(SHOP, nfs=["nat", "monitor"]),
     "chain.egress: a pool of servers needs an lb in the chain's nfs"),
    (dict(SHOP, egress=["web1", "h1"]),
     "chain.egress[1]: host h1 is not a server of topology served; a pool holds "
     "servers only"),
    (dict(SHOP, egress=[]), "chain.egress: must be a host, a server or an edge, or a "
                            "list of servers (a pool), not []"),
    (dict(SHOP, spi=1 << 19), "chain.spi: must be an integer 16..524287"),
])
def test_a_wrong_symmetric_or_pool_chain_is_refused(served, body, message):
    manager, call = served
    status, error = _refused(call, manager, "POST", "/chains", body)
    assert (status, error[:len(message)]) == (400, message), error


def test_change_keeps_spi_and_is_checked_with_all_chains(call, manager):
    # minimal: two hosts of 4 cores; a monitor serves 14 Mpps, a firewall 8
    assert call("POST", "/chains", dict(NEW, nfs=["monitor"] * 3, mpps=14.0))[0] == 201
    web = {"ingress": "internet", "egress": "h2", "nfs": ["firewall"] * 6, "mpps": 8.0,
           "match": {"ipv4_dst": "10.0.0.2/32", "ip_proto": 6, "tcp_dst": 80}}
    status, error = _refused(call, manager, "PUT", "/chains/web", web)
    assert (status, error[:29]) == (409, "chain web: cannot be placed: "), error
    assert call("DELETE", "/chains/mail")[1]["retired"] is True   # frees its cores
    status, body = call("PUT", "/chains/web", web)      # alone, its 6 cores fit
    assert status == 200 and body["spi"] == 16 and body["name"] == "web"
    placed = call("GET", "/placement")[1]
    assert [hop["nf"] for hop in placed["chains"]["web"]] == ["firewall"] * 6
    assert sum(h["cores_used"] for h in placed["hosts"].values()) == 6


def _firewall(manager):
    """(host, id) of the web chain's firewall."""
    (key, _), = manager.core.current.hops["web"][0]
    return key


def test_move_is_accepted_and_listed(call, manager):
    host, iid = _firewall(manager)
    other = "h1" if host == "h2" else "h2"
    status, body = call("POST", "/moves", {"host": host, "instance": iid, "to": other})
    assert status == 202
    assert body["move"] == {"host": host, "instance": iid, "nf": "firewall", "to": other,
                            "export_generation": None}
    assert call("GET", "/moves") == (200, {"moving": [body["move"]], "landing": [],
                                           "draining": []})
    plan = manager.store.get_plan(host)
    exported = [i["id"] for i in plan["instances"] if i.get("export")]
    assert exported == [iid], "the plan written after the request asks for the state"
    # host's agent publishes the snapshot; within a second the move lands
    manager.store.put_stats(host, {"instances": {str(iid): {
        "state": {"flows": []}, "state_generation": plan["generation"]}}})
    manager.core.store_changed("/onvm/stats/" + host)
    for _ in range(5):
        manager.step()
    (new_host, new_id), = [key for key, _ in manager.core.current.hops["web"][0]]
    assert new_host == other
    # the firewall holds no flow state: the old one retires a moment
    # (what is in flight toward it still finds it), then goes
    status, moves = call("GET", "/moves")
    assert (status, moves["moving"], moves["landing"]) == (200, [], [
        {"host": other, "instance": new_id}])
    assert [(d["host"], d["instance"], d["nf"]) for d in moves["draining"]] == \
        [(host, iid, "firewall")]
    given = [i for i in manager.store.get_plan(other)["instances"] if i["id"] == new_id]
    assert given[0]["state"] == {"flows": []}


def _move_refused(call, manager, body):
    before = manager.core.moves()
    status, reply = _refused(call, manager, "POST", "/moves", body)
    assert manager.core.moves() == before, "a refused move was recorded"
    return status, reply


@pytest.mark.parametrize("body, status, message", [
    ([1], 400, "move: must be a JSON object, not [1]"),
    ({"host": "h2", "instance": 1, "to": "h1", "now": 1}, 400,
     "move: unknown field(s) now; known: host, instance, to"),
    ({"host": "h2", "to": "h1"}, 400, "move: missing field(s) instance"),
    ({"host": "h2", "instance": "1", "to": "h1"}, 400,
     "move.instance: must be an instance id (an integer), not '1'"),
    ({"host": 2, "instance": 1, "to": "h1"}, 400, "move.host: must be a host name, not 2"),
    ({"host": "h9", "instance": 1, "to": "h1"}, 404,
     "move.host: 'h9' is not a host of topology minimal"),
    ({"host": "h2", "instance": 1, "to": "h9"}, 404,
     "move.to: 'h9' is not a host of topology minimal"),
    ({"host": "h2", "instance": 42, "to": "h1"}, 404, "move.instance: h2 runs no instance 42"),
    ({"host": "h2", "instance": 1, "to": "h2"}, 400, "move.to: instance 1 already runs on h2"),
])
def test_wrong_move_is_refused_and_changes_nothing(call, manager, body, status, message):
    assert _firewall(manager) == ("h2", 1)
    got, error = _move_refused(call, manager, body)
    assert (got, error[:len(message)]) == (status, message), error


def test_move_to_a_dead_or_full_host_is_409():
    topo = load_topology(MINIMAL)
    full_h1 = dataclasses.replace(topo, hosts=tuple(
        dataclasses.replace(h, cores=0) if h.name == "h1" else h for h in topo.hosts))
    manager = _cluster(full_h1, open_store("memory://"))
    call = _client(manager)
    assert _firewall(manager) == ("h2", 1)
    assert _move_refused(call, manager, {"host": "h2", "instance": 1, "to": "h1"}) == \
        (409, "move.to: h1 has 0 free cores; firewall needs 1")

    manager = _cluster(topo, open_store("memory://"), hosts=("h2",))
    call = _client(manager)
    assert _move_refused(call, manager, {"host": "h2", "instance": 1, "to": "h1"}) == \
        (409, "move.to: h1 is not alive (no agent registered)")
    manager.register("h1")
    manager.step()
    assert call("POST", "/moves", {"host": "h2", "instance": 1, "to": "h1"})[0] == 202
    assert _move_refused(call, manager, {"host": "h2", "instance": 1, "to": "h1"}) == \
        (409, "move: instance 1 of h2 is moving already (to h1)")


def test_no_manager_is_503():
    app = rest_api.WSGIApplication()
    rest_api.register(app, lambda: None, TOKENS)
    resp = Request.blank("/onvm/v1/chains", headers={"Authorization": f"Bearer {TOKEN}"}
                         ).get_response(app)
    assert resp.status_int == 503
    assert json.loads(resp.body) == {"error": "the chain manager app is not running"}


def test_no_placement_yet_is_503():
    manager = _cluster(load_topology(MINIMAL), open_store("memory://"), hosts=())
    status, body = _client(manager)("GET", "/placement")
    assert status == 503 and "no placement yet" in body["error"]


# --- the API served by ryu-manager, configured the way `onvm controller` does

def test_config_text_and_example_reach_the_onvm_options(tmp_path):
    from oslo_config import cfg as oslo
    from controller import config, run
    path = tmp_path / "onvm.conf"
    path.write_text(run.config_text(MINIMAL, "http://127.0.0.1:1234", 7000, 7001, True))
    for config_file, topology, store in [
            (str(path), MINIMAL, "http://127.0.0.1:1234"),
            (os.path.join(ROOT, "controller", "onvm.conf.example"),
             "topologies/leaf-spine.yaml", "http://127.0.0.1:2379")]:
        conf = oslo.ConfigOpts()
        config.register(conf)
        conf(args=["--config-file", config_file], default_config_files=[])
        assert (conf.onvm.topology, conf.onvm.store) == (topology, store)
        assert conf.onvm.leader_ttl == 1.0


def test_ryu_manager_serves_the_api_from_a_generated_config(tmp_path):
    import socket
    import subprocess
    import urllib.error
    import urllib.request
    from controller import run
    from onvm.services import free_port, wait_for
    ofp, wsapi = free_port(), free_port()
    conf = tmp_path / "onvm.conf"
    # No token file named: ryu-manager makes one in the state dir.
    conf.write_text(run.config_text(MINIMAL, "memory://", ofp, wsapi,
                                    onvm={"state_dir": str(tmp_path / "state")}))
    # The REST app and Ryu's OpenFlow handler (which the chain manager pulls
    # in); the chain manager itself is another module's test.
    argv, env = run.ryu_command(str(conf), apps=("controller.apps.rest_api",
                                                 "ryu.controller.ofp_handler"))
    log = open(tmp_path / "ryu.log", "wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=str(tmp_path))
    try:
        def get_chains():
            assert proc.poll() is None, (tmp_path / "ryu.log").read_text()
            token_file = tmp_path / "state" / apiauth.TOKEN_NAME
            if not token_file.exists():
                return None
            req = urllib.request.Request(f"http://127.0.0.1:{wsapi}/onvm/v1/chains", headers={
                "Authorization": "Bearer " + token_file.read_text().strip()})
            try:
                urllib.request.urlopen(req, timeout=1)
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())
        status, body = wait_for(get_chains, 20, "ryu-manager's REST API")
        assert (status, body) == (503, {"error": "the chain manager app is not running"})
        with socket.create_connection(("127.0.0.1", ofp), timeout=2):
            pass                    # the OpenFlow port from the config file
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.mark.parametrize("topology, store, message", [
    ("/nonexistent.yaml", "memory://", "onvm controller: /nonexistent.yaml: cannot read"),
    (MINIMAL, "http://127.0.0.1:1", "onvm controller: http://127.0.0.1:1: etcd does not answer"),
    (MINIMAL, "ftp://x", "onvm controller: ftp://x: not a store URL"),
])
def test_onvm_controller_refuses_bad_inputs_before_starting_ryu(topology, store, message):
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "onvm.cli", "controller",
                          "--topology", topology, "--store", store],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith(message), res.stderr


def test_a_full_store_is_a_503_that_names_it_and_changes_nothing(call, manager, monkeypatch):
    """etcd at its quota (NOSPACE) refuses the write: the API answers 503
    with the store's own message (the alarm and the fix), not a 500, and
    the chain is not there."""
    from contracts.store_api import store_full_error

    def full(*_):
        raise store_full_error("http://127.0.0.1:2379", "put /onvm/chains/mail")
    monkeypatch.setattr(manager.store, "put_chain", full)
    status, body = call("POST", "/chains", NEW)
    assert status == 503
    assert "store failed" in body["error"] and "alarm" in body["error"]
    status, _ = call("GET", "/chains/mail")
    assert status == 404
