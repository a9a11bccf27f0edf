"""Rate limiter and DDoS filter through the real fast path: buckets per
source and per chain, SYN flood and heavy hitter caught by the count-min
sketch while a normal client keeps going."""
import logging
import time

import pytest
from scapy.all import IP, Ether

from nflib.api import NFConfigError
from nfs.ddos import DDoSFilter
from nfs.ratelimit import RateLimit
from test_nf_helpers import harness, tcp, udp, wait_for

SRV = "10.0.1.5"


def sources(frames):
    out = {}
    for f in frames:
        src = Ether(f)[IP].src
        out[src] = out.get(src, 0) + 1
    return out


def test_bucket_per_source_burst_then_rate():
    with harness([("ratelimit", {"rate": 10, "burst": 5})]) as h:
        out = h.send([udp("192.0.2.1", SRV, 1, 2)] * 20 + [udp("192.0.2.2", SRV, 1, 2)] * 3)
        assert sources(out) == {"192.0.2.1": 5, "192.0.2.2": 3}
        c = h.nf(1).counters()
        assert c["passed"] == 8 and c["dropped"] == 15 and c["sources"] == 2
        # Tokens come back at the rate: one after 0.1 s at the soonest.
        # (A dropped packet takes no token, so polling does not delay it.)
        start = time.monotonic()
        wait_for(lambda: h.send([udp("192.0.2.1", SRV, 1, 2)]), "a token back")
        assert time.monotonic() - start >= 0.1 - 0.05    # the first send's idle wait
        # A bucket holds `burst` at most, however long the source was idle.
        time.sleep(0.6)
        assert sources(h.send([udp("192.0.2.1", SRV, 1, 2)] * 10)) == {"192.0.2.1": 5}


def test_chain_limit_by_spi():
    # The harness's chain has SPI 16.
    with harness([("ratelimit", {"rate": 1000, "burst": 5, "chains": {16: {"rate": 1, "burst": 7}}})]) as h:
        out = h.send([udp(f"192.0.2.{i}", SRV, 1, 2) for i in range(1, 4) for _ in range(3)])
        assert len(out) == 7
        assert h.nf(1).counters()["chains"] == [{"spi": 16, "passed": 7, "dropped": 2}]


def test_ratelimit_config_errors():
    with pytest.raises(NFConfigError) as err:
        RateLimit({"rate": "fast", "chains": {"web": {"rate": 1, "burst": 1}, 17: {"rate": 1}}})
    assert str(err.value).splitlines() == [
        "<ratelimit config>: rate: must be a positive number, got 'fast'",
        "<ratelimit config>: missing key 'burst'",
        "<ratelimit config>: chains.web: a chain is named by its SPI, 16 .. 2^20-1",
        "<ratelimit config>: chains.17: missing key 'burst'",
    ]


def test_syn_flood_caught_normal_client_not_dropped(caplog):
    config = {"window": 5, "syn_threshold": 50, "hold": 30, "width": 1024}
    attacker, client = "203.0.113.66", "192.0.2.10"
    flood = [tcp(attacker, SRV, 1024 + i, 80, "S") for i in range(300)]
    normal = [tcp(client, SRV, 5000 + i, 80, "S") for i in range(3)] + \
             [tcp(client, SRV, 5000, 80, "PA", b"GET / HTTP/1.1\r\n\r\n") for _ in range(20)]
    mixed = []
    for i in range(300):
        mixed.append(flood[i])
        if i % 13 == 0 and normal:
            mixed.append(normal.pop(0))
    mixed += normal
    with caplog.at_level(logging.WARNING, logger="onvm.nf.ddos"):
        with harness([("ddos", config)]) as h:
            out = sources(h.send(mixed))
            assert out[client] == 23                   # every packet of the client
            assert out[attacker] == 50                 # up to the threshold
            # blocked for the hold: even its non-SYN packets
            assert h.send([tcp(attacker, SRV, 9, 80, "A")]) == []
            c = h.nf(1).counters()
            assert c["blocked_syn_flood"] == 1 and c["dropped"] == 251
            assert [(b["src"], b["reason"]) for b in c["blocked"]] == [(attacker, "syn_flood")]
    assert any(f"blocking {attacker} for 30.0 s: syn_flood" in r.getMessage() for r in caplog.records)


def test_heavy_hitter_caught_and_released_after_hold():
    config = {"window": 5, "packet_threshold": 100, "hold": 0.3}
    with harness([("ddos", config)]) as h:
        out = sources(h.send([udp("198.51.100.9", SRV, 1, 2)] * 150 + [udp("192.0.2.10", SRV, 1, 2)] * 10))
        assert out == {"198.51.100.9": 100, "192.0.2.10": 10}
        assert h.nf(1).counters()["blocked"][0]["reason"] == "heavy_hitter"
        assert h.send([udp("198.51.100.9", SRV, 1, 2)]) == []
        wait_for(lambda: h.nf(1).counters()["blocked"] == [], "the hold ending")


def test_ddos_config_errors():
    with pytest.raises(NFConfigError) as err:
        DDoSFilter({"window": 0, "depth": 20, "treshold": 5, "seed": -1})
    assert str(err.value).splitlines() == [
        "<ddos config>: treshold: unknown key; known: depth, hold, max_blocked, packet_threshold, "
        "seed, syn_threshold, width, window",
        "<ddos config>: window: must be a positive number, got 0",
        "<ddos config>: seed: must be an integer 0 .. 2^64-1, got -1",
        "<ddos config>: depth: at most 16 rows, got 20",
    ]
