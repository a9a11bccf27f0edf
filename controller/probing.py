"""Liveness probes, the deciding half: which probe frames to send now, what
an answer says, and when a host's fast path counts as unreachable or
reachable again.  Pure (Faucet's habit): no Ryu, no clock, no switch;
`now` is an argument, frames are bytes in and out.  The Ryu shell is
`controller.apps.probes`; it sends what `tick` returns (OpenFlow
packet-out at the host's switch port) and hands back what the switch
punts (controller.flows' "probe" rule, table 0, at host ports).

    prober = Prober(topology, interval_s=0.05, token=0x1234abcd)
    for p in prober.tick(now, connected_dpids): send p.frame out of (p.dpid, p.port)
    prober.answer(dpid, in_port, frame, now)     # a packet-in of EtherType ETH_PROBE
    prober.changes()   -> [(host, reachable, why)] since the last call
    prober.has_changes()
    prober.verdicts()  -> {host: reachable} of hosts with a verdict
    prober.counters, prober.notes()  (what to log, each thing once)

Design (why the controller probes, not the hosts; see also the README's
"Liveness"):
  - What is probed: the host's DPDK loop itself.  The probe is a frame of
    its own EtherType (contracts.wire.ETH_PROBE) sent out of the host's
    switch port; the fast path (host_agent/manager.pyx) answers it in its
    loop by swapping addresses, so a crashed or hung agent answers
    nothing, while its link (and so its port status) stays up.  Probe and
    answer cross the real switch (OVS), and nothing here touches etcd.
  - Who probes: the controller, by packet-out / packet-in through each
    host's edge switch, every `interval_s` (`[onvm] probe_interval_ms`,
    default 50, 0 = off).  BFD (RFC 5880) between peer hosts in the fast
    path would spread the load, but its verdicts would then travel to the
    controller by some channel that is neither the store nor the fast
    path; the controller's OpenFlow channel already is that channel.
    Cost: two OpenFlow messages per host per interval at the controller:
    at 50 ms, 40 per host per second, 41,000/s for 1024 hosts, beyond one
    Ryu process (a few thousand packet-ins a second); large fabrics raise
    the interval (detection = 3 intervals) or move probing into the hosts,
    reporting only changes.
  - Verdicts, BFD's way: a session starts with no word ("init") and is
    "up" after `up_mult` answers in a row; an up session goes "down"
    after `detect_mult` probes in a row went unanswered for an interval
    each, so detection takes detect_mult + 1 intervals at most (200 ms at
    50 ms).  A host that never answered has no verdict: the lease and the
    port decide for it, so a controller that starts before the agents, or
    before its punt rules are in the switches, evicts nobody.
  - The observer is checked too: an up session goes down only if another
    host answered a probe at least as recent as the missed ones.  When no
    host answers (this controller stalled, its switch connection is slow)
    nobody goes down, and a note says why (the same rule as
    controller.liveness's large disruption: a fault of the observer is not
    the hosts' death).  A fabric of one host gets no probe verdicts.
  - The observer's own stalls and late answers (a starved controller or
    switch): three rules, so that a detector that was not running, or
    answers still on their way, are never a host's fault (BFD's detection
    time is measured by a running detector; Kubernetes' node lifecycle
    controller likewise does not evict on its own lag):
      1. the prober times itself: a tick later than `late_bound_s`
         (default one interval) after its due time means the prober was
         not running while the probes sent before fell due; their misses
         are not counted (answers to them are still taken), and a host
         needs `detect_mult` misses of later probes;
      2. when answers come again after nobody answered (the note above),
         the misses of every probe sent until then are not counted
         either: the answers were held up somewhere on the way;
      3. the evidence that a peer answered must have been received some
         time before the judgement, so the host's own answer, queued
         behind it, could have been read too: a peer on the host's own
         switch (its answers come over the same OpenFlow connection, in
         order) counts after `settle_s` (half an interval); a peer on
         another switch (whose connection may be read before the host's)
         counts after `settle_s` only when the host has no peer on its
         switch, and after `detect_mult` intervals when it has one that
         is silent too (a lagging connection of that switch looks just
         like all of its hosts failing).
    Each stall is noted once per episode, with the probes whose misses
    are not counted; counters["excused"] counts the misses so dropped.
    With the controller on time, a crashed agent whose switch holds a
    peer that answers is still found after detect_mult + 1 intervals.
  - A host whose switch is not connected is not probed; its session
    starts again from "init" when the switch comes back, and at every
    connection of its switch (`switch_connected`), even one that dropped
    and came back between two ticks: a switch that reconnects may have
    lost its rules (ovs-vswitchd restarted), and until the controller has
    put them back no probe can pass.  Misses then are no evidence against
    its hosts; a session leaves "init" only by answers, so it is judged
    again only once the data plane can answer (BFD's session, which
    starts down and is judged only once up).
  - Answers are recognised by a per-controller token in the probe's
    opaque bytes (a standby probes too, and sees the leader's answers);
    answers from a port that is no host's, with another MAC than the
    host's, not of our token, or malformed are counted and noted once per
    port, never an error.

Not here: Ryu (controller.apps.probes), what a verdict does to the
cluster (controller.liveness, controller.core), the switch rules
(controller.flows.probe_punts), the frame's answering (the fast path).
"""
from __future__ import annotations

