"""The store of record: the keys of DESIGN.md in etcd (through etcd3gw's
HTTP gateway client), or in this process's memory for unit tests.

    store = open_store("http://127.0.0.1:2379")   # or "memory://"
    reg = store.register_host("h1", {"mac": ...}, ttl=1)   # kept alive
    gen = store.put_plan("h1", plan)                 # returns the generation
    for key, value in store.watch("/onvm/plan/"):    # value None: deleted
        ...

Values are JSON.  Both backends offer the same API and pass the same tests.

Concurrency: nothing here needs a particular runtime.  Keep-alives and
callback watches run in `threading.Thread`s, which ryu-manager's eventlet
monkey-patching turns into green threads, so the same code serves the Ryu
process and the agent's plain threads.  A watch without a callback is a
blocking iterator: the caller picks where it blocks.

Leases: etcd raises a lease's TTL to its minimum (about 1.5 x its election
timeout: 2 s with etcd's defaults; `onvm.services.EtcdServer` runs with
0.5 s so that 1 s leases hold).  A key under a lease is gone at most one
expiry check (0.5 s in etcd) after its TTL runs out.

This module knows keys and their JSON, not what a plan or a chain means:
checking them belongs to `contracts.plan` and `controller.topology`.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import queue
import socket
import threading
import time
import urllib.parse

LOG = logging.getLogger(__name__)

PREFIX = "/onvm/"
HOSTS = PREFIX + "hosts/"
STATS = PREFIX + "stats/"
CHAINS = PREFIX + "chains/"
PLAN = PREFIX + "plan/"
APPLIED = PREFIX + "applied/"
LEADER = PREFIX + "leader"

REQUEST_TIMEOUT = 5.0


class StoreError(RuntimeError):
    """A store operation failed; the message names the store URL and what."""


class NotLeader(StoreError):
    """A guarded write was refused: this controller does not hold /onvm/leader."""


def _encode(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _decode(raw, key, url):
    try:
        return json.loads(raw)
    except ValueError as err:
        raise StoreError(f"{url}: key {key} does not hold JSON ({err}): "
                         f"{raw[:80]!r}") from None


def _key_name(key, prefix):
    return key[len(prefix):]


class Store:
    """The DESIGN.md keys over a backend's primitives (`_get`, `_put`, ...)."""

    url = "?"

    # -- plain keys ------------------------------------------------------
    def get(self, key):
        """The JSON value at `key`, or None when there is none."""
        raw = self._get(key)
        return None if raw is None else _decode(raw, key, self.url)

    def put(self, key, value, lease=None):
        self._put(key, _encode(value), lease.id if lease else None)

    def delete(self, key):
        """Delete `key`; True when it existed."""
        return self._delete(key)

    def get_prefix(self, prefix):
        """{key: value} of every key under `prefix`."""
        return self.snapshot(prefix)[0]

    def snapshot(self, prefix):
        """({key: value}, revision): watch from revision + 1 to miss nothing."""
        items, revision = self._range(prefix)
        return ({k: _decode(v, k, self.url) for k, v in items}, revision)

    def watch(self, prefix, callback=None, start_revision=None):
        """Changes under `prefix` as (key, value) with value None on delete.

        Without `callback`: a Watch to iterate (blocks) and `cancel()`.
        With it: a thread calls `callback(key, value)` for each change; a
        broken watch ends that thread with an error in the log.  Either way
        `cancel()` on the returned Watch stops it."""
        w = Watch(lambda rev: self._watch(prefix, rev), f"{self.url}{prefix}",
                  start_revision)
        if callback is not None:
            w.run_in_thread(callback)
        return w

    # -- leases ----------------------------------------------------------
    def lease(self, ttl, keepalive=True):
        """A granted lease; with `keepalive`, a thread refreshes it."""
        asked_at = time.monotonic()
        lease = Lease(self, self._grant(ttl), ttl, asked_at)
        if keepalive:
            lease.start_keepalive()
        return lease

    def register_host(self, host, info, ttl=1.0, keepalive=True):
        """Put /onvm/hosts/<host> under a lease: the host is alive while it
        exists.  Returns the Lease; without `keepalive` the caller calls
        `refresh()` well within `ttl` (every ttl/3)."""
        lease = self.lease(ttl, keepalive=keepalive)
        self.put(HOSTS + host, info, lease=lease)
        LOG.info("host %s registered in %s under lease %x (ttl %g s)",
                 host, self.url, lease.id, ttl)
        return lease

    def hosts(self):
        """{host name: info} of the hosts alive now."""
        return {_key_name(k, HOSTS): v for k, v in self.get_prefix(HOSTS).items()}

    # -- plans -----------------------------------------------------------
    def put_plan(self, host, plan, leader=None):
        """Write /onvm/plan/<host> with the next generation (one more than
        the stored plan's, so generations grow across controllers) and
        return that generation.  `plan["generation"]` is replaced.  With
        `leader` (an Election), the write happens only while it leads."""
        key = PLAN + host
        guard = (LEADER, leader.value_raw) if leader is not None else None
        for _ in range(20):
            raw, mod_revision = self._get_with_revision(key)
            previous = _decode(raw, key, self.url).get("generation", 0) if raw else 0
            stored = dict(plan, generation=previous + 1)
            outcome = self._put_if_unchanged(key, _encode(stored), mod_revision, guard)
            if outcome == "ok":
                return previous + 1
            if outcome == "not-leader":
                raise NotLeader(f"{self.url}: plan for {host} not written: "
                                f"{leader.name} no longer holds {LEADER}")
        raise StoreError(f"{self.url}: plan for {host} kept changing under us; "
                         "is a second controller writing without leading?")

    def get_plan(self, host):
        return self.get(PLAN + host)

    def plans(self):
        return {_key_name(k, PLAN): v for k, v in self.get_prefix(PLAN).items()}

    def delete_plan(self, host):
        return self.delete(PLAN + host)

    def put_applied(self, host, generation):
        self.put(APPLIED + host, {"generation": int(generation),
                                  "time": time.time()})

    def get_applied(self, host):
        """The plan generation the host's agent runs, or None."""
        value = self.get(APPLIED + host)
        return None if value is None else value["generation"]

    # -- stats -----------------------------------------------------------
    def put_stats(self, host, stats):
        self.put(STATS + host, stats)

    def get_stats(self, host):
        return self.get(STATS + host)

    def stats(self):
        return {_key_name(k, STATS): v for k, v in self.get_prefix(STATS).items()}

    # -- chains ----------------------------------------------------------
    def chains(self):
        """{chain name: chain as the user asked for it}."""
        return {_key_name(k, CHAINS): v for k, v in self.get_prefix(CHAINS).items()}

    def get_chain(self, name):
        return self.get(CHAINS + name)

    def put_chain(self, chain):
        """Store a chain dict; its "name" is the key."""
        name = chain.get("name") if isinstance(chain, dict) else None
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"chain needs a non-empty \"name\" without '/', "
                             f"not {name!r}")
        self.put(CHAINS + name, chain)

    def delete_chain(self, name):
        return self.delete(CHAINS + name)

    def close(self):
        pass


