"""The Ryu app that runs the cluster: it keeps the topology, follows the
store (agents coming and going, chains, load), leads or stands by through an
election, re-places chains, writes every alive host's plan and brings every
switch to exactly the rules `controller.flows` asks for.

It is a thin shell (Faucet's habit): placement, plans and rule compilation
are plain modules; this file adapts them to Ryu and etcd.  Only the leader
writes plans and programs switches; a standby computes the same placement
in the shadows, so it takes over with the leader's view.

Run: ryu-manager controller.apps.chain_manager controller.apps.rest_api
--config-file FILE, with [onvm] topology and store (controller.config).
Add ryu.topology.switches and --observe-links to have links found by LLDP
compared with the topology file.

The fabric is followed live (controller.livegraph): a port down or deleted
on either end of a link, a switch that left, a link LLDP lost, and the
switches are reprogrammed to route around it; the log says what changed and
how many rules that moves.
"""
import time

from ryu.app.ofctl import api as ofctl_api
from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import (CONFIG_DISPATCHER, DEAD_DISPATCHER,
                                    MAIN_DISPATCHER, set_ev_cls)
from ryu.lib import hub
from ryu.ofproto import nicira_ext, ofproto_v1_3
from ryu.topology import event as topo_event

from ryu import cfg  # ryu-manager parses into ryu.cfg.CONF, not oslo_config.cfg.CONF

from controller import config  # noqa: F401  (registers the [onvm] options)
from controller import flows
from controller.apps import rest_api as rest
from controller.livegraph import LiveFabric, describe
from controller.moves import Moves
from controller.placement import place, place_what_fits
from controller.plans import host_load, host_plans, ingress_groups
from contracts.store import (CHAINS, HOSTS, STATS, Election, NotLeader,
                              StoreError, open_store)
from controller.topology import load_topology

# OVS's nx_hash_fields value for symmetric_l3l4+udp (Ryu names only 0 and 1)
NX_HASH_FIELDS_SYMMETRIC_L3L4_UDP = 3
LOOP_SECONDS = 0.25
STATS_REPLAN_SECONDS = 1.0
ERROR_RETRY_SECONDS = 2.0


# ------------------------------------------------------- specs -> Ryu messages

def _learn_action(parser, table, idle_timeout, priority, cookie, l4):
    """NXActionLearn for the PINS rule of controller.flows' docstring.
    Constants come before the fields that need them (OVS checks the
    learned match's prerequisites as it builds it)."""
    copy = lambda field, bits: parser.NXFlowSpecMatch(
        src=(field, 0), dst=(field, 0), n_bits=bits)
    specs = [copy("reg1", 32),
             parser.NXFlowSpecMatch(src=flows.ETH_IPV4, dst=("eth_type_nxm", 0), n_bits=16),
             copy("ipv4_src_nxm", 32), copy("ipv4_dst_nxm", 32)]
    if l4 in ("tcp", "udp"):
        specs += [parser.NXFlowSpecMatch(src={"tcp": 6, "udp": 17}[l4],
                                         dst=("ip_proto_nxm", 0), n_bits=8),
                  copy(f"{l4}_src_nxm", 16), copy(f"{l4}_dst_nxm", 16)]
    else:
        specs.append(copy("ip_proto_nxm", 8))
    specs.append(parser.NXFlowSpecLoad(src=(flows.REG_HOST, 0), dst=(flows.REG_HOST, 0),
                                       n_bits=32))
    return parser.NXActionLearn(table_id=table, specs=specs, idle_timeout=idle_timeout,
                                priority=priority, cookie=cookie)


def _nx_action(parser, action):
    op = action[0]
    if op == "resubmit":
        return parser.NXActionResubmitTable(table_id=action[1])
    if op == "multipath":
        return parser.NXActionMultipath(
            fields=NX_HASH_FIELDS_SYMMETRIC_L3L4_UDP, basis=0,
            algorithm=nicira_ext.NX_MP_ALG_HRW, max_link=action[1] - 1, arg=0,
            ofs_nbits=nicira_ext.ofs_nbits(0, 15), dst=action[2])
    if op == "learn":
        return _learn_action(parser, *action[1:])
    return None


