"""The store of record: every test runs against memory:// and a real etcd."""
import threading
import time

import pytest

from contracts import store as st
from onvm.services import wait_for


def holds(cond, seconds, what, interval=0.1):
    """Assert `cond()` is true all through `seconds` (checked every
    `interval`): what a property that must last is, unlike a wait_for."""
    deadline = time.monotonic() + seconds
    while True:
        assert cond(), f"{what} stopped holding"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


@pytest.fixture(params=["memory", "etcd"])
def store(request):
    if request.param == "memory":
        s = st.open_store("memory://")
    else:
        server = request.getfixturevalue("etcd")
        s = st.open_store(server.url)
        # Tests share one etcd per module: start each from an empty tree.
        for key, _ in s._range(st.PREFIX)[0]:
            s.delete(key)
        if s.get(st.LEADER) is not None:
            s.delete(st.LEADER)
    try:
        yield s
    finally:
        s.close()


def test_put_get_delete_prefix(store):
    assert store.get("/onvm/x/a") is None
    store.put("/onvm/x/a", {"n": 1})
    store.put("/onvm/x/b", [1, 2])
    store.put("/onvm/y", "other")
    assert store.get("/onvm/x/a") == {"n": 1}
    assert store.get_prefix("/onvm/x/") == {"/onvm/x/a": {"n": 1}, "/onvm/x/b": [1, 2]}
    assert store.delete("/onvm/x/a") is True
    assert store.delete("/onvm/x/a") is False
    assert store.get_prefix("/onvm/x/") == {"/onvm/x/b": [1, 2]}


def test_key_without_json_names_key_and_url(store):
    store._put("/onvm/chains/bad", "{not json", None)
    with pytest.raises(st.StoreError, match=r"key /onvm/chains/bad does not hold JSON") as err:
        store.chains()
    assert store.url in str(err.value)


def test_chains_roundtrip_under_design_keys(store):
    chain = {"name": "web", "ingress": "internet", "egress": "h4",
             "nfs": ["firewall"], "mpps": 2.0, "match": {"tcp_dst": 80}}
    store.put_chain(chain)
    assert store.get("/onvm/chains/web") == chain
    assert store.chains() == {"web": chain}
    assert store.get_chain("web") == chain
    with pytest.raises(ValueError, match="non-empty \"name\""):
        store.put_chain({"nfs": []})
    assert store.delete_chain("web") is True
    assert store.chains() == {}


def test_plan_generations_grow_and_applied_reported(store):
    assert store.get_plan("h1") is None
    assert store.put_plan("h1", {"host": "h1", "generation": 0, "hops": []}) == 1
    assert store.put_plan("h1", {"host": "h1", "generation": 0, "hops": [1]}) == 2
    assert store.get("/onvm/plan/h1") == {"host": "h1", "generation": 2, "hops": [1]}
    assert store.get_applied("h1") is None
    store.put_applied("h1", 2)
    assert store.get_applied("h1") == 2
    assert store.get("/onvm/applied/h1")["generation"] == 2
    assert store.plans() == {"h1": store.get_plan("h1")}


def test_stats(store):
    store.put_stats("h1", {"ports": {"0": {"rx": 5}}})
    assert store.get("/onvm/stats/h1") == {"ports": {"0": {"rx": 5}}}
    assert store.stats() == {"h1": {"ports": {"0": {"rx": 5}}}}


def test_registered_host_stays_while_refreshed_then_expires(store):
    lease = store.register_host("h1", {"mac": "02:00:00:00:00:01"}, ttl=1)
    assert store.get("/onvm/hosts/h1") == {"mac": "02:00:00:00:00:01"}
    # two TTLs: only the keep-alive saves it
    holds(lambda: store.hosts() == {"h1": {"mac": "02:00:00:00:00:01"}}, 2.2,
          "host h1 registered while its lease is kept alive")
    lease.stop(revoke=False)        # as if the agent died
    assert not lease.alive
    wait_for(lambda: store.hosts() == {}, 15, "host h1 to expire")


def test_explicit_refresh_without_thread(store):
    lease = store.register_host("h2", {}, ttl=1, keepalive=False)
    # Refreshed by hand for two TTLs, the host stays all along.
    holds(lambda: lease.refresh() is True and "h2" in store.hosts(), 2.0,
          "host h2 registered while refreshed by hand", interval=0.3)
    lease.stop(revoke=True)
    assert store.hosts() == {}
    assert lease.refresh() is False


def test_watch_sees_puts_deletes_and_expiry(store):
    events = []
    seen = threading.Event()

    def on_change(key, value):
        events.append((key, value))
        seen.set()
    watch = store.watch(st.HOSTS, callback=on_change)
    try:
        time.sleep(0.2)             # the watch is created before the changes
        lease = store.register_host("h3", {"cores": 4}, ttl=1, keepalive=False)
        store.put("/onvm/chains/ignored", {})
        wait_for(lambda: ("/onvm/hosts/h3", {"cores": 4}) in events, 3, "put event")
        wait_for(lambda: ("/onvm/hosts/h3", None) in events, 4, "expiry as a delete")
        assert all(key.startswith(st.HOSTS) for key, _ in events)
        del lease
    finally:
        watch.cancel()