class Lease:
    """A lease in the store; keys put with it vanish when it expires."""

    def __init__(self, store, lease_id, ttl, granted_at):
        self.store = store
        self.id = lease_id
        self.ttl = ttl
        self.lost = False                   # known gone: expired or revoked
        self.stopped = False                # no longer kept alive by us
        self._deadline = granted_at + ttl   # sure alive until then
        self._stop = threading.Event()
        self._thread = None

    @property
    def alive(self):
        """True while the lease surely exists and is ours to count on: not
        lost, not stopped, and renewed less than `ttl` ago (a store we cannot
        reach does not count as renewal).  A stopped lease may linger in
        the store until its TTL runs out, but nobody may rely on it."""
        return not (self.lost or self.stopped) and time.monotonic() < self._deadline

    def refresh(self):
        """Renew the lease; False once it has expired (then `lost`)."""
        if self.lost:
            return False
        asked_at = time.monotonic()
        if self.store._refresh(self.id):
            self._deadline = asked_at + self.ttl
        else:
            self.lost = True
            LOG.warning("lease %x in %s expired before it was refreshed",
                        self.id, self.store.url)
        return not self.lost

    def start_keepalive(self):
        self._thread = threading.Thread(target=self._keepalive, daemon=True,
                                        name=f"lease-{self.id:x}")
        self._thread.start()

    def _keepalive(self):
        # ttl/3: two refreshes may be lost before the lease runs out.
        while not self._stop.wait(self.ttl / 3.0):
            try:
                if not self.refresh():
                    return
            except StoreError as err:
                LOG.warning("keep-alive of lease %x: %s; retrying", self.id, err)

    def stop(self, revoke=True):
        """Stop refreshing; with `revoke` the lease and its keys go now,
        without it they go when the TTL runs out (what a crash does).  A
        lease stopped without revoke may be revoked by a later stop: its
        keys then go at once, or it has expired already, which is fine."""
        self.stopped = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.ttl)
        if revoke and not self.lost:
            self.lost = True
            self.store._revoke(self.id)


