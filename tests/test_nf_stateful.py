"""The stateful firewall through the real fast path: replies of allowed
connections pass without a rule; unsolicited packets the rules deny drop."""

import pytest
from scapy.all import IP, Ether

from nflib.api import NFConfigError
from nfs.stateful import StatefulFirewall, make_firewall
from test_nf_helpers import harness, ping, tcp, udp, wait_for

RULES = """\
allow tcp 10.0.0.0/8 any any 80
allow udp 10.0.0.0/8 any any 53
allow icmp 10.0.0.0/8 any
default deny
"""


def test_replies_pass_unsolicited_drop():
    with harness([("firewall-stateful", {"rules_text": RULES})]) as h:
        out = h.send([tcp("10.0.0.5", "203.0.113.9", 4000, 80, "S"),
                      udp("10.0.0.5", "203.0.113.53", 5353, 53, b"q"),
                      ping("10.0.0.5", "203.0.113.9", ident=9)])
        assert len(out) == 3
        back = h.send([tcp("203.0.113.9", "10.0.0.5", 80, 4000, "SA"),            # reply
                       udp("203.0.113.53", "10.0.0.5", 53, 5353, b"a"),           # reply
                       ping("203.0.113.9", "10.0.0.5", ident=9, type_=0),         # reply
                       tcp("203.0.113.9", "10.0.0.5", 80, 4001, "SA"),            # no such connection
                       tcp("203.0.113.10", "10.0.0.5", 5555, 22, "S")])           # unsolicited
        assert [Ether(f)[IP].src for f in back] == ["203.0.113.9", "203.0.113.53", "203.0.113.9"]
        c = h.nf(1).counters()
        assert c["replies"] == 3 and c["opened"] == 3 and c["dropped"] == 2 and c["connections"] == 3
        assert [r["hits"] for r in c["rules"]] == [1, 1, 1]
        assert c["default"] == 5


def test_idle_connection_expires():
    config = {"rules_text": RULES, "timeouts": {"tcp": 0.2}}
    with harness([("firewall-stateful", config)]) as h:
        h.send([tcp("10.0.0.5", "203.0.113.9", 4000, 80, "S")])
        assert h.nf(1).counters()["connections"] == 1
        wait_for(lambda: h.nf(1).counters()["connections"] == 0, "the idle connection expiring")
        assert h.send([tcp("203.0.113.9", "10.0.0.5", 80, 4000, "SA")]) == []


def test_fin_shortens_a_connection():
    # Without the FIN the connection would live a minute, past wait_for's
    # deadline: it ends because the FIN shortened it to `closing`.
    config = {"rules_text": RULES, "timeouts": {"tcp": 60, "closing": 0.05}}
    with harness([("firewall-stateful", config)]) as h:
        h.send([tcp("10.0.0.5", "203.0.113.9", 4002, 80, "S")])
        assert len(h.send([tcp("203.0.113.9", "10.0.0.5", 80, 4002, "SA")])) == 1
        h.send([tcp("10.0.0.5", "203.0.113.9", 4002, 80, "FA")])
        wait_for(lambda: h.nf(1).counters()["connections"] == 0, "the closing connection ending")
        assert h.send([tcp("203.0.113.9", "10.0.0.5", 80, 4002, "A")]) == []


def test_make_firewall_picks_by_stateful_key():
    assert isinstance(make_firewall({"rules_text": RULES, "stateful": True}), StatefulFirewall)
    assert not isinstance(make_firewall({"rules_text": RULES}), StatefulFirewall)


def test_config_errors_name_key_and_rule_line():
    with pytest.raises(NFConfigError) as err:
        StatefulFirewall({"rules_text": RULES, "timeouts": {"tcp": -1}, "stateful": "yes"})
    assert str(err.value).splitlines() == [
        "<firewall-stateful config>: stateful: must be true or false, got 'yes'",
        "<firewall-stateful config>: timeouts.tcp: must be a positive number, got -1",
    ]
    with pytest.raises(NFConfigError, match=r"^<rules_text>:2: action must be allow, deny or default, not 'permit'$"):
        StatefulFirewall({"rules_text": "allow tcp any any\npermit udp any any\n"})


def test_full_table_counts_each_flow_and_recovers_as_connections_age():
    config = {"rules_text": RULES, "max_connections": 8, "timeouts": {"udp": 0.2}}
    with harness([("firewall-stateful", config)]) as h:
        first = [udp("10.0.0.5", "203.0.113.53", 6000 + i, 53) for i in range(8)]
        assert len(h.send(first)) == 8
        extra = [udp("10.0.0.6", "203.0.113.53", 7000 + i, 53) for i in range(4)]
        assert len(h.send(extra)) == 4          # allowed, untracked
        table = h.nf(1).counters()["flow_table"]
        assert table["size"] == 8 and table["full"] == 4 and table["inserts"] == 8
        assert h.nf(1).counters()["untracked"] == 4
        wait_for(lambda: h.nf(1).counters()["connections"] == 0, "the connections expiring")
        later = [udp("10.0.0.7", "203.0.113.53", 8000 + i, 53) for i in range(8)]
        assert len(h.send(later)) == 8
        c = h.nf(1).counters()
        assert c["connections"] == 8 and c["untracked"] == 4
        assert c["flow_table"]["full"] == 4 and c["flow_table"]["inserts"] == 16
        assert c["flow_table"]["expired"] == 8
