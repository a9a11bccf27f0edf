"""Faults made for real on a running emulation, one at a time, with the
invariants checked after each: `onvm bench chaos` and tests/test_chaos.py.

    emu = Emulation("topologies/minimal.yaml", etcd_members=3); emu.start()
    results = run_faults(emu, FAULTS)      # [FaultResult], in order
    table(results)                         # the lines BENCHMARKS.md shows

Each fault is injected while the emulation's senders send; its window
closes `settle_s` after the chain's packets arrive again, once the plans
are applied (the next fault's window starts where this one's ended: one
quiet count between two faults), and then:
  - no bypass: over the fault's window, the chain's egress received no
    more packets than the chain's first NF handed on (counted by the NF
    instances' stats summaries, which agents publish every 5 s: the
    window is closed by a fresh publication of every live agent);
  - no plan lost: every host that has a plan before has one after;
  - converged: the chain is placed on live hosts and its packets arrive
    again;
  - evictions: the hosts the controller declared lost in the window
    (its log's "host H lost:" lines);
  - nothing moved: after a fault of the store or the controllers (but a
    drain, which moves by design), every NF instance the plans ran on a
    host not evicted still runs there (a new leader adopts the stored
    placement: controller.takeover).
Loss (sent - received over the window) and the time until the chain's
packets arrived again are measured, not judged: they go to the table.

Not here: starting the emulation (onvm.emulate), the data plane's and the
controller's fault handling (host_agent, controller.liveness).
"""
from __future__ import annotations

import dataclasses
import random
import re
import time

from contracts.store import StoreError
from onvm.services import wait_for

# Faults that touch only the store or the controllers: no host may be
# evicted and no packet lost (issue 10's goal); host faults may lose
# packets within the detection window.
STORE_FAULTS = ("store_paused_5s", "etcd_member_killed", "etcd_without_quorum",
                "agent_cut_from_store", "forged_frames", "leader_killed",
                "controllers_down_10s", "host_drained")
# ... and of those, all but the drain move no NF instance.
NOTHING_MOVES = tuple(f for f in STORE_FAULTS if f != "host_drained")
# Switch faults that evict no host, though packets sent meanwhile are
# lost: a switch whose connection drops, or that just came back without
# its rules, is no word from the data plane (controller.switchgrace,
# controller.probing).
NO_EVICTION = ("ovs_restarted",)


@dataclasses.dataclass
class FaultResult:
    fault: str
    sent: int = 0
    received: int = 0
    lost: int = 0
    nf_out: int = 0           # packets the chain's first NF handed on (None: unknown)
    bypass: int = 0           # received beyond nf_out: packets that skipped the NFs
    evictions: list = dataclasses.field(default_factory=list)
    plans_lost: list = dataclasses.field(default_factory=list)
    moved: list = dataclasses.field(default_factory=list)   # [(host, id, nf)] gone, host kept
    converge_s: float = None  # from the fault's end to packets arriving again
    note: str = ""

    def problems(self):
        """The invariants this fault broke, as sentences."""
        out = []
        if self.bypass > 0:
            out.append(f"{self.fault}: {self.bypass} packets reached the egress without "
                       f"the chain's NFs")
        if self.plans_lost:
            out.append(f"{self.fault}: plans lost for {self.plans_lost}")
        if self.converge_s is None:
            out.append(f"{self.fault}: the chain's packets did not arrive again")
        if (self.fault in STORE_FAULTS or self.fault in NO_EVICTION) and self.evictions:
            out.append(f"{self.fault}: hosts evicted {self.evictions}")
        if self.fault in NOTHING_MOVES and self.moved:
            out.append(f"{self.fault}: NF instances of hosts not evicted moved away: "
                       + ", ".join(f"{nf}#{i} on {h}" for h, i, nf in self.moved))
        return out


def _lost_lines(emu):
    """[hosts declared lost, in log order] per controller of the run (a
    standby that took over logs its own)."""
    out = []
    for i in range(emu.n_controllers):
        try:
            with open(emu.file(emu.controller_log(i))) as f:
                out.append(re.findall(r"host (\S+) lost:", f.read()))
        except OSError:
            out.append([])
    return out


