"""Traffic for the emulated data center: a paced sender at an ingress edge
and a counting sink at an egress, each a small process run inside a Mininet
node's network namespace (`python -m onvm.traffic send|sink ...`).

Every frame carries a marker in its payload: MAGIC, the chain's SPI, a
sequence number and the send time.  The sink finds the marker wherever the
NFs left it, so it counts per chain, sees losses as missing sequence numbers
and gaps as pauses in arrival, and reports what the kernel dropped
because it did not read in time.  It also counts per flow (IPv4 or IPv6 source and
source port, which no NF of ours rewrites) the destination addresses the
flow arrived with, so a load balancer's choices show.  The sender counts
per frame (one frame a flow) and takes a new set of frames, or a new rate,
when its files change.  Both processes report by rewriting a small JSON
status file a few times a second (atomically, with os.replace).

This module does not decide what to send: `onvm.emulate` builds the frames
(from each chain's classifier) and reads the status files.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import time

MAGIC = b"ONVMSEQ!"
MARK = struct.Struct("!8sIQd")          # magic, spi, seq, send time
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET, PACKET_STATISTICS = 263, 6
TPACKET_STATS = struct.Struct("II")      # packets, drops (reading resets them)
GAP_S = 0.05                            # a pause longer than this is a gap
REPORT_S = 0.1
MAX_FLOWS = 4096                        # per chain, at the sink


def mark(spi, seq, now):
    return MARK.pack(MAGIC, spi, seq, now)


def find_mark(frame):
    """(spi, seq, sent time) of the marker in `frame`, or None."""
    at = frame.find(MAGIC)
    if at < 0 or at + MARK.size > len(frame):
        return None
    _, spi, seq, sent = MARK.unpack_from(frame, at)
    return spi, seq, sent


def write_status(path, status):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, path)


def read_status(path):
    """The last status a sender or sink wrote, or None before the first."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _raw_socket(iface):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    return s


def kernel_drops(sock):
    """Frames the kernel dropped for `sock` since the last call (its receive
    buffer was full: we did not read in time)."""
    return TPACKET_STATS.unpack(sock.getsockopt(SOL_PACKET, PACKET_STATISTICS,
                                                TPACKET_STATS.size))[1]


class _Stop:
    """Set by SIGTERM/SIGINT: the loops end and write a last status."""
    flag = False

    @classmethod
    def install(cls):
        def handler(*_):
            cls.flag = True
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def read_rate(path, default):
    try:
        with open(path) as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return default


def _load_frames(path):
    """(frames, marker offsets) of a frames file: JSON, hex, one a flow."""
    with open(path) as f:
        frames = [bytearray(bytes.fromhex(h)) for h in json.load(f)]
    offsets = [fr.find(MAGIC) for fr in frames]
    if not frames or any(o < 0 for o in offsets):
        raise ValueError(f"{path}: no frames, or a frame lacks the marker field")
    return frames, offsets


def _tcp_stream(frame):
    """(offset of the TCP sequence number, payload bytes) of an Ethernet
    IPv4 TCP frame, or None: a TCP frame sent again carries the next
    sequence number, as a real sender's next segment would (an IDS matches
    a stream in sequence order and takes the same sequence number with
    other bytes for an overlap attack)."""
    if len(frame) >= 54 and frame[12:14] == b"\x86\xdd" and frame[20] == 6:
        ihl, total = 40, 40 + int.from_bytes(frame[18:20], "big")      # IPv6
    elif len(frame) >= 34 and frame[12:14] == b"\x08\x00" and frame[23] == 6:
        ihl, total = (frame[14] & 0x0F) * 4, int.from_bytes(frame[16:18], "big")
    else:
        return None
    tcp = 14 + ihl
    if len(frame) < tcp + 20:
        return None
    return tcp + 4, total - ihl - (frame[tcp + 12] >> 4) * 4


def _next_segment(frame, stream):
    if stream is not None:
        at, length = stream
        seq = (int.from_bytes(frame[at:at + 4], "big") + length) & 0xFFFFFFFF
        frame[at:at + 4] = seq.to_bytes(4, "big")


