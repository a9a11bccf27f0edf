"""Keywords of today's ET Open rules, one small synthetic rule each, through
the real fast path: it loads, fires on matching traffic and stays silent
on traffic that differs only in what the keyword excludes."""
import pytest

from test_nf_helpers import harness, tcp

CLIENT, SERVER = "198.51.100.7", "10.0.1.5"

RULES = {
    # startswith: the content at the buffer's start
    1: 'alert tcp any any -> any 7001 (msg:"t3"; flow:established,to_server; content:"t3|20|"; '
       'startswith; target:dest_ip; sid:1; rev:1;)',
    # endswith: the content where the buffer ends
    2: 'alert http any any -> any any (msg:"cz.cc"; flow:established,to_server; http.host; '
       'content:".cz.cc"; endswith; sid:2; rev:1;)',
    # bsize: the sticky buffer's length
    3: 'alert http any any -> any any (msg:"accept"; flow:established,to_server; '
       'http.user_agent; content:"curl"; bsize:8; sid:3; rev:1;)',
    # urilen: the (normalised) URI's length
    4: 'alert http any any -> any any (msg:"ios xe"; flow:established,to_server; urilen:13; '
       'http.uri; content:"/webui/"; startswith; sid:4; rev:1;)',
    # endswith on the payload of a TCP segment
    5: 'alert tcp any any -> any 7002 (msg:"t3 end"; content:"|0a 0a|"; endswith; sid:5; rev:1;)',
}

# sid -> (payload that fires it, port, payload that differs only in what the keyword excludes)
CASES = {
    1: (b"t3 12.2.1\nAS:255\n\n", 7001, b"xt3 12.2.1\nAS:255\n\n"),
    2: (b"GET / HTTP/1.1\r\nHost: evil.cz.cc\r\n\r\n", 80,
        b"GET / HTTP/1.1\r\nHost: evil.cz.cc.example\r\n\r\n"),
    3: (b"GET / HTTP/1.1\r\nUser-Agent: curl/8.0\r\n\r\n", 80,
        b"GET / HTTP/1.1\r\nUser-Agent: curl/8.0.1\r\n\r\n"),
    4: (b"GET /webui/a%2ehtml HTTP/1.1\r\n\r\n", 80,       # normalised: /webui/a.html
        b"GET /webui/ab.html HTTP/1.1\r\n\r\n"),
    5: (b"HL:x\n\n", 7002, b"HL:x\n\nmore"),
}


@pytest.fixture(scope="module")
def ids():
    with harness([("ids", {"rules_text": "\n".join(RULES.values())})]) as h:
        yield h


def hits(h):
    return {r["sid"]: r["hits"] for r in h.nf(1).counters()["rules"]}


def test_all_load(ids):
    c = ids.nf(1).counters()
    assert sorted(hits(ids)) == sorted(RULES) and c["rules_skipped"] == 0


@pytest.mark.parametrize("sid", sorted(CASES))
def test_fires_on_the_match_not_on_the_near_miss(ids, sid):
    fire, port, miss = CASES[sid]
    before = hits(ids)
    ids.send([tcp(CLIENT, SERVER, 41000 + sid, port, "PA", miss, seq=5)])
    assert hits(ids) == before, "the near miss fired"
    ids.send([tcp(CLIENT, SERVER, 42000 + sid, port, "PA", fire, seq=5)])
    after = hits(ids)
    assert after[sid] == before[sid] + 1
    assert {s: n for s, n in after.items() if s != sid} == \
        {s: n for s, n in before.items() if s != sid}


def test_keyword_errors_are_named():
    from nfs.idsrules import parse_rules
    rules = parse_rules(
        'alert tcp any any -> any any (content:"a"; sid:1;)\n'
        'alert http any any -> any any (http.host; bsize:<3; http.uri; content:"x"; sid:2;)\n'
        'alert tcp any any -> any any (content:"a"; depth:4; startswith; sid:3;)\n'
        'alert http any any -> any any (urilen:5<>2; http.uri; content:"x"; sid:4;)\n'
        'alert tcp any any -> any any (endswith; content:"a"; sid:5;)\n')
    assert [(sk.sid, sk.keyword) for sk in rules.skipped] == [
        (2, "bsize"), (3, "startswith"), (4, "urilen"), (5, "endswith")]


