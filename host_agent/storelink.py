"""The agent's link to the store: it registers the host, keeps that alive,
watches the host's plan and hands new plans to the agent, and rides out
every store fault without touching the data plane.

Fail-static: whatever the store or the controllers do, the agent goes on
forwarding on its last applied plan.  Nothing here ever stops the agent,
flushes its plan or drops a packet:
  - a store that does not answer at start is asked again (logged once)
    while the fast path already runs (on no plan, or on a local one);
  - a host lease that expired during an outage is granted again and the
    host key put again, with the same value, as soon as the store answers
    (`contracts.store_api.Lease`); the plan generation the agent runs is
    then published again in /onvm/applied/<host>;
  - the plan watch starts at the revision after the plan it read, and
    resumes after the last revision it saw (on another etcd member if
    need be): no plan is missed or applied twice;
  - a deleted plan is logged and ignored: the running one stays until the
    controller writes another.

Not here: applying a plan (`host_agent.agent.Agent.apply`: checked first,
a bad plan leaves the running one), the fast path, the store's client
(`contracts.store`).
"""
from __future__ import annotations

import logging
import threading

from contracts.store import PLAN, StoreError, open_store

log = logging.getLogger("onvm.agent")

HOST_TTL = 1.0          # DESIGN: a host's key lives under a 1 s lease
RETRY_S = 1.0


class StoreLink:
    """`StoreLink(agent, url, info)`: `start()` connects in a thread (and
    keeps trying), `stop()` cancels the watch and revokes the lease.
    `info()` gives the host key's value.  `agent` has `host`, `store`
    (set here once connected), `manager.generation` and `apply(plan, source)`."""

    def __init__(self, agent, url, info, ttl=HOST_TTL):
        self.agent = agent
        self.url = url
        self.info = info
        self.ttl = ttl
        self.store = None
        self.lease = None
        self.watch = None
        self.regrants = 0
        self.connected = threading.Event()
        self.plan_gone = threading.Event()     # the controller deleted our plan
        self._stop = threading.Event()
        self._unpublished = False
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._run, name="store-link", daemon=True)
        self._thread.start()

    def _run(self):
        failing = None
        while not self._stop.is_set():
            try:
                if not self.connected.is_set():
                    self._connect()
                if self._unpublished:
                    self._publish_applied()
                if failing is not None:
                    log.warning("%s: store %s answers again", self.agent.host, self.url)
                    failing = None
            except StoreError as err:
                if failing is None:
                    log.warning("%s: store: %s; forwarding goes on with plan generation "
                                "%s, retrying every %g s (logged once)", self.agent.host,
                                err, self.agent.manager.generation, RETRY_S)
                failing = err
            self._stop.wait(RETRY_S)

    def _connect(self):
        host = self.agent.host
        if self.store is None:
            self.store = open_store(self.url)
        if self.lease is None:
            self.lease = self.store.register_host(host, self.info(), ttl=self.ttl,
                                                  on_regrant=self._regranted)
        # The plan and the revision it was read at: the watch goes on from
        # the next revision, so a plan written meanwhile is not missed.
        plans, revision = self.store.snapshot(PLAN + host, skip_garbage=True)
        self.agent.store = self.store
        current = plans.get(PLAN + host)
        if current:
            self._on_plan(PLAN + host, current)
        self.watch = self.store.watch(PLAN + host, self._on_plan,
                                      start_revision=revision + 1, known=plans)
        self.connected.set()
        log.info("%s: registered in %s; watching %s from revision %d", host,
                 self.url, PLAN + host, revision + 1)

    def _on_plan(self, key, plan):
        if plan is None:
            self.plan_gone.set()
            log.warning("%s: %s was deleted; keeping plan generation %s (fail-static: "
                        "only a new plan changes what runs)", self.agent.host, key,
                        self.agent.manager.generation)
            return
        self.plan_gone.clear()
        if isinstance(plan, dict) and plan.get("generation") == self.agent.manager.generation:
            return          # running it already (read again on a reconnect)
        try:
            self.agent.apply(plan, key)
        except StoreError as err:       # applied; only its report failed
            log.warning("%s: plan generation %s applied but not reported: %s; "
                        "reporting it when the store answers", self.agent.host,
                        plan.get("generation"), err)
            self._unpublished = True

    def _regranted(self, lease):
        self.regrants += 1
        log.warning("%s: re-registered under lease %x after the store's outage; "
                    "still running plan generation %s", self.agent.host, lease.id,
                    self.agent.manager.generation)
        self._unpublished = True

    def _publish_applied(self):
        generation = self.agent.manager.generation
        if generation is not None:
            self.store.put_applied(self.agent.host, generation)
        self._unpublished = False

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            # Its loop ends within RETRY_S of the event; the thread itself
            # was seen to linger in its teardown (no Python frame left) for
            # seconds, which must not hold up a stopping agent.
            self._thread.join(RETRY_S + 0.5)
        if self.watch is not None:
            self.watch.cancel()
        if self.lease is not None:
            try:
                self.lease.stop()
            except StoreError as err:
                log.warning("%s: lease not revoked (%s): the host key goes when it "
                            "expires", self.agent.host, err)