def _first_nf_out(emu, chain):
    """{(host, instance id): packets handed on} of the instances of the
    chain's first NF, from the stats summaries in the store."""
    nf = emu.topo_chain(chain).nfs[0]
    return {(host, i): inst.get("tx", 0)
            for host, st in (emu.store.stats() or {}).items()
            for i, inst in (st or {}).get("instances", {}).items()
            if inst.get("nf") == nf}


def nf_out_between(before, after):
    """Packets the first NF handed on between two _first_nf_out counts, or
    None when an instance of the first count is gone or counts less (its
    packets left the sum with it: no bypass can be judged)."""
    if any(after.get(k, -1) < v for k, v in before.items()):
        return None
    return sum(after.values()) - sum(before.values())


def _fresh_stats(emu, after, timeout=20.0):
    """Wait until every live agent published stats after `after`."""
    def fresh():
        stats = emu.store.stats() or {}
        return all((stats.get(h.name) or {}).get("time", 0) > after
                   for h in emu.topo.hosts if h.name not in emu.killed)
    try:
        wait_for(fresh, timeout, "fresh stats of every live agent", interval=0.5)
    except TimeoutError:
        pass


def _counts(emu, chain):
    return emu.sent(chain).get("sent", 0), emu.received(chain).get("received", 0)


def _arriving(emu, chain, timeout):
    """Seconds until the chain's egress counts new packets, or None."""
    start = time.time()
    _, before = _counts(emu, chain)
    try:
        wait_for(lambda: _counts(emu, chain)[1] > before + 5, timeout,
                 f"packets of {chain} arriving", interval=0.05)
    except TimeoutError:
        return None
    return round(time.time() - start, 2)


def _nf_host(emu, chain):
    """A host that runs the chain's first NF and is not its egress."""
    nf_hosts = emu.placement()[chain][0][1]
    others = [h for h in nf_hosts if h != emu.topo_chain(chain).egress]
    return (others or nf_hosts or [None])[0]


# -- the faults: each does its harm and undoes it; returns a note ------------

def store_paused_5s(emu, chain, hold=1.0):
    for i in range(len(emu.etcd.names)):
        emu.etcd.pause(i)
    time.sleep(5.0 * hold)
    for i in range(len(emu.etcd.names)):
        emu.etcd.resume(i)
    return f"all {len(emu.etcd.names)} etcd members SIGSTOPped {5.0 * hold:g} s"


def etcd_member_killed(emu, chain, hold=1.0):
    if len(emu.etcd.names) < 2:
        return "skipped: one etcd member"
    emu.etcd.kill(0)              # the first URL: the member every client asks first
    time.sleep(5.0 * hold)
    emu.etcd.start(0)
    return f"member m0 (the first URL) SIGKILLed, started again after {5.0 * hold:g} s"


def agent_killed(emu, chain, hold=1.0):
    host = _nf_host(emu, chain)
    emu.kill_agent(host)
    time.sleep(3.0 * hold)
    emu.start_agent(host)
    return (f"agent of {host} (the chain's first NF) SIGKILLed, started again after "
            f"{3.0 * hold:g} s")


def host_power_lost(emu, chain, hold=1.0):
    host = _nf_host(emu, chain)
    emu.fail_host(host)
    time.sleep(3.0 * hold)
    emu.power_on_host(host)
    return (f"{host} (the chain's first NF) lost power: agent SIGKILLed, link down; "
            f"back after {3.0 * hold:g} s")


