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
