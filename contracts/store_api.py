"""The store of record's API, whatever runs it: the keys of DESIGN.md, the
`Store` base class that puts them on a backend's primitives, and what is
built on those: leases kept alive (and granted again after an outage),
watches that resume where they stopped, leader election and the writes it
fences.  `contracts.store` picks the backend (`open_store`).

A backend implements these primitives (raw values are JSON text):
  _get_with_revision(key) -> (raw or None, mod_revision)
  _put(key, raw, lease_id)              _delete(key) -> existed
  _range(prefix, with_revisions=False) -> ([(key, raw[, mod_revision])], revision)
  _create(key, raw, lease_id) -> created (only if absent)
  _put_if_unchanged(key, raw, mod_revision, guard) -> "ok"|"changed"|"not-leader"
  _delete_if_leader(key, guard) -> "ok"|"not-leader"
  _delete_if(key, raw) -> deleted
  _grant(ttl, timeout=None) -> lease id   _refresh(lease_id, timeout=None) -> alive
  _revoke(lease_id)                      _compact(revision)
  _watch(prefix, start_revision) -> (events, cancel), events yielding
      (key, value or None, revision), (None, None, revision) for "nothing
      before this revision" markers, (SKIPPED, None, revision) for an event
      whose value was garbage; raising WatchCompacted or StoreError.
A guard is (LEADER, the leader's value, the leader's lease id): the write
happens only while that key holds that value under that lease.

Faults: an agent's lease that expired while the store was unreachable is
granted again, and its keys put again with the same values, by the thread
that keeps it alive, as soon as the store answers (`on_regrant` tells the
owner).  A leader's lease is never granted again behind its back: it must
campaign.  Garbage from the store (not JSON, JSON of the wrong shape) is a
StoreError, counted in `Store.garbage` and logged once per store.  A
write refused because the store is full (etcd's NOSPACE alarm) is a
StoreFull that names the alarm and the fix, logged once per store until
a write passes again; forwarding and leases are not touched by it.

Not here: the HTTP of etcd (`contracts.store_etcd`), the in-process backend
(`contracts.store_memory`), what a plan or a chain means (`contracts.plan`,
`controller.topology`), when a host counts as dead (`controller.liveness`).
"""
from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time

LOG = logging.getLogger("contracts.store")

PREFIX = "/onvm/"
HOSTS = PREFIX + "hosts/"
STATS = PREFIX + "stats/"
CHAINS = PREFIX + "chains/"
PLAN = PREFIX + "plan/"
APPLIED = PREFIX + "applied/"
LEADER = PREFIX + "leader"
REPLICA = PREFIX + "replica/"     # <host>/<instance id>: contracts.replica
SHARE = PREFIX + "share/"         # <nf>/<host>/<instance id>: host_agent.sharer

REQUEST_TIMEOUT = 5.0
SKIPPED = object()      # a watch event the backend could not read (garbage)


class StoreError(RuntimeError):
    """A store operation failed; the message names the store URL and what."""


class NotLeader(StoreError):
    """A guarded write was refused: this controller does not hold /onvm/leader."""


class StoreFull(StoreError):
    """etcd refuses writes: its database reached its quota and it raised a
    NOSPACE alarm ("etcdserver: mvcc: database space exceeded").  Reads,
    watches and keep-alives of existing leases still work; puts, new
    leases and transactions do not until an operator compacts,
    defragments and disarms the alarm (the message says how)."""


def store_full_error(url, what):
    """The StoreFull for `what` refused by the store at `url`."""
    return StoreFull(
        f"{url}: {what} refused: etcd's NOSPACE alarm is raised (database space "
        "exceeded: --quota-backend-bytes reached); no write succeeds until an "
        "operator frees space: `etcdctl compact REVISION` (the revision `etcdctl "
        "endpoint status -w json` shows), `etcdctl defrag --cluster`, then "
        "`etcdctl alarm disarm` (docs/deploy.md, etcd)")


class WatchCompacted(StoreError):
    """The watch cannot resume: etcd compacted the revisions it needs."""


