"""The Ryu app that runs the cluster: a thin shell (Faucet's habit) around
`controller.core.ClusterCore`, which decides everything.  Each handler
turns a Ryu event into a core call; the loop campaigns in the election and
steps the core four times a second; what the core returns is sent to the
switches as OpenFlow messages (`controller.ofmsgs`).  Only the leader
writes plans and programs switches; a standby steps the same core in the
shadows, so it takes over with the leader's view.

Responsiveness: the core's rule compile and plan building yield to the
eventlet hub every few chains, switches and rows of ECMP next hops (a
controller.rulebook.Stretches set as controller.livegraph.LiveFabric's
pause, passed down as controller.pausing describes), so OpenFlow echoes,
port status, probes and REST requests are answered while it runs; a newer
compile supersedes one in flight (LiveFabric.rules).  A step makes no full
garbage-collection pass (those walk the million rules of a k=16 fabric in
one stretch of 200-460 ms), and what a compiling step leaves is frozen
(controller.pausing.FullCollections).  A worker process was measured and
refused: pickling the k=16 fat tree's million rules takes 2.8-4.1 s and
unpickling them in the hub 5.4-5.5 s, longer than the compile.  A step that compiled rules is logged with its longest
stretch without yielding.

Switch syncs diff against what this controller last programmed on the
switch and saw confirmed by a barrier (`confirmed`, flows.Confirmed); the
switch's flows and groups are read only after it connects, after a sync
failed, after it reported an error (a mismatch), or after a change of
leadership (the other controller may have programmed it meanwhile).

Run: ryu-manager controller.apps.chain_manager controller.apps.rest_api
--config-file FILE, with [onvm] topology and store (controller.config).
Add ryu.topology.switches and --observe-links to have links found by LLDP
compared with the topology file.

Not here: any decision (controller.core and the modules it uses), the
REST API (controller.apps.rest_api, over controller.view.ClusterView).
"""
import time

from ryu.app.ofctl import api as ofctl_api
from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import (CONFIG_DISPATCHER, DEAD_DISPATCHER,
                                    MAIN_DISPATCHER, set_ev_cls)
from ryu.lib import hub
from ryu.ofproto import ofproto_v1_3
from ryu.topology import event as topo_event

from ryu import cfg  # ryu-manager parses into ryu.cfg.CONF, not oslo_config.cfg.CONF

from controller import config  # noqa: F401  (registers the [onvm] options)
from controller import flows
from controller.core import ClusterCore, SwitchDiff
from controller.pausing import FullCollections
from controller.rulebook import Stretches
from controller.ofmsgs import actual_flows, iter_messages
from contracts.store import (CHAINS, HOSTS, JOINED, STATS, Election, StoreError, StoreFull,
                            open_store)
from controller.topology import load_topology

LOOP_SECONDS = 0.25
HUB_TICK = 0.01         # the hub watch's sleep: lateness beyond it is the hub unserved
ERROR_RETRY_SECONDS = 2.0
SEND_BATCH = 256        # flow mods sent between two yields to the hub


