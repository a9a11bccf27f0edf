"""The store in etcd v3, through its HTTP/JSON gateway (etcd3gw's client
and session; the gateway's JSON directly where revisions, transactions or
streams matter), on one member or a cluster.

    EtcdStore("http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379")

Members: every call goes to the member that answered last; on a connection
error, a timeout or an "unavailable" answer it goes on to the next member
(and stays there).  A watch streams from one member; when that member
dies, hangs (no byte for WATCH_IDLE_S) or closes the stream, the Watch
opens it again on a member that answers, from the revision after the last
event it saw: members share revisions, so nothing is lost or repeated.

User and password (etcd's auth): with a contracts.store.StoreAuth, the
client asks `/v3/auth/authenticate` for a token and sends it in the
`Authorization` header of every request; when etcd answers that the token
is no longer valid (it expired: `--auth-token-ttl`), it authenticates
again and repeats the request once.  A wrong password or user is a
StoreError naming the user, the password file and the URL, raised before
anything is read or written.

A full store (etcd's NOSPACE alarm) is a StoreFull that says what the
operator must do; no other member is asked.

Garbage (an answer that is not JSON, or JSON without the fields etcd
always sends) is a StoreError counted in `garbage`, never an exception of
another kind.

Not here: the API (`contracts.store_api`), choosing a backend
(`contracts.store.open_store`).
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import threading
import urllib.parse

import requests

from contracts.secretfile import SecretFileError, read_secret_file
from contracts.tlsfiles import TLSFileError, check_ca, check_pair
from contracts.store_api import (REQUEST_TIMEOUT, SKIPPED, Store, StoreError,
                                 WatchCompacted, WatchIdle)

LOG = logging.getLogger("contracts.store")

WATCH_IDLE_S = 3.0
# HTTP answers that say "this member cannot serve now": ask another.
UNAVAILABLE = {408, 500, 502, 503, 504}
# What etcd answers (HTTP 429, gRPC code 8) to a write while its NOSPACE
# alarm is raised: the whole cluster refuses, asking another member is useless.
NOSPACE = "database space exceeded"
WRITES = {"/kv/put", "/kv/txn", "/lease/grant"}
# What etcd answers when a token is not (or no longer) valid: authenticate
# again.  ("revision of auth store is old": users or roles changed since.)
STALE_TOKEN = ("invalid auth token", "revision of auth store is old")
AUTH_FAILED = "authentication failed"


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _unb64(text):
    return base64.b64decode(text).decode()


def _prefix_end(prefix):
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


def parse_endpoints(url):
    """["http://host:port", ...] of a store URL with one or several
    comma-separated members."""
    parts = [p.strip().rstrip("/") for p in url.split(",")]
    for part in parts:
        parsed = urllib.parse.urlsplit(part)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            where = url if part == url else f"{url}: member {part!r}"
            raise StoreError(f"{where}: not a store URL; use http://HOST:PORT, "
                             "several separated by commas (an etcd cluster), "
                             "or memory://")
    return parts


def check_tls(tls, endpoints):
    """etcd3gw.client's TLS arguments for a contracts.store.StoreTLS; a
    StoreError naming the variable or option when a file is unreadable or
    only one of certificate and key is given."""
    if tls is None or not any(tls):
        return {}
    if not any(e.startswith("https://") for e in endpoints):
        raise StoreError(f"{','.join(endpoints)}: TLS files given (store_ca/cert/key or "
                         "$ONVM_STORE_CA/CERT/KEY) but the store URL is http://; use https://")
    for field, path in zip(("ca (ONVM_STORE_CA)", "cert (ONVM_STORE_CERT)",
                            "key (ONVM_STORE_KEY)"), tls):
        if path is not None and not os.access(path, os.R_OK):
            raise StoreError(f"{path}: store TLS {field}: cannot read the file")
    if (tls.cert is None) != (tls.key is None):
        raise StoreError("store TLS: a client certificate needs its key and the "
                         "key its certificate (ONVM_STORE_CERT and ONVM_STORE_KEY)")
    try:
        if tls.cert is not None:
            check_pair(tls.cert, tls.key, "store TLS cert (ONVM_STORE_CERT)",
                       "store TLS key (ONVM_STORE_KEY)")
        if tls.ca is not None:
            check_ca(tls.ca, "store TLS ca (ONVM_STORE_CA)")
    except TLSFileError as err:
        raise StoreError(str(err)) from None
    return {"ca_cert": tls.ca, "cert_cert": tls.cert, "cert_key": tls.key}


def read_password(auth):
    """The password of a StoreAuth (its file's first line); StoreError
    naming the file when it is missing, empty or readable by others."""
    if not auth.user or not auth.password_file:
        raise StoreError("store auth: a user needs its password_file and a password_file "
                         "its user (ONVM_STORE_USER and ONVM_STORE_PASSWORD_FILE)")
    try:
        return read_secret_file(auth.password_file,
                                "store password_file (ONVM_STORE_PASSWORD_FILE)",
                                "password file")[0]
    except SecretFileError as err:
        raise StoreError(str(err)) from None


class _Unavailable(Exception):
    """One member could not serve one call (the next member is asked)."""


class _StaleToken(Exception):
    """etcd refused the auth token sent (expired, or none was sent)."""


class EtcdStore(Store):
    """See the module docstring."""

    def __init__(self, url, tls=None, auth=None):
        import etcd3gw
        self.endpoints = parse_endpoints(url)
        tls_args = check_tls(tls, self.endpoints)
        self.url = ",".join(self.endpoints)
        self.clients = []
        for endpoint in self.endpoints:
            parsed = urllib.parse.urlsplit(endpoint)
            self.clients.append(etcd3gw.client(
                host=parsed.hostname, port=parsed.port or 2379, protocol=parsed.scheme,
                timeout=REQUEST_TIMEOUT, api_path="/v3/", **tls_args))
            if tls_args:
                # requests lets $REQUESTS_CA_BUNDLE override a session's CA:
                # with TLS files given, they alone decide (no proxy either).
                self.clients[-1].session.trust_env = False
        self.member = 0                     # index of the member we talk to
        self.failovers = 0
        self._member_lock = threading.Lock()
        self.auth = auth if auth is not None and any(auth) else None
        self._password = read_password(self.auth) if self.auth else None
        self._token = None
        self._token_lock = threading.Lock()
        self.authentications = 0
        if self.auth:
            self._authenticate(None)
        try:
            self._call("status", "/maintenance/status", {})
        except StoreError as err:
            detail = str(err).split(" failed: ", 1)[-1]
            raise StoreError(f"{self.url}: etcd does not answer: {detail}") from None

    # -- members ---------------------------------------------------------
    def _members(self):
        """(index, client), the member we talk to first, then the others."""
        first = self.member
        n = len(self.clients)
        return [((first + i) % n, self.clients[(first + i) % n]) for i in range(n)]

    def _answered(self, index):
        if index == self.member:
            return
        with self._member_lock:
            if index != self.member:
                LOG.warning("%s: member %s did not answer; talking to %s now",
                            self.url, self.endpoints[self.member], self.endpoints[index])
                self.member = index
                self.failovers += 1

    def _failed(self, what, errors):
        if len(self.endpoints) == 1:
            return StoreError(f"{self.url}: {what} failed: {errors[0][1]}")
        detail = "; ".join(f"{self.endpoints[i]}: {err}" for i, err in errors)
        return StoreError(f"{self.url}: {what} failed on every member: {detail}")

    # -- auth ------------------------------------------------------------
    def _authenticate(self, stale):
        """A new token for our user (unless another thread already replaced
        the `stale` one); StoreError naming user, file and URL on refusal."""
        with self._token_lock:
            if stale is not None and self._token != stale:
                return
            who = (f"{self.url}: etcd user {self.auth.user!r} (password from "
                   f"{self.auth.password_file})")
            try:
                resp = self._ask("authenticate", "/auth/authenticate",
                                 {"name": self.auth.user, "password": self._password},
                                 REQUEST_TIMEOUT, reauth=False)
            except StoreError as err:
                text = str(err)
                if AUTH_FAILED in text:
                    raise StoreError(f"{who}: authentication failed: wrong password "
                                     "or no such user") from None
                if "authentication is not enabled" in text:
                    raise StoreError(f"{who}: etcd has authentication disabled; enable "
                                     "it (etcdctl auth enable) or give no user") from None
                raise
            try:
                token = resp.json()["token"]
            except (ValueError, KeyError, TypeError):
                raise self.garbage_error("authenticate", repr(resp.text[:80])) from None
            self._token = token
            self.authentications += 1
            if stale is not None:
                LOG.info("%s: etcd auth token no longer valid; authenticated again as %r",
                         self.url, self.auth.user)

    def _post_one(self, client, path, payload, timeout, stream, token):
        headers = {"Authorization": token} if token else None
        try:
            resp = client.session.post(client.get_url(path), json=payload, headers=headers,
                                       timeout=timeout, stream=stream)
        except requests.exceptions.RequestException as err:
            raise _Unavailable(str(err)) from None
        if resp.status_code in UNAVAILABLE:
            text = resp.text[:200]
            resp.close()
            raise _Unavailable(f"HTTP {resp.status_code}: {text}")
        return resp

    def _ask(self, what, path, payload, timeout, stream=False, reauth=True):
        """The first member's HTTP answer, going on to the next one while a
        member cannot serve; StoreError when none does or one refuses.  A
        stale auth token: authenticate again, ask once more."""
        token = self._token if reauth else None      # authenticate sends none
        try:
            return self._ask_members(what, path, payload, timeout, stream, token)
        except _StaleToken:
            if not (reauth and self.auth):
                raise StoreError(f"{self.url}: {what} failed: etcd refused the auth "
                                 "token (is etcd's auth enabled and a user given?)") from None
        self._authenticate(token)
        try:
            return self._ask_members(what, path, payload, timeout, stream, self._token)
        except _StaleToken:
            raise StoreError(f"{self.url}: {what} failed: etcd refused a new auth token "
                             f"of user {self.auth.user!r}") from None

    def _ask_members(self, what, path, payload, timeout, stream, token):
        errors = []
        for index, client in self._members():
            try:
                resp = self._post_one(client, path, payload, timeout, stream, token)
            except _Unavailable as err:
                errors.append((index, err))
                continue
            self._answered(index)
            if resp.status_code != 200 and NOSPACE in resp.text[:300]:
                resp.close()
                raise self.full_error(what)
            if self.full and path in WRITES and resp.status_code == 200:
                self.written()
            if resp.status_code != 200:
                text = resp.text[:200]
                resp.close()
                if any(marker in text for marker in STALE_TOKEN):
                    raise _StaleToken(text)
                if "user name is empty" in text:
                    raise StoreError(f"{self.url}: {what} failed: etcd has authentication "
                                     "enabled: give a user and its password file (store "
                                     "user/password_file, $ONVM_STORE_USER and "
                                     "$ONVM_STORE_PASSWORD_FILE)")
                raise StoreError(f"{self.url}: {what} failed: HTTP {resp.status_code}: "
                                 f"{text}")
            return resp
        raise self._failed(what, errors)

    def _call(self, what, path, payload, timeout=None):
        resp = self._ask(what, path, payload, timeout or REQUEST_TIMEOUT)
        try:
            result = resp.json()
        except ValueError:
            raise self.garbage_error(what, repr(resp.text[:80])) from None
        if not isinstance(result, dict):
            raise self.garbage_error(what, repr(resp.text[:80]))
        return result

    @contextlib.contextmanager
    def _reading(self, what):
        """Fields etcd always sends that are missing or of the wrong type
        make a garbage StoreError, not a KeyError."""
        try:
            yield
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise self.garbage_error(what, f"{type(err).__name__}: {err}") from None

    # -- primitives ------------------------------------------------------
    def _get_with_revision(self, key):
        what = f"get {key}"
        result = self._call(what, "/kv/range", {"key": _b64(key)})
        with self._reading(what):
            kvs = result.get("kvs", [])
            if not kvs:
                return None, 0
            return _unb64(kvs[0].get("value", "")), int(kvs[0]["mod_revision"])

    def _put(self, key, raw, lease_id):
        payload = {"key": _b64(key), "value": _b64(raw)}
        if lease_id is not None:
            payload["lease"] = lease_id
        self._call(f"put {key}", "/kv/put", payload)

    def _delete(self, key):
        what = f"delete {key}"
        result = self._call(what, "/kv/deleterange", {"key": _b64(key)})
        with self._reading(what):
            return int(result.get("deleted", 0)) > 0

    def _txn(self, what, compare, success):
        result = self._call(what, "/kv/txn",
                            {"compare": compare, "success": success, "failure": []})
        return bool(result.get("succeeded", False))

    @staticmethod
    def _guard_compares(guard):
        key, raw, lease_id = guard
        return [{"key": _b64(key), "result": "EQUAL", "target": "VALUE",
                 "value": _b64(raw)},
                {"key": _b64(key), "result": "EQUAL", "target": "LEASE",
                 "lease": lease_id}]

    def _delete_if(self, key, raw):
        return self._txn(f"delete {key} if ours",
                         [{"key": _b64(key), "result": "EQUAL", "target": "VALUE",
                           "value": _b64(raw)}],
                         [{"request_delete_range": {"key": _b64(key)}}])

    def _delete_if_leader(self, key, guard):
        done = self._txn(f"delete {key} as leader", self._guard_compares(guard),
                         [{"request_delete_range": {"key": _b64(key)}}])
        return "ok" if done else "not-leader"

    def _create(self, key, raw, lease_id):
        put = {"key": _b64(key), "value": _b64(raw), "lease": lease_id}
        return self._txn(f"create {key}",
                         [{"key": _b64(key), "result": "EQUAL", "target": "CREATE",
                           "create_revision": 0}],
                         [{"request_put": put}])

    def _put_if_unchanged(self, key, raw, mod_revision, guard):
        compare = [{"key": _b64(key), "result": "EQUAL", "target": "MOD",
                    "mod_revision": mod_revision}]
        if guard is not None:
            compare += self._guard_compares(guard)
        if self._txn(f"put {key}", compare,
                     [{"request_put": {"key": _b64(key), "value": _b64(raw)}}]):
            return "ok"
        if guard is not None and self._get_with_revision(key)[1] == mod_revision:
            return "not-leader"
        return "changed"

    def _range(self, prefix, with_revisions=False):
        what = f"get prefix {prefix}"
        result = self._call(what, "/kv/range",
                            {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        with self._reading(what):
            items = [(_unb64(kv["key"]), _unb64(kv.get("value", "")),
                      int(kv["mod_revision"])) for kv in result.get("kvs", [])]
            if not with_revisions:
                items = [(k, raw) for k, raw, _ in items]
            return items, int(result["header"]["revision"])

    def _compact(self, revision):
        self._call(f"compact to revision {revision}", "/kv/compaction",
                   {"revision": revision, "physical": True})

    def _grant(self, ttl, timeout=None):
        # etcd leases have whole-second TTLs; round up, never below 1.
        seconds = max(1, int(-(-ttl // 1)))
        what = f"grant lease of {seconds} s"
        result = self._call(what, "/lease/grant", {"TTL": seconds, "ID": 0}, timeout)
        with self._reading(what):
            return int(result["ID"])

    def _refresh(self, lease_id, timeout=None):
        what = f"keep lease {lease_id:x} alive"
        try:
            result = self._call(what, "/lease/keepalive", {"ID": lease_id}, timeout)
        except StoreError as err:
            if "not found" in str(err).lower():
                return False
            raise
        with self._reading(what):
            return int(result.get("result", {}).get("TTL", -1)) > 0

    def _revoke(self, lease_id):
        try:
            self._call(f"revoke lease {lease_id:x}", "/kv/lease/revoke",
                       {"ID": lease_id})
        except StoreError as err:
            # etcd answers "Not Found" for a lease that expired: fine.
            if "not found" not in str(err).lower():
                raise

    def _watch(self, prefix, start_revision):
        request = {"key": _b64(prefix), "range_end": _prefix_end(prefix)}
        if start_revision is not None:
            request["start_revision"] = start_revision
        resp = self._ask(f"watch {prefix}", "/watch", {"create_request": request},
                         (REQUEST_TIMEOUT, WATCH_IDLE_S), stream=True)
        return self._stream(resp, f"{self.url}{prefix}", self._token)

    def _stream(self, resp, what, token):
        def events():
            try:
                for line in resp.iter_lines(chunk_size=None):
                    if line.strip():
                        yield from self._watch_events(line, what, token)
            except requests.exceptions.ConnectionError as err:
                if "timed out" in str(err).lower():
                    raise WatchIdle(f"watch of {what}: nothing for {WATCH_IDLE_S:g} s; "
                                    "opening it again") from None
                raise StoreError(f"watch of {what} broke: {err}") from None
            except (OSError, requests.exceptions.RequestException, AttributeError) as err:
                raise StoreError(f"watch of {what} broke: {err}") from None
            raise StoreError(f"watch of {what} ended: etcd closed the stream")

        def cancel():
            # shutdown() wakes a reader blocked in recv(); close() would not.
            try:
                sock = socket.fromfd(resp.raw._fp.fileno(), socket.AF_INET,
                                     socket.SOCK_STREAM)
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except (OSError, AttributeError, ValueError):
                pass
            resp.close()
        return events(), cancel

    def _watch_events(self, line, what, token=None):
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError:
            # A line we cannot read: open the stream again after the last
            # revision seen (nothing lost), counted.
            raise self.garbage_error(f"watch of {what}", repr(line[:80])) from None
        if "error" in message:
            raise StoreError(f"watch of {what}: {message['error']}")
        with self._reading(f"watch of {what}"):
            result = message.get("result") or {}
            if int(result.get("compact_revision", 0) or 0) > 0:
                raise WatchCompacted(f"watch of {what}: start revision was compacted "
                                     f"(oldest kept: {result['compact_revision']})")
            if result.get("canceled"):
                reason = str(result.get("cancel_reason", ""))
                if self.auth and any(marker in reason for marker in STALE_TOKEN):
                    # the Watch opens it again, with the new token
                    self._authenticate(token)
                    raise StoreError(f"watch of {what}: etcd refused the expired auth "
                                     "token; authenticated again")
                raise StoreError(f"watch of {what}: etcd canceled it: {reason}")
            events = result.get("events", [])
            if not events and "header" in result:
                # created or progress: nothing changed up to this revision
                yield None, None, int(result["header"]["revision"])
            parsed = []
            for event in events:
                kv = event["kv"]
                parsed.append((_unb64(kv["key"]), event.get("type") == "DELETE",
                               kv.get("value", ""), int(kv["mod_revision"])))
        for key, deleted, value, revision in parsed:
            if deleted:
                yield key, None, revision
                continue
            try:
                decoded = self.decode(_unb64(value), key)
            except (StoreError, ValueError):    # counted by decode; skipped
                yield SKIPPED, None, revision
                continue
            yield key, decoded, revision
