"""A ruleset in ET Open's style through the real fast path: the rules the
IDS can run load and fire on the packet made for each, not on a near miss;
HTTP rules match the parsed, normalised request; the rules it cannot run
(xbits) are skipped, each
named with its line, sid and keyword, and the rest still run."""
import json
import os

import pytest

from test_nf_helpers import harness, tcp, udp

RULES = os.path.join(os.path.dirname(__file__), "data", "et-style.rules")
HOME, OUT = "10.0.1.5", "198.51.100.7"

# sid -> (packet that fires it, near miss that must not)
CASES = {
    2100498: (tcp(HOME, OUT, 23, 40000, "PA", b"uid=0(root) gid=0(root)\n", seq=5),
              tcp(HOME, OUT, 23, 40100, "PA", b"uid=0(rooty) gid=0\n", seq=5)),
    2900001: (tcp(OUT, HOME, 40001, 22, "PA", b"SSH-2.0-libssh_0.9\r\n", seq=5),
              tcp("10.9.9.9", HOME, 40001, 22, "PA", b"SSH-2.0-libssh_0.9\r\n", seq=5)),  # from HOME_NET
    2900002: (tcp(HOME, OUT, 40002, 80, "PA", b"GET / HTTP/1.1\r\nuser-agent: CURL/8.0\r\n", seq=5),
              tcp(HOME, OUT, 40002, 8080, "PA", b"GET / HTTP/1.1\r\nUser-Agent: curl/8.0\r\n", seq=5)),
    2900003: (tcp(OUT, HOME, 40003, 80, "PA", b"GET /scripts/CMD.EXE?/c+dir HTTP/1.0\r\n", seq=5),
              tcp(OUT, HOME, 40103, 80, "PA", b"POST /cmd.exe HTTP/1.0\r\n", seq=5)),
    2900004: (tcp(OUT, HOME, 40004, 4444, "PA", b"\x90" * 16 + b"\xcc", seq=5),
              tcp(OUT, HOME, 40004, 443, "PA", b"\x90" * 16 + b"\xcc", seq=5)),   # port excluded
    2900005: (udp(HOME, "192.0.2.53", 5353, 53, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
                  b"\x03www\x04EVIL\x00\x00\x01\x00\x01"),
              udp(HOME, "192.0.2.53", 5353, 53, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
                  b"\x03www\x05evils\x00\x00\x01\x00\x01")),
    2900006: (tcp(OUT, HOME, 40006, 9005, "PA", b"GET /../../etc/passwd HTTP/1.0\r\n", seq=5),
              tcp(OUT, HOME, 40006, 9011, "PA", b"GET /../../etc/passwd HTTP/1.0\r\n", seq=5)),
    2900010: (tcp(OUT, HOME, 40010, 80, "PA", b"PUT /up/x.php HTTP/1.1\r\n", seq=5),
              tcp(OUT, HOME, 40110, 80, "PA", b"GET /PUT /x.php HTTP/1.1\r\n", seq=5)),  # PUT not first
    2900011: (udp(OUT, HOME, 1069, 69, b"\x00\x01boot.img\x00octet\x00"),
              udp(OUT, HOME, 1069, 69, b"\x00\x01" + b"a" * 40 + b"\x00octet\x00")),   # too long
    # http.uri is the normalised URI: %-escapes decoded, /./ and /../ resolved
    2900007: (tcp(OUT, HOME, 40007, 8000, "PA",
                  b"GET /item?id=1%20UNION%20Select%20pw HTTP/1.1\r\nHost: x\r\n\r\n", seq=5),
              tcp(OUT, HOME, 40107, 8000, "PA",
                  b"GET /item HTTP/1.1\r\nX-Note: union select\r\n\r\n", seq=5)),   # not in the URI
    2900008: (tcp(OUT, HOME, 40008, 80, "PA", b"GET /static/..%2fadm%69n/x HTTP/1.1\r\n\r\n", seq=5),
              tcp(OUT, HOME, 40108, 80, "PA", b"GET /static/x HTTP/1.1\r\nReferer: /admin\r\n\r\n",
                  seq=5)),
    2900012: (tcp(OUT, HOME, 40012, 8080, "PA", b"POST /up/s.php HTTP/1.1\r\nHost: shop.example\r\n"
                  b"User-Agent: CURL/8.1\r\n\r\nbody", seq=5),
              tcp(OUT, HOME, 40112, 8080, "PA", b"POST /up/s.php HTTP/1.1\r\nHost: blog.example\r\n"
                  b"User-Agent: curl/8.1\r\n\r\nshop.", seq=5)),      # shop. not in Host
    # distance/within: UNION%20 within 60 bytes after "Cookie:", SELECT after it
    2900015: (tcp(OUT, HOME, 40015, 80, "PA", b"GET / HTTP/1.1\r\nCookie: id=1 union%20all "
                  b"select pw\r\n\r\n", seq=5),
              tcp(OUT, HOME, 40115, 80, "PA", b"GET / HTTP/1.1\r\nCookie: id=1 SELECT x "
                  b"UNION%20\r\n\r\n", seq=5)),      # SELECT before UNION
    2900016: (tcp(OUT, HOME, 40016, 21, "PA", b"USER " + b"A" * 120 + b"\r\n", seq=5),
              tcp(OUT, HOME, 40116, 21, "PA", b"USER anonymous\r\n", seq=5)),       # short
    # content:! with within: no newline in the 60 bytes after "OPTIONS "
    2900017: (tcp(OUT, HOME, 40017, 80, "PA", b"OPTIONS " + b"/" * 90 + b" HTTP/1.1\r\n", seq=5),
              tcp(OUT, HOME, 40117, 80, "PA", b"OPTIONS /x HTTP/1.1\r\n" + b"H" * 90, seq=5)),
    # flags:S,12: exactly SYN (the reserved bits ignored), with data
    2900018: (tcp(OUT, HOME, 40018, 8000, "S", b"XMAS", seq=5),
              tcp(OUT, HOME, 40118, 8000, "SA", b"XMAS", seq=5)),
    # pcre flags s, m, i: ^ at a line's start
    2900019: (tcp(OUT, HOME, 40019, 25, "PA", b"HELO x\r\nexpn  ROOT\r\n", seq=5),
              tcp(OUT, HOME, 40119, 25, "PA", b"HELO x\r\nEXPN rooster\r\n", seq=5)),
    # http_header: in a header, not the (decoded) URI
    2900020: (tcp(OUT, HOME, 40020, 80, "PA", b"GET / HTTP/1.1\r\nReferer: () { :; }; id\r\n\r\n",
                  seq=5),
              tcp(OUT, HOME, 40120, 80, "PA", b"GET /a?q=()%20{ HTTP/1.1\r\nHost: a\r\n\r\n", seq=5)),
    # http_method, http_uri and pcre /U on the normalised URI
    2900021: (tcp(OUT, HOME, 40021, 80, "PA", b"GET /x.php?c=EVAL(%20base64_decode(x)) HTTP/1.1\r\n\r\n",
                  seq=5),
              tcp(OUT, HOME, 40121, 80, "PA", b"GET /x.php?c=eval(strrev(x)) HTTP/1.1\r\n\r\n", seq=5)),
    2900022: (tcp(OUT, HOME, 40022, 8000, "PA", b"GET / HTTP/1.1\r\nCookie: PHPSESSID=../../tmp/x\r\n\r\n",
                  seq=5),
              tcp(OUT, HOME, 40122, 8000, "PA", b"GET /?PHPSESSID=../x HTTP/1.1\r\n\r\n", seq=5)),
    # a negated address list: 192.0.2.0/24 is excluded
    2900023: (tcp(OUT, HOME, 40023, 3389, "PA", b"\x03\x00\x00\x2aCookie: mstshash=bob\r\n", seq=5),
              tcp("192.0.2.9", HOME, 40023, 3389, "PA", b"\x03\x00\x00\x2aCookie: mstshash=bob\r\n",
                  seq=5)),
    # an open port range (1024:), offset and depth together
    2900024: (udp(OUT, HOME, 40024, 161, b"\x30\x26\x02\x01\x01\x04\x06public\xa0\x19"),
              udp(OUT, HOME, 123, 161, b"\x30\x26\x02\x01\x01\x04\x06public\xa0\x19")),
    # from_server, and a threshold (limit 1) in the set
    2900025: (tcp(HOME, OUT, 23, 40025, "PA", b"\r\nLogin incorrect\r\n", seq=5),
              tcp(HOME, OUT, 23, 40125, "PA", b"\r\nLogin failed\r\n", seq=5)),
    2900026: (udp(OUT, HOME, 5000, 5001, b"\xde\xad\xbe\xefBCN1"),
              udp(HOME, OUT, 5000, 5001, b"\xde\xad\xbe\xefBCN1")),      # outbound
    # depth in a sticky buffer counts from the buffer's start
    2900027: (tcp(HOME, OUT, 40027, 80, "PA", b"GET / HTTP/1.1\r\nUser-Agent: python-requests/2.31\r\n\r\n",
                  seq=5),
              tcp(HOME, OUT, 40127, 80, "PA",
                  b"GET / HTTP/1.1\r\nUser-Agent: my python-requests/2.31\r\n\r\n", seq=5)),
    # a rule of one pcre, no content
    2900028: (tcp(OUT, HOME, 40028, 6667, "PA", b"USER x\r\nNICK abc12345\r\n", seq=5),
              tcp(OUT, HOME, 40128, 6667, "PA", b"PRIVMSG #a :NICK abc12345\r\n", seq=5)),
    2900029: (tcp(OUT, HOME, 40029, 445, "PA", b"\x00\x00\x00\x2f\xffSMBr" + b"\x00" * 20, seq=5),
              tcp(OUT, HOME, 40129, 445, "PA", b"\xffSMBr" + b"\x00" * 20, seq=5)),   # offset 0
    2900030: (tcp(HOME, OUT, 80, 40030, "PA", b"HTTP/1.1 200 OK\r\n\r\n<TITLE>Index of /pub</TITLE>",
                  seq=5),
              tcp(OUT, HOME, 40130, 80, "PA", b"POST /n HTTP/1.1\r\n\r\n<title>Index of /</title>",
                  seq=5)),                                              # to the server
    2900031: (tcp(OUT, HOME, 40031, 1433, "PA", "exec XP_CmdShell 'dir'".encode("utf-16-le"), seq=5),
              tcp(OUT, HOME, 40131, 1433, "PA", b"exec xp_cmdshell 'dir'", seq=5)),    # not UTF-16
    2900032: (udp("192.0.2.53", HOME, 53, 5353, b"\x00\x10\x00\x01" + b"t" * 420),
              udp("192.0.2.53", HOME, 53, 5353, b"\x00\x10\x00\x01" + b"t" * 200)),  # small
}
CASES[2900009] = (tcp(OUT, HOME, 40009, 7000, "PA", b"\x20PROBE", seq=5),     # byte 0: 32
                  tcp(OUT, HOME, 40109, 7000, "PA", b"\x05PROBE", seq=5))     # 5, not > 10