def test_watch_iterator_from_snapshot_revision_misses_nothing(store):
    store.put("/onvm/plan/a", {"generation": 1})
    items, revision = store.snapshot(st.PLAN)
    assert items == {"/onvm/plan/a": {"generation": 1}}
    store.put("/onvm/plan/b", {"generation": 1})    # between snapshot and watch
    store.delete("/onvm/plan/a")
    watch = store.watch(st.PLAN, start_revision=revision + 1)
    try:
        got = [next(watch), next(watch)]
    finally:
        watch.cancel()
    assert got == [("/onvm/plan/b", {"generation": 1}), ("/onvm/plan/a", None)]


def test_cancel_ends_a_blocked_iterator(store):
    watch = store.watch("/onvm/nothing/")
    done = threading.Event()

    def consume():
        for _ in watch:
            pass
        done.set()
    t = threading.Thread(target=consume, daemon=True)
    t.start()
    time.sleep(0.2)
    watch.cancel()
    assert done.wait(3), "a cancelled watch kept its reader blocked"


def test_election_one_leader_then_handover_on_expiry(store):
    a = st.Election(store, "ctl-a", ttl=1)
    b = st.Election(store, "ctl-b", ttl=1)
    assert a.campaign() is True
    assert b.campaign() is False
    assert a.is_leader and not b.is_leader
    assert b.leader() == "ctl-a"
    # a's keep-alive holds the lead past its TTL
    holds(lambda: b.campaign() is False and a.is_leader, 2.2, "ctl-a leading")
    a.stop()                        # a hangs: no more keep-alive
    wait_for(b.campaign, 15, "standby ctl-b to take over")
    assert b.leader() == "ctl-b" and not a.is_leader
    assert a.campaign() is False
    b.resign()
    assert store.get(st.LEADER) is None
    assert a.campaign() is True     # resigning hands over at once
    a.resign()


def test_plan_write_guarded_by_leadership(store):
    a = st.Election(store, "ctl-a", ttl=1)
    b = st.Election(store, "ctl-b", ttl=1)
    assert a.campaign()
    assert store.put_plan("h1", {"hops": []}, leader=a) == 1
    with pytest.raises(st.NotLeader, match="ctl-b no longer holds /onvm/leader"):
        store.put_plan("h1", {"hops": []}, leader=b)
    assert store.get_plan("h1")["generation"] == 1
    a.resign()


def test_bad_url_and_dead_etcd_name_the_url():
    with pytest.raises(st.StoreError, match="ftp://x: not a store URL"):
        st.open_store("ftp://x")
    from onvm.services import free_port
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(st.StoreError, match=f"{url}: etcd does not answer"):
        st.open_store(url)


def test_operation_on_stopped_etcd_names_url_and_operation(etcd_per_test):
    s = st.open_store(etcd_per_test.url)
    etcd_per_test.stop()
    with pytest.raises(st.StoreError, match=rf"{etcd_per_test.url}: get /onvm/chains/ failed"):
        s.get("/onvm/chains/")


def test_watch_resumes_after_etcd_restart_without_loss(etcd_per_test):
    s = st.open_store(etcd_per_test.url)
    events = []
    watch = s.watch(st.CHAINS, callback=lambda k, v: events.append((k, v)))
    try:
        s.put_chain({"name": "a"})
        wait_for(lambda: len(events) == 1, 3, "first event")
        etcd_per_test.restart()
        s.put_chain({"name": "b"})      # while the watch reconnects
        s.delete_chain("a")
        wait_for(lambda: len(events) == 3, 5, "events after the restart")
        time.sleep(0.3)
        assert events == [("/onvm/chains/a", {"name": "a"}),
                          ("/onvm/chains/b", {"name": "b"}),
                          ("/onvm/chains/a", None)]
    finally:
        watch.cancel()


def test_leader_stops_leading_when_it_cannot_reach_the_store(etcd_per_test):
    # Its lease may expire unseen: after one TTL without a renewal it must
    # not act as leader, or a standby and it could both write plans.
    a = st.Election(st.open_store(etcd_per_test.url), "ctl-a", ttl=1)
    assert a.campaign()
    etcd_per_test.stop()
    wait_for(lambda: not a.is_leader, 15, "ctl-a to give up leading")
    assert a.campaign() is False
    a.stop()


def test_stopped_lease_is_not_alive_and_a_later_revoke_is_quiet(store):
    # An agent "crashes" (stop without revoke), then its shutdown path stops
    # the lease again with revoke once it has long expired.
    lease = store.register_host("h3", {}, ttl=1)
    lease.stop(revoke=False)
    assert lease.alive is False
    wait_for(lambda: store.hosts() == {}, 15, "host h3 to expire")
    lease.stop(revoke=True)         # must not raise "... Not Found"
    assert lease.alive is False and store.hosts() == {}
    # the store still registers (and revokes) hosts afterwards
    again = store.register_host("h3", {"cores": 2}, ttl=30)
    assert store.hosts() == {"h3": {"cores": 2}}
    again.stop(revoke=True)
    assert store.hosts() == {}


def test_revoking_an_expired_lease_is_no_error(store):
    lease = store.lease(1, keepalive=False)
    store.put("/onvm/x/leased", 1, lease=lease)
    wait_for(lambda: store.get("/onvm/x/leased") is None, 15, "the lease to expire")
    lease.stop(revoke=True)         # etcd answers "Not Found": already gone
    assert lease.lost and not lease.alive
    assert store.get("/onvm/x/leased") is None
    # A live lease is still revoked at once, its keys with it.
    fresh = store.lease(30, keepalive=False)
    store.put("/onvm/x/fresh", 2, lease=fresh)
    assert store.get("/onvm/x/fresh") == 2
    fresh.stop(revoke=True)
    assert store.get("/onvm/x/fresh") is None