class WatchCompacted(StoreError):
    """The watch cannot resume: etcd compacted the revisions it needs."""


class Watch:
    """An iterator of (key, value-or-None) changes; `cancel()` ends it.

    When the connection breaks (etcd restarted, network), it reconnects
    from the revision after the last one seen, so no change is lost or
    repeated; it only gives up (WatchCompacted) when etcd no longer has
    that revision."""

    RETRY_S = 0.5

    def __init__(self, open_events, what, start_revision=None):
        self._open = open_events          # revision -> (events, cancel)
        self.what = what
        self.revision = None if start_revision is None else start_revision - 1
        self.cancelled = False
        self._thread = None
        self._events, self._cancel = open_events(start_revision)

    def __iter__(self):
        return self

    def __next__(self):
        while not self.cancelled:
            try:
                key, value, revision = next(self._events)
            except WatchCompacted:
                raise
            except (StoreError, StopIteration) as err:
                if self.cancelled:
                    break
                self._reconnect(err)
                continue
            if key is None:
                # A marker (watch created): where to resume if nothing came
                # yet.  Never past a start revision whose replay is pending.
                if self.revision is None:
                    self.revision = revision
                continue
            self.revision = revision
            return key, value
        raise StopIteration

    def _reconnect(self, err):
        LOG.warning("watch of %s broke (%s); resuming after revision %s",
                    self.what, err, self.revision)
        while not self.cancelled:
            time.sleep(self.RETRY_S)
            try:
                start = None if self.revision is None else self.revision + 1
                self._events, self._cancel = self._open(start)
                return
            except StoreError as again:
                LOG.warning("watch of %s: cannot resume yet: %s", self.what, again)

    def cancel(self):
        self.cancelled = True
        self._cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)

    def run_in_thread(self, callback):
        def run():
            try:
                for key, value in self:
                    callback(key, value)
            except StoreError as err:
                LOG.error("watch of %s ended: %s", self.what, err)
        self._thread = threading.Thread(target=run, daemon=True,
                                        name=f"watch {self.what}")
        self._thread.start()


class Election:
    """Leader election on /onvm/leader: the key exists under the leader's
    lease; whoever creates it leads until it resigns or stops refreshing.

    `campaign()` never blocks: it tries once and returns `is_leader`.  A
    standby calls it periodically (every ttl/2 or so) and takes over once
    the leader's lease has expired."""

    def __init__(self, store, name, ttl=1.0, keepalive=True):
        self.store = store
        self.name = name
        self.ttl = ttl
        self.keepalive = keepalive
        self.lease = None
        self.value_raw = _encode({"name": name, "pid": os.getpid()})

    @property
    def is_leader(self):
        return self.lease is not None and self.lease.alive

    def leader(self):
        """Name of the controller that leads now, or None."""
        value = self.store.get(LEADER)
        return value["name"] if value else None

    def campaign(self):
        """Try once to become leader; True when this one leads."""
        if self.lease is not None:
            if not self.lease.alive and not self.lease.lost:
                # Keep-alive late (busy process, store slow): ask once more.
                try:
                    self.lease.refresh()
                except StoreError as err:
                    LOG.warning("%s cannot renew its leader lease: %s", self.name, err)
                    return False
            if self.lease.alive:
                return True
            LOG.warning("%s lost leadership: its lease expired", self.name)
            self.lease.stop(revoke=False)
            self.lease = None
        lease = self.store.lease(self.ttl, keepalive=False)
        if self.store._create(LEADER, self.value_raw, lease.id):
            if self.keepalive:
                lease.start_keepalive()
            self.lease = lease
            LOG.info("%s leads now (lease %x, ttl %g s)", self.name, lease.id, self.ttl)
            return True
        lease.stop(revoke=True)
        return False

    def refresh(self):
        """For keepalive=False: renew the leader lease; False if lost."""
        return self.lease is not None and self.lease.refresh()

    def resign(self):
        """Give up leadership now, so a standby can take over at once."""
        if self.lease is None:
            return
        self.store._delete_if(LEADER, self.value_raw)
        self.lease.stop(revoke=True)
        self.lease = None
        LOG.info("%s resigned leadership", self.name)

    def stop(self):
        """Stop refreshing without resigning: the lease runs out as after a
        crash, and a standby takes over after the TTL."""
        if self.lease is not None:
            self.lease.stop(revoke=False)
            self.lease.lost = True