CASES[2900014] = (tcp(HOME, OUT, 80, 40014, "PA", b"HTTP/1.1 500 Internal Server Error\r\n\r\n",
                      seq=5),
                  tcp(HOME, OUT, 80, 40114, "PA", b"HTTP/1.1 200 OK\r\nX-Code: 500\r\n\r\n",
                      seq=5))                                   # 500 in a header
SKIPPED = {2900013: "xbits"}


@pytest.fixture
def ids(tmp_path):
    alerts = tmp_path / "alerts.jsonl"
    with harness([("ids", {"rules": RULES, "alerts": str(alerts)})]) as h:
        yield h, alerts


def hits(h):
    return {r["sid"]: r["hits"] for r in h.nf(1).counters()["rules"]}


def test_ruleset_loads_what_runs_and_names_what_does_not(ids):
    h, _ = ids
    c = h.nf(1).counters()
    assert sorted(hits(h)) == sorted(CASES)
    assert {sk["sid"]: sk["keyword"] for sk in c["skipped"]} == SKIPPED
    assert c["rules_skipped"] == len(SKIPPED)
    assert len(CASES) + len(SKIPPED) >= 30 and len(CASES) >= 0.9 * (len(CASES) + len(SKIPPED))
    assert all(sk["line"] > 0 and sk["why"] for sk in c["skipped"])


