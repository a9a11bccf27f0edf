"""An attacker's ways round a signature (Ptacek and Newsham, 1998), sent
through the real fast path to an IDS with a `drop` rule: split, one byte
a segment, out of order, middle segment last, overlaps that disagree,
retransmissions; each is caught, and the stream the receiver would read
never carries the signature.  Benign reordering costs a retransmission,
never data."""
import pytest
from scapy.all import TCP, Ether

from test_nf_helpers import harness, tcp

SIG = b"EVIL-PAYLOAD-SIGNATURE"
RULES = f'drop tcp any any -> any any (msg:"evil"; content:"{SIG.decode()}"; sid:7001;)\n'
C, S = "192.0.2.50", "10.0.1.5"


@pytest.fixture
def h():
    with harness([("ids", {"rules_text": RULES})]) as made:
        yield made


def seg(data, seq, sport=6000, flags="PA"):
    return tcp(C, S, sport, 80, flags, data, seq=seq)


def delivered(h, frames):
    """Send one frame at a time (as a network would, in this order); the
    payload bytes that came out, by sequence number (segments with data)."""
    out = {}
    for f in frames:
        for got in h.send([f]):
            t = Ether(got)[TCP]
            if bytes(t.payload):
                out[t.seq] = bytes(t.payload)
    return out


def stream(out, start):
    """What a receiver reads from `start` on: contiguous bytes only."""
    data, seq = b"", start
    while seq in out:
        data += out[seq]
        seq += len(out[seq])
    return data


def hits(h):
    return h.nf(1).counters()["rules"][0]["hits"]


BODY = b"xx" + SIG + b"yy"
CUT1, CUT2 = 8, 16
A, B, C3 = BODY[:CUT1], BODY[CUT1:CUT2], BODY[CUT2:]


@pytest.mark.parametrize("order", [
    "whole", "in_order", "one_byte", "reversed", "middle_last", "reversed_no_syn",
    "middle_last_no_syn"])
def test_evasion_variants_are_caught(h, order):
    syn = [seg(b"", 99, flags="S")] if not order.endswith("no_syn") else []
    base = 100
    if order == "whole":
        parts = [(BODY, base)]
    elif order == "in_order":
        parts = [(BODY[:CUT1], base), (BODY[CUT1:], base + CUT1)]
    elif order == "one_byte":
        parts = [(BODY[i:i + 1], base + i) for i in range(len(BODY))]
    elif order.startswith("reversed"):
        parts = [(BODY[CUT1:], base + CUT1), (BODY[:CUT1], base)]
    else:
        parts = [(A, base), (C3, base + CUT2), (B, base + CUT1)]
    out = delivered(h, syn + [seg(d, s) for d, s in parts])
    assert SIG not in stream(out, base)
    # The sender, missing its ACKs, sends everything again in order: the
    # IDS still never lets the signature through.
    out2 = delivered(h, [seg(d, s) for d, s in sorted(parts, key=lambda p: p[1])])
    merged = {**out, **out2}
    assert SIG not in stream(merged, base)
    assert hits(h) >= 1


def test_overlap_with_other_bytes_is_dropped(h):
    # The IDS sees "xx-benign-bytes", then a segment rewriting the same
    # sequence numbers with the signature's first half: a receiver that
    # keeps the last copy would read the signature.  Dropped as a conflict.
    first = b"benign-bytes-here-ok"
    out = delivered(h, [seg(b"", 99, flags="S"), seg(first, 100),
                        seg(SIG[:10], 100 + len(first) - 10)])
    assert len(out) == 1
    assert h.nf(1).counters()["overlap_conflict"] == 1


def test_identical_retransmission_passes_unscanned(h):
    out = delivered(h, [seg(b"", 99, flags="S"), seg(b"hello world", 100),
                        seg(b"hello world", 100)])
    assert len(out) == 1 and out[100] == b"hello world"
    c = h.nf(1).counters()
    assert c["retransmitted"] == 1 and c["dropped"] == 0


def test_partial_overlap_scans_only_the_new_bytes_in_order(h):
    # The second segment repeats the first's last 4 bytes, then brings the
    # signature's second half: joined with the tail, caught.
    a = b"....." + SIG[:12]
    b = a[-4:] + SIG[12:]
    out = delivered(h, [seg(b"", 99, flags="S"), seg(a, 100), seg(b, 100 + len(a) - 4)])
    assert list(out) == [100] and hits(h) == 1


def test_benign_reordering_is_delivered_after_retransmission(h):
    # Three benign segments, the second late: the third waits for the
    # sender's retransmission; the receiver's stream ends up complete.
    parts = [(b"GET / HTTP/1.1\r\n", 100), (b"Host: example\r\n", 116), (b"\r\n", 131)]
    out = delivered(h, [seg(b"", 99, flags="S"), seg(*parts[0]), seg(*parts[2]), seg(*parts[1])])
    assert sorted(out) == [100, 116] and h.nf(1).counters()["out_of_order"] == 1
    out.update(delivered(h, [seg(*parts[2])]))
    assert stream(out, 100) == b"".join(p for p, _ in parts)
    assert h.nf(1).counters()["dropped"] == 1


def test_other_direction_and_other_flows_are_not_held(h):
    delivered(h, [seg(b"", 99, flags="S"), seg(b"abc", 100), seg(b"later", 200)])
    # Another flow's data passes; the reply direction has its own stream.
    assert len(delivered(h, [seg(b"other flow", 5000, sport=6001)])) == 1
    assert len(h.send([tcp(S, C, 80, 6000, "PA", b"reply", seq=7000)])) == 1