def etcd_without_quorum(emu, chain, hold=1.0):
    """Two of three etcd members SIGKILLed for 10 s: the store answers no
    write and no linearizable read; the data plane goes on."""
    n = len(emu.etcd.names)
    if n < 3:
        return "skipped: fewer than 3 etcd members"
    down = list(range(n // 2 + 1))
    for i in down:
        emu.etcd.kill(i)
    time.sleep(10.0 * hold)
    for i in down:
        emu.etcd.start(i)
    return f"{len(down)} of {n} etcd members SIGKILLed {10.0 * hold:g} s (no quorum)"


def agent_cut_from_store(emu, chain, hold=1.0):
    """The management network of the chain's first NF host cut for 10 s
    (the loopback its store forwarder listens on taken down): its lease
    runs out, its data plane and the controller's probes go on."""
    host = _nf_host(emu, chain)
    emu.node_cmd(host, "ip link set lo down")
    time.sleep(10.0 * hold)
    emu.node_cmd(host, "ip link set lo up")
    return f"{host} (the chain's first NF) cut from the store {10.0 * hold:g} s"


def link_flapping(emu, chain, hold=1.0):
    """A fabric link of the first NF host's switch down and up ten times,
    0.5 s each way."""
    sw = emu.topo.host(_nf_host(emu, chain)).switch
    link = next(l for l in emu.topo.links if sw in (l.a, l.b))
    for _ in range(10):
        emu.fabric_link(link, "down")
        time.sleep(0.5 * hold)
        emu.fabric_link(link, "up")
        time.sleep(0.5 * hold)
    return f"link {link.a}:{link.a_port}-{link.b}:{link.b_port} flapped 10 times"


def ovs_restarted(emu, chain, hold=1.0):
    """ovs-vswitchd stopped and started again (its flows are lost with the
    userspace datapath; the controller programs them again)."""
    emu.ovs.restart(keep_flows=False)
    return "ovs-vswitchd restarted, its flows lost"


def host_drained(emu, chain, hold=1.0):
    """An operator drains the first NF's host (POST .../hosts/H/drain), then
    undrains it 5 s later: its chains move; its stateful instances drain
    there, the others stop at once (a packet in flight through them may be
    lost)."""
    host = _nf_host(emu, chain)
    emu.drain_host(host)
    wait_for(lambda: host not in [h for _, hosts in emu.placement()[chain] for h in hosts],
             15, f"{chain} off {host}")
    time.sleep(5.0 * hold)
    emu.drain_host(host, drain=False)
    return f"{host} (the chain's first NF) drained, undrained {5.0 * hold:g} s later"


def forged_frames(emu, chain, hold=1.0):
    """Label stacks forged at the chain's ingress edge (each SPI/SI a chain
    could have) and random bytes: the edge drops them, nothing crashes."""
    edge = emu.topo_chain(chain).ingress
    rng = random.Random(7)
    frames = []
    for spi in range(1, 40):
        for si in (255, 254):
            stack = (bytes.fromhex("0200000000ff0200000000ee8847")
                     + ((1 << 12) | 64).to_bytes(4, "big")
                     + ((spi << 12) | 64).to_bytes(4, "big")
                     + ((si << 12) | 0x100 | 64).to_bytes(4, "big"))
            frames.append(stack + bytes(rng.randrange(256) for _ in range(46)))
    frames += [bytes(rng.randrange(256) for _ in range(rng.randrange(14, 120)))
               for _ in range(60)]
    emu.inject(edge, frames)
    return f"{len(frames)} forged label stacks and random frames at {edge}"


FAULTS = {f.__name__: f for f in (store_paused_5s, etcd_member_killed, etcd_without_quorum,
                                  agent_cut_from_store, agent_killed, host_power_lost,
                                  link_flapping, ovs_restarted, host_drained,
                                  forged_frames)}


# -- controller faults: an emulation with Emulation(controllers=2) -----------

def leader_killed(emu, chain, hold=1.0):
    """The leading controller SIGKILLed: a standby takes over; the killed
    one comes back as a standby."""
    if emu.n_controllers < 2:
        return "skipped: one controller"
    old = emu.leader()
    start = time.time()
    emu.kill_controller(old)
    wait_for(lambda: emu.leader() not in (None, old), 20, "a standby leading")
    took = time.time() - start
    new = emu.leader()
    emu.start_controller(old)
    return (f"{emu.controller_name(old)} SIGKILLed, {emu.controller_name(new)} led "
            f"{took:.1f} s later; the first back as a standby")


def controllers_down_10s(emu, chain, hold=1.0):
    """Every controller SIGKILLed for 10 s, then started again."""
    for i in range(emu.n_controllers):
        emu.kill_controller(i)
    time.sleep(10.0 * hold)
    for i in range(emu.n_controllers):
        emu.start_controller(i)
    return (f"all {emu.n_controllers} controllers SIGKILLed, started again after "
            f"{10.0 * hold:g} s")


CONTROLLER_FAULTS = {f.__name__: f for f in (leader_killed, controllers_down_10s)}

# Every fault on one emulation with two controllers, in this order: the
# first NF's host drained and back, then the leader killed (the standby
# never saw the drain, which moved the chain: its own placement still has
# the chain where it was, so a new leader that wrote it would move the
# chain back); the other faults; every controller down last, after all
# they did to the placement.
SUITE = ("host_drained", "leader_killed",
         *(f for f in FAULTS if f != "host_drained"), "controllers_down_10s")


def _sender_paused(emu, chain, asked, timeout=5.0):
    """Wait until the chain's sender says, in a status written after
    `asked`, that it sends at rate 0 (it reads its rate twice a second and
    writes its status ten times a second)."""
    def paused():
        status = emu.sent(chain)
        return status.get("time", 0) > asked and status.get("pps") == 0
    try:
        wait_for(paused, timeout, f"the sender of {chain} paused", interval=0.05)
    except TimeoutError:
        pass                                 # counted as it is: a late packet shows as loss


def _quiet_counts(emu, chain, pps):
    """(sent, received, first NF out) with the chain's sender paused and
    everything in flight landed, so that the three counts are of the same
    packets; the sender resumes at `pps`."""
    asked = time.time()
    emu.set_pps(chain, 0)
    _sender_paused(emu, chain, asked)
    time.sleep(0.5)                          # its last packets reach the NFs and the sink
    _fresh_stats(emu, time.time())
    sent, received = _counts(emu, chain)
    nf_out = _first_nf_out(emu, chain)
    emu.set_pps(chain, pps)
    return sent, received, nf_out


@dataclasses.dataclass
class _Window:
    """What a fault's window starts (or ends) with."""
    sent: int
    received: int
    nf_out: dict
    plans: set
    lost_lines: list
    instances: set          # (host, id, nf) the plans run, draining ones not


def _running(plans):
    return {(host, inst["id"], inst["nf"]) for host, plan in plans.items()
            for inst in (plan or {}).get("instances", ()) if not inst.get("draining")}


def _window_edge(emu, chain, pps):
    sent, received, nf_out = _quiet_counts(emu, chain, pps)
    plans = emu.store.plans() or {}
    return _Window(sent, received, nf_out, set(plans), [len(hosts) for hosts in _lost_lines(emu)],
                   _running(plans))


def _plans_applied(emu):
    """Every live host with a plan runs its plan's generation."""
    try:
        plans = emu.store.plans() or {}
        return bool(plans) and all((emu.store.get_applied(h) or 0) >= p["generation"]
                                   for h, p in plans.items() if h not in emu.killed)
    except StoreError:                         # the store still recovering: not yet
        return False


def _settle(emu, settle_s, timeout):
    """`settle_s` (the controller has that long to evict a host, wrongly or
    not, or to lose a plan; agents publish), and on until the plans are
    applied or `timeout` has passed."""
    start = time.time()
    try:
        wait_for(lambda: _plans_applied(emu), timeout, "the plans applied after the fault",
                 interval=0.2)
    except TimeoutError:
        pass                                    # the window's figures tell what is wrong
    time.sleep(max(0.0, start + settle_s - time.time()))


def run_fault(emu, name, chain, settle_s=8.0, converge_timeout=30.0, hold=1.0, before=None):
    """One fault with traffic flowing: counts before and after, the
    invariants' figures.  `hold` scales how long the fault lasts (tests run
    each kind shorter than the bench does); the window closes once the
    chain's packets arrive again, `settle_s` after that and once the plans
    are applied.  `before`: the window's start (the end of
    the previous fault's window, see run_faults), else measured here.  The
    result's `window_end` opens the next fault's window."""
    fault = FAULTS.get(name) or CONTROLLER_FAULTS[name]
    pps = emu.pps(emu.topo_chain(chain).mpps)
    before = before or _window_edge(emu, chain, pps)
    note = fault(emu, chain, hold)
    converge = _arriving(emu, chain, converge_timeout)
    _settle(emu, settle_s, converge_timeout)
    after = _window_edge(emu, chain, pps)
    res = FaultResult(name, sent=after.sent - before.sent,
                      received=after.received - before.received, note=note,
                      converge_s=converge)
    res.window_end = after
    res.lost = max(0, res.sent - res.received)
    res.nf_out = nf_out_between(before.nf_out, after.nf_out)
    if name in ("agent_killed", "host_power_lost"):
        # The NF's counters restart with its agent: the window's NF count
        # is unknown, so no bypass can be judged from it.
        res.nf_out = None
        res.note += "; its NF counters restart with it"
    elif res.nf_out is None:
        res.note += "; an instance of the first NF went away, its counters with it"
    else:
        res.bypass = max(0, res.received - res.nf_out)
    # a host once however many lines (and controllers) said so
    res.evictions = sorted({h for hosts, n, m in zip(_lost_lines(emu), before.lost_lines,
                                                     after.lost_lines)
                            for h in hosts[n:m]})
    res.plans_lost = sorted(before.plans - after.plans)
    res.moved = sorted(k for k in before.instances - after.instances
                       if k[0] not in res.evictions)
    return res


def run_faults(emu, names, chain=None, say=lambda text: None, **kwargs):
    """The faults `names` one after the other; each fault's window starts
    where the previous one's ended (one quiet count between two faults)."""
    chain = chain or emu.topo.chains[0].name
    out = []
    edge = None
    for name in names:
        say(f"chaos: {name} ...")
        res = run_fault(emu, name, chain, before=edge, **kwargs)
        edge = res.window_end
        say(f"chaos: {name}: sent {res.sent}, received {res.received}, lost {res.lost}, "
            f"evictions {res.evictions}, again after {res.converge_s} s")
        out.append(res)
    return out


def _controller_logs(emu):
    text = ""
    for i in range(emu.n_controllers):
        try:
            with open(emu.file(emu.controller_log(i)), errors="replace") as f:
                text += f.read()
        except OSError:
            pass
    return text


def _probed(emu, timeout):
    """Wait until the controller's probes found every host reachable (when
    it probes at all): a host without a probe verdict yet is not held when
    its key vanishes, and the first faults make keys vanish.  False if not
    within `timeout`."""
    def reachable():
        text = _controller_logs(emu)
        return "liveness probes every" not in text or all(
            f"probe: host {h.name} reachable" in text for h in emu.topo.hosts)
    try:
        wait_for(reachable, timeout, "every host reachable by the controller's probes",
                 interval=0.2)
    except TimeoutError:
        return False
    return True


def run_emulated(topology, names, chain=None, say=lambda text: None, check=None,
                 hold=1.0, settle_s=8.0, keep_logs=True, **emulation):
    """Start an emulation of `topology` (Emulation keyword arguments in
    `emulation`: its own progress goes to its `say`), run the faults
    `names` on it (each told to our `say`; `hold` and `settle_s` as
    run_fault takes them), call `check(emu)` while it still runs, stop it;
    returns the results.  Its logs stay (their directory told to `say`)
    unless the run and the check passed and `keep_logs` is false (or a
    function of the results that says false: whether they show trouble)."""
    from onvm.emulate import Emulation
    emu = Emulation(topology, **emulation)
    results = None
    try:
        emu.start()
        chain = chain or next((c.name for c in emu.topo.chains if c.egress in
                               {e.name for e in emu.topo.edges}), emu.topo.chains[0].name)
        if _arriving(emu, chain, 30.0) is None:
            say(f"chaos: no packet of {chain} arrived 30 s after the start")
        if not _probed(emu, 30.0):
            say("chaos: not every host answered the controller's probes 30 s after the start")
        results = run_faults(emu, names, chain=chain, say=say, hold=hold, settle_s=settle_s)
        if check is not None:
            check(emu)
        return results
    finally:
        emu.stop()
        if results is not None and not (keep_logs(results) if callable(keep_logs)
                                        else keep_logs):
            emu.remove_files()
        else:
            say(f"chaos: the emulation's logs are in {emu.dir}")


def table(results):
    lines = ["| fault | sent | received | lost | first NF out | bypass | evictions | "
             "packets again (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.fault} ({r.note}) | {r.sent} | {r.received} | {r.lost} | "
                     f"{r.nf_out} | {r.bypass} | {len(r.evictions)} | {r.converge_s} |")
    return lines


def cli_bench_chaos(args):
    """`onvm bench chaos [--topology F] [--json]`: every fault on one
    emulation (three etcd members, two controllers), in SUITE's order: a
    new leader finds what the faults before left (a chain a drain moved,
    hosts lost and back)."""
    import json
    import sys

    def tell(*a, **k):
        print(*a, file=sys.stderr, **k)
    results = run_emulated(args.topology, list(SUITE), say=tell, etcd_members=3,
                           controllers=2)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in results]))
    else:
        print("\n".join(table(results)))
    problems = [p for r in results for p in r.problems()]
    for p in problems:
        print(f"broken: {p}", file=sys.stderr)
    return 1 if problems else 0
