"""controller.flows.Confirmed: the base a switch sync diffs against holds
only while the controller leads without a break.

The chaos run with two controllers (issue 10): controller A programmed a
switch, controller B led for a while and changed that switch's rules, A
led again and diffed its next sync against what it had confirmed before
B's term, so the rules B had changed were neither put back nor removed.
"""
from controller.flows import Confirmed, FlowSpec, SwitchRules

DPID = 0x201


def rules(*cookies):
    return SwitchRules([FlowSpec(table=0, priority=10, kind="l2", match=(("in_port", c),))
                        for c in cookies], [])


def test_a_controller_that_leads_again_reads_the_switch_instead_of_its_old_base():
    a = Confirmed()
    a.leadership(True)
    held, term = a.take(DPID)
    assert held is None                      # first sync: read the switch
    a.confirm(DPID, rules(1, 2), term)
    held, term = a.take(DPID)
    assert held == rules(1, 2)               # same term: diff against it
    a.confirm(DPID, rules(1, 2), term)
    a.leadership(False)                      # B leads and programs rules(1, 3)
    a.leadership(True)
    held, _ = a.take(DPID)
    assert held is None, "a stale base: the diff to rules(1, 2) would change nothing"


def test_a_sync_begun_in_an_earlier_term_confirms_nothing():
    a = Confirmed()
    a.leadership(True)
    _, term = a.take(DPID)
    a.leadership(False)
    a.leadership(True)                       # the sync's barrier comes back now
    a.confirm(DPID, rules(1), term)
    assert a.take(DPID)[0] is None


def test_a_standby_confirms_nothing():
    a = Confirmed()
    _, term = a.take(DPID)
    a.confirm(DPID, rules(1), term)
    assert a.take(DPID)[0] is None

