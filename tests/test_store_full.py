"""A store that fills up: a real etcd with a 4 MiB quota, filled by writes
until it raises its NOSPACE alarm.  The client must say so in a StoreFull
that names the alarm and the fix, log it once, keep reading and keeping
leases alive, and take writes again once an operator frees space
(compaction, defragmentation, `alarm disarm`, here through etcd's API).

Not here: agents and traffic through a full store (test_etcd_members.py).
"""
import json
import logging
import time
import urllib.request

import pytest

import contracts.store as st
from onvm import services

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]

QUOTA = 4 * 1024 * 1024


@pytest.fixture
def small_etcd(tmp_path):
    with services.EtcdServer(workdir=str(tmp_path), quota_bytes=QUOTA) as server:
        yield server


def etcd_api(url, path, body):
    req = urllib.request.Request(url + "/v3" + path, data=json.dumps(body).encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def fill(store, limit=400):
    """Put 100 KB values until the store refuses; the StoreFull raised."""
    for i in range(limit):
        try:
            store.put(st.STATS + "filler", {"i": i, "pad": "x" * 100_000})
        except st.StoreFull as err:
            return i, err
    raise AssertionError(f"{limit} puts of 100 KB fit in a {QUOTA} byte quota")


def test_a_full_store_says_nospace_and_the_fix_once_and_recovers(small_etcd, caplog):
    store = st.open_store(small_etcd.url)
    lease = store.register_host("h1", {"mac": "02:00:00:00:00:01"}, ttl=1)
    store.put_chain({"name": "web", "nfs": ["firewall"]})
    with caplog.at_level(logging.ERROR, logger="contracts.store"):
        written, err = fill(store)
        with pytest.raises(st.StoreFull):
            store.put_applied("h1", 3)
        with pytest.raises(st.StoreFull):
            store.lease(2, keepalive=False)          # a new lease is a write too
    assert written > 0
    text = str(err)
    assert small_etcd.url in text and "NOSPACE" in text
    assert "etcdctl alarm disarm" in text and "defrag" in text and "compact" in text
    assert isinstance(err, st.StoreError)
    nospace_logs = [r for r in caplog.records if "NOSPACE" in r.getMessage()]
    assert len(nospace_logs) == 1, [r.getMessage() for r in caplog.records]
    assert store.full and store.full_refusals >= 3
    alarms = etcd_api(small_etcd.url, "/maintenance/alarm", {"action": "GET"})
    assert [a["alarm"] for a in alarms["alarms"]] == ["NOSPACE"]
    # Reads go on, and the host's lease is kept alive: its key stays.
    assert store.get_chain("web") == {"name": "web", "nfs": ["firewall"]}
    time.sleep(2.5)                                  # 2.5 lease TTLs
    assert lease.alive and "h1" in store.hosts()
    # The operator's fix, as docs/deploy.md gives it.
    revision = etcd_api(small_etcd.url, "/kv/range", {"key": "AA=="})["header"]["revision"]
    store.compact(int(revision))
    etcd_api(small_etcd.url, "/maintenance/defragment", {})
    member = etcd_api(small_etcd.url, "/maintenance/status", {})["header"]["member_id"]
    etcd_api(small_etcd.url, "/maintenance/alarm",
             {"action": "DEACTIVATE", "memberID": member, "alarm": "NOSPACE"})
    with caplog.at_level(logging.WARNING, logger="contracts.store"):
        store.put_applied("h1", 3)
    assert store.get_applied("h1") == 3 and not store.full
    assert any("takes writes again" in r.getMessage() for r in caplog.records)
    lease.stop()
    store.close()