# ---------------------------------------------------------------- memory
class MemoryStore(Store):
    """In-process store for unit tests of one module: same semantics as etcd
    (revisions, leases that expire, watches from a revision), no sharing
    between processes."""

    url = "memory://"

    def __init__(self):
        self._lock = threading.RLock()
        self._data = {}          # key -> (raw, mod_revision, lease id)
        self._leases = {}        # lease id -> (ttl, deadline)
        self._revision = 1
        self._history = []       # (revision, key, raw or None)
        self._watchers = []      # (prefix, queue)
        self._next_lease = 0x1000

    def _now(self):
        return time.monotonic()

    def _expire(self):
        with self._lock:
            now = self._now()
            for lease_id, (_, deadline) in list(self._leases.items()):
                if deadline <= now:
                    self._revoke(lease_id)

    def _emit(self, key, raw):
        self._revision += 1
        self._history.append((self._revision, key, raw))
        for prefix, q in self._watchers:
            if key.startswith(prefix):
                q.put((key, raw, self._revision))

    def _get(self, key):
        return self._get_with_revision(key)[0]

    def _get_with_revision(self, key):
        self._expire()
        with self._lock:
            raw, mod, _ = self._data.get(key, (None, 0, None))
            return raw, mod

    def _put(self, key, raw, lease_id):
        self._expire()
        with self._lock:
            if lease_id is not None and lease_id not in self._leases:
                raise StoreError(f"{self.url}: put {key}: lease {lease_id:x} "
                                 "has expired or was revoked")
            self._emit(key, raw)
            self._data[key] = (raw, self._revision, lease_id)

    def _delete(self, key):
        with self._lock:
            if key not in self._data:
                return False
            del self._data[key]
            self._emit(key, None)
            return True

    def _delete_if(self, key, raw):
        with self._lock:
            if self._data.get(key, (None,))[0] == raw:
                return self._delete(key)
            return False

    def _create(self, key, raw, lease_id):
        self._expire()
        with self._lock:
            if key in self._data:
                return False
            self._put(key, raw, lease_id)
            return True

    def _put_if_unchanged(self, key, raw, mod_revision, guard):
        self._expire()
        with self._lock:
            if guard is not None and self._data.get(guard[0], (None,))[0] != guard[1]:
                return "not-leader"
            if self._data.get(key, (None, 0))[1] != mod_revision:
                return "changed"
            self._put(key, raw, None)
            return "ok"

    def _range(self, prefix):
        self._expire()
        with self._lock:
            items = sorted((k, v[0]) for k, v in self._data.items()
                           if k.startswith(prefix))
            return items, self._revision

    def _grant(self, ttl):
        with self._lock:
            self._next_lease += 1
            self._leases[self._next_lease] = (ttl, self._now() + ttl)
            return self._next_lease

    def _refresh(self, lease_id):
        self._expire()
        with self._lock:
            if lease_id not in self._leases:
                return False
            ttl, _ = self._leases[lease_id]
            self._leases[lease_id] = (ttl, self._now() + ttl)
            return True

    def _revoke(self, lease_id):
        with self._lock:
            self._leases.pop(lease_id, None)
            for key in [k for k, v in self._data.items() if v[2] == lease_id]:
                self._delete(key)

    def _watch(self, prefix, start_revision):
        q = queue.Queue()
        with self._lock:
            q.put((None, None, self._revision))
            if start_revision is not None:
                for rev, key, raw in self._history:
                    if rev >= start_revision and key.startswith(prefix):
                        q.put((key, raw, rev))
            entry = (prefix, q)
            self._watchers.append(entry)
        done = threading.Event()

        def events():
            while not done.is_set():
                try:
                    item = q.get(timeout=0.05)
                except queue.Empty:
                    self._expire()      # expiry must show up as deletes
                    continue
                if item is None:
                    return
                key, raw, rev = item
                yield key, None if raw is None else _decode(raw, key, self.url), rev

        def cancel():
            done.set()
            q.put(None)
            with self._lock:
                if entry in self._watchers:
                    self._watchers.remove(entry)
        return events(), cancel


# ------------------------------------------------------------------ etcd
def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _unb64(text):
    return base64.b64decode(text).decode()


