"""`onvm status`: the cluster as a real etcd holds it, in a table and as
JSON, and a clear error when the store does not answer."""
import json
import os
import subprocess
import sys

from contracts.store import LEADER, open_store
from onvm.services import free_port
from onvm.status import cluster_status, render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plan(host, gen, instances, hops):
    return {"host": host, "generation": gen, "node_label": 16, "mac": "02:00:00:00:00:01",
            "instances": instances, "hops": hops, "uplink": 0}


def fill(store):
    """Two hosts: h1 runs web's firewall, h2 its ids; h3 is written a plan
    but its agent is gone.  Starts from an empty tree (one etcd serves
    the module's tests)."""
    for key in list(store.get_prefix("/onvm/")):
        store.delete(key)
    store.put(LEADER, {"name": "ctl-a"})
    store.put_chain({"name": "web", "spi": 16, "ingress": "internet", "egress": "h4",
                     "match": {"ip_proto": 6}, "nfs": ["firewall", "ids"], "mpps": 2.0})
    store.register_host("h1", {"mac": "02:00:00:00:00:01", "cores": 4}, ttl=30)
    store.register_host("h2", {"mac": "02:00:00:00:00:02", "cores": 8}, ttl=30)
    h1 = plan("h1", 0, [{"id": 1, "nf": "firewall"}], [{"spi": 16, "si": 255, "local": 1}])
    h2 = plan("h2", 0, [{"id": 7, "nf": "ids"}], [{"spi": 16, "si": 254, "local": 7}])
    for _ in range(3):                     # the store numbers generations 1, 2, 3
        written = store.put_plan("h1", h1), store.put_plan("h2", h2)
    assert written == (3, 3)
    store.put_plan("h3", plan("h3", 0, [], []))
    store.put_applied("h1", 3)
    store.put_applied("h2", 2)
    store.put_stats("h1", {"ports": {"p0": {"rx_mpps": 1.25}},
                           "instances": {"1": {"mpps": 1.25, "drops": 10}},
                           "drops": {"nf_drop": 10, "no_chain": 0}})
    store.put_stats("h2", {"ports": {"p0": {"rx_mpps": 1.0}},
                           "instances": {"7": {"mpps": 1.0, "drops": 0}}, "drops": {}})


def test_status_of_a_cluster_in_etcd(etcd):
    store = open_store(etcd.url)
    try:
        fill(store)
        got = cluster_status(store)
    finally:
        store.close()
    assert got["leader"] == "ctl-a"
    h1, h2, h3 = got["hosts"]["h1"], got["hosts"]["h2"], got["hosts"]["h3"]
    assert (h1["alive"], h1["generation_written"], h1["generation_applied"]) == (True, 3, 3)
    assert (h2["generation_written"], h2["generation_applied"], h2["cores"]) == (3, 2, 8)
    assert h3["alive"] is False and h3["generation_applied"] is None
    assert h3["generation_written"] == 1
    assert h1["drops"] == {"nf_drop": 10} and h1["mpps_in"] == 1.25
    web = got["chains"]["web"]
    assert web["mpps_declared"] == 2.0 and web["mpps_measured"] == 1.25
    assert [(n["nf"], [(i["host"], i["id"]) for i in n["instances"]]) for n in web["nfs"]] \
        == [("firewall", [("h1", 1)]), ("ids", [("h2", 7)])]
    text = render(got)
    assert "h2         yes            2/3     1     8" in text
    assert "h3         NO" in text
    assert "web             16     2.000     1.250  firewall@h1 -> ids@h2" in text


def test_nf_process_cores_and_shared_cores_are_shown():
    store = open_store("memory://")
    store.put_chain({"name": "dns", "spi": 17, "nfs": ["firewall", "monitor"], "mpps": 1.0})
    store.register_host("h1", {"mac": "02:00:00:00:00:01", "cores": 2}, ttl=30)
    store.put_plan("h1", plan("h1", 0, [{"id": 1, "nf": "firewall", "mode": "process"},
                                        {"id": 2, "nf": "monitor", "mode": "process"}],
                              [{"spi": 17, "si": 255, "local": 1},
                               {"spi": 17, "si": 254, "local": 2}]))
    store.put_stats("h1", {"instances": {"1": {"core": 1}, "2": {"core": 1}},
                           "cores": {"manager": 0, "nf_processes": {"1": 1, "2": 1},
                                     "shared": [1]}})
    got = cluster_status(store)
    assert got["hosts"]["h1"]["cores_shared"] == [1]
    assert [i["core"] for n in got["chains"]["dns"]["nfs"] for i in n["instances"]] == [1, 1]
    text = render(got)
    assert "firewall@h1:core 1 -> monitor@h1:core 1" in text
    assert "cores shared (too few): 1" in text


def test_unplaced_nf_is_shown_as_such():
    store = open_store("memory://")
    store.put_chain({"name": "dns", "spi": 17, "nfs": ["firewall"], "mpps": 1.0})
    assert "firewall@UNPLACED" in render(cluster_status(store))


def test_a_retired_chain_is_shown_as_such():
    store = open_store("memory://")
    store.put_chain({"name": "dns", "spi": 17, "ingress": "internet", "nfs": ["firewall"],
                     "mpps": 1.0, "retired": True})
    got = cluster_status(store)
    assert got["chains"]["dns"]["retired"] is True
    assert "dns             17     1.000     0.000  RETIRED: placed nowhere, its " \
        "traffic dropped at internet" in render(got)


def test_cli_json_and_unreachable_store(etcd):
    store = open_store(etcd.url)
    try:
        fill(store)
    finally:
        store.close()
    out = subprocess.run([sys.executable, "-m", "onvm.cli", "status", "--store", etcd.url,
                          "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["hosts"]["h1"]["generation_applied"] == 3
    dead = f"http://127.0.0.1:{free_port()}"
    out = subprocess.run([sys.executable, "-m", "onvm.cli", "status", "--store", dead],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("onvm status: ") and dead in out.stderr
    assert "Traceback" not in out.stderr