def encode_value(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def decode_value(raw, key, url):
    try:
        return json.loads(raw)
    except ValueError as err:
        raise StoreError(f"{url}: key {key} does not hold JSON ({err}): "
                         f"{raw[:80]!r}") from None


def _key_name(key, prefix):
    return key[len(prefix):]


def lease_timeout(ttl):
    """How long one lease call may take on one member: a third of the TTL,
    so a member that hangs leaves time to ask another before it runs out."""
    return min(REQUEST_TIMEOUT, max(0.25, ttl / 3.0))


class Store:
    """The DESIGN.md keys over a backend's primitives (`_get`, `_put`, ...)."""

    url = "?"
    garbage = 0             # answers that were not what the store sends
    full = False            # writes are refused (NOSPACE) since the last one that passed
    full_refusals = 0       # writes refused so

    def full_error(self, what):
        """Count a write the full store refused; log it once (until a write
        passes again); return the StoreFull to raise."""
        err = store_full_error(self.url, what)
        self.full_refusals += 1
        if not self.full:
            LOG.error("%s (logged once; refused writes are counted in "
                      "Store.full_refusals)", err)
            self.full = True
        return err

    def written(self):
        """A write passed: a NOSPACE alarm, if any was seen, is gone."""
        if self.full:
            LOG.warning("%s: the store takes writes again (NOSPACE alarm disarmed) "
                        "after %d refused", self.url, self.full_refusals)
            self.full = False

    def garbage_error(self, what, detail):
        """Count an answer that makes no sense, log the first one, and
        return the StoreError to raise."""
        self.garbage += 1
        text = f"{self.url}: {what}: the store answered garbage: {detail}"
        if self.garbage == 1:
            LOG.error("%s (further garbage is only counted in Store.garbage)", text)
        return StoreError(text)

    def decode(self, raw, key):
        try:
            return decode_value(raw, key, self.url)
        except StoreError as err:
            raise self.garbage_error(f"read {key}", str(err).split(": ", 1)[1]) from None

    # -- plain keys ------------------------------------------------------
    def get(self, key):
        """The JSON value at `key`, or None when there is none."""
        raw = self._get_with_revision(key)[0]
        return None if raw is None else self.decode(raw, key)

    def _get(self, key):
        return self._get_with_revision(key)[0]

    def put(self, key, value, lease=None):
        raw = encode_value(value)
        self._put(key, raw, lease.id if lease else None)
        if lease is not None:
            lease.keys[key] = raw

    def delete(self, key):
        """Delete `key`; True when it existed."""
        return self._delete(key)

    def get_prefix(self, prefix):
        """{key: value} of every key under `prefix`."""
        return self.snapshot(prefix)[0]

    def snapshot(self, prefix, skip_garbage=False):
        """({key: value}, revision): watch from revision + 1 to miss nothing.
        A value that is not JSON raises StoreError, or with `skip_garbage`
        is left out (counted, as a watch skips it)."""
        items, revision = self._range(prefix)
        out = {}
        for key, raw in items:
            try:
                out[key] = self.decode(raw, key)
            except StoreError:
                if not skip_garbage:
                    raise
        return out, revision

    def watch(self, prefix, callback=None, start_revision=None, known=()):
        """Changes under `prefix` as (key, value) with value None on delete.

        Without `callback`: a Watch to iterate (blocks) and `cancel()`.
        With it: a thread calls `callback(key, value)` for each change (an
        exception in the callback is logged, the watch goes on).  Either
        way `cancel()` on the returned Watch stops it.  `known`: the keys
        the caller holds already (from the snapshot it started from), so
        that a resync after compaction can tell it which of them went."""
        w = Watch(lambda rev: self._watch(prefix, rev), f"{self.url}{prefix}",
                  start_revision, relist=lambda: self._relist(prefix), known=known)
        if callback is not None:
            w.run_in_thread(callback)
        return w

    def _relist(self, prefix):
        items, revision = self._range(prefix, with_revisions=True)
        return [(k, self.decode(v, k), mod) for k, v, mod in items], revision

    def compact(self, revision):
        """Forget history before `revision` (watches from before it resync)."""
        self._compact(revision)

    # -- leases ----------------------------------------------------------
    def lease(self, ttl, keepalive=True, regrant=False, on_regrant=None):
        """A granted lease; with `keepalive`, a thread refreshes it, and
        with `regrant` that thread grants it again (and puts its keys
        again) when it expired while the store was out of reach."""
        asked_at = time.monotonic()
        lease = Lease(self, self._grant(ttl, timeout=lease_timeout(ttl)), ttl, asked_at,
                      regrant=regrant, on_regrant=on_regrant)
        if keepalive:
            lease.start_keepalive()
        return lease

    def register_host(self, host, info, ttl=1.0, keepalive=True, on_regrant=None):
        """Put /onvm/hosts/<host> under a lease: the host is alive while it
        exists.  Returns the Lease; without `keepalive` the caller calls
        `refresh()` well within `ttl` (every ttl/3).  With `keepalive`, a
        lease that expired (the store paused, or was out of reach longer
        than `ttl`) is granted again and the key put again, with the same
        value, as soon as the store answers; then `on_regrant(lease)`."""
        lease = self.lease(ttl, keepalive=False, regrant=True, on_regrant=on_regrant)
        self.put(HOSTS + host, info, lease=lease)
        if keepalive:
            lease.start_keepalive()
        LOG.info("host %s registered in %s under lease %x (ttl %g s)",
                 host, self.url, lease.id, ttl)
        return lease

    def hosts(self):
        """{host name: info} of the hosts alive now."""
        return {_key_name(k, HOSTS): v for k, v in self.get_prefix(HOSTS).items()}

    # -- plans -----------------------------------------------------------
    def put_plan(self, host, plan, leader=None):
        """Write /onvm/plan/<host> with the next generation (one more than
        the stored plan's, or than the generation the host's agent reports
        it runs when that is higher: after a plan was deleted, the agent
        still runs it, fail-static, and ignores lower generations; so
        generations grow across controllers and deletes) and return that
        generation.  `plan["generation"]` is replaced.  With
        `leader` (an Election), the store itself refuses the write (a
        transaction on /onvm/leader's value and lease) unless it leads:
        NotLeader."""
        key = PLAN + host
        guard = _guard(leader, f"plan for {host} not written", self.url)
        running = self._applied_generation(host)
        for _ in range(20):
            raw, mod_revision = self._get_with_revision(key)
            previous = max(self._generation(raw, key), running)
            stored = dict(plan, generation=previous + 1)
            outcome = self._put_if_unchanged(key, encode_value(stored), mod_revision, guard)
            if outcome == "ok":
                return previous + 1
            if outcome == "not-leader":
                raise _not_leader(leader, f"plan for {host} not written", self.url)
        raise StoreError(f"{self.url}: plan for {host} kept changing under us; "
                         "is a second controller writing without leading?")

    def _applied_generation(self, host):
        """The generation /onvm/applied/<host> says the agent runs; 0 for
        none or for garbage (counted)."""
        return self._generation(self._get_with_revision(APPLIED + host)[0], APPLIED + host)

    def _generation(self, raw, key):
        """The generation of a stored plan (or applied report); 0 for none.
        A value that is garbage counts as none (and is counted): it is
        overwritten."""
        if raw is None:
            return 0
        try:
            value = self.decode(raw, key)
        except StoreError:
            return 0
        generation = value.get("generation") if isinstance(value, dict) else None
        if not isinstance(generation, int) or isinstance(generation, bool):
            self.garbage_error(f"read {key}", f"no integer generation in {raw[:80]!r}")
            return 0
        return generation

    def get_plan(self, host):
        return self.get(PLAN + host)

    def plans(self):
        return {_key_name(k, PLAN): v for k, v in self.get_prefix(PLAN).items()}

    def delete_plan(self, host, leader=None):
        """Delete a host's plan; with `leader`, fenced as put_plan is."""
        guard = _guard(leader, f"plan of {host} not deleted", self.url)
        if guard is None:
            return self.delete(PLAN + host)
        outcome = self._delete_if_leader(PLAN + host, guard)
        if outcome == "not-leader":
            raise _not_leader(leader, f"plan of {host} not deleted", self.url)
        return outcome == "ok"

    def put_applied(self, host, generation):
        self.put(APPLIED + host, {"generation": int(generation),
                                  "time": time.time()})

    def get_applied(self, host):
        """The plan generation the host's agent runs, or None."""
        value = self.get(APPLIED + host)
        return None if value is None else value["generation"]

    # -- stats -----------------------------------------------------------
    def put_stats(self, host, stats):
        """Put a host's stats summary (contracts.statsum; no lease: the
        last one stays readable after the agent is gone); returns its size
        in bytes."""
        raw = encode_value(stats)
        self._put(STATS + host, raw, None)
        return len(raw)

    def get_stats(self, host):
        return self.get(STATS + host)

    def stats(self):
        return {_key_name(k, STATS): v for k, v in self.get_prefix(STATS).items()}

    # -- replicas of NF state (contracts.replica) ---------------------------
    def put_replica(self, host, instance, value, lease):
        """Put instance `instance`'s replica of host `host` under `lease`;
        returns its size in bytes."""
        key = f"{REPLICA}{host}/{instance}"
        raw = encode_value(value)
        self._put(key, raw, lease.id)
        lease.keys[key] = raw
        return len(raw)

    def get_replica(self, host, instance):
        return self.get(f"{REPLICA}{host}/{instance}")

    def delete_replica(self, host, instance, lease=None):
        key = f"{REPLICA}{host}/{instance}"
        if lease is not None:
            lease.keys.pop(key, None)
        return self._delete(key)

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


def _guard(leader, what, url):
    if leader is None:
        return None
    lease = leader.lease
    if lease is None or lease.lost:
        raise _not_leader(leader, what, url)
    return (LEADER, leader.value_raw, lease.id)


def _not_leader(leader, what, url):
    return NotLeader(f"{url}: {what}: {leader.name} no longer holds {LEADER}")


class Lease:
    """A lease in the store; keys put with it vanish when it expires.

    `keys` ({key: raw value}) are the keys put under it; with `regrant`,
    the keep-alive thread grants a new lease when this one expired and
    puts them again (`id` changes, `regrants` counts, `on_regrant(lease)`
    is called)."""

    def __init__(self, store, lease_id, ttl, granted_at, regrant=False, on_regrant=None):
        self.store = store
        self.id = lease_id
        self.ttl = ttl
        self.regrant = regrant
        self.on_regrant = on_regrant
        self.keys = {}
        self.regrants = 0
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
        if self.store._refresh(self.id, timeout=lease_timeout(self.ttl)):
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
        failing_since = None
        while not self._stop.wait(self.ttl / 3.0):
            try:
                if not self.lost:
                    self.refresh()
                if self.lost:
                    if not self.regrant:
                        return
                    self._grant_again()
            except StoreError as err:
                if failing_since is None:
                    failing_since = time.monotonic()
                    LOG.warning("keep-alive of lease %x: %s; retrying every %.2g s "
                                "(logged once per outage)", self.id, err, self.ttl / 3)
                continue
            if failing_since is not None:
                LOG.warning("keep-alive of lease %x: %s answers again after %.1f s",
                            self.id, self.store.url, time.monotonic() - failing_since)
                failing_since = None

    def _grant_again(self):
        """The lease expired: a new one, the same keys with the same values."""
        old = self.id
        asked_at = time.monotonic()
        new = self.store._grant(self.ttl, timeout=lease_timeout(self.ttl))
        if self._stop.is_set():             # stopped meanwhile: leave nothing behind
            self.store._revoke(new)
            return
        for key, raw in list(self.keys.items()):
            self.store._put(key, raw, new)
        self.id, self.lost, self._deadline = new, False, asked_at + self.ttl
        self.regrants += 1
        LOG.warning("lease %x in %s had expired (the store was out of reach or "
                    "paused); granted lease %x and put %s again",
                    old, self.store.url, new, ", ".join(sorted(self.keys)) or "no key")
        if self.on_regrant is not None:
            try:
                self.on_regrant(self)
            except Exception:       # the owner's hook must not end the keep-alive
                LOG.exception("on_regrant hook of lease %x failed", new)

    def stop(self, revoke=True):
        """Stop refreshing; with `revoke` the lease and its keys go now,
        without it they go when the TTL runs out (what a crash does).  A
        lease stopped without revoke may be revoked by a later stop: its
        keys then go at once, or it has expired already, which is fine."""
        self.stopped = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.ttl + REQUEST_TIMEOUT)
        if revoke and not self.lost:
            self.lost = True
            self.store._revoke(self.id)


