"""The IDS through the real fast path: Hyperscan finds contents and pcres,
alert rules pass and log, drop rules drop, a signature split across two
TCP segments of a flow is caught, and every rule error names its line."""
import json
import re

import pytest

from nflib.api import NFConfigError
from nfs.idsrules import parse_rules
from test_nf_helpers import harness, tcp, udp

RULES = r"""
# the web server's rules
alert tcp any any -> 10.0.1.0/24 80 (msg:"admin probe"; content:"GET /admin"; nocase; sid:1001; rev:2;)
drop tcp any any -> any 80 (msg:"shell \"download\""; content:"|2f|bin|2f|"; pcre:"/(ba)?sh -c/i"; sid:1002;)
drop udp any any -> any 53 (msg:"dns tunnel"; pcre:"/[a-z0-9]{40}\.evil\.example/"; sid:1003;)
alert tcp any any <> 10.0.1.5 any (msg:"secret"; content:"TOP-SECRET-DOCUMENT"; sid:1004;)
"""
SRV = "10.0.1.5"


@pytest.fixture
def ids(tmp_path):
    alerts = tmp_path / "alerts.jsonl"
    with harness([("ids", {"rules_text": RULES, "alerts": str(alerts)})]) as h:
        yield h, alerts


def read_alerts(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def rule_hits(h):
    return {r["sid"]: r["hits"] for r in h.nf(1).counters()["rules"]}


def test_alert_passes_drop_drops_clean_traffic_untouched(ids):
    h, alerts = ids
    frames = [
        tcp("192.0.2.1", SRV, 4000, 80, "PA", b"get /ADMIN/users HTTP/1.1\r\n"),    # alert, nocase
        tcp("192.0.2.2", SRV, 4001, 80, "PA", b"x=/bin/ && BASH -C 'id'"),           # drop: both parts
        tcp("192.0.2.3", SRV, 4002, 80, "PA", b"x=/bin/ only, no shell"),             # one part: nothing
        udp("192.0.2.4", "10.0.0.53", 999, 53, b"\x00" + b"a" * 40 + b".evil.example"),  # drop
        tcp("192.0.2.5", SRV, 4003, 81, "PA", b"GET /admin"),                        # wrong port
        tcp("192.0.2.6", SRV, 4004, 80, "PA", b"GET /index.html"),                   # clean
    ]
    out = h.send(frames)
    assert len(out) == 4
    assert rule_hits(h) == {1001: 1, 1002: 1, 1003: 1, 1004: 0}
    c = h.nf(1).counters()
    assert c["alerts"] == 3 and c["dropped"] == 2 and c["packets"] == 6
    lines = read_alerts(alerts)
    # Suricata's EVE JSON shape
    assert [(a["event_type"], a["alert"]["signature_id"], a["alert"]["action"], a["src_ip"])
            for a in lines] == [("alert", 1001, "allowed", "192.0.2.1"),
                                ("alert", 1002, "blocked", "192.0.2.2"),
                                ("alert", 1003, "blocked", "192.0.2.4")]
    assert lines[1]["alert"]["signature"] == 'shell "download"' and lines[1]["dest_port"] == 80
    assert lines[0]["alert"]["rev"] == 2 and lines[1]["proto"] == "TCP" and lines[2]["proto"] == "UDP"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+0000", lines[0]["timestamp"])


def test_bidirectional_rule_matches_replies(ids):
    h, _ = ids
    h.send([tcp(SRV, "192.0.2.9", 22, 5555, "PA", b"..TOP-SECRET-DOCUMENT..")])
    assert rule_hits(h)[1004] == 1


def test_signature_split_across_two_segments_is_caught(ids):
    h, alerts = ids
    first = b"hello TOP-SEC"
    second = b"RET-DOCUMENT bye"
    out = h.send([tcp("192.0.2.7", SRV, 5000, 443, "PA", first, seq=100),
                  tcp("192.0.2.7", SRV, 5000, 443, "PA", second, seq=100 + len(first))])
    assert len(out) == 2
    assert rule_hits(h)[1004] == 1
    assert h.nf(1).counters()["reassembled"] == 1
    # Reported once: the next in-order segment does not repeat the match
    # that ended in the tail.
    h.send([tcp("192.0.2.7", SRV, 5000, 443, "PA", b"more", seq=100 + len(first) + len(second))])
    assert rule_hits(h)[1004] == 1
    assert [a["alert"]["signature_id"] for a in read_alerts(alerts)] == [1004]


def test_split_drop_signature_drops_the_second_segment(ids):
    h, _ = ids
    a, b = b"cmd=/bin/ba", b"sh -c whoami"
    out = h.send([tcp("192.0.2.8", SRV, 5001, 80, "PA", a, seq=1),
                  tcp("192.0.2.8", SRV, 5001, 80, "PA", b, seq=1 + len(a))])
    assert len(out) == 1 and rule_hits(h)[1002] == 1


def test_segment_after_a_gap_is_dropped_until_the_gap_is_filled(ids):
    h, _ = ids
    out = h.send([tcp("192.0.2.10", SRV, 5002, 443, "PA", b"TOP-SEC", seq=1),
                  tcp("192.0.2.10", SRV, 5002, 443, "PA", b"RET-DOCUMENT", seq=500)])
    assert len(out) == 1 and h.nf(1).counters()["out_of_order"] == 1
    assert rule_hits(h)[1004] == 0
    # The segment that follows on is joined with the tail: the IDS fires.
    h.send([tcp("192.0.2.10", SRV, 5002, 443, "PA", b"RET-DOCUMENT", seq=8)])
    assert rule_hits(h)[1004] == 1


def test_other_flows_are_not_joined(ids):
    h, _ = ids
    h.send([tcp("192.0.2.11", SRV, 5003, 443, "PA", b"TOP-SEC", seq=1),
            tcp("192.0.2.12", SRV, 5003, 443, "PA", b"RET-DOCUMENT", seq=8)])
    assert rule_hits(h)[1004] == 0
    # The same segment on the flow it follows is joined: the IDS fires.
    h.send([tcp("192.0.2.11", SRV, 5003, 443, "PA", b"RET-DOCUMENT", seq=8)])
    assert rule_hits(h)[1004] == 1


@pytest.mark.parametrize("line, message", [
    ('pass tcp any any -> any any (content:"x"; sid:1;)', "action must be alert or drop, not 'pass'"),
    ('alert tcpx any any -> any any (content:"x"; sid:1;)', "protocol must be one of ip, icmp, tcp, udp, http, not 'tcpx'"),
    ('alert tcp $HOME_NETS any -> any any (content:"x"; sid:1;)',
     'variable $HOME_NETS is not defined; give it under "vars" in the ids config'),
    ('alert tcp 10.0.0.300 any -> any any (content:"x"; sid:1;)',
     "source address '10.0.0.300' is not any, an IPv4 address or network"),
    ('alert tcp any 99999 -> any any (content:"x"; sid:1;)',
     "source port range '99999' must be within 0-65535, low to high"),
    ('alert tcp any any -> any 80-90 (content:"x"; sid:1;)',
     "destination port '80-90' is not any, N, N:M, N: or :M"),
    ('alert tcp any any <- any any (content:"x"; sid:1;)', "direction must be -> or <>, not '<-'"),
    ('alert icmp any 5 -> any any (content:"x"; sid:1;)', "ports need tcp or udp, not icmp"),
    ('alert tcp any any -> any any content:"x"; sid:1;',
     "expected 'ACTION PROTO SRC SPORT -> DST DPORT (OPTIONS)'"),
    ('alert tcp any any -> any any (content:"x"; sid:1)', "option 'sid:1' must end with ';'"),
    ('alert tcp any any -> any any (msg:"x; sid:1;)', "unterminated quoted string in the options"),
    ('alert tcp any any -> any any (content:x; sid:1;)', 'content takes a quoted string, like content:"..."'),
    ('alert tcp any any -> any any (content:"|4g|"; sid:1;)',
     "content |4g|: hex bytes are pairs of hex digits separated by spaces"),
    ('alert tcp any any -> any any (content:"a|41"; sid:1;)', "content has an unclosed |hex| part"),
    ('alert tcp any any -> any any (nocase; content:"x"; sid:1;)', "nocase must follow a content"),
    ('alert tcp any any -> any any (pcre:"/x/G"; sid:1;)',
     "pcre flags 'G' are not run by this IDS (it runs i, s, m, R and U, I, H, M, C, V, W, "
     "S, Y, P, Q)"),
    ('alert tcp any any -> any any (pcre:"x"; sid:1;)', 'pcre takes "/REGEX/FLAGS"'),
    ('alert tcp any any -> any any (content:"x"; byte_jump:4,0; sid:1;)',
     "option 'byte_jump' is not run by this IDS (docs/nfs.md, ids, lists the keywords it runs)"),
    ('alert tcp any any -> any any (content:"x"; within:4; sid:1;)',
     "within is relative to a previous content in the same buffer; this one has none "
     "(a pcre or a negated content before it is not run relatively)"),
    ('alert tcp any any -> any any (content:!"x"; sid:1;)',
     "a rule needs at least one content or pcre that is not negated"),
    ('alert tcp any any -> any any (content:"x"; flags:Q; sid:1;)',
     "flags takes [+*!]FLAGS[,IGNORED] with F S R P A U E C, got 'Q'"),
    ('alert tcp any any -> any any (content:"abcdef"; depth:4; sid:1;)',
     "depth:4 is shorter than its content (6 bytes): the rule can never match"),
    ('alert tcp any any -> any any (content:"x"; flow:only_stream; sid:1;)',
     "flow:only_stream is not run by this IDS; it runs established, not_established, stateless, "
     "to_server, from_client, to_client, from_server"),
    ('alert tcp any any -> any any (content:"x"; sid:abc;)', "sid must be a positive number, got 'abc'"),
    ('alert tcp any any -> any any (content:"x";)', "every rule needs a sid"),
    ('alert tcp any any -> any any (msg:"m"; sid:1;)', "a rule needs at least one content or pcre"),
])
def test_rule_errors_name_file_and_line(line, message):
    with pytest.raises(NFConfigError) as err:
        parse_rules("# header\n" + line + "\n", "web.rules")
    assert str(err.value) == f"web.rules:2: {message}"


def test_bad_rules_are_skipped_and_named_never_all_or_nothing(tmp_path):
    path = tmp_path / "x.rules"
    path.write_text('alert tcp any any -> any any (content:"a"; sid:7;)\n'
                    'alert tcp any any -> any any (content:"b"; sid:7;)\n'
                    'oops\n'
                    'alert tcp any any -> any any (pcre:"/(a)\\1/"; sid:9;)\n')
    from test_nf_helpers import make_nf
    nf = make_nf({"nf": "ids", "config": {"rules": str(path)}})
    c = nf.counters()
    assert [r["sid"] for r in c["rules"]] == [7] and c["rules_skipped"] == 3
    assert [(sk["line"], sk["sid"], sk["keyword"]) for sk in c["skipped"]] == [
        (2, 7, "sid"), (3, 0, "header"), (4, 9, "pcre")]
    assert c["skipped"][0]["why"] == "sid 7 is already used by another rule (line 1)"
    assert c["skipped"][2]["why"].startswith("pattern /(a)\\1/ cannot be compiled: ")


def test_a_file_with_no_runnable_rule_is_an_error_naming_every_line(tmp_path):
    path = tmp_path / "x.rules"
    path.write_text('oops\n'
                    'alert tcp any any -> any any (content:"a"; byte_jump:3,0; sid:8;)\n')
    from test_nf_helpers import make_nf
    with pytest.raises(NFConfigError) as err:
        make_nf({"nf": "ids", "config": {"rules": str(path)}})
    assert str(err.value).splitlines() == [
        f"{path}:1: expected 'ACTION PROTO SRC SPORT -> DST DPORT (OPTIONS)'",
        f"{path}:2: option 'byte_jump' is not run by this IDS (docs/nfs.md, ids, lists "
        "the keywords it runs)"]


def test_pcre_hyperscan_cannot_compile_names_the_line():
    from nfs.ids import IDS
    with pytest.raises(NFConfigError) as err:
        IDS({"rules_text": 'alert tcp any any -> any any (pcre:"/(a)\\1/"; sid:2;)\n'})
    assert str(err.value).startswith("<rules_text>:1: pattern /(a)\\1/ cannot be compiled: ")


def test_missing_rule_file_and_unknown_key():
    from nfs.ids import IDS
    with pytest.raises(NFConfigError, match="^/nonexistent.rules: cannot read rule file: No such file or directory$"):
        IDS({"rules": "/nonexistent.rules"})
    with pytest.raises(NFConfigError, match=r"^<ids config>: alert: unknown key; known: alerts, flow_timeout, max_flows, vars$"):
        IDS({"rules_text": RULES, "alert": "/tmp/x"})
