"""The Ryu app that probes each host's fast path through its switch port:
a thin shell around `controller.probing.Prober`, which decides.  Every
`[onvm] probe_interval_ms` (default 50; 0 = off) it sends the probes the
prober asks for as OpenFlow packet-outs out of each host's port, and hands
the answers the switches punt (controller.flows' "probe" rule) back to it;
`[onvm] probe_detect_mult` (default 3) probes in a row decide.
Verdicts go to the cluster's liveness through the chain manager
(`ChainManager.probe_verdict`): a host whose fast path stops answering is
lost at once, with "probe" in the log line that says so, and re-placed as
for a port down; a change wakes the chain manager's loop rather than
waiting for its next step.

Run with the others: ryu-manager controller.apps.chain_manager
controller.apps.rest_api controller.apps.probes (controller.run.APPS).

Not here: when a host counts as unreachable (controller.probing), what
that does to placement (controller.liveness, controller.core), the rules
(controller.flows.probe_punts), the answering (host_agent/manager.pyx).
"""
import os
import time

from ryu import cfg
from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.lib import hub
from ryu.ofproto import ofproto_v1_3

from contracts.wire import ETH_PROBE
from controller import config  # noqa: F401  (registers the [onvm] options)
from controller import joins
from controller.probing import Prober, parse_answer, probe_frame
from controller.topology import load_topology

CHAIN_MANAGER = "chain_manager"     # the app whose core's liveness hears verdicts
STATUS_LOG_SECONDS = 60.0
JOIN_PROBE_SECONDS = 0.5   # free ports probed for waiting hosts this often

cfg.CONF.register_opts([
    cfg.IntOpt("probe_interval_ms", default=50, min=0,
               help="liveness probes of each host's fast path every this many "
                    "ms; 0: none"),
    cfg.IntOpt("probe_detect_mult", default=3, min=1,
               help="a host is unreachable after this many probes in a row go "
                    "unanswered, and reachable after as many answered"),
], group=config.GROUP)


class Probes(app_manager.RyuApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = "probes"
        self.interval_ms = cfg.CONF.onvm.probe_interval_ms
        self.datapaths = {}
        self.prober = None
        if not self.interval_ms:
            self.logger.info("liveness probes off ([onvm] probe_interval_ms = 0): "
                             "a crashed agent with its link up is found by its lease")
            return
        topology = load_topology(cfg.CONF.onvm.topology)
        token = int.from_bytes(os.urandom(4), "big")
        mult = cfg.CONF.onvm.probe_detect_mult
        self.prober = Prober(topology, self.interval_ms / 1000.0, token,
                             detect_mult=mult, up_mult=mult)
        self.logger.info("liveness probes every %d ms to %d hosts (unreachable after "
                         "%d unanswered, reachable after as many answered)",
                         self.interval_ms, len(topology.hosts), mult)
        self.threads.append(hub.spawn(self._loop))

    def _manager(self):
        return app_manager.lookup_service_brick(CHAIN_MANAGER)

    # ------------------------------------------------------------- the loop
    def _loop(self):
        """Never ends: a failing tick is logged and the next one comes."""
        period = self.interval_ms / 1000.0
        next_status = time.monotonic() + STATUS_LOG_SECONDS
        next_join = time.monotonic()
        while True:
            start = time.monotonic()
            try:
                self._tick(start)
                if start >= next_join:
                    next_join = start + JOIN_PROBE_SECONDS
                    self._join_probes(start)
                if start >= next_status:
                    next_status = start + STATUS_LOG_SECONDS
                    self.logger.info("probes: %s", self.prober.status()["counters"])
            except Exception:   # a bug or bad data: say so, keep probing
                self.logger.exception("liveness probe tick failed")
            hub.sleep(max(0.0, period - (time.monotonic() - start)))

    def _tick(self, now):
        for probe in self.prober.tick(now, set(self.datapaths)):
            dp = self.datapaths.get(probe.dpid)
            if dp is None:
                continue
            parser, ofp = dp.ofproto_parser, dp.ofproto
            dp.send_msg(parser.OFPPacketOut(
                datapath=dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                actions=[parser.OFPActionOutput(probe.port)], data=probe.frame))
        self._tell(now)

    def _join_probes(self, now):
        """Probes addressed to each host waiting to join (controller.joins)
        out of every port, up, that the topology gives nobody."""
        manager = self._manager()
        pending = manager.core.pending_joins if manager is not None else {}
        if not pending:
            return
        topo = manager.core.topo
        for dpid, dp in sorted(self.datapaths.items()):
            switch = manager.core.switch_name(dpid)
            parser, ofp = dp.ofproto_parser, dp.ofproto
            for port_no, port in sorted(getattr(dp, "ports", {}).items()):
                if port_no > ofp.OFPP_MAX or port.state & ofp.OFPPS_LINK_DOWN \
                        or switch is None or not joins.is_free_port(topo, switch, port_no):
                    continue
                for mac in sorted(pending.values()):
                    dp.send_msg(parser.OFPPacketOut(
                        datapath=dp, buffer_id=ofp.OFP_NO_BUFFER,
                        in_port=ofp.OFPP_CONTROLLER,
                        actions=[parser.OFPActionOutput(port_no)],
                        data=probe_frame(mac, 0, self.prober.token, int(now * 1e6))))

    def _join_answer(self, dpid, port, data):
        """A probe answer from a port that is no host's: a host joining there?"""
        parsed = parse_answer(data)
        manager = self._manager()
        if parsed is None or parsed[2] != self.prober.token or manager is None \
                or not manager.core.pending_joins:
            return False
        host = manager.core.host_answered(dpid, port, parsed[0])
        if host is not None:
            self.prober.add_host(host, dpid)
            manager.wakeup.set()
        return True

    def _tell(self, now):
        """Verdicts and notes to the log and to the cluster's liveness."""
        for note in self.prober.notes():
            self.logger.warning("probes: %s", note)
        changes = self.prober.changes()
        for host, reachable, why in changes:
            if reachable:
                self.logger.info("probe: host %s reachable: %s", host, why)
            else:
                self.logger.warning("probe: host %s unreachable: %s", host, why)
        manager = self._manager()
        if manager is None:
            return
        changed = {host: why for host, _, why in changes}
        for host, reachable in sorted(self.prober.verdicts().items()):
            manager.probe_verdict(host, reachable, now, changed.get(host))

    # ------------------------------------------------------- Ryu handlers
    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev):
        dpid = ev.datapath.id
        if ev.state == MAIN_DISPATCHER:
            self.datapaths[dpid] = ev.datapath
            if self.prober is not None:
                self.prober.switch_connected(dpid)
        elif ev.state == DEAD_DISPATCHER and self.datapaths.get(dpid) is ev.datapath:
            # (an old connection's death after the switch reconnected is not its leaving)
            del self.datapaths[dpid]

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        if self.prober is None:
            return
        msg = ev.msg
        data = bytes(msg.data)
        if len(data) < 14 or int.from_bytes(data[12:14], "big") != ETH_PROBE:
            return                      # someone else's (LLDP, ...)
        now = time.monotonic()
        if not self.prober.is_host_port(msg.datapath.id, msg.match["in_port"]) \
                and self._join_answer(msg.datapath.id, msg.match["in_port"], data):
            return
        self.prober.answer(msg.datapath.id, msg.match["in_port"], data, now)
        if self.prober.has_changes():
            self._tell(now)
