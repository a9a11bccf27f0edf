"""Two nat instances of one cluster: each owns one slice of the port range
(nfs.configs.nat_slice), so across 10,000 flows they never hand out the
same external port, and each translates the replies of its own flows back
(and drops the replies of the other's: the port names the instance)."""
import socket
import struct
import zlib

import pytest
from scapy.all import IP, TCP, Ether, raw

from nflib.api import NFConfigError
from nfs.configs import nat_slice, parse_nat
from nfs.nat import NAT
from test_nf_helpers import checksums_ok, eth, harness, tcp

EXT = "198.51.100.1"
RANGE = [20000, 39999]
FLOWS = 10000
CHUNK = 500


def config(n):
    return {"external_ip": EXT, "internal": "10.0.0.0/8", "slice": n, "slices": 2,
            "port_range": nat_slice(RANGE, 2, n)}


def internal(i):
    """The i-th flow's internal endpoint: distinct for every i."""
    return f"10.{1 + i // 60000}.{(i // 250) % 240}.{i % 250 + 1}", 1024 + i % 60000


def send_all(h, frames):
    out = []
    for i in range(0, len(frames), CHUNK):
        out += h.send(frames[i:i + CHUNK])
    return out


def _reply_scapy(frame):
    """The server's SYN-ACK to an outbound frame that came out of a nat."""
    ip = Ether(frame)[IP]
    return raw(eth() / IP(src=ip.dst, dst=ip.src)
               / TCP(sport=ip[TCP].dport, dport=ip[TCP].sport, flags="SA", seq=5, ack=1001))


# 10,000 flows built and read by scapy take most of a minute: the frames
# are made from one scapy-built template each (addresses, ports and both
# checksums patched in; the test checks a sample against scapy's own
# frames) and read by offset (each checked to be IPv4 without options,
# carrying TCP).
def _fold(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data + b"\0" * (len(data) % 2)))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff


def _patched(template, src, dst, sport, dport):
    f = bytearray(template)
    f[26:30], f[30:34] = socket.inet_aton(src), socket.inet_aton(dst)
    struct.pack_into("!HHH", f, 34, sport, dport, 0)
    struct.pack_into("!H", f, 24, 0)
    struct.pack_into("!H", f, 24, _fold(bytes(f[14:34])))
    end = 14 + struct.unpack_from("!H", f, 16)[0]
    struct.pack_into("!H", f, 50, 0)
    pseudo = bytes(f[26:34]) + struct.pack("!BBH", 0, 6, end - 34)
    struct.pack_into("!H", f, 50, _fold(pseudo + bytes(f[34:end])))
    return bytes(f)


SYN = tcp("10.0.0.1", "203.0.113.9", 1, 80, "S")
SYN_ACK = raw(eth() / IP(src="10.0.0.2", dst="10.0.0.3")
              / TCP(sport=1, dport=1, flags="SA", seq=5, ack=1001))


def addrs(frame):
    """(ip src, ip dst, tcp sport, tcp dport) of an IPv4/TCP frame."""
    assert frame[12:14] == b"\x08\x00" and frame[14] == 0x45 and frame[23] == 6, frame.hex()
    return (socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34]),
            *struct.unpack_from("!HH", frame, 34))


def syn(src, sport):
    return _patched(SYN, src, "203.0.113.9", sport, 80)


def reply_to(frame):
    """The server's SYN-ACK to an outbound frame that came out of a nat."""
    src, dst, sport, dport = addrs(frame)
    return _patched(SYN_ACK, dst, src, dport, sport)


def test_slices_split_the_range_evenly_and_disjointly():
    assert nat_slice(RANGE, 2, 0) == [20000, 29999] and nat_slice(RANGE, 2, 1) == [30000, 39999]
    cuts = [nat_slice([1024, 65535], 16, n) for n in range(16)]
    assert all(hi - lo + 1 == 4032 for lo, hi in cuts)
    assert all(a[1] < b[0] for a, b in zip(cuts, cuts[1:]))