class Watch:
    """An iterator of (key, value-or-None) changes; `cancel()` ends it.

    When the connection breaks (etcd restarted, a member lost, network),
    it reconnects, to another member if need be, from the revision after
    the last one seen, so no change is lost or repeated.  When etcd has
    compacted that revision away, it lists the prefix again and yields
    what changed since (keys written after the last revision seen, and
    deletes for keys it knew that are gone), then goes on from there."""

    RETRY_S = 0.5

    def __init__(self, open_events, what, start_revision=None, relist=None, known=()):
        self._open = open_events          # revision -> (events, cancel)
        self._relist = relist             # () -> ([(key, value, mod)], revision)
        self.what = what
        self.revision = None if start_revision is None else start_revision - 1
        self.cancelled = False
        self.resyncs = 0
        self._present = set(known)
        self._pending = collections.deque()
        self._thread = None
        self._events, self._cancel = open_events(start_revision)

    def __iter__(self):
        return self

    def __next__(self):
        while not self.cancelled:
            if self._pending:
                return self._pending.popleft()
            try:
                key, value, revision = next(self._events)
            except WatchCompacted as err:
                if self._relist is None:
                    raise
                self._resync(err)
                continue
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
            if key is SKIPPED:
                continue
            if value is None:
                self._present.discard(key)
            else:
                self._present.add(key)
            return key, value
        raise StopIteration

    def _resync(self, err):
        """List again after a compaction; queue what changed since."""
        after = self.revision or 0
        while not self.cancelled:
            try:
                items, revision = self._relist()
                break
            except StoreError as again:
                LOG.warning("watch of %s: cannot list again yet: %s", self.what, again)
                time.sleep(self.RETRY_S)
        else:
            return
        now = {key for key, _, _ in items}
        gone = sorted(self._present - now)
        changed = [(key, value) for key, value, mod in items if mod > after]
        self._pending.extend((key, None) for key in gone)
        self._pending.extend(changed)
        self._present = now
        self.resyncs += 1
        LOG.warning("watch of %s: %s; listed the prefix again at revision %d: "
                    "%d keys changed, %d gone since revision %d", self.what, err,
                    revision, len(changed), len(gone), after)
        self.revision = revision
        self._reopen()

    def _reconnect(self, err):
        quiet = isinstance(err, WatchIdle)
        text = str(err) if self.what in str(err) else f"watch of {self.what} broke ({err})"
        (LOG.debug if quiet else LOG.warning)("%s; resuming after revision %s", text,
                                              self.revision)
        if not quiet:
            time.sleep(self.RETRY_S)
        self._reopen()

    def _reopen(self):
        failing = None
        while not self.cancelled:
            try:
                start = None if self.revision is None else self.revision + 1
                self._events, self._cancel = self._open(start)
                if failing is not None:
                    LOG.warning("watch of %s resumed after revision %s", self.what,
                                self.revision)
                return
            except StoreError as again:
                if failing is None:
                    LOG.warning("watch of %s: cannot resume yet: %s (retrying every "
                                "%g s, logged once)", self.what, again, self.RETRY_S)
                failing = again
            time.sleep(self.RETRY_S)

    def cancel(self):
        self.cancelled = True
        self._cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)

    def run_in_thread(self, callback):
        def run():
            try:
                for key, value in self:
                    try:
                        callback(key, value)
                    except Exception:   # the watch outlives a failing callback
                        LOG.exception("watch of %s: callback failed on %s",
                                      self.what, key)
            except StoreError as err:
                LOG.error("watch of %s ended: %s", self.what, err)
        self._thread = threading.Thread(target=run, daemon=True,
                                        name=f"watch {self.what}")
        self._thread.start()


class WatchIdle(StoreError):
    """A watch stream said nothing for a while: it is opened again (the
    member may hang without closing it); not worth a warning."""


class Election:
    """Leader election on /onvm/leader: the key exists under the leader's
    lease; whoever creates it leads until it resigns or stops refreshing.

    `campaign()` never blocks: it tries once and returns `is_leader`.  A
    standby calls it periodically (every ttl/2 or so) and takes over once
    the leader's lease has expired.  Writes passed `leader=` this election
    are fenced by the store: refused unless /onvm/leader holds this
    election's value under its lease."""

    def __init__(self, store, name, ttl=1.0, keepalive=True):
        self.store = store
        self.name = name
        self.ttl = ttl
        self.keepalive = keepalive
        self.lease = None
        self.value_raw = encode_value({"name": name, "pid": os.getpid()})

    @property
    def is_leader(self):
        return self.lease is not None and self.lease.alive

    def leader(self):
        """Name of the controller that leads now, or None."""
        value = self.store.get(LEADER)
        return value["name"] if isinstance(value, dict) and "name" in value else None

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
