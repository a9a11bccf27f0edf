"""The host agent: one host's fast path, run from a local plan file or from
the plans the controller writes to the store.

    onvm agent --host h1 --plan plan.json -- --vdev net_af_packet0,iface=eth0
    onvm agent --host h1 --store http://127.0.0.1:2379 -- EAL-ARGS

It starts DPDK (the EAL arguments after `--`, completed with a file prefix
and memory settings where they are missing), runs the manager loop in a
thread that holds no GIL, applies plans (checked first: a bad plan is logged
and the running one stays), starts NF processes for instances in "process"
mode, each on a core of its own where the host has one (host_agent.lcores;
the cores are in its stats under "cores"), and keeps its full counters (every second) on a Prometheus endpoint and
in `Agent.latest`.  The store gets only a small, bounded summary of them
(`contracts.statsum`: at most 16 KiB, no rule texts or per-rule arrays)
in `/onvm/stats/<host>`, every `publish_interval` seconds (5 by default,
`--stats-publish`) and at once when what the controller acts on changes:
the plan generation run, a plan error, the set of instances, a move's
snapshot taken.  With a store it registers `/onvm/hosts/<host>` under a
lease: the host is alive while the agent is; `host_agent.storelink` keeps that link and the plan watch
through store faults, and never lets them stop forwarding.

Planned moves (controller/moves.py) carry NF state: for an instance a plan
marks `"export": true` the agent pauses the loop, takes the NF's
`export_state()` and publishes it in its stats (instances[ID]["state"],
with "state_generation", the plan generation it was taken at; null for an
NF that cannot export), at once and outside the summary's cap, in the
publications made while the plan marks the instance.  A new instance whose
plan entry has a "state" gets `import_state(state)` before the new tables
are swapped in, so its first packet already finds the moved flows.

Rule files are watched: every stats interval (1 s) the agent asks each
inline NF that reads one (`rules_file_changed()`, the ids) whether its
file now holds other bytes (mtime and size, then SHA-256) and, if so,
reloads it in place (`reload(config)`): flows and counters stay; a file
that cannot run leaves the old rules in force (logged, and counted in the
NF's reload_failures).  Write the new file beside and rename it over the
old one, as suricata-update does; a file caught half-written loads what
it holds and is reloaded whole at the next poll.  Process-mode instances
read their rules when their process starts.

With `--workers N` the fast path is N loops, one per queue pair of each
port (host_agent.workers): the same plan in each, counters summed, inline
instances only; a `net_af_packet` vdev gets one socket per worker
(`qpairs`, `with_queue_pairs`).

It does not decide anything about placement; that is the controller's.
"""
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from host_agent import fastpath as fp
from host_agent import lcores
import contracts
from contracts.plan import PlanError, check_plan, load_plan
from contracts.statsum import PUBLISH_S, summarize
from contracts.store import StoreFull
from host_agent.replicas import Replicator
from host_agent.sharer import Sharer
from nflib.api import make_nf

log = logging.getLogger("onvm.agent")


# The lcore the loop of an agent without --workers runs on, beside the
# main lcore 0 (the agent's control thread) on core 0, when the user's EAL
# arguments name no cores: an EAL lcore has its own cache of the packet
# pool, a plain thread none.  The last lcore id DPDK has (RTE_MAX_LCORE - 1),
# so that no NF process (`-l CORE`, its core's number) shares its cache.
LOOP_LCORE = 127


def eal_args_for(host, user_args):
    """The user's EAL arguments, with what they leave out filled in: a file
    prefix per host, lcore 0 and the loop's LOOP_LCORE on core 0, huge
    pages when the machine has them (NF processes need them to share
    memory) or --no-huge."""
    args = list(user_args)
    if not any(a.startswith("--file-prefix") for a in args):
        args += ["--file-prefix", "onvm_" + host]
    if not any(a in ("-l", "-c", "--lcores") for a in args):
        args += ["--lcores", f"0@0,{LOOP_LCORE}@0"]
    if not any(a in ("--no-huge", "--socket-mem", "-m") for a in args):
        if fp.hugepages_available() >= 256:
            args += ["--socket-mem", "256"]
        else:
            args += ["--no-huge", "-m", "256"]
    if not any(a in ("-a", "--allow", "-b", "--block", "--no-pci") for a in args):
        args.append("--no-pci")
    if "--no-telemetry" not in args:
        args.append("--no-telemetry")
    return ["onvm-" + host] + args


