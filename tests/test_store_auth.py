"""etcd's user/password auth through the store client, on a real etcd with
auth enabled (onvm.services.EtcdServer(auth=...)): the right password works
across token expiry, a wrong one is a clear StoreError before anything is
written, a password file open to every user is refused."""
import os
import time

import pytest

from contracts import store as st
from onvm import services


def password_file(directory, name, text, mode=0o600):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, mode)
    return path


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory):
    if not os.path.exists(services.ETCD_BIN):
        pytest.skip("etcd not installed (apt-get install etcd-server)")
    base = str(tmp_path_factory.mktemp("etcd-auth"))
    auth = st.StoreAuth("root", password_file(base, "root.pw", "s3cret pass"))
    server = services.EtcdServer(workdir=base, auth=auth, auth_token_ttl=2)
    yield server, auth, base
    server.stop()


def test_right_password_works_across_token_expiry(auth_etcd):
    server, auth, _ = auth_etcd
    store = st.open_store(server.url, auth=auth)
    try:
        store.put("/onvm/test/auth/a", {"n": 1})
        assert store.get("/onvm/test/auth/a") == {"n": 1}
        first = store.authentications
        time.sleep(4.5)                # the token (TTL 2 s) expires unused
        store.put("/onvm/test/auth/a", {"n": 2})
        assert store.get("/onvm/test/auth/a") == {"n": 2}
        assert store.authentications > first
    finally:
        store.close()


def test_no_credentials_refused_with_a_hint(auth_etcd):
    server, _, _ = auth_etcd
    with pytest.raises(st.StoreError, match="authentication enabled"):
        store = st.open_store(server.url, auth=st.StoreAuth(None, None))
        store.put("/onvm/test/auth/none", 1)


def test_wrong_password_names_user_and_url_nothing_written(auth_etcd):
    server, auth, base = auth_etcd
    wrong = st.StoreAuth("root", password_file(base, "wrong.pw", "not it"))
    with pytest.raises(st.StoreError) as err:
        st.open_store(server.url, auth=wrong)
    text = str(err.value)
    assert "'root'" in text and server.url in text and "wrong.pw" in text
    assert "authentication failed" in text
    store = st.open_store(server.url, auth=auth)
    try:
        assert store.get("/onvm/test/auth/wrong") is None
        assert store.get_prefix("/onvm/test/auth/wrong") == {}
    finally:
        store.close()


def test_unknown_user_is_refused(auth_etcd):
    server, auth, _ = auth_etcd
    with pytest.raises(st.StoreError, match="'nobody'.*authentication failed"):
        st.open_store(server.url, auth=st.StoreAuth("nobody", auth.password_file))


def test_password_file_open_to_everyone_refused(auth_etcd):
    server, _, base = auth_etcd
    path = password_file(base, "open.pw", "s3cret pass", mode=0o644)
    with pytest.raises(st.StoreError, match=f"{path}: .*readable by every user"):
        st.open_store(server.url, auth=st.StoreAuth("root", path))


def test_password_file_missing_refused(auth_etcd):
    server, _, base = auth_etcd
    path = os.path.join(base, "missing.pw")
    with pytest.raises(st.StoreError, match=f"{path}: store password_file"):
        st.open_store(server.url, auth=st.StoreAuth("root", path))


def test_auth_from_env():
    env = {"ONVM_STORE_USER": "root", "ONVM_STORE_PASSWORD_FILE": "/etc/onvm/pw"}
    assert st.auth_from_env(env) == st.StoreAuth("root", "/etc/onvm/pw")
    assert st.auth_from_env({}) is None


def test_a_watch_and_a_lease_across_token_expiry(auth_etcd):
    """The watch reopens its stream (idle) and the lease is refreshed after
    the token expired: both authenticate again and go on."""
    server, auth, _ = auth_etcd
    watcher = st.open_store(server.url, auth=auth)
    writer = st.open_store(server.url, auth=auth)
    events = []
    watch = watcher.watch("/onvm/test/auth/w/", callback=lambda k, v: events.append((k, v)))
    lease = writer.register_host("authhost", {"cores": 1}, ttl=10, keepalive=False)
    try:
        time.sleep(4.5)                # both clients' tokens (TTL 2 s) expire unused
        assert lease.refresh()
        assert "authhost" in writer.hosts()
        writer.put("/onvm/test/auth/w/k", {"n": 3})
        services.wait_for(lambda: ("/onvm/test/auth/w/k", {"n": 3}) in events, 15,
                          "the put seen by the watch after token expiry")
        assert watcher.authentications > 1 and writer.authentications > 1
    finally:
        watch.cancel()
        lease.stop()
        watcher.close()
        writer.close()