@pytest.mark.parametrize("sid", sorted(CASES))
def test_each_rule_fires_on_its_packet_not_on_a_near_miss(ids, sid):
    h, alerts = ids
    fire, miss = CASES[sid]
    # (Each on its own TCP flow: the same sequence numbers with other bytes
    # would be an overlap the IDS drops unscanned.)
    h.send([miss])
    assert hits(h)[sid] == 0, "near miss fired"
    h.send([fire])
    assert hits(h)[sid] == 1
    others = {s: n for s, n in hits(h).items() if s != sid and n}
    assert others == {}
    (alert,) = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert alert["alert"]["signature_id"] == sid and alert["alert"]["rev"] >= 1


def test_within_counts_from_the_previous_match(ids):
    h, _ = ids
    far = b"GET / HTTP/1.1\r\nCookie: " + b"a" * 80 + b" UNION%20 SELECT\r\n\r\n"
    h.send([tcp(OUT, HOME, 40200, 80, "PA", far, seq=5)])
    assert hits(h)[2900015] == 0


def test_drop_rule_of_the_set_drops(ids):
    h, _ = ids
    assert h.send([CASES[2900003][0]]) == []


def test_vars_from_the_config_override_the_defaults(tmp_path):
    # HOME_NET moved to 203.0.113.0/24: the SSH rule now wants that network.
    with harness([("ids", {"rules": RULES, "vars": {"HOME_NET": "[203.0.113.0/24]"}})]) as h:
        h.send([CASES[2900001][0]])
        assert hits(h)[2900001] == 0
        h.send([tcp(OUT, "203.0.113.9", 40001, 22, "PA", b"SSH-2.0-libssh\r\n", seq=5)])
        assert hits(h)[2900001] == 1