class ChainManager(app_manager.RyuApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = "chain_manager"
        topology = load_topology(cfg.CONF.onvm.topology)
        self.store = open_store(cfg.CONF.onvm.store, config.store_tls(),
                                config.store_auth())
        name = cfg.CONF.onvm.name
        self.election = Election(self.store, name, ttl=cfg.CONF.onvm.leader_ttl)
        # ryu.topology registers observe_links only when it is loaded
        self.core = ClusterCore(topology, self.store, leader=self.election,
                                lldp=getattr(cfg.CONF, "observe_links", False),
                                drain_seconds=cfg.CONF.onvm.drain_seconds,
                                pps_per_mpps=cfg.CONF.onvm.pps_per_mpps)
        self.datapaths = {}         # dpid -> Ryu datapath
        self.wakeup = hub.Event()   # set: step now, not at the next tick
        self.sync_locks = {}
        self.confirmed = flows.Confirmed()   # what switches confirmed, this term
        self.mismatched = set()     # dpids that reported an error since their sync began
        self.stepping = False       # the loop is in core.step
        self.hub_yield = Stretches(self._yield_to_hub)
        self.hub_late = 0.0         # longest the hub watch woke late since the step began
        self.core.fabric.pause = self.hub_yield
        self.watches = [self.store.watch(prefix, self._on_store_change)
                        for prefix in (HOSTS, CHAINS, STATS, JOINED)]
        self.logger.info("topology %s: %d switches, %d hosts, %d edges, %d servers; "
                         "store %s; I am %s", topology.source, len(topology.switches),
                         len(topology.hosts), len(topology.edges), len(topology.servers),
                         self.store.url, name)
        self.threads.append(hub.spawn(self._loop))
        self.threads.append(hub.spawn(self._watch_hub))

    def cluster_view(self):
        """The controller.view.ClusterView the REST app talks to."""
        return self.core

    # ----------------------------------------------------------- the loop
    def _on_store_change(self, key, value):
        self.core.store_changed(key, value)

    def _loop(self):
        """Never ends: a failing step is logged and tried again, so one bad
        input cannot silently stop the cluster's controller."""
        while True:
            pause = LOOP_SECONDS
            try:
                leading = self.election.campaign()
                self.confirmed.leadership(leading)
                self.hub_yield.start()
                self.hub_late = 0.0
                self.stepping = True
                try:
                    with FullCollections() as held:
                        decisions = self.core.step(time.monotonic(), leading)
                        held.freeze = self.hub_yield.count > 0   # it compiled rules
                finally:
                    self.stepping = False
                    self._log_compile()
                for dpid, rules in decisions.sync.items():
                    if dpid in self.datapaths:
                        hub.spawn(self._sync, self.datapaths[dpid], rules)
            except StoreFull:
                pass    # the store client logged the NOSPACE alarm and its fix once
            except StoreError as err:
                self.logger.error("store unreachable, will retry: %s", err)
            except Exception:   # a bug or bad data: say so, keep running
                self.logger.exception("re-placing or writing plans failed; retrying "
                                      "in %g s with the same inputs", ERROR_RETRY_SECONDS)
                pause = ERROR_RETRY_SECONDS
            self.wakeup.wait(pause)
            self.wakeup.clear()

    def _watch_hub(self):
        """Never ends: sleeps HUB_TICK at a time and keeps how late it woke,
        the longest the hub went unserved (explicit yield points and any
        green I/O alike; the stretches between yield points overstate it
        when a step writes to the store)."""
        while True:
            before = time.monotonic()
            hub.sleep(HUB_TICK)
            self.hub_late = max(self.hub_late, time.monotonic() - before - HUB_TICK)

    def _yield_to_hub(self):
        if self.stepping and self.hub_yield.count == 1:
            self.logger.info("compiling switch rules, yielding to the hub meanwhile")
        hub.sleep(0)

    def _log_compile(self):
        """After a step that compiled rules: how long, the longest stretch
        between two yield points (placement and plan writes included) and
        how late the hub watch woke at most."""
        hy = self.hub_yield
        hy.finish()
        if hy.count:
            self.logger.info("step with a rule compile took %.0f ms: yielded to the "
                             "hub %d times, longest stretch without yielding %.0f ms, "
                             "the hub served at most %.0f ms late",
                             (time.monotonic() - hy.started) * 1e3, hy.count,
                             hy.longest * 1e3, self.hub_late * 1e3)

    def probe_verdict(self, host, reachable, now, why=None):
        """controller.apps.probes' word on a host's fast path, for the
        core's liveness; `why` comes with a change, acted on at once."""
        self.core.liveness.probe(host, reachable, now, why)
        if why is not None:
            self.core.dirty.add("hosts")
            self.wakeup.set()

    # ---------------------------------------------------------- switches
    def _sync(self, datapath, rules):
        """Bring one switch to exactly `rules`: diff against what it
        confirmed last, or (first sync since it connected, or after a
        mismatch) against its flows and groups read back; send what
        differs, wait for the barrier."""
        lock = self.sync_locks.setdefault(datapath.id, hub.BoundedSemaphore(1))
        with lock:
            try:
                self.mismatched.discard(datapath.id)
                held, term = self.confirmed.take(datapath.id)
                if held is None:
                    diff = self._dumped_diff(datapath, rules)
                else:
                    diff = SwitchDiff(*flows.diff_programmed(rules, held))
                for n, msg in enumerate(iter_messages(datapath, diff.flows, diff.groups)):
                    datapath.send_msg(msg)
                    if n % SEND_BATCH == SEND_BATCH - 1:
                        hub.sleep(0)     # building and serializing: ~70 us each
                parser = datapath.ofproto_parser
                ofctl_api.send_msg(self, parser.OFPBarrierRequest(datapath),
                                   reply_cls=parser.OFPBarrierReply)
                if datapath.id not in self.mismatched:
                    self.confirmed.confirm(datapath.id, rules, term)
                self.core.switch_synced(datapath.id, rules, diff)
            except Exception as err:   # a switch that went away mid-sync
                self.core.sync_failed(datapath.id, err)

    def _dumped_diff(self, datapath, rules):
        self.logger.info("switch %s: reading its flows and groups (first sync since it "
                         "connected, or after a failed sync or an error)",
                         self.core.switch_name(datapath.id))
        parser, ofp = datapath.ofproto_parser, datapath.ofproto
        flow_replies = ofctl_api.send_msg(
            self, parser.OFPFlowStatsRequest(datapath, table_id=ofp.OFPTT_ALL),
            reply_cls=parser.OFPFlowStatsReply, reply_multi=True)
        group_replies = ofctl_api.send_msg(
            self, parser.OFPGroupDescStatsRequest(datapath),
            reply_cls=parser.OFPGroupDescStatsReply, reply_multi=True)
        return self.core.switch_diff(
            datapath.id, rules, actual_flows(flow_replies),
            [g.group_id for r in group_replies for g in r.body])

    # ------------------------------------------------------- Ryu handlers
    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev):
        datapath = ev.datapath
        self.confirmed.forget(datapath.id)   # read its tables at the next sync
        if ev.state == MAIN_DISPATCHER:
            # Registered before the core hears of it: switch_connected
            # yields to the hub as it compiles, and a step run there must
            # find the connection it hands the switch's rules to.
            self.datapaths[datapath.id] = datapath
            if not self.core.switch_connected(datapath.id):
                del self.datapaths[datapath.id]
        elif ev.state == DEAD_DISPATCHER and self.datapaths.get(datapath.id) is datapath:
            # (an old connection's death after the switch reconnected is not its leaving)
            del self.datapaths[datapath.id]
            self.core.switch_left(datapath.id)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def _error(self, ev):
        """A switch refused a message: what it holds is not what was
        confirmed, so its tables are read and diffed again."""
        msg = ev.msg
        self.confirmed.forget(msg.datapath.id)
        self.mismatched.add(msg.datapath.id)
        self.core.sync_failed(msg.datapath.id, f"the switch reported OpenFlow error "
                                               f"type {msg.type} code {msg.code}")

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev):
        self.logger.debug("switch dpid %#x features: %d tables",
                          ev.msg.datapath_id, ev.msg.n_tables)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        msg = ev.msg
        ofp = msg.datapath.ofproto
        link_down = bool(msg.desc.state & ofp.OFPPS_LINK_DOWN)
        admin_down = bool(msg.desc.config & ofp.OFPPC_PORT_DOWN)
        if msg.reason == ofp.OFPPR_DELETE:
            why, up = "deleted", False
        else:
            why = ("added " if msg.reason == ofp.OFPPR_ADD else "") + (
                "link down" if link_down else "admin down" if admin_down else "up")
            up = not (link_down or admin_down)
        self.core.port_status(msg.datapath.id, msg.desc.port_no, up, why)

    @set_ev_cls(topo_event.EventLinkAdd)
    def _link_add(self, ev):
        self.core.lldp_link((ev.link.src.dpid, ev.link.src.port_no),
                            (ev.link.dst.dpid, ev.link.dst.port_no), True)

    @set_ev_cls(topo_event.EventLinkDelete)
    def _link_delete(self, ev):
        self.core.lldp_link((ev.link.src.dpid, ev.link.src.port_no),
                            (ev.link.dst.dpid, ev.link.dst.port_no), False)

    def close(self):
        for watch in self.watches:
            watch.cancel()
        self.election.resign()
        super().close()
