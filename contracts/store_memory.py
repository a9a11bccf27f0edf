"""The store in this process's memory, for unit tests of one module: the
same semantics as etcd (revisions, leases that expire, watches from a
revision, compaction, fenced transactions), no sharing between processes.

Not here: the API itself (`contracts.store_api`), etcd (`contracts.store_etcd`).
"""
from __future__ import annotations

import queue
import threading
import time

from contracts.store_api import SKIPPED, Store, StoreError, WatchCompacted


class MemoryStore(Store):
    """See the module docstring; `url` is "memory://"."""

    url = "memory://"

    def __init__(self):
        self._lock = threading.RLock()
        self._data = {}          # key -> (raw, mod_revision, lease id)
        self._leases = {}        # lease id -> (ttl, deadline)
        self._revision = 1
        self._compacted = 0      # history up to this revision is gone
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

    def _holds(self, guard):
        key, raw, lease_id = guard
        held = self._data.get(key)
        return held is not None and held[0] == raw and held[2] == lease_id

    def _delete_if_leader(self, key, guard):
        self._expire()
        with self._lock:
            if not self._holds(guard):
                return "not-leader"
            self._delete(key)
            return "ok"

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
            if guard is not None and not self._holds(guard):
                return "not-leader"
            if self._data.get(key, (None, 0))[1] != mod_revision:
                return "changed"
            self._put(key, raw, None)
            return "ok"

    def _range(self, prefix, with_revisions=False):
        self._expire()
        with self._lock:
            items = sorted((k, v[0], v[1]) for k, v in self._data.items()
                           if k.startswith(prefix))
            if not with_revisions:
                items = [(k, raw) for k, raw, _ in items]
            return items, self._revision

    def _compact(self, revision):
        with self._lock:
            self._compacted = max(self._compacted, revision)
            self._history = [h for h in self._history if h[0] > self._compacted]

    def _grant(self, ttl, timeout=None):
        with self._lock:
            self._next_lease += 1
            self._leases[self._next_lease] = (ttl, self._now() + ttl)
            return self._next_lease

    def _refresh(self, lease_id, timeout=None):
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
            if start_revision is not None and start_revision <= self._compacted:
                q.put(("compacted", self._compacted))
            else:
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
                if item[0] == "compacted":
                    raise WatchCompacted(f"watch of {self.url}{prefix}: start revision "
                                         f"was compacted (oldest kept: {item[1]})")
                key, raw, rev = item
                if raw is None:
                    yield key, None, rev
                    continue
                try:
                    yield key, self.decode(raw, key), rev
                except StoreError:      # counted and logged by decode
                    yield SKIPPED, None, rev

        def cancel():
            done.set()
            q.put(None)
            with self._lock:
                if entry in self._watchers:
                    self._watchers.remove(entry)
        return events(), cancel