import collections
import dataclasses
import struct
from typing import Deque, Dict, List, NamedTuple, Optional, Tuple

from contracts.wire import ETH_PROBE, PROBE_ANSWER, PROBE_LEN, PROBE_REQUEST

PROBE_SRC_MAC = "0e:6f:6e:00:00:01"   # locally administered: the controller's probes
_BODY = struct.Struct("!HBBIII")      # EtherType, kind, reserved, seq, token, sent (us)
COUNTERS = ("sent", "answered", "late", "foreign", "unknown", "malformed", "excused")


class Probe(NamedTuple):
    host: str
    dpid: int
    port: int
    frame: bytes


def _mac_bytes(mac):
    return bytes(int(x, 16) for x in mac.split(":"))


def probe_frame(dst_mac, seq, token, sent_us):
    """A probe request to `dst_mac` (contracts.wire's layout)."""
    head = _mac_bytes(dst_mac) + _mac_bytes(PROBE_SRC_MAC)
    body = _BODY.pack(ETH_PROBE, PROBE_REQUEST, 0, seq & 0xFFFFFFFF, token,
                      sent_us & 0xFFFFFFFF)
    return (head + body).ljust(PROBE_LEN, b"\0")


def parse_answer(frame):
    """(src MAC, seq, token, sent_us) of a probe answer; None if `frame` is
    not one."""
    if len(frame) < 12 + _BODY.size:
        return None
    etype, kind, _, seq, token, sent = _BODY.unpack_from(frame, 12)
    if etype != ETH_PROBE or kind != PROBE_ANSWER:
        return None
    return ":".join(f"{b:02x}" for b in frame[6:12]), seq, token, sent


@dataclasses.dataclass
class _Session:
    host: str
    dpid: int
    port: int
    mac: str
    state: str = "init"                 # "init" (no word), "up", "down"
    outstanding: Deque[Tuple[int, float]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=16))   # (seq, sent at)
    streak: int = 0                     # answers in a row while not up
    rtt_ms: Optional[float] = None      # of the last answer