def test_flow_direction_from_the_handshake(ids):
    # The server (port 22) sends the banner on a connection whose SYN came
    # from the client: to_client, so the to_server rule does not fire even
    # though the ports would guess otherwise.
    h, _ = ids
    h.send([tcp(OUT, HOME, 22, 40010, "S", seq=99),                   # odd: client port 22
            tcp(OUT, HOME, 22, 40010, "PA", b"SSH-2.0-libssh\r\n", seq=100)])
    assert hits(h)[2900001] == 0       # dport 40010 is not 22 anyway
    h.send([tcp(OUT, HOME, 40011, 22, "SA", seq=99),                  # a SYN-ACK: server side
            tcp(OUT, HOME, 40011, 22, "PA", b"SSH-2.0-libssh\r\n", seq=100)])
    assert hits(h)[2900001] == 0
    h.send([tcp(OUT, HOME, 40012, 22, "S", seq=99),
            tcp(OUT, HOME, 40012, 22, "PA", b"SSH-2.0-libssh\r\n", seq=100)])
    assert hits(h)[2900001] == 1


THRESHOLD_RULES = (
    'alert tcp any any -> any 22 (msg:"ssh brute force"; flags:S; content:"a"; '
    'detection_filter:track by_src, count 3, seconds 60; sid:1; rev:1;)\n'
    'alert tcp any any -> any 80 (msg:"noisy"; content:"ping"; '
    'threshold:type limit, track by_src, count 2, seconds 60; sid:2; rev:1;)\n'
    'alert tcp any any -> any 81 (msg:"every third"; content:"ping"; '
    'threshold:type threshold, track by_dst, count 3, seconds 60; sid:3; rev:1;)\n')


def test_threshold_and_detection_filter():
    with harness([("ids", {"rules_text": THRESHOLD_RULES})]) as h:
        for i in range(5):          # 5 SYNs from one source: fires from the 4th on
            h.send([tcp(OUT, HOME, 41000 + i, 22, "S", b"a", seq=5)])
        h.send([tcp("198.51.100.99", HOME, 41100, 22, "S", b"a", seq=5)])   # another source
        for i in range(5):          # limit 2 per source
            h.send([tcp(OUT, HOME, 42000 + i, 80, "PA", b"ping", seq=5)])
        for i in range(7):          # every third to one destination
            h.send([tcp(OUT, HOME, 43000 + i, 81, "PA", b"ping", seq=5)])
        assert hits(h) == {1: 2, 2: 2, 3: 2}
        c = h.nf(1).counters()
        assert c["threshold_held"] == (4 + 3 + 5) and c["threshold_untracked"] == 0


def test_threshold_errors_are_named():
    from nfs.idsrules import parse_rules
    rules = parse_rules('alert tcp any any -> any any (content:"a"; sid:1;)\n'
                        'alert tcp any any -> any any (content:"a"; threshold:type limit, '
                        'count 2, seconds 1; sid:2;)\n')
    (sk,) = rules.skipped
    assert (sk.line, sk.sid, sk.keyword) == (2, 2, "threshold")
    assert sk.message == "threshold needs exactly count, seconds, track, type; got count, seconds, type"


def test_bench_takes_an_ids_rule_file(tmp_path):
    # `onvm bench fastpath --nf-config ids=FILE`: a rule file becomes the
    # ids config, as `onvm nf check` reads it; a malformed argument is named.
    from host_agent.bench import nf_configs_of
    from nflib.api import NFConfigError
    assert nf_configs_of([f"ids={RULES}", 'lb={"backends": []}']) == {
        "ids": {"rules": RULES}, "lb": {"backends": []}}
    with pytest.raises(NFConfigError, match="NF=CONFIG"):
        nf_configs_of([RULES])