def with_queue_pairs(eal, workers):
    """`eal` with each `net_af_packet` vdev given `qpairs=workers` (one
    socket a worker: the kernel's PACKET_FANOUT_HASH spreads flows over
    them by its flow hash, which orders the addresses, so both directions
    of a flow land on one socket; the handoff moves what the fast path's
    own hash puts elsewhere).  A vdev that names fewer qpairs than workers
    is refused (ValueError naming both); more are left as they are."""
    out = list(eal)
    for i, a in enumerate(out[:-1]):
        if a != "--vdev" or not out[i + 1].startswith("net_af_packet"):
            continue
        dev = out[i + 1]
        given = [kv.split("=", 1)[1] for kv in dev.split(",")[1:] if kv.startswith("qpairs=")]
        if not given:
            out[i + 1] = f"{dev},qpairs={workers}"
        elif not given[-1].isdigit() or int(given[-1]) < workers:
            raise ValueError(f"--vdev {dev}: qpairs={given[-1]} gives fewer queue pairs than "
                             f"the {workers} workers (--workers); leave qpairs out or give "
                             f"at least {workers}")
    return out


class Agent:
    """Owns the Manager, its loop thread, NF processes and stats."""

    def __init__(self, host, manager, store=None, nf_factory=make_nf,
                 eal_args=(), stats_interval=1.0, publish_interval=PUBLISH_S):
        self.host = host
        self.manager = manager
        self.store = store
        self.nf_factory = nf_factory
        self.eal_args = list(eal_args)
        self.stats_interval = stats_interval
        self.publish_interval = publish_interval
        self.latest = None                  # the full stats, sampled every stats_interval
        self.published = None              # (monotonic time, facts) of the last summary put
        self.publications = 0               # summaries put, and their bytes
        self.published_bytes = 0
        self._cut_logged = False
        self.plan_error = None
        self.plan = None                    # the plan applied (metrics' chain labels)
        self.procs = {}                     # instance id -> Popen
        self.nf_cores = {}                  # instance id -> core of its NF process
        self.shared_cores = []              # cores more than one polls (too few cores)
        self.manager_core = None
        self._thread = None
        self.loop_lcore = None              # the EAL lcore the loop runs on (None: a thread)
        self._stop = threading.Event()
        self.apply_lock = threading.Lock()
        self._last = (time.monotonic(), None)
        self.rates = {}
        self.exported = {}                  # instance id -> {"state", "state_generation"}
        self.replicator = Replicator(self)  # replicas of NF state (host_agent.replicas)
        self.sharer = Sharer(self)          # budgets and sketches shared (host_agent.sharer)
        self._stats_lock = threading.Lock()  # the loop and a plan's export both publish

    # -- plans -------------------------------------------------------
    def apply(self, plan, source="plan"):
        """Check and apply a plan; on error keep the running one. Returns
        True if applied."""
        with self.apply_lock:
            try:
                check_plan(plan)
                if plan["host"] != self.host:
                    raise PlanError(f"{source}: plan.host is {plan['host']!r}, "
                                    f"but this agent runs host {self.host!r}")
                current = self.manager.generation
                if current is not None and plan["generation"] < current:
                    log.info("%s: ignoring %s generation %d: running %d already",
                             self.host, source, plan["generation"], current)
                    return False
                self._check_cores(plan)
                self.manager.apply_plan(plan, self._make_nf)
            except (PlanError, ValueError, fp.FastPathError) as err:
                self.plan_error = f"{source}: {err}"
                log.error("%s: plan not applied, keeping generation %s: %s",
                          self.host, self.manager.generation, err)
                return False
            self.plan_error = None
            self.plan = plan
            try:
                self.sharer.tick(exchange=False)    # workers split the last shares at once
            except Exception:                       # its thread tries again
                log.exception("%s: NF state not shared on applying the plan", self.host)
            self._sync_processes(plan)
            exported = self._export_marked(plan)
            if self.store is not None:
                self.store.put_applied(self.host, plan["generation"])
                if exported:
                    self._publish(force=True)   # the controller waits for it
            return True

    def _check_cores(self, plan):
        """With worker cores: CoresError (a plan error) if the plan gives
        out more cores than this host's budget has; a warning if more than
        the workers (its instances then share fewer cores than placed)."""
        workers = len(getattr(self.manager, "managers", ()))
        if workers < 2:
            return          # one loop: every inline instance on its core
        manager, free = lcores.budget(self.eal_args or [])
        lcores.check_plan_cores(plan, [manager] + free)
        total = lcores.plan_cores(plan)[0]
        if total > workers:
            log.warning("%s: plan generation %d gives out %d cores, this agent runs %d "
                        "workers: its instances share fewer cores than placement counted "
                        "(--workers auto takes the plan's)", self.host, plan["generation"],
                        total, workers)

    def reload_changed_rules(self):
        """Reload the rules of every inline instance whose rule file
        changed on disk; returns the ids of those reloaded."""
        done = []
        with self.apply_lock:
            for inst in (self.plan or {}).get("instances", []):
                if inst.get("mode", "inline") != "inline":
                    continue
                # with worker cores (host_agent.workers) each has its own object
                nfs = getattr(self.manager, "nf_objects", lambda i: [self.manager.nf_object(i)])
                nfs = nfs(inst["id"])
                if not getattr(nfs[0], "rules_file_changed", lambda: False)():
                    continue
                try:
                    for nf in nfs:
                        got = nf.reload(inst.get("config") or {})
                except ValueError as err:
                    log.error("%s: instance %d (%s): its rule file changed but does not "
                              "load; the old rules stay in force: %s", self.host, inst["id"],
                              inst["nf"], err)
                    continue
                log.info("%s: instance %d (%s) reloaded its rule file: %d rules loaded, "
                         "%d skipped, in %.0f ms", self.host, inst["id"], inst["nf"],
                         got["loaded"], got["skipped"], got["ms"])
                done.append(inst["id"])
        return done

    # -- NF state on moves ------------------------------------------------
    def _make_nf(self, inst):
        """nf_factory, then the moved state if the plan brings one: the
        fast path calls this before it swaps the new tables in."""
        nf = self.nf_factory(inst)
        if "adopt" in inst and hasattr(nf, "import_state"):
            self.replicator.adopt(self.store, inst, nf)
        if "state" not in inst:
            return nf
        state = inst["state"]
        if state is None:
            log.info("%s: instance %d (%s) starts without state: its old "
                     "instance exported none", self.host, inst["id"], inst["nf"])
        elif not hasattr(nf, "import_state"):
            log.warning("%s: instance %d (%s) was given state but its NF has no "
                        "import_state(); it starts empty", self.host, inst["id"],
                        inst["nf"])
        else:
            taken = nf.import_state(state)
            log.info("%s: instance %d (%s) imported the moved state (%s entries taken)",
                     self.host, inst["id"], inst["nf"], taken)
        return nf

    def _export_marked(self, plan):
        """Snapshot the state of every instance the plan marks "export";
        forget snapshots of instances no longer marked.  Returns how many
        were taken."""
        marked = [i for i in plan["instances"] if i.get("export")]
        taken = {}      # built aside: stats() may read self.exported meanwhile
        if marked:
            with self.loop_paused():
                for inst in marked:
                    taken[inst["id"]] = {"state": self._export_one(inst),
                                         "state_generation": plan["generation"]}
        self.exported = taken
        return len(taken)

    def _export_one(self, inst):
        nf = self.manager.nf_object(inst["id"])
        if nf is None or not hasattr(nf, "export_state"):
            log.warning("%s: instance %d (%s) is to move but its NF cannot export "
                        "state; it moves without (its flows start anew)",
                        self.host, inst["id"], inst["nf"])
            return None
        state = nf.export_state()
        log.info("%s: exported the state of instance %d (%s) for its move: %d bytes "
                 "of JSON", self.host, inst["id"], inst["nf"], len(json.dumps(state)))
        return state

    @contextlib.contextmanager
    def held(self):
        """The running loop stands still between two iterations while in
        this block (Manager.hold): microseconds, for reading NF tables in
        chunks (host_agent.replicas)."""
        running = self._thread is not None and self._thread.is_alive()
        if running:
            self.manager.hold()
        try:
            yield
        finally:
            if running:
                self.manager.release()

    @contextlib.contextmanager
    def loop_paused(self):
        """NFs export only while their loop does not run (they read their
        tables without locks): stop the loop thread, then start it again.
        Packets wait in the ports' rings meanwhile."""
        running = self._thread is not None and self._thread.is_alive()
        if running:
            self.manager.stop()
            self._thread.join(5)
        try:
            yield
        finally:
            if running and not self._stop.is_set():
                self.start()

    def _sync_processes(self, plan):
        """Start an `onvm nf run` for each process-mode instance; stop the
        ones the plan no longer has."""
        wanted = {i["id"]: i for i in plan["instances"] if i.get("mode") == "process"}
        self._process_instances = wanted
        for iid in list(self.procs):
            if iid not in wanted:
                self._stop_process(iid)
        self._assign_cores(wanted)
        for iid, inst in wanted.items():
            proc = self.procs.get(iid)
            if proc is None or proc.poll() is not None:
                self.procs[iid] = self._start_process(inst)

    def _assign_cores(self, wanted):
        """A core of the budget for each NF process (host_agent.lcores): a
        running process keeps its core; a process whose core changes is
        started again there.  Warns when cores must be shared."""
        manager, free = lcores.budget(self.eal_args)
        cores, shared = lcores.assign(wanted, manager, free, kept=self.nf_cores)
        for iid, core in cores.items():
            if iid in self.procs and self.nf_cores.get(iid) != core:
                self._stop_process(iid)
        if shared and shared != self.shared_cores:
            log.warning("%s: %d NF process(es) and the manager (core %d) on %d core(s) "
                        "of the budget: cores %s are shared, which slows each that "
                        "polls them; give the agent more cores (-l / cores:)",
                        self.host, len(wanted), manager, len(free) + 1,
                        lcores.format_cores(shared))
        self.nf_cores, self.shared_cores = cores, shared
        self.manager_core = manager

    def _start_process(self, inst):
        prefix = self.eal_args[self.eal_args.index("--file-prefix") + 1]
        core = self.nf_cores[inst["id"]]
        cmd = [sys.executable, "-m", "onvm.cli", "nf", "run", inst["nf"],
               "--host", self.host, "--instance", str(inst["id"]),
               "--config", json.dumps(inst.get("config") or {}),
               "--file-prefix", prefix, "--lcore", str(core)]
        log.info("%s: starting NF process for instance %d (%s) on core %d", self.host,
                 inst["id"], inst["nf"], core)
        return subprocess.Popen(cmd)

    def _restart_dead_processes(self):
        """An NF process that died is started again; its packets wait in
        its ring meanwhile (counted as ring_full once the ring fills)."""
        plan_instances = getattr(self, "_process_instances", {})
        for iid, proc in list(self.procs.items()):
            if proc.poll() is not None and iid in plan_instances:
                log.error("%s: NF process of instance %d exited with %s; restarting",
                          self.host, iid, proc.returncode)
                self.procs[iid] = self._start_process(plan_instances[iid])

    def _stop_process(self, iid):
        proc = self.procs.pop(iid)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- loop --------------------------------------------------------
    def start(self):
        if isinstance(self.manager, fp.Manager) and LOOP_LCORE in fp.worker_lcores():
            self.loop_lcore = LOOP_LCORE
            self._thread = fp.LcoreThread(LOOP_LCORE, self.manager.run, name="fastpath")
            log.info("%s: the fast path runs on lcore %d (cores %s), with a cache of the "
                     "packet pool", self.host, LOOP_LCORE, fp.worker_lcores()[LOOP_LCORE])
        else:
            self._thread = threading.Thread(target=self.manager.run, name="fastpath",
                                            daemon=True)
        self._thread.start()
        self.sharer.start()

    def stop(self):
        self._stop.set()
        self.sharer.stop()
        self.manager.stop()
        if self._thread is not None:
            self._thread.join(5)
        for iid in list(self.procs):
            self._stop_process(iid)

    def stats(self):
        """Counters with rates (Mpps) since the last call."""
        now = time.monotonic()
        stats = self.manager.stats()
        then, last = self._last
        dt = max(now - then, 1e-6)
        if last is not None:
            for name, port in stats["ports"].items():
                old = last["ports"].get(name, {"rx": 0, "tx": 0})
                port["rx_mpps"] = round((port["rx"] - old["rx"]) / dt / 1e6, 6)
                port["tx_mpps"] = round((port["tx"] - old["tx"]) / dt / 1e6, 6)
            for iid, inst in stats["instances"].items():
                old = last["instances"].get(iid, {"rx": 0})
                inst["mpps"] = round((inst["rx"] - old["rx"]) / dt / 1e6, 6)
        self._last = (now, json.loads(json.dumps(stats)))
        self._last[1]["instances"] = {int(k): v for k, v in self._last[1]["instances"].items()}
        stats["host"] = self.host
        stats["time"] = time.time()
        stats["plan_error"] = self.plan_error
        stats["replication"] = dict(self.replicator.counters)
        stats["instances"] = {str(k): v for k, v in stats["instances"].items()}
        for iid, core in self.nf_cores.items():
            if str(iid) in stats["instances"]:
                stats["instances"][str(iid)]["core"] = core
        stats["cores"] = {"manager": self.manager_core, "loop_lcore": self.loop_lcore,
                          "nf_processes": {str(k): v for k, v in self.nf_cores.items()},
                          "shared": self.shared_cores}
        if "workers" in stats:           # worker cores (host_agent.workers)
            stats["cores"]["workers"] = [w["core"] for w in stats["workers"]]
        for iid, exported in self.exported.items():
            if str(iid) in stats["instances"]:
                stats["instances"][str(iid)].update(exported)
        return stats

    def _publish(self, force=False):
        """Sample the full stats; put their summary in the store when it is
        due (every publish_interval), when what the controller acts on
        changed, or with `force`."""
        with self._stats_lock:   # one summary after the other, in order
            stats = self.stats()
            self.latest = stats
            now = time.monotonic()
            facts = (stats["generation"], stats["plan_error"],
                     tuple(sorted((i, v["nf"]) for i, v in stats["instances"].items())),
                     tuple(sorted((i, e["state_generation"]) for i, e in self.exported.items())))
            last = self.published
            if not force and last is not None and last[1] == facts \
                    and now - last[0] < self.publish_interval:
                return False
            summary = self._summary(stats)
            try:
                size = self.store.put_stats(self.host, summary)
            except StoreFull:           # logged once by the store client
                return False
            except Exception as err:   # the store may be down; forwarding goes on
                log.warning("%s: stats not published: %s", self.host, err)
                return False
            if last is None or last[1][:3] != facts[:3]:     # a new plan: say the sizes
                log.info("%s: plan generation %s: stats summary of %d bytes put in the "
                         "store every %g s and at once on a change (full stats: %d bytes, "
                         "on the Prometheus endpoint)", self.host, stats["generation"],
                         size, self.publish_interval, len(json.dumps(stats)))
            self.published = (now, facts)
            self.publications += 1
            self.published_bytes += size
            return True

    def _summary(self, stats):
        """The bounded summary of `stats`, with a move's snapshot added
        after the cap (contracts.statsum); what the cap cut is logged once
        (until it changes)."""
        summary, notes = summarize(stats)
        if notes and not self._cut_logged:
            log.error("%s: the stats summary for the store would exceed %d bytes: "
                      "left out %s (the full stats stay on the Prometheus endpoint; "
                      "logged once, until a summary fits again)", self.host,
                      summary["summary"]["max_bytes"], "; ".join(notes))
        elif self._cut_logged and not notes:
            log.warning("%s: the stats summary fits in the store's cap again", self.host)
        self._cut_logged = bool(notes)
        for iid, inst in stats["instances"].items():
            if "state_generation" in inst and iid in summary["instances"]:
                summary["instances"][iid].update(
                    state=inst.get("state"), state_generation=inst["state_generation"])
        return summary

    def run(self, seconds=None):
        """Publish stats every interval until stopped or `seconds` pass."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self.store is not None:
                self._publish()
            else:
                with self._stats_lock:
                    self.latest = self.stats()
            self._restart_dead_processes()
            self.reload_changed_rules()
            wait = self.stats_interval
            if deadline is not None:
                wait = max(0, min(wait, deadline - time.monotonic()))
            self._stop.wait(wait)


# A stopping agent hands its traffic over before it stops forwarding: it
# stops answering the controller's probes (lost in about 0.2 s, its chains
# re-placed), then forwards on until the controller deletes its plan and
# the other hosts have had LINGER_S to apply theirs, LEAVE_S at most.
LEAVE_S = 3.0
LINGER_S = 0.5


def leave(host, manager, link, leave_s=LEAVE_S, linger_s=LINGER_S):
    """Hand over before stopping (see LEAVE_S); returns whether the
    controller took the host's plan away in time."""
    if not link.connected.is_set():
        return False        # no controller knows us through the store now
    start = time.monotonic()
    manager.answer_probes = False
    gone = link.plan_gone.wait(leave_s)
    if gone:
        time.sleep(linger_s)
    log.info("%s: leaving: %s after %.2f s; stopping", host,
             "the controller took my plan away" if gone else
             "the controller did not take my plan away", time.monotonic() - start)
    return gone


