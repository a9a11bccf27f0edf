"""What the store says about a running emulation, read by a thread of its
own, so that a reader never waits on a store that does not answer.

`StoreWatch.latest()` returns at once the last plans, stats and live
hosts the store gave, and, while it does not answer, since when and why.
A store that does not answer is not an error here: the emulation goes
on, and its view says so.

Not here: what the snapshot means (emulate.Emulation.status), the store's
client (contracts.store).
"""
from __future__ import annotations

import threading
import time

from contracts.store import StoreError

INTERVAL_S = 1.0
UNREACHABLE_AFTER_S = 2.5   # no answer for this long: the store is unreachable


class StoreWatch:
    """Reads `store` every `interval` seconds until `stop()`."""

    def __init__(self, store, interval=INTERVAL_S, clock=time.time):
        self.store = store
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seen = {"plans": {}, "stats": {}, "alive": set()}
        self._ok = clock()          # when the store last answered
        self._error = None          # why it did not, since
        self._thread = None

    def read(self):
        """One snapshot, now (raises StoreError when the store does not answer)."""
        return {"plans": self.store.plans(), "stats": self.store.stats(),
                "alive": set(self.store.hosts())}

    def poll(self):
        """Read once; remember the snapshot, or why there is none."""
        try:
            seen = self.read()
        except StoreError as err:
            with self._lock:
                self._error = str(err).rstrip(": ") or type(err).__name__
            return
        with self._lock:
            self._seen, self._ok, self._error = seen, self.clock(), None

    def start(self):
        self.poll()
        self._thread = threading.Thread(target=self._run, name="store-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.poll()

    def latest(self):
        """(snapshot, None) while the store answers; (last snapshot,
        {"since": when it last answered, "error": why not}) when it has not
        for UNREACHABLE_AFTER_S (a read may hang that long before it fails)."""
        with self._lock:
            late = self.clock() - self._ok > UNREACHABLE_AFTER_S
            if self._error is None and not late:
                return self._seen, None
            return self._seen, {"since": self._ok,
                                "error": self._error or "no answer yet"}

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
