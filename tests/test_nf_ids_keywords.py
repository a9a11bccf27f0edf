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
    # byte_test relative to a content, binary big endian: a length field too big
    6: 'alert tcp any any -> any 7003 (msg:"len"; content:"LEN"; byte_test:2,>,1000,0,relative; '
       'sid:6; rev:1;)',
    # byte_test absolute, little endian, bits set
    7: 'alert tcp any any -> any 7004 (msg:"flags"; content:"HDR"; byte_test:2,&,0x8000,0,little; '
       'sid:7; rev:1;)',
    # byte_test on a number written as text, negated operator
    8: 'alert tcp any any -> any 7005 (msg:"code"; content:"CODE="; byte_test:3,!=,200,0,relative,'
       'string,dec; sid:8; rev:1;)',
    # byte_test with a negative offset back into the content, hex text
    9: 'alert tcp any any -> any 7006 (msg:"hex"; content:"=ff"; byte_test:2,>=,0xf0,-2,relative,'
       'string,hex; sid:9; rev:1;)',
    # pcre R: the regex matches after the content before it
    10: 'alert tcp any any -> any 7007 (msg:"cmd after login"; content:"LOGIN "; '
        'pcre:"/cmd=[a-z]+/R"; sid:10; rev:1;)',
    # HTTP responses: status code, message, server, content type, body
    11: 'alert http any any -> any any (msg:"500"; flow:established,to_client; http.stat_code; '
        'content:"500"; sid:11; rev:1;)',
    12: 'alert http any any -> any any (msg:"teapot"; http.stat_msg; content:"teapot"; nocase; '
        'sid:12; rev:1;)',
    13: 'alert http any any -> any any (msg:"old server"; http.server; content:"Apache/1."; '
        'startswith; sid:13; rev:1;)',
    14: 'alert http any any -> any any (msg:"exe served"; http.content_type; '
        'content:"application/x-msdownload"; sid:14; rev:1;)',
    15: 'alert http any any -> any any (msg:"webshell page"; file.data; content:"<title>b374k"; '
        'nocase; sid:15; rev:1;)',
    16: 'alert http any any -> any any (msg:"body pcre"; content:"HTTP/1.1 200"; '
        'pcre:"/password=[0-9]{4}/Q"; sid:16; rev:1;)',
    # HTTP request body and Accept
    17: 'alert http any any -> any any (msg:"upload"; http.method; content:"POST"; '
        'http.request_body; content:"cmd=id"; startswith; sid:17; rev:1;)',
    18: 'alert http any any -> any any (msg:"accept"; http.accept; content:"*/*"; bsize:3; '
        'sid:18; rev:1;)',
    # Contents shared by several rules are one Hyperscan expression (idsset._database):
    # the same content and negated content, each rule with its own within ...
    19: 'alert tcp any any -> any 7008 (msg:"shared 4"; content:"SHR"; content:!"|0a|"; '
        'within:4; sid:19; rev:1;)',
    20: 'alert tcp any any -> any 7009 (msg:"shared 8"; content:"SHR"; content:!"|0a|"; '
        'within:8; sid:20; rev:1;)',
    # ... and the same content with other depth/offset, which must not share checks
    21: 'alert tcp any any -> any 7010 (msg:"at start"; content:"DPX"; depth:3; sid:21; rev:1;)',
    22: 'alert tcp any any -> any 7011 (msg:"after 2"; content:"DPX"; offset:2; sid:22; rev:1;)',
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
    6: (b"xxLEN\x04\x00rest", 7003, b"xxLEN\x03\xe8rest"),      # 1024 fires, 1000 does not
    7: (b"\x00\x80HDR", 7004, b"\x80\x00HDR"),                  # 0x8000 little endian
    8: (b"CODE=500;", 7005, b"CODE=200;"),
    9: (b"k=ff", 7006, b"k=ef"),                                  # "ff" >= 0xf0; "ef" not
    10: (b"LOGIN bob cmd=ls", 7007, b"cmd=ls LOGIN bob"),          # the regex before it
    11: (b"HTTP/1.1 500 Internal Server Error\r\n\r\n", 80,
         b"HTTP/1.1 200 OK\r\nX: 500\r\n\r\n"),                   # 500 elsewhere
    12: (b"HTTP/1.1 418 I'm a Teapot\r\n\r\n", 80, b"HTTP/1.1 200 OK\r\nX: teapot\r\n\r\n"),
    13: (b"HTTP/1.0 200 OK\r\nServer: Apache/1.3.27\r\n\r\n", 80,
         b"HTTP/1.0 200 OK\r\nServer: nginx (was Apache/1.3)\r\n\r\n"),
    14: (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-msdownload\r\n\r\nMZ", 80,
         b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\napplication/x-msdownload"),
    15: (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n<html><TITLE>b374k", 80,
         b"HTTP/1.1 200 OK\r\nX-Title: <title>b374k\r\n\r\n<html>"),  # in a header
    16: (b"HTTP/1.1 200 OK\r\n\r\nuser=a&password=1234", 80,
         b"HTTP/1.1 200 OK\r\nX: password=1234\r\n\r\nuser=a"),
    17: (b"POST /up HTTP/1.1\r\nHost: a\r\n\r\ncmd=id", 80,
         b"GET /up?cmd=id HTTP/1.1\r\nHost: a\r\n\r\n"),
    18: (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 80,
         b"GET / HTTP/1.1\r\nAccept: text/html, */*\r\n\r\n"),
    19: (b"SHRabcd\nx", 7008, b"SHRab\ncd"),             # no newline within 4 bytes
    20: (b"SHRabcdefgh\nx", 7009, b"SHRabcdef\nh"),     # none within 8
    21: (b"DPXzz", 7010, b"zzDPX"),
    22: (b"zzDPX", 7011, b"DPXzz"),
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

    def packet(client_port, payload):
        if payload.startswith(b"HTTP/"):        # a response: from the server
            return tcp(SERVER, CLIENT, port, client_port, "PA", payload, seq=5)
        return tcp(CLIENT, SERVER, client_port, port, "PA", payload, seq=5)
    ids.send([packet(41000 + sid, miss)])
    assert hits(ids) == before, "the near miss fired"
    ids.send([packet(42000 + sid, fire)])
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
        'alert tcp any any -> any any (endswith; content:"a"; sid:5;)\n'
        'alert tcp any any -> any any (content:"a"; byte_test:2,~,3,0; sid:6;)\n'
        'alert tcp any any -> any any (byte_test:2,>,3,0,relative; content:"a"; sid:7;)\n'
        'alert tcp any any -> any any (pcre:"/a/"; byte_test:2,>,3,0; sid:8;)\n'
        'alert tcp any any -> any any (content:"a"; byte_test:9,>,3,0; sid:9;)\n'
        'alert tcp any any -> any any (content:"a"; byte_test:2,>,3,0,dce; sid:10;)\n'
        'alert tcp any any -> any any (content:"a"; byte_test:1,>,3,0,relative; '
        'byte_test:1,<,9,1,relative; sid:11;)\n'
        'alert tcp any any -> any any (content:"a"; pcre:"/^b/R"; sid:12;)\n'
        'alert tcp any any -> any any (pcre:"/b/R"; content:"a"; sid:13;)\n')
    assert [(sk.sid, sk.keyword) for sk in rules.skipped] == [
        (2, "bsize"), (3, "startswith"), (4, "urilen"), (5, "endswith"), (6, "byte_test"),
        (7, "byte_test"), (8, "byte_test"), (9, "byte_test"), (10, "byte_test"),
        (11, "byte_test"), (12, "pcre"), (13, "pcre")]
    why = {sk.sid: sk.message for sk in rules.skipped}
    assert "operator '~'" in why[6] and "must follow a content of the payload" in why[7]
    assert "needs a content of the payload" in why[8] and "at most 8 bytes" in why[9]
    assert "flag 'dce'" in why[10] and "more than one byte_test" in why[11]
    assert "anchored by ^" in why[12] and "relative to a content before it" in why[13]


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
