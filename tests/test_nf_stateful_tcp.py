"""The stateful firewall and TCP: only a SYN without ACK opens a
connection; any other TCP packet without one is dropped even if a rule
allows it (counted invalid); the replies of a connection pass; the
connections move with the instance."""
from scapy.all import IP, TCP, Ether

from test_nf_helpers import harness, tcp, udp

ALLOW_ALL = "allow tcp any any any any\nallow udp any any any any\ndefault deny\n"
OUT_ONLY = "allow tcp 10.0.0.0/8 any any 80\ndefault deny\n"
C, S = "10.0.0.5", "203.0.113.9"


def handshake(h, sport=4000):
    """A whole connection, both ways; the frames that came out."""
    frames = [tcp(C, S, sport, 80, "S", seq=100),
              tcp(S, C, 80, sport, "SA", seq=500, ack=101),
              tcp(C, S, sport, 80, "A", seq=101, ack=501),
              tcp(C, S, sport, 80, "PA", b"GET / HTTP/1.0\r\n\r\n", seq=101, ack=501),
              tcp(S, C, 80, sport, "PA", b"HTTP/1.0 200 OK\r\n\r\n", seq=501, ack=119),
              tcp(S, C, 80, sport, "FA", seq=520, ack=119),
              tcp(C, S, sport, 80, "FA", seq=119, ack=521),
              tcp(S, C, 80, sport, "A", seq=521, ack=120)]
    return [h.send([f]) for f in frames]


def test_unsolicited_syn_ack_is_dropped_though_a_rule_allows_it():
    with harness([("firewall-stateful", {"rules_text": ALLOW_ALL})]) as h:
        out = h.send([tcp(S, C, 80, 4000, "SA"),      # answers nothing
                       tcp(S, C, 80, 4001, "A"),       # a stray ACK
                       tcp(S, C, 80, 4002, "R"),       # a stray RST
                       tcp(S, C, 80, 4003, "PA", b"data")])
        assert out == []
        c = h.nf(1).counters()
        assert c["invalid"] == 4 and c["dropped"] == 4 and c["opened"] == 0
        assert c["connections"] == 0
        # UDP has no handshake: a rule still opens its flow.
        assert len(h.send([udp(S, C, 53, 5000, b"x")])) == 1


def test_a_handshake_and_its_replies_pass():
    for rules in (ALLOW_ALL, OUT_ONLY):
        with harness([("firewall-stateful", {"rules_text": rules})]) as h:
            got = handshake(h)
            assert [len(o) for o in got] == [1] * 8, rules
            c = h.nf(1).counters()
            assert c["opened"] == 1 and c["invalid"] == 0 and c["dropped"] == 0
            assert c["replies"] == 4 and c["connections"] == 1


def test_syn_ack_of_an_unknown_syn_and_a_syn_with_ack_open_nothing():
    with harness([("firewall-stateful", {"rules_text": ALLOW_ALL})]) as h:
        h.send([tcp(C, S, 4000, 80, "S")])
        # The right SYN-ACK passes; one for another port is unsolicited.
        out = h.send([tcp(S, C, 80, 4000, "SA"), tcp(S, C, 80, 4009, "SA"),
                      tcp(C, S, 4010, 80, "SA")])
        assert [(Ether(f)[IP].src, Ether(f)[TCP].dport) for f in out] == [(S, 4000)]
        assert h.nf(1).counters()["invalid"] == 2


def test_connections_move_with_the_instance():
    with harness([("firewall-stateful", {"rules_text": OUT_ONLY})]) as h:
        h.send([tcp(C, S, 4000, 80, "S"), tcp(C, S, 4001, 80, "S")])
        state = h.nf(1).export_state()
    assert sorted(c["key"] for c in state["connections"]) == [[6, C, S, 4000, 80], [6, C, S, 4001, 80]]
    with harness([("firewall-stateful", {"rules_text": OUT_ONLY})]) as h2:
        assert h2.nf(1).import_state(state) == 2
        out = h2.send([tcp(S, C, 80, 4000, "SA"), tcp(C, S, 4001, 80, "A"),
                       tcp(S, C, 80, 4002, "SA")])
        assert len(out) == 2 and h2.nf(1).counters()["invalid"] == 0
