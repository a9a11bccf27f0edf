"""controller.flows' rules as Ryu OpenFlow 1.3 messages, and a switch's
flow-stats replies back as rules: the one step between deciding and
sending.  It imports Ryu's OpenFlow 1.3 parser only (no app, no eventlet),
so tests build the very messages the shell sends without a switch.

    msgs = to_messages(datapath, flow_diff, group_diff)   # what to send
    for msg in iter_messages(datapath, flow_diff, group_diff): ...  # the same, lazily
    actual = actual_flows(flow_stats_replies)              # what is there

`datapath` needs only `ofproto` and `ofproto_parser` to build messages
(`offline_datapath()` gives one).

Not here: which rules a switch should hold (controller.flows,
controller.core), sending (controller.apps.chain_manager).
"""
import types

from ryu.ofproto import nicira_ext, ofproto_v1_3, ofproto_v1_3_parser

from controller import flows

# OVS's nx_hash_fields value for symmetric_l3l4+udp (Ryu names only 0 and 1)
NX_HASH_FIELDS_SYMMETRIC_L3L4_UDP = 3


# Bits of the fields learn actions copy, match or load (controller.flows'
# learn_action); Ryu names the Nicira field "<name>_nxm", registers as is.
LEARN_BITS = {"reg0": 32, "reg1": 32, "reg2": 32, "in_port": 16, "eth_type": 16,
              "eth_src": 48, "eth_dst": 48, "ip_proto": 8, "ipv4_src": 32, "ipv4_dst": 32,
              "ipv6_src": 128, "ipv6_dst": 128,
              "tcp_src": 16, "tcp_dst": 16, "udp_src": 16, "udp_dst": 16}


def _nxm(field):
    return (field if field.startswith("reg") else f"{field}_nxm", 0)


def _learn_action(parser, table, idle_timeout, priority, cookie, matches, loads, outputs):
    """NXActionLearn for a ("learn", ...) action of controller.flows: each
    match copies a packet field (or sets a constant) into the learned
    match, each load sets a field from the packet's, each output sends to
    the port a packet field names (NXM_OF_IN_PORT: the packet's in_port)."""
    specs = []
    for field, src in matches:
        specs.append(parser.NXFlowSpecMatch(
            src=_nxm(src) if isinstance(src, str) else src, dst=_nxm(field),
            n_bits=LEARN_BITS[field]))
    for field, src in loads:
        specs.append(parser.NXFlowSpecLoad(src=_nxm(src), dst=_nxm(field),
                                           n_bits=LEARN_BITS[field]))
    for src in outputs:
        specs.append(parser.NXFlowSpecOutput(src=_nxm(src), n_bits=LEARN_BITS[src]))
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
    return list(iter_messages(datapath, flow_diff, group_diff))


def iter_messages(datapath, flow_diff, group_diff):
    """`to_messages`, one message at a time: building twenty thousand
    takes about a second, so a sender can yield in between."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser

    def group_mod(command, spec):
        buckets = [parser.OFPBucket(weight=b.weight,
                                    actions=_ofp_actions(parser, b.actions))
                   for b in spec.buckets]
        return parser.OFPGroupMod(datapath, command, ofp.OFPGT_SELECT,
                                  spec.group_id, buckets)

    for g in sorted(group_diff.adds, key=lambda g: g.group_id):
        yield group_mod(ofp.OFPGC_ADD, g)
    for g in sorted(group_diff.modifies, key=lambda g: g.group_id):
        yield group_mod(ofp.OFPGC_MODIFY, g)
    for entry in flow_diff.deletes:
        yield parser.OFPFlowMod(
            datapath, cookie=entry.cookie, cookie_mask=0xFFFFFFFFFFFFFFFF,
            table_id=entry.table, command=ofp.OFPFC_DELETE_STRICT,
            priority=entry.priority, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
            match=entry.raw if entry.raw is not None
            else parser.OFPMatch(**dict(entry.match)))
    for spec in flow_diff.adds:
        inst = []
        if spec.actions:
            inst.append(parser.OFPInstructionActions(
                ofp.OFPIT_APPLY_ACTIONS, _ofp_actions(parser, spec.actions)))
        if spec.goto is not None:
            inst.append(parser.OFPInstructionGotoTable(spec.goto))
        yield parser.OFPFlowMod(
            datapath, cookie=spec.cookie, table_id=spec.table,
            command=ofp.OFPFC_ADD, priority=spec.priority,
            match=parser.OFPMatch(**dict(spec.match)), instructions=inst)
    for gid in sorted(group_diff.deletes, reverse=True):
        yield parser.OFPGroupMod(datapath, ofp.OFPGC_DELETE, ofp.OFPGT_SELECT, gid)


def actual_flows(replies):
    """Flow-stats replies as controller.flows.ActualFlow."""
    return [flows.ActualFlow(stat.table_id, stat.priority, stat.cookie,
                             tuple(sorted(stat.match.items())), stat.match)
            for reply in replies for stat in reply.body]


def offline_datapath():
    """A stand-in datapath that builds (and serializes) OpenFlow 1.3
    messages without a switch."""
    return types.SimpleNamespace(ofproto=ofproto_v1_3, ofproto_parser=ofproto_v1_3_parser,
                                 id=None)