class Prober:
    """See the module docstring.  `topology`: controller.topology's (hosts
    with switch, port, mac; switches with dpid)."""

    def __init__(self, topology, interval_s=0.05, token=1, detect_mult=3, up_mult=3,
                 late_bound_s=None):
        if interval_s <= 0:
            raise ValueError(f"probe interval must be > 0 s, not {interval_s}")
        self.interval_s = interval_s
        self.late_bound_s = interval_s if late_bound_s is None else late_bound_s
        self.settle_s = interval_s / 2          # rule 3, a peer on the same switch
        self.cross_settle_s = detect_mult * interval_s  # rule 3, a silent switch
        self.token = token & 0xFFFFFFFF
        self.detect_mult = detect_mult
        self.up_mult = up_mult
        dpids = {sw.name: sw.dpid for sw in topology.switches}
        self.sessions: Dict[str, _Session] = {
            h.name: _Session(h.name, dpids[h.switch], h.port, h.mac.lower())
            for h in topology.hosts}
        self.by_port = {(s.dpid, s.port): s for s in self.sessions.values()}
        self.seq = 0
        self.best_answered = 0          # the newest probe any host answered
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._changes: List[Tuple[str, bool, str]] = []
        self._notes: List[str] = []
        self._noted = set()
        self._stalled_at = None         # seq of the probe nobody answered, noted
        self.excused_upto = 0           # misses of probes up to this seq do not count
        self._last_tick = None          # when tick last ran (rule 1)
        self._late = False              # in a late episode of this prober, noted
        self._recent: Deque[Tuple[float, int, int]] = collections.deque()
        self._heard: Dict[int, int] = {}    # dpid -> newest seq answered there, settled
        self._heard_long = 0            # newest seq answered anywhere, cross-settled

    def add_host(self, host, dpid):
        """Probe `host` (one that joined, controller.joins) from now on."""
        s = _Session(host.name, dpid, host.port, host.mac.lower())
        self.sessions[host.name] = s
        self.by_port[(dpid, host.port)] = s

    def switch_connected(self, dpid):
        """Switch `dpid` (re)connected: its hosts' sessions start again
        (see the module docstring)."""
        for s in self.sessions.values():
            if s.dpid == dpid and (s.state != "init" or s.outstanding):
                self._restart(s, "its switch (re)connected: its rules may not be "
                                 "back yet; judged again once it answers")

    def is_host_port(self, dpid, port) -> bool:
        return (dpid, port) in self.by_port

    # ------------------------------------------------------------- sending
    def tick(self, now, connected) -> List[Probe]:
        """Judge the probes sent so far, then the probes to send now: one
        to each host whose switch (dpid) is in `connected`."""
        self._check_own_lateness(now)
        self._judge(now)
        self.seq += 1
        out = []
        sent_us = int(now * 1e6)
        for name in sorted(self.sessions):
            s = self.sessions[name]
            if s.dpid not in connected:
                if s.state != "init" or s.outstanding:
                    self._restart(s, "its switch is not connected: no probes")
                continue
            s.outstanding.append((self.seq, now))
            out.append(Probe(name, s.dpid, s.port,
                             probe_frame(s.mac, self.seq, self.token, sent_us)))
        self.counters["sent"] += len(out)
        return out

    def _check_own_lateness(self, now):
        """Rule 1: a tick due at last + interval that runs more than
        late_bound_s after that was not running while the probes sent
        before it fell due: their misses do not count."""
        last, self._last_tick = self._last_tick, now
        if last is None:
            return
        late = now - last - self.interval_s
        if late <= self.late_bound_s:
            self._late = False
            return
        first = self._excuse()
        if not self._late and first is not None:
            self._notes.append(
                f"this prober ran {late * 1000:.0f} ms late (ticks {(now - last) * 1000:.0f} "
                f"ms apart, due every {self.interval_s * 1000:g} ms): the misses of probes "
                f"{first} to {self.excused_upto}, which fell due while it was not running, "
                f"are not counted against any host (noted once per late episode)")
        self._late = True

    def _excuse(self):
        """Misses of every probe sent so far do not count (answers to them
        are still taken).  The oldest probe unanswered so far, None if
        none is."""
        unanswered = [seq for s in self.sessions.values() for seq, _ in s.outstanding
                      if seq > self.excused_upto]
        self.counters["excused"] += len(unanswered)
        self.excused_upto = self.seq
        return min(unanswered, default=None)

    def _settle(self, now):
        """Answers received cross_settle_s before `now` join the settled."""
        while self._recent and self._recent[0][0] <= now - self.cross_settle_s:
            _, seq, dpid = self._recent.popleft()
            self._heard[dpid] = max(self._heard.get(dpid, 0), seq)
            self._heard_long = max(self._heard_long, seq)

    def _settled(self, now):
        """Rule 3: ({dpid: newest seq answered there}, newest seq answered
        anywhere, the same cross-settled) of answers received settle_s
        (cross_settle_s) before `now`."""
        heard = dict(self._heard)
        for at, seq, dpid in self._recent:
            if at > now - self.settle_s:
                break
            heard[dpid] = max(heard.get(dpid, 0), seq)
        return heard, max(heard.values(), default=0), self._heard_long

    def _evidence(self, s, last, settled):
        """Did a peer answer probe `last` or a later one early enough that
        `s`'s own answer would have been read by now?"""
        heard, heard_any, heard_long = settled
        if heard.get(s.dpid, 0) >= last:
            return True                 # a peer on its switch (in order)
        alone = not any(d == s.dpid and p != s.port for d, p in self.by_port)
        return heard_long >= last or (alone and heard_any >= last)

    def _judge(self, now):
        self._settle(now)
        settled = None
        for s in self.sessions.values():
            missed = [seq for seq, at in s.outstanding   # (a µs of float slack)
                      if at + self.interval_s <= now + 1e-6 and seq > self.excused_upto]
            if not missed:
                continue
            if s.state != "up":
                s.streak = 0
                continue
            if len(missed) < self.detect_mult:
                continue
            last = missed[self.detect_mult - 1]
            if self.best_answered < last:
                if self._stalled_at is None:
                    self._stalled_at = last
                    self._notes.append(
                        f"no host answered probes {missed[0]} to {last} within "
                        f"{self.interval_s * 1000:g} ms each: more likely a fault of this "
                        f"controller or its switch connections than of the hosts; "
                        f"nobody is declared unreachable by probes until answers come")
                continue
            settled = settled or self._settled(now)
            if not self._evidence(s, last, settled):
                continue                # the peers' answers are too fresh: wait
            s.state, s.streak = "down", 0
            why = (f"its fast path answered none of {len(missed)} probes in a row "
                   f"({len(missed)} x {self.interval_s * 1000:g} ms) while its peers "
                   f"answered")
            self._changes.append((s.host, False, why))

    def _restart(self, s, why):
        if s.state != "init":
            self._notes.append(f"host {s.host}: probe verdict dropped: {why}")
        s.state, s.streak = "init", 0
        s.outstanding.clear()

    # ------------------------------------------------------------ answers
    def answer(self, dpid, in_port, frame, now) -> Optional[str]:
        """A frame of EtherType ETH_PROBE the switch `dpid` punted from
        `in_port`: the host it answers for, or None (counted, noted once)."""
        parsed = parse_answer(frame)
        s = self.by_port.get((dpid, in_port))
        if parsed is None:
            return self._odd("malformed", dpid, in_port,
                             "a frame of the probe EtherType that is no probe answer")
        mac, seq, token, sent_us = parsed
        if s is None:
            return self._odd("unknown", dpid, in_port,
                             f"a probe answer from {mac} on a port that is no host's")
        if mac != s.mac:
            return self._odd("unknown", dpid, in_port,
                             f"a probe answer from {mac}, not from {s.host} ({s.mac})")
        if token != self.token:
            self.counters["foreign"] += 1       # another controller's probe
            return None
        seqs = [q for q, _ in s.outstanding]
        if seq not in seqs:
            self.counters["late"] += 1
            return None
        self.counters["answered"] += 1
        self.best_answered = max(self.best_answered, seq)
        self._recent.append((now, seq, dpid))
        if self._stalled_at is not None and seq >= self._stalled_at:
            self._stalled_at = None
            first = self._excuse()      # rule 2
            self._notes.append("probes are answered again" + (
                f"; the misses of probes {first} to {self.excused_upto} are not "
                f"counted against any host (their answers were held up on the way)"
                if first is not None else ""))
        gap = seqs.index(seq) > 0           # an older probe went unanswered
        while s.outstanding and s.outstanding[0][0] <= seq:
            s.outstanding.popleft()
        s.rtt_ms = max(0.0, (int(now * 1e6) - sent_us) % (1 << 32) / 1000.0)
        if s.state != "up":
            s.streak = 1 if gap else s.streak + 1
            if s.streak >= self.up_mult:
                before, s.state = s.state, "up"
                self._changes.append((s.host, True, (
                    f"its fast path answered {s.streak} probes in a row"
                    + (" again" if before == "down" else ""))))
        return s.host

    def _odd(self, counter, dpid, port, what):
        self.counters[counter] += 1
        if (counter, dpid, port) not in self._noted:
            self._noted.add((counter, dpid, port))
            self._notes.append(f"switch {dpid:#x} port {port}: {what}; ignored "
                               f"(counted as {counter}, noted once per port)")
        return None

    # ------------------------------------------------------------ verdicts
    def verdicts(self) -> Dict[str, bool]:
        return {n: s.state == "up" for n, s in self.sessions.items() if s.state != "init"}

    def has_changes(self) -> bool:
        return bool(self._changes)

    def changes(self) -> List[Tuple[str, bool, str]]:
        out, self._changes = self._changes, []
        return out

    def notes(self) -> List[str]:
        out, self._notes = self._notes, []
        return out

    def status(self):
        """Plain data for a log line or a REST answer."""
        return {"interval_ms": self.interval_s * 1000, "counters": dict(self.counters),
                "hosts": {n: {"state": s.state, "rtt_ms": s.rtt_ms}
                          for n, s in sorted(self.sessions.items())}}