def _mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def send(iface, frames_path, status_path, rate_path, spi, pps):
    """Send the frames of `frames_path` (hex, one flow each) round robin at
    `pps` packets a second, each with a fresh marker patched over the
    marker field (and a TCP frame with its next sequence number).  Twice a second the rate is re-read from
    `rate_path` and the frames reloaded if their file changed; the status
    counts sent packets per frame of the current file."""
    frames, offsets = _load_frames(frames_path)
    streams = [_tcp_stream(fr) for fr in frames]
    version = _mtime(frames_path)
    per_frame = [0] * len(frames)
    sock = _raw_socket(iface)
    seq = sent = errors = 0
    start = last_report = last_rate = time.time()
    due_from, due_count = start, 0

    def status(**extra):
        return {"spi": spi, "sent": sent, "seq": seq, "send_errors": errors,
                "pps": pps, "time": time.time(),
                "start": start, "frames_version": version, "per_frame": per_frame, **extra}
    while not _Stop.flag:
        now = time.time()
        if now - last_rate >= 0.5:
            new = read_rate(rate_path, pps)
            if new != pps:
                pps, due_from, due_count = new, now, 0
            if _mtime(frames_path) != version:
                frames, offsets = _load_frames(frames_path)
                streams = [_tcp_stream(fr) for fr in frames]
                version, per_frame = _mtime(frames_path), [0] * len(frames)
            last_rate = now
        due = int((now - due_from) * pps) - due_count
        for _ in range(min(due, 1000)):
            i = seq % len(frames)
            fr = frames[i]
            MARK.pack_into(fr, offsets[i], MAGIC, spi, seq, time.time())
            try:
                sock.send(fr)
                sent += 1
                per_frame[i] += 1
                _next_segment(fr, streams[i])
            except OSError:
                errors += 1             # a full queue: the sequence gap shows it too
            seq += 1
            due_count += 1
        if now - last_report >= REPORT_S:
            write_status(status_path, status())
            last_report = now
        time.sleep(0.001)
    write_status(status_path, status(done=True))


def flow_of(frame):
    """("SRC:SPORT", DST) of an untagged IPv4 or IPv6 frame (no extension
    header), or None."""
    if len(frame) >= 54 and frame[12:14] == b"\x86\xdd":
        src, dst = (socket.inet_ntop(socket.AF_INET6, frame[a:a + 16]) for a in (22, 38))
        sport = struct.unpack_from("!H", frame, 54)[0] if frame[20] in (6, 17) \
            and len(frame) >= 56 else 0
        return f"{src}:{sport}", dst
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0f) * 4
    src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
    sport = 0
    if frame[23] in (6, 17) and len(frame) >= 14 + ihl + 2:
        sport = struct.unpack_from("!H", frame, 14 + ihl)[0]
    return f"{src}:{sport}", dst


class ChainSeen:
    """What the sink saw of one chain."""

    def __init__(self):
        self.received = 0
        self.max_seq = -1
        self.first = self.last = None
        self.gaps = []                  # [start, end] of pauses > GAP_S
        self.latency_sum = 0.0
        self.flows = {}                 # "SRC:SPORT" -> {destination: packets}

    def add_flow(self, flow):
        if flow is None:
            return
        key, dst = flow
        if key in self.flows or len(self.flows) < MAX_FLOWS:
            dsts = self.flows.setdefault(key, {})
            dsts[dst] = dsts.get(dst, 0) + 1

    def add(self, seq, sent, now):
        if self.last is not None and now - self.last > GAP_S:
            self.gaps.append([self.last, now])
        if self.first is None:
            self.first = now
        self.last = now
        self.received += 1
        self.max_seq = max(self.max_seq, seq)
        self.latency_sum += max(0.0, now - sent)

    def as_dict(self):
        return {"received": self.received, "max_seq": self.max_seq,
                "first": self.first, "last": self.last, "gaps": self.gaps[-50:],
                "latency_ms": round(1000 * self.latency_sum / self.received, 3)
                if self.received else None, "flows": self.flows}


def sink(iface, status_path):
    """Count marked frames arriving at `iface` (not those it sends), per SPI."""
    sock = _raw_socket(iface)
    sock.settimeout(REPORT_S)
    seen = {}                           # SPI -> ChainSeen
    last_report = 0.0
    dropped = 0                         # by the kernel, of every chain (unreadable)

    def status(**extra):
        return {"time": time.time(), "kernel_drops": dropped, **extra,
                "chains": {str(k): v.as_dict() for k, v in seen.items()}}
    while not _Stop.flag:
        try:
            frame, addr = sock.recvfrom(65535)
        except socket.timeout:
            frame, addr = None, None
        except InterruptedError:
            continue
        now = time.time()
        if frame is not None and addr[2] != PACKET_OUTGOING:
            found = find_mark(frame)
            if found:
                spi, seq, sent = found
                chain = seen.setdefault(spi, ChainSeen())
                chain.add(seq, sent, now)
                chain.add_flow(flow_of(frame))
        if now - last_report >= REPORT_S:
            dropped += kernel_drops(sock)
            write_status(status_path, status())
            last_report = now
    dropped += kernel_drops(sock)
    write_status(status_path, status(done=True))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m onvm.traffic", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("send")
    s.add_argument("--iface", required=True)
    s.add_argument("--frames", required=True, help="JSON list of hex frames")
    s.add_argument("--status", required=True)
    s.add_argument("--rate-file", required=True)
    s.add_argument("--spi", type=int, required=True)
    s.add_argument("--pps", type=float, required=True)
    k = sub.add_parser("sink")
    k.add_argument("--iface", required=True)
    k.add_argument("--status", required=True)
    args = p.parse_args(argv)
    _Stop.install()
    if args.what == "send":
        send(args.iface, args.frames, args.status, args.rate_file, args.spi, args.pps)
    else:
        sink(args.iface, args.status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