FLOWBITS = "\n".join([
    'alert http any any -> any any (msg:"login"; flow:established,to_server; http.uri; '
    'content:"/login"; flowbits:set,ET.login; flowbits:noalert; sid:10; rev:1;)',
    'alert tcp any 80 -> any any (msg:"admin page after a login"; flow:established,to_client; '
    'content:"Welcome admin"; flowbits:isset,ET.login|ET.sso; sid:11; rev:1;)',
    'alert tcp any 80 -> any any (msg:"secret without a login"; flow:established,to_client; '
    'content:"Secret"; flowbits:isnotset,ET.login; sid:12; rev:1;)',
    'alert http any any -> any any (msg:"logout"; flow:established,to_server; http.uri; '
    'content:"/logout"; flowbits:unset,ET.login; flowbits:noalert; sid:13; rev:1;)',
])


class Conn:
    """One TCP connection's two directions, each with its own sequence."""
    def __init__(self, h, port):
        self.h, self.port, self.seq = h, port, {True: 100, False: 9000}

    def send(self, payload, to_server):
        src, dst, sp, dp = (CLIENT, SERVER, self.port, 80) if to_server else \
            (SERVER, CLIENT, 80, self.port)
        self.h.send([tcp(src, dst, sp, dp, "PA", payload, seq=self.seq[to_server])])
        self.seq[to_server] += len(payload)


def test_flowbits_set_isset_isnotset_unset_noalert():
    with harness([("ids", {"rules_text": FLOWBITS})]) as h:
        a, b = Conn(h, 43001), Conn(h, 43002)
        b.send(b"HTTP/1.1 200 OK\r\n\r\nWelcome admin", False)     # b never logged in
        b.send(b"Secret", False)
        assert hits(h) == {10: 0, 11: 0, 12: 1, 13: 0}
        a.send(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n", True)
        a.send(b"HTTP/1.1 200 OK\r\n\r\nWelcome admin", False)   # the reply shares a's bits
        a.send(b"Secret", False)
        assert hits(h) == {10: 1, 11: 1, 12: 1, 13: 0}
        c = h.nf(1).counters()
        assert c["alerts"] == 2 and c["flowbits"] == 1          # noalert: no alert
        a.send(b"GET /logout HTTP/1.1\r\nHost: x\r\n\r\n", True)
        a.send(b"Welcome admin", False)
        assert hits(h) == {10: 1, 11: 1, 12: 1, 13: 1}
        assert h.nf(1).counters()["flowbits"] == 0


def test_a_bit_set_by_a_packet_is_seen_by_the_same_packet():
    rules = ('alert tcp any any -> any 9 (content:"ab"; flowbits:set,x; flowbits:noalert; '
             'sid:1;)\nalert tcp any any -> any 9 (content:"b"; flowbits:isset,x; sid:2;)\n')
    with harness([("ids", {"rules_text": rules})]) as h:
        h.send([tcp(CLIENT, SERVER, 43100, 9, "PA", b"b", seq=5)])
        assert hits(h) == {1: 0, 2: 0}
        h.send([tcp(CLIENT, SERVER, 43101, 9, "PA", b"ab", seq=5)])
        assert hits(h) == {1: 1, 2: 1}


def test_flowbits_errors_are_named():
    from nfs.idsrules import parse_rules
    rules = parse_rules('alert tcp any any -> any any (content:"a"; sid:1;)\n'
                        'alert tcp any any -> any any (content:"a"; flowbits:isset,a&b; sid:2;)\n'
                        'alert tcp any any -> any any (content:"a"; flowbits:set,a|b; sid:3;)\n'
                        'alert tcp any any -> any any (content:"a"; flowbits:ison,a; sid:4;)\n')
    assert [(sk.sid, sk.keyword) for sk in rules.skipped] == [
        (2, "flowbits"), (3, "flowbits"), (4, "flowbits")]