def test_two_instances_never_share_a_port_and_each_answers_its_own_flows():
    with harness([("nat", config(0))]) as a, harness([("nat", config(1))]) as b:
        # The flows split between the two instances as a fast path's hash would.
        flows = [internal(i) for i in range(FLOWS)]
        for src, sport in flows[::97]:
            assert syn(src, sport) == tcp(src, "203.0.113.9", sport, 80, "S"), (src, sport)
        mine = {0: [], 1: []}
        for src, sport in flows:
            mine[zlib.crc32(f"{src}:{sport}".encode()) % 2].append((src, sport))
        assert min(len(v) for v in mine.values()) > FLOWS // 3
        outs = {}
        for n, h in ((0, a), (1, b)):
            out = send_all(h, [syn(src, sport) for src, sport in mine[n]])
            assert len(out) == len(mine[n])
            outs[n] = out
        ports = {n: [addrs(f)[2] for f in outs[n]] for n in (0, 1)}
        for n in (0, 1):
            lo, hi = nat_slice(RANGE, 2, n)
            assert all(lo <= p <= hi for p in ports[n]), f"instance {n} left its slice"
            assert len(set(ports[n])) == len(ports[n]), f"instance {n} gave a port twice"
            assert all(addrs(f)[0] == EXT for f in outs[n])
            assert all(reply_to(f) == _reply_scapy(f) for f in outs[n][::97])
        assert not set(ports[0]) & set(ports[1])
        assert len(set(ports[0]) | set(ports[1])) == FLOWS

        # Each instance translates the replies of its own flows back ...
        for n, h in ((0, a), (1, b)):
            back = send_all(h, [reply_to(f) for f in outs[n]])
            assert len(back) == len(outs[n])
            got = sorted(addrs(f)[1::2] for f in back)
            assert got == sorted(mine[n])
            assert all(checksums_ok(f) for f in back[:200])
            c = h.nf(1).counters()
            assert c["tcp"]["in"] == c["tcp"]["out"] == len(mine[n])
            assert c["tcp"]["exhausted"] == 0 and c["slice"] == n
        # ... and has no mapping for the other's: a reply's port names its instance.
        assert send_all(a, [reply_to(f) for f in outs[1][:300]]) == []
        assert a.nf(1).counters()["tcp"]["no_mapping"] == 300


def test_export_import_keeps_the_slice():
    with harness([("nat", config(1))]) as h:
        port = Ether(h.send([tcp("10.0.0.5", "203.0.113.9", 3333, 80)])[0])[TCP].sport
        state = h.nf(1).export_state()
    assert 30000 <= port <= 39999
    with harness([("nat", config(1))]) as h2:
        assert h2.nf(1).import_state(state) == 1
        back = h2.send([tcp("203.0.113.9", EXT, 80, port, "A")])
        assert (Ether(back[0])[IP].dst, Ether(back[0])[TCP].dport) == ("10.0.0.5", 3333)
    with pytest.raises(NFConfigError, match="outside this instance's port_range"):
        NAT(config(0)).import_state(state)


def test_slice_config_errors(tmp_path):
    with pytest.raises(NFConfigError) as err:
        parse_nat({"external_ip": EXT, "internal": "10.0.0.0/8", "slice": -1, "slices": 0})
    assert str(err.value).splitlines() == [
        "<nat config>: slice: must be a slice number, an integer >= 0, got -1",
        "<nat config>: slices: must be a positive integer, got 0",
    ]
    with pytest.raises(NFConfigError, match=r"^<nat config>: slice: slice 2 does not exist: "
                                            r"the range has 2 slices, numbered from 0$"):
        parse_nat(dict(config(0), slice=2))
    path = tmp_path / "nat.yaml"
    path.write_text(f"external_ip: {EXT}\ninternal: 10.0.0.0/8\nslice: true\n")
    with pytest.raises(NFConfigError) as err:
        parse_nat({"file": str(path)})
    assert str(err.value) == f"{path}:3: slice: must be a slice number, an integer >= 0, got True"
