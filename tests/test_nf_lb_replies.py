"""The load balancer in proxy mode: a backend's reply to a client of a
balanced flow goes back out with the VIP as its source (IPv4 and TCP/UDP
checksums fixed incrementally, verdict NEXT); the reply
entry ages with its flow and moves with export/import."""
import pytest
from scapy.all import IP, TCP, UDP, Ether, raw

from nflib.api import NFConfigError
from nfs.lb import parse_config
from test_nf_helpers import checksums_ok, harness, tcp, udp, wait_for

VIP = "10.0.1.10"
CLIENT = "192.0.2.7"
POOL = [{"name": f"web{i}", "ip": f"10.0.2.{i}", "mac": f"02:00:00:00:02:0{i}"} for i in range(1, 4)]
BACKEND_MAC = "02:00:00:00:02:99"


def config(**kw):
    return dict({"vip": VIP, "backends": POOL, "table_size": 251}, **kw)


def from_backend(frame, flags="SA", payload=b""):
    """The backend's answer to a frame the lb sent it (from the backend's
    own MAC)."""
    ip = Ether(frame)[IP]
    l4 = (TCP(sport=ip[TCP].dport, dport=ip[TCP].sport, flags=flags, seq=7, ack=1001)
          if TCP in ip else UDP(sport=ip[UDP].dport, dport=ip[UDP].sport))
    return raw(Ether(src=BACKEND_MAC, dst=Ether(frame).src) / IP(src=ip.dst, dst=ip.src) / l4 / payload)


def test_reply_gets_the_vip_back_with_right_checksums():
    with harness([("lb", config())]) as h:
        out = h.send([tcp(CLIENT, VIP, 40000 + i, 80, "S") for i in range(30)])
        assert len(out) == 30
        backends = {Ether(f)[IP].dst for f in out}
        assert len(backends) > 1 and VIP not in backends
        back = h.send([from_backend(f, "SA", b"HTTP/1.0 200 OK\r\n\r\nhello") for f in out])
        assert len(back) == 30
        for sent, got in zip(out, back):
            pkt = Ether(got)
            assert (pkt[IP].src, pkt[TCP].sport) == (VIP, 80)
            assert (pkt[IP].dst, pkt[TCP].dport) == (CLIENT, Ether(sent)[TCP].sport)
            assert checksums_ok(got)
        broken = bytearray(back[0])
        broken[27] ^= 1                              # a bit of the new source address
        assert not checksums_ok(bytes(broken))
        c = h.nf(1).counters()
        assert c["replies"] == 30 and c["reply_flows"] == 30 and c["balanced"] == 30
        # The reply changed no backend's count and opened no flow.
        assert c["flows"] == 30 and sum(b["packets"] for b in c["backends"]) == 30


def test_udp_reply_checksum_and_zero_checksum():
    with harness([("lb", config())]) as h:
        out = h.send([udp(CLIENT, VIP, 5353, 53, b"query")])
        back = h.send([from_backend(out[0], payload=b"answer")])
        pkt = Ether(back[0])
        assert (pkt[IP].src, pkt[UDP].sport) == (VIP, 53) and checksums_ok(back[0])
        no_sum = Ether(from_backend(out[0], payload=b"answer"))
        no_sum[UDP].chksum = 0
        back = h.send([raw(no_sum)])
        assert Ether(back[0])[UDP].chksum == 0 and Ether(back[0])[IP].src == VIP


def test_traffic_of_no_balanced_flow_is_untouched():
    with harness([("lb", config())]) as h:
        out = h.send([tcp(CLIENT, VIP, 40000, 80, "S")])
        backend = Ether(out[0])[IP].dst
        stray = [tcp(backend, CLIENT, 80, 40001, "SA"),      # another client port
                 tcp(backend, "192.0.2.8", 80, 40000, "SA"),  # another client
                 tcp("10.0.2.77", CLIENT, 80, 40000, "SA")]   # not its backend
        back = h.send(stray)
        assert [Ether(f)[IP].src for f in back] == [backend, backend, "10.0.2.77"]
        c = h.nf(1).counters()
        assert c["replies"] == 0 and c["not_vip"] == 3


def test_reply_entry_ages_with_its_flow():
    with harness([("lb", config(flow_timeout=0.3))]) as h:
        out = h.send([tcp(CLIENT, VIP, 40000, 80, "S")])
        assert h.nf(1).counters()["reply_flows"] == 1
        wait_for(lambda: h.nf(1).counters()["reply_flows"] == 0, "the reply entry expiring")
        assert h.nf(1).counters()["flows"] == 0
        back = h.send([from_backend(out[0])])
        assert Ether(back[0])[IP].src == Ether(out[0])[IP].dst     # no longer rewritten


def test_export_import_carries_both_directions():
    with harness([("lb", config())]) as h:
        out = h.send([tcp(CLIENT, VIP, 40000 + i, 80, "S") for i in range(50)])
        state = h.nf(1).export_state()
    assert len(state["flows"]) == 50
    with harness([("lb", config(backends=list(reversed(POOL))))]) as h2:
        assert h2.nf(1).import_state(state) == 50
        assert h2.nf(1).counters()["reply_flows"] == 50
        back = h2.send([from_backend(f) for f in out])
        assert [Ether(f)[IP].src for f in back] == [VIP] * 50 and all(map(checksums_ok, back))
        # and the forward direction keeps its backends
        again = h2.send([tcp(CLIENT, VIP, 40000 + i, 80, "A") for i in range(50)])
        assert [Ether(f)[IP].dst for f in again] == [Ether(f)[IP].dst for f in out]


def test_mode_is_proxy_only():
    assert parse_config({"mode": "proxy"})[0]["mode"] == "proxy"
    assert parse_config({})[0]["mode"] == "proxy"
    with pytest.raises(NFConfigError) as err:
        parse_config({"mode": "dsr", "vip": VIP})
    assert str(err.value) == ("<lb config>: mode: must be 'proxy' (replies return through the lb; "
                              "direct server return is not offered), got 'dsr'")