def _ofp_actions(parser, actions):
    made = []
    for action in actions:
        op = action[0]
        if op == "output":
            made.append(parser.OFPActionOutput(action[1]))
        elif op == "group":
            made.append(parser.OFPActionGroup(action[1]))
        elif op == "push_mpls":
            made.append(parser.OFPActionPushMpls(action[1]))
        elif op == "set_mpls_ttl":
            made.append(parser.OFPActionSetMplsTtl(action[1]))
        elif op == "set_field":
            made.append(parser.OFPActionSetField(**{action[1]: action[2]}))
        else:
            nx = _nx_action(parser, action)
            if nx is None:
                raise ValueError(f"controller.flows produced an action the Ryu "
                                 f"adapter does not know: {action!r}")
            made.append(nx)
    return made


def to_messages(datapath, flow_diff, group_diff):
    """The OpenFlow messages that apply two diffs, in a safe order: groups
    before the rules that use them (transport groups before the classifier
    groups that chain to them), stale rules out before their groups."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser

    def group_mod(command, spec):
        buckets = [parser.OFPBucket(weight=b.weight,
                                    actions=_ofp_actions(parser, b.actions))
                   for b in spec.buckets]
        return parser.OFPGroupMod(datapath, command, ofp.OFPGT_SELECT,
                                  spec.group_id, buckets)

    msgs = [group_mod(ofp.OFPGC_ADD, g)
            for g in sorted(group_diff.adds, key=lambda g: g.group_id)]
    msgs += [group_mod(ofp.OFPGC_MODIFY, g)
             for g in sorted(group_diff.modifies, key=lambda g: g.group_id)]
    for entry in flow_diff.deletes:
        msgs.append(parser.OFPFlowMod(
            datapath, cookie=entry.cookie, cookie_mask=0xFFFFFFFFFFFFFFFF,
            table_id=entry.table, command=ofp.OFPFC_DELETE_STRICT,
            priority=entry.priority, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
            match=entry.raw))
    for spec in flow_diff.adds:
        inst = []
        if spec.actions:
            inst.append(parser.OFPInstructionActions(
                ofp.OFPIT_APPLY_ACTIONS, _ofp_actions(parser, spec.actions)))
        if spec.goto is not None:
            inst.append(parser.OFPInstructionGotoTable(spec.goto))
        msgs.append(parser.OFPFlowMod(
            datapath, cookie=spec.cookie, table_id=spec.table,
            command=ofp.OFPFC_ADD, priority=spec.priority,
            match=parser.OFPMatch(**dict(spec.match)), instructions=inst))
    msgs += [parser.OFPGroupMod(datapath, ofp.OFPGC_DELETE, ofp.OFPGT_SELECT, gid)
             for gid in sorted(group_diff.deletes, reverse=True)]
    return msgs


def actual_flows(replies):
    """Flow-stats replies as controller.flows.ActualFlow."""
    return [flows.ActualFlow(stat.table_id, stat.priority, stat.cookie,
                             tuple(sorted(stat.match.items())), stat.match)
            for reply in replies for stat in reply.body]


# ------------------------------------------------------------------- the app

class ChainManager(app_manager.RyuApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = "chain_manager"
        self.topology = load_topology(cfg.CONF.onvm.topology)
        self.fabric = LiveFabric(self.topology)
        self.store = open_store(cfg.CONF.onvm.store)
        self.name_in_election = cfg.CONF.onvm.name
        self.election = Election(self.store, self.name_in_election,
                                 ttl=cfg.CONF.onvm.leader_ttl)
        self.placement = None       # of self.placed: the chains placed now
        self.placed = self.topology.with_chains([])
        self.alive = set()
        self.unplaced = {}          # chain name -> why it could not be placed
        self.stats_warned = set()   # (host, problem) of stats already logged
        self.datapaths = {}         # dpid -> Ryu datapath
        self.programmed = {}        # dpid -> SwitchRules last brought about
        self.sync_locks = {}
        self.dirty = {"hosts", "chains"}
        self.moves = Moves(self.store)   # planned moves with state (controller.moves)
        self.fabric_cut = []        # hosts and edges no switch reaches
        self.last_stats_replan = 0.0
        self.leading = False
        # the rules last computed: what a fabric change is measured against
        # (transport rules depend on the fabric only, never on placement)
        self.desired = self._desired()
        self.watches = [self.store.watch(prefix, self._on_store_change)
                        for prefix in (HOSTS, CHAINS, STATS)]
        self.logger.info("topology %s: %d switches, %d hosts, %d edges; store %s; "
                         "I am %s", self.topology.source, len(self.topology.switches),
                         len(self.topology.hosts), len(self.topology.edges),
                         self.store.url, self.name_in_election)
        self.threads.append(hub.spawn(self._loop))

    # ------------------------------------------------------------ REST API
    def check_chains(self, chains):
        """The placement `chains` (dicts or Chains) would get now; raises
        PlacementError; changes nothing."""
        parsed = []
        for chain in chains:
            if isinstance(chain, dict):
                chain = rest.chain_from_json(chain, self.topology, parsed,
                                             spi=chain.get("spi"))
            parsed.append(chain)
        return place(self.topology.with_chains(parsed), previous=self.placement,
                     exclude_hosts=self._dead())

    def set_chain(self, chain_dict):
        """Store the chain; the leader re-places what the change needs."""
        self.store.put_chain(chain_dict)

    def delete_chain(self, name):
        return self.store.delete_chain(name)

    def request_move(self, host, instance, to):
        """Start moving an instance with its state; raises MoveError."""
        move = self.moves.request(self.placed, self.placement, self.alive,
                                  host, instance, to)
        self.dirty.add("moves")
        return move

    # ----------------------------------------------------------- the loop
    def _on_store_change(self, key, value):
        for prefix, what in ((HOSTS, "hosts"), (CHAINS, "chains"), (STATS, "stats")):
            if key.startswith(prefix):
                self.dirty.add(what)

    def _loop(self):
        """Never ends: a failing step is logged and tried again, so one bad
        input cannot silently stop the cluster's controller."""
        while True:
            pause = LOOP_SECONDS
            try:
                self._step()
            except StoreError as err:
                self.logger.error("store unreachable, will retry: %s", err)
            except Exception:   # a bug or bad data: say so, keep running
                self.logger.exception("re-placing or writing plans failed; retrying "
                                      "in %g s with the same inputs", ERROR_RETRY_SECONDS)
                pause = ERROR_RETRY_SECONDS
            hub.sleep(pause)

    def _step(self):
        leading = self.election.campaign()
        if leading and not self.leading:
            self.logger.info("I lead now (%s): writing plans and programming "
                             "%d connected switches", self.name_in_election,
                             len(self.datapaths))
            self._seed_chains()
            self.dirty |= {"hosts", "chains"}
            self.programmed.clear()
        elif self.leading and not leading:
            self.logger.warning("I no longer lead: stop writing plans and "
                                "programming switches; standing by")
        self.leading = leading
        due_stats = ("stats" in self.dirty and
                     time.monotonic() - self.last_stats_replan >= STATS_REPLAN_SECONDS)
        if self.dirty & {"hosts", "chains", "moves"} or due_stats:
            pending = set(self.dirty)
            self.dirty.clear()
            try:
                self._replace(sorted(pending))
            except Exception:
                self.dirty |= pending       # not done: do it again next time
                raise
            self.last_stats_replan = time.monotonic()
        if self.leading:
            self._program_all()

    # ------------------------------------------------------- re-placement
    def _dead(self):
        return tuple(h.name for h in self.topology.hosts if h.name not in self.alive)

    def _seed_chains(self):
        """First leader of a fresh store: the topology file's chains."""
        if self.store.chains() or self.store.plans():
            return
        for chain in self.topology.chains:
            self.store.put_chain(rest.chain_to_json(chain))
        self.logger.info("store had no chains: put the %d chains of %s",
                         len(self.topology.chains), self.topology.source)

    def _wanted_chains(self):
        """The stored chains the topology accepts (rest_api logs the others)."""
        return list(rest.stored_chains(self).values())

    def _refresh_alive(self):
        registered = set(self.store.hosts())
        known = {h.name for h in self.topology.hosts}
        for name in sorted(registered - known):
            self.logger.warning("agent %s registered in %s but %s has no such "
                                "host: ignored", name, HOSTS, self.topology.source)
        # A host no switch reaches serves nothing, lease or not: a server
        # that fails takes its link down at once, long before its lease ends.
        cut = set(self.fabric_cut) & known
        alive = (registered & known) - cut
        for name in sorted(alive - self.alive):
            self.logger.info("host %s is alive (agent registered, reachable)", name)
        for name in sorted(self.alive - alive):
            if name in cut:
                self.logger.warning("host %s lost: no switch reaches it (its link "
                                    "is down)", name)
            else:
                self.logger.warning("host %s lost (its %s key expired or was deleted)",
                                    name, HOSTS + name)
        lost = self.alive - alive
        self.alive = alive
        return lost

    def _replace(self, reasons):
        lost = self._refresh_alive()
        chains = self._wanted_chains() if self.alive else []
        before = self.placement
        # Every host or chain change re-places all wanted chains, so a chain
        # refused while few hosts were up is tried again as more come.
        placement, kept, self.unplaced = place_what_fits(
            self.topology, chains, previous=self.placement,
            exclude_hosts=self._dead(), unplaced=self.unplaced)
        self.placed = self.topology.with_chains(kept)
        if placement is not None:       # a move whose state A published lands now
            placement = self.moves.land(self.placed, placement)
        self.placement = placement
        self._log_moves(before, placement, lost, reasons)
        if self.leading:
            self._write_plans(lost)

    def _log_moves(self, before, after, lost, reasons):
        old = before.instances if before else {}
        new = after.instances if after else {}
        why = ", ".join(f"{h} lost" for h in sorted(lost)) or \
            "change in " + "/".join(reasons)
        used = after.cores_used() if after else {}
        for key in sorted(set(new) - set(old)):
            inst = new[key]
            host = self.topology.host(inst.host)
            self.logger.info("placed %s#%d on %s: %s; %s now uses %d of %d cores, "
                             "serves %.2f Mpps of it", inst.nf, inst.id, inst.host,
                             why, inst.host, used.get(inst.host, 0), host.cores,
                             inst.load)
        for key in sorted(set(old) - set(new)):
            inst = old[key]
            self.logger.info("removed %s#%d from %s: %s", inst.nf, inst.id,
                             inst.host, why)

    def _write_plans(self, lost):
        load = host_load(self.store.stats(), self.placed, self.placement,
                         self.stats_warned) if self.placement else {}
        generation = 1 + max([p.get("generation", 0)
                              for p in self.store.plans().values()] or [0])
        plans = self.moves.mark(host_plans(self.placed, self.placement, generation, load)
                                if self.placement else {})
        stored = self.store.plans()
        try:
            for host in sorted(self.alive):
                plan = plans.get(host) or self._idle_plan(host, generation)
                if _same_plan(stored.get(host), plan):
                    continue
                gen = self.store.put_plan(host, plan, leader=self.election)
                self.logger.info("wrote plan generation %d for %s: %d instances, "
                                 "%d hops", gen, host, len(plan.get("instances", [])),
                                 len(plan.get("hops", [])))
            for host in sorted(set(stored) - self.alive):
                self.store.delete_plan(host)
                self.logger.info("deleted the plan of %s: host not alive", host)
        except NotLeader as err:
            self.logger.warning("stopped writing plans: %s", err)

    def _idle_plan(self, name, generation):
        host = self.topology.host(name)
        return {"host": name, "generation": generation, "node_label": host.label,
                "mac": host.mac, "instances": [], "classifiers": [], "hops": []}

    # ---------------------------------------------------------- switches
    def _desired(self):
        """Every switch's rules for the current placement and live fabric.
        The loop asks four times a second; the rules are computed again
        only when one of their inputs changed (0.3 s on a k=8 fat tree)."""
        # ryu.topology registers observe_links only when it is loaded
        lldp = getattr(cfg.CONF, "observe_links", False)
        fab = self.fabric
        inputs = (self.placed, self.placement, lldp, frozenset(fab.ports_down),
                  frozenset(fab.gone), frozenset(fab.lldp_lost))
        cached = getattr(self, "_desired_cache", None)
        if cached is not None and len(cached[0]) == len(inputs) and all(
                a is b or a == b for a, b in zip(cached[0], inputs)):
            return cached[1]
        groups = ingress_groups(self.placed, self.placement) if self.placement else {}
        rules = fab.rules(self.placed, groups, lldp=lldp)
        self._desired_cache = (inputs, rules)
        return rules

    def _fabric_changed(self, changes):
        """Log what an event changed and what that does to the rules; the
        loop's next _program_all resyncs the switches whose rules differ."""
        routing = [c for c in changes if c.routing]
        for change in changes:
            if not change.routing:
                self.logger.warning("%s", change.text)
        if not routing:
            return
        cut_before = set(self.fabric_cut)
        before, self.desired = self.desired, self._desired()
        self.fabric_cut = self.fabric.unreachable()
        impact = describe(before, self.desired)
        for change in routing:
            self.logger.warning("%s: %s; %s", change.text, change.effect, impact)
        hosts = {h.name for h in self.topology.hosts}
        for name in self.fabric_cut:
            if name not in cut_before:
                self.logger.warning("%s unreachable: no switch reaches it now%s",
                                    self._place_name(name),
                                    "; re-placing what it ran" if name in hosts else "")
        for name in sorted(cut_before - set(self.fabric_cut)):
            self.logger.info("%s reachable again", self._place_name(name))
        if (cut_before ^ set(self.fabric_cut)) & hosts:
            self.dirty.add("hosts")
        parts = self.fabric.parts()
        if len(parts) > 1:
            self.logger.warning("the fabric is split in %d parts: %s", len(parts),
                                " | ".join(", ".join(sw) for sw, _ in parts))

    def _program_all(self):
        self.desired = desired = self._desired()
        for dpid, datapath in list(self.datapaths.items()):
            if dpid in desired and self.programmed.get(dpid) != desired[dpid]:
                self.programmed[dpid] = desired[dpid]
                hub.spawn(self._sync, datapath, desired[dpid])

    def _sync(self, datapath, rules):
        """Bring one switch to exactly `rules`: read its flows and groups,
        send the difference, wait for the barrier."""
        lock = self.sync_locks.setdefault(datapath.id, hub.BoundedSemaphore(1))
        name = self._switch_name(datapath.id)
        with lock:
            try:
                self._sync_locked(datapath, rules, name)
            except Exception as err:   # a switch that went away mid-sync
                self.programmed.pop(datapath.id, None)
                self.logger.error("switch %s: sync failed, will retry: %s", name, err)

    def _sync_locked(self, datapath, rules, name):
        parser, ofp = datapath.ofproto_parser, datapath.ofproto
        flow_replies = ofctl_api.send_msg(
            self, parser.OFPFlowStatsRequest(datapath, table_id=ofp.OFPTT_ALL),
            reply_cls=parser.OFPFlowStatsReply, reply_multi=True)
        group_replies = ofctl_api.send_msg(
            self, parser.OFPGroupDescStatsRequest(datapath),
            reply_cls=parser.OFPGroupDescStatsReply, reply_multi=True)
        flow_diff = flows.diff(rules.flows, actual_flows(flow_replies))
        group_diff = flows.diff_groups(
            rules.groups, [g.group_id for r in group_replies for g in r.body])
        for msg in to_messages(datapath, flow_diff, group_diff):
            datapath.send_msg(msg)
        ofctl_api.send_msg(self, parser.OFPBarrierRequest(datapath),
                           reply_cls=parser.OFPBarrierReply)
        stale = [flows.cookie_kind(e.cookie) or f"foreign cookie {e.cookie:#x}"
                 for e in flow_diff.deletes]
        self.logger.info("switch %s synced: %d rules and %d groups wanted; added %d "
                         "rules, deleted %d (%s), groups +%d ~%d -%d", name,
                         len(rules.flows), len(rules.groups), len(flow_diff.adds),
                         len(flow_diff.deletes), ", ".join(sorted(set(stale))) or "none",
                         len(group_diff.adds), len(group_diff.modifies),
                         len(group_diff.deletes))

    def _place_name(self, name):
        """'host h1' or 'edge internet'."""
        return f"{self.fabric.graph().nodes[name]['kind']} {name}"

    def _switch_name(self, dpid):
        for sw in self.topology.switches:
            if sw.dpid == dpid:
                return sw.name
        return None

    # ------------------------------------------------------- Ryu handlers
    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev):
        datapath = ev.datapath
        name = self._switch_name(datapath.id)
        if ev.state == MAIN_DISPATCHER:
            if name is None:
                self.logger.warning("switch dpid %#x connected but %s has no such "
                                    "switch: not programmed", datapath.id or 0,
                                    self.topology.source)
                return
            self.logger.info("switch %s (dpid %#x) connected", name, datapath.id)
            self.datapaths[datapath.id] = datapath
            self.programmed.pop(datapath.id, None)   # resync on every connect
            self._fabric_changed(self.fabric.switch_joined(name))
        elif ev.state == DEAD_DISPATCHER and datapath.id in self.datapaths:
            del self.datapaths[datapath.id]
            self.programmed.pop(datapath.id, None)
            self.logger.warning("switch %s (dpid %#x) left: traffic through it "
                                "stops until it reconnects", name, datapath.id)
            self._fabric_changed(self.fabric.switch_left(name))

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev):
        self.logger.debug("switch dpid %#x features: %d tables",
                          ev.msg.datapath_id, ev.msg.n_tables)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        msg = ev.msg
        ofp = msg.datapath.ofproto
        name = self._switch_name(msg.datapath.id)
        if name is None:
            return      # a switch the file lacks: warned about when it connected
        link_down = bool(msg.desc.state & ofp.OFPPS_LINK_DOWN)
        admin_down = bool(msg.desc.config & ofp.OFPPC_PORT_DOWN)
        if msg.reason == ofp.OFPPR_DELETE:
            why, up = "deleted", False
        else:
            why = ("added " if msg.reason == ofp.OFPPR_ADD else "") + (
                "link down" if link_down else "admin down" if admin_down else "up")
            up = not (link_down or admin_down)
        self._fabric_changed(self.fabric.port_status(name, msg.desc.port_no, up, why))

    def _lldp_port(self, port):
        name = self._switch_name(port.dpid)
        return (name or f"dpid {port.dpid:#x}", port.port_no)

    @set_ev_cls(topo_event.EventLinkAdd)
    def _link_add(self, ev):
        self._fabric_changed(self.fabric.lldp_link(
            self._lldp_port(ev.link.src), self._lldp_port(ev.link.dst), True))

    @set_ev_cls(topo_event.EventLinkDelete)
    def _link_delete(self, ev):
        self._fabric_changed(self.fabric.lldp_link(
            self._lldp_port(ev.link.src), self._lldp_port(ev.link.dst), False))

    def close(self):
        for watch in self.watches:
            watch.cancel()
        self.election.resign()
        super().close()


def _same_plan(stored, plan):
    """Equal but for the generation: no need to write it again."""
    if stored is None:
        return False
    strip = lambda p: {k: v for k, v in p.items() if k != "generation"}
    return strip(stored) == strip(plan)

