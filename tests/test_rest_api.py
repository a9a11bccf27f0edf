"""Unit tests of the REST API: webob requests through Ryu's WSGIApplication
against a stand-in chain manager (real topology loader, real placement,
memory:// store).  The integration with the real ChainManager inside
ryu-manager is tested elsewhere."""
import json
import os

import pytest
from webob import Request

from controller import placement as pl
from controller.apps import rest_api
from controller.moves import Moves
from contracts.store import open_store
from controller.topology import load_topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINIMAL = os.path.join(ROOT, "topologies", "minimal.yaml")


class StandInManager:
    """What rest_api needs of ChainManager, done the plain way: check with
    the real placement, persist to the store, re-place at once."""

    def __init__(self, topo, store):
        self.topology = topo
        self.store = store
        self.checked = []
        for chain in topo.chains:
            store.put_chain(rest_api.chain_to_json(chain))
        self.placement = pl.place(topo)
        self.moves = Moves(store)

    def request_move(self, host, instance, to):
        return self.moves.request(self.topology, self.placement,
                                  set(self.store.hosts()), host, instance, to)

    def check_chains(self, chains):
        self.checked.append([c.name for c in chains])
        return pl.place(self.topology.with_chains(chains))

    def _replace(self):
        chains = rest_api.stored_chains(self).values()
        self.topology = self.topology.with_chains(chains)
        self.placement = pl.place(self.topology)

    def set_chain(self, chain):
        self.store.put_chain(chain)
        self._replace()

    def delete_chain(self, name):
        self.store.delete_chain(name)
        self._replace()


@pytest.fixture
def manager():
    return StandInManager(load_topology(MINIMAL), open_store("memory://"))


@pytest.fixture
def call(manager):
    app = rest_api.WSGIApplication()
    rest_api.register(app, lambda: manager)

    def call(method, path, body=None, raw=None):
        req = Request.blank("/onvm/v1" + path, method=method)
        if body is not None or raw is not None:
            req.body = raw if raw is not None else json.dumps(body).encode()
            req.content_type = "application/json"
        resp = req.get_response(app)
        assert resp.content_type == "application/json", resp.body
        return resp.status_int, json.loads(resp.body) if resp.body else None
    return call


NEW = {"name": "mail", "ingress": "internet", "egress": "h1",
       "match": {"ipv4_dst": "10.0.0.1/32", "ip_proto": 6, "tcp_dst": 25},
       "nfs": ["firewall"], "mpps": 0.5}


def test_get_topology_hosts_placement_stats(call, manager):
    status, topo = call("GET", "/topology")
    assert status == 200 and topo["name"] == "minimal"
    assert [h["name"] for h in topo["hosts"]] == ["h1", "h2"]
    assert topo["nfs"]["firewall"]["cores"] == 1
    manager.store.register_host("h1", {"version": "t"}, ttl=5, keepalive=False)
    manager.store.put_plan("h1", {"hops": []})
    manager.store.put_applied("h1", 1)
    status, hosts = call("GET", "/hosts")
    assert status == 200
    assert hosts["h1"]["alive"] is True and hosts["h2"]["alive"] is False
    assert hosts["h1"]["plan_generation"] == 1 and hosts["h1"]["applied_generation"] == 1
    assert hosts["h1"]["topology"]["label"] == 16
    status, placement = call("GET", "/placement")
    assert status == 200 and set(placement) == {"chains", "cost", "hosts", "solve_ms"}
    assert placement["chains"]["web"][0]["nf"] == "firewall"
    manager.store.put_stats("h1", {"ports": {"0": {"rx": 1}}})
    assert call("GET", "/stats") == (200, {"h1": {"ports": {"0": {"rx": 1}}}})


def test_create_get_change_delete_chain(call, manager):
    status, body = call("POST", "/chains", NEW)
    assert status == 201
    assert body == dict(NEW, mpps=0.5, spi=17)      # web has 16
    assert manager.store.get("/onvm/chains/mail") == body
    assert call("GET", "/chains/mail") == (200, body)
    assert set(call("GET", "/chains")[1]) == {"web", "mail"}
    assert "mail" in call("GET", "/placement")[1]["chains"]

    status, changed = call("PUT", "/chains/mail", dict(NEW, mpps=2.0, nfs=["monitor"]))
    assert status == 200 and changed["spi"] == 17 and changed["nfs"] == ["monitor"]
    assert manager.store.get_chain("mail")["mpps"] == 2.0

    assert call("DELETE", "/chains/mail") == (200, {"deleted": "mail"})
    assert manager.store.get_chain("mail") is None
    assert call("GET", "/chains/mail") == (404, {"error": "no chain mail"})