def _prefix_end(prefix):
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


class EtcdStore(Store):
    """etcd v3 through its HTTP/JSON gateway (the etcd3gw client for plain
    calls; the gateway's JSON directly where revisions or streams matter)."""

    def __init__(self, url):
        import etcd3gw
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise StoreError(f"{url}: not a store URL; use http://HOST:PORT "
                             "(etcd) or memory://")
        self.url = url.rstrip("/")
        self.client = etcd3gw.client(host=parsed.hostname, port=parsed.port or 2379,
                                     protocol=parsed.scheme,
                                     timeout=REQUEST_TIMEOUT, api_path="/v3/")
        try:
            self.client.status()
        except Exception as err:
            raise StoreError(f"{self.url}: etcd does not answer: {err}") from None

    def _call(self, what, path, payload):
        try:
            return self.client.post(self.client.get_url(path), json=payload)
        except Exception as err:
            raise StoreError(f"{self.url}: {what} failed: {err}") from None

    def _get(self, key):
        return self._get_with_revision(key)[0]

    def _get_with_revision(self, key):
        result = self._call(f"get {key}", "/kv/range", {"key": _b64(key)})
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
        result = self._call(f"delete {key}", "/kv/deleterange", {"key": _b64(key)})
        return int(result.get("deleted", 0)) > 0

    def _txn(self, what, compare, success):
        result = self._call(what, "/kv/txn",
                            {"compare": compare, "success": success, "failure": []})
        return bool(result.get("succeeded", False))

    def _delete_if(self, key, raw):
        return self._txn(f"delete {key} if ours",
                         [{"key": _b64(key), "result": "EQUAL", "target": "VALUE",
                           "value": _b64(raw)}],
                         [{"request_delete_range": {"key": _b64(key)}}])

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
            compare.append({"key": _b64(guard[0]), "result": "EQUAL",
                            "target": "VALUE", "value": _b64(guard[1])})
        if self._txn(f"put {key}", compare,
                     [{"request_put": {"key": _b64(key), "value": _b64(raw)}}]):
            return "ok"
        if guard is not None and self._get(guard[0]) != guard[1]:
            return "not-leader"
        return "changed"

    def _range(self, prefix):
        result = self._call(f"get prefix {prefix}", "/kv/range",
                            {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        items = [(_unb64(kv["key"]), _unb64(kv.get("value", "")))
                 for kv in result.get("kvs", [])]
        return items, int(result["header"]["revision"])

    def _grant(self, ttl):
        # etcd leases have whole-second TTLs; round up, never below 1.
        seconds = max(1, int(-(-ttl // 1)))
        result = self._call(f"grant lease of {seconds} s", "/lease/grant",
                            {"TTL": seconds, "ID": 0})
        return int(result["ID"])

    def _refresh(self, lease_id):
        result = self._call(f"keep lease {lease_id:x} alive", "/lease/keepalive",
                            {"ID": lease_id})
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
        what = f"{self.url}{prefix}"
        try:
            resp = self.client.session.post(self.client.get_url("/watch"),
                                            json={"create_request": request},
                                            stream=True, timeout=(REQUEST_TIMEOUT, None))
        except Exception as err:
            raise StoreError(f"{self.url}: watch {prefix} failed: {err}") from None

        def events():
            try:
                for line in resp.iter_lines(chunk_size=None):
                    if line.strip():
                        yield from self._watch_events(json.loads(line), what)
            except (OSError, ValueError, AttributeError) as err:
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

    def _watch_events(self, message, what):
        result = message.get("result") or {}
        if "error" in message:
            raise StoreError(f"watch of {what}: {message['error']}")
        if int(result.get("compact_revision", 0) or 0) > 0:
            raise WatchCompacted(f"watch of {what}: start revision was compacted "
                                 f"(oldest kept: {result['compact_revision']})")
        events = result.get("events", [])
        if not events and "header" in result:
            # created or progress: nothing changed up to this revision
            yield None, None, int(result["header"]["revision"])
        for event in events:
            kv = event["kv"]
            key, revision = _unb64(kv["key"]), int(kv["mod_revision"])
            if event.get("type") == "DELETE":
                yield key, None, revision
            else:
                yield key, _decode(_unb64(kv.get("value", "")), key, self.url), revision


def open_store(url):
    """A store for `url`: "http://host:port" (etcd) or "memory://"."""
    if url == "memory://" or url.startswith("memory://"):
        return MemoryStore()
    return EtcdStore(url)