def host_info(manager, host, joining=None):
    """The host key's value: ports, cores, pid, agent version, and what a
    host the topology file lacks joins with (`joining`: mac, ip, label
    where given; controller.joins)."""
    stats = manager.stats()
    info = {"host": host, "ports": sorted(stats["ports"]),
            "cores": os.cpu_count(), "pid": os.getpid(),
            "agent_version": contracts.__version__}
    info.update({k: v for k, v in (joining or {}).items() if v is not None})
    return info


def cli_agent(args):
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    plan = None
    if args.lease_ttl is not None and not args.lease_ttl > 0:
        print(f"onvm agent: --lease-ttl must be more than 0 seconds, not "
              f"{args.lease_ttl:g}", file=sys.stderr)
        return 2
    if not getattr(args, "stats_publish", PUBLISH_S) > 0:
        print(f"onvm agent: --stats-publish must be more than 0 seconds, not "
              f"{args.stats_publish:g}", file=sys.stderr)
        return 2
    if getattr(args, "workers", 1) != "auto" and getattr(args, "workers", 1) < 1:
        print(f"onvm agent: --workers must be 1 or more, not {args.workers}", file=sys.stderr)
        return 2
    if args.plan:
        try:
            plan = load_plan(args.plan)
        except PlanError as err:
            print(f"onvm agent: {err}", file=sys.stderr)
            return 1
    if args.metrics_port:
        from host_agent.metrics import metrics_settings
        try:
            metrics = metrics_settings(args)
        except ValueError as err:
            print(f"onvm agent: {err}", file=sys.stderr)
            return 1
    eal = eal_args_for(args.host, args.eal)
    try:
        lcores.check_eal_cores(eal)
        workers = getattr(args, "workers", 1)
        if workers == "auto":
            workers = lcores.auto_workers(eal, plan)
            log.info("%s: --workers auto: %d worker%s", args.host, workers,
                     "s" if workers != 1 else "")
        cores = lcores.worker_cores(eal, workers) if workers > 1 else None
        if workers > 1:
            eal = with_queue_pairs(eal, workers)
        fp.eal_init(eal)
        flow_entries = getattr(args, "flow_entries", fp.FLOW_ENTRIES)
        if workers > 1:
            from host_agent.workers import Workers
            manager = Workers(args.host, None, workers, flow_entries, cores=cores)
        else:
            manager = fp.Manager(args.host, flow_entries=flow_entries)
    except (fp.FastPathError, ValueError) as err:     # lcores.CoresError too
        print(f"onvm agent: {err}", file=sys.stderr)
        return 1
    manager.idle_us = args.idle_us
    agent = Agent(args.host, manager, eal_args=eal[1:],
                  publish_interval=args.stats_publish)
    if plan is not None and not agent.apply(plan, args.plan):
        print(f"onvm agent: {agent.plan_error}", file=sys.stderr)
        manager.close()
        fp.eal_cleanup()
        return 1
    if args.metrics_port:
        from host_agent.metrics import serve_metrics
        serve_metrics(agent, metrics)
    signal.signal(signal.SIGTERM, lambda *_: agent._stop.set())
    hand_over = [True]

    def stop_at_once(*_):
        # SIGUSR1: the whole cluster stops (onvm emulate's end): nobody is
        # left to take the traffic, so no handover (LEAVE_S) first
        hand_over[0] = False
        agent._stop.set()
    signal.signal(signal.SIGUSR1, stop_at_once)
    agent.start()
    link = None
    try:
        if args.store:
            # Fail-static: the store is reached (and reached again) in the
            # background; forwarding never waits for it (host_agent.storelink).
            from host_agent.storelink import HOST_TTL, StoreLink
            link = StoreLink(agent, args.store, lambda: host_info(manager, args.host, {
                                 k: getattr(args, k, None) for k in ("mac", "ip", "label")}),
                             ttl=args.lease_ttl or HOST_TTL)
            link.start()
            agent.replicator.interval = getattr(args, "replicate_interval", 1.0)
            if agent.replicator.interval > 0:
                agent.replicator.start()
        agent.run(args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        if link is not None:
            if hand_over[0]:
                leave(args.host, manager, link)
            agent.replicator.stop()
            link.stop()
        agent.stop()
        final = agent.stats()
        manager.close()
        fp.eal_cleanup()
        log.info("%s: stopped; final counters %s", args.host, json.dumps(final))
    return 0