def _refused(call, manager, method, path, body=None, raw=None):
    before = manager.store.chains()
    placement = manager.placement
    status, reply = call(method, path, body, raw)
    assert set(reply) == {"error"}
    assert manager.store.chains() == before, "a refused request changed chains"
    assert manager.placement is placement
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
    (dict(NEW, egress="nowhere"), 400, "chain.egress: 'nowhere' is neither a host nor an edge"),
    (dict(NEW, spi=5), 400, "chain.spi: must be an integer 16..1048575, not 5"),
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


def test_change_keeps_spi_and_is_checked_with_all_chains(call, manager):
    call("POST", "/chains", NEW)
    manager.checked.clear()
    status, body = call("PUT", "/chains/web", {
        "ingress": "internet", "egress": "h2", "nfs": ["monitor"], "mpps": 1.0,
        "match": {"ipv4_dst": "10.0.0.2/32", "ip_proto": 6, "tcp_dst": 80}})
    assert status == 200 and body["spi"] == 16 and body["name"] == "web"
    assert sorted(manager.checked[0]) == ["mail", "web"]


def _alive(manager, *hosts):
    for host in hosts:
        manager.store.register_host(host, {"version": "t"}, ttl=30, keepalive=False)


def _firewall(manager):
    """(host, id) of the web chain's firewall."""
    (key, _), = manager.placement.hops["web"][0]
    return key


def test_move_is_accepted_and_listed(call, manager):
    host, iid = _firewall(manager)
    other = "h1" if host == "h2" else "h2"
    _alive(manager, "h1", "h2")
    status, body = call("POST", "/moves", {"host": host, "instance": iid, "to": other})
    assert status == 202
    assert body["move"] == {"host": host, "instance": iid, "nf": "firewall", "to": other,
                            "export_generation": None}
    assert call("GET", "/moves") == (200, {"moving": [body["move"]], "landing": []})


def _move_refused(call, manager, body):
    before = dict(manager.moves.pending)
    status, reply = _refused(call, manager, "POST", "/moves", body)
    assert manager.moves.pending == before, "a refused move was recorded"
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
    _alive(manager, "h1", "h2")
    got, error = _move_refused(call, manager, body)
    assert (got, error[:len(message)]) == (status, message), error


def test_move_to_a_dead_or_full_host_is_409(call, manager):
    import dataclasses
    _alive(manager, "h2")
    assert _move_refused(call, manager, {"host": "h2", "instance": 1, "to": "h1"}) == \
        (409, "move.to: h1 is not alive (no agent registered)")
    _alive(manager, "h1")
    manager.topology = dataclasses.replace(manager.topology, hosts=tuple(
        dataclasses.replace(h, cores=0) if h.name == "h1" else h
        for h in manager.topology.hosts))
    assert _move_refused(call, manager, {"host": "h2", "instance": 1, "to": "h1"}) == \
        (409, "move.to: h1 has 0 free cores; firewall needs 1")
    manager.topology = load_topology(MINIMAL)
    assert call("POST", "/moves", {"host": "h2", "instance": 1, "to": "h1"})[0] == 202
    assert _move_refused(call, manager, {"host": "h2", "instance": 1, "to": "h1"}) == \
        (409, "move: instance 1 of h2 is moving already (to h1)")


def test_no_manager_is_503():
    app = rest_api.WSGIApplication()
    rest_api.register(app, lambda: None)
    resp = Request.blank("/onvm/v1/chains").get_response(app)
    assert resp.status_int == 503
    assert json.loads(resp.body) == {"error": "the chain manager app is not running"}


def test_no_placement_yet_is_503(call, manager):
    manager.placement = None
    status, body = call("GET", "/placement")
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
    conf.write_text(run.config_text(MINIMAL, "memory://", ofp, wsapi))
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
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{wsapi}/onvm/v1/chains", timeout=1)
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
