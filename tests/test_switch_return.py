"""controller.core with a fake clock and the chain manager's eventlet hub
when ovs-vswitchd restarts: every switch's OpenFlow connection drops and
comes back within a second, and the rule compile of a switch's return
yields to the hub (controller.livegraph's pause, as the Ryu app sets it),
where the chain manager's loop steps the core.  The chaos suite's
`ovs_restarted` evicted the two hosts of one leaf in some runs: the
controller's log read

    switch leaf1 (dpid 0x201) connected
    host h1 lost: its switch port is down
    host h2 lost: its switch port is down
    switch leaf1 is back: routing over it again; ...

a step run inside leaf1's return, after its grace had ended and before
the fabric's list of cut-off hosts caught up.  A switch that just
reconnected is no word from the data plane against its hosts."""
import logging

import eventlet
import pytest

from controller.rulebook import Stretches
from controller.topology import load_topology
from test_core import Loop

TOPO = "topologies/leaf-spine.yaml"
# the order the log showed them leave (leaf3 last, after a step) and return
LEFT = ("leaf2", "leaf4", "spine2", "leaf1", "spine1")
BACK = ("leaf2", "spine1", "spine2", "leaf4")


@pytest.fixture
def loop():
    loop = Loop(load_topology(TOPO))
    for sw in loop.topo.switches:
        loop.core.switch_connected(sw.dpid)
    loop.register(*[h.name for h in loop.topo.hosts])
    loop.step()
    loop.step()
    assert loop.core.alive == {h.name for h in loop.topo.hosts}
    return loop


def dpid(loop, name):
    return loop.topo.switch(name).dpid


def hub_yielding(loop):
    """The chain manager's compile: yields to the hub between switches."""
    loop.core.fabric.pause = Stretches(lambda: eventlet.sleep(0))


def every_switch_leaves(loop):
    for name in LEFT:
        loop.core.switch_left(dpid(loop, name))
    loop.step()
    loop.core.switch_left(dpid(loop, "leaf3"))
    loop.step()


def test_a_step_during_a_switchs_return_loses_none_of_its_hosts(loop, caplog):
    placed = loop.core.placement()["chains"]
    with caplog.at_level(logging.INFO):
        every_switch_leaves(loop)
        hub_yielding(loop)
        for name in BACK:
            loop.core.switch_connected(dpid(loop, name))
        # the loop's step is due while leaf1's return compiles its rules
        stepping = eventlet.spawn(loop.step)
        loop.core.switch_connected(dpid(loop, "leaf1"))
        stepping.wait()
        loop.core.switch_connected(dpid(loop, "leaf3"))
        for _ in range(4):
            loop.step(dt=loop.core.grace.grace_s)
    assert "switch leaf1 is back" in caplog.text
    assert " lost:" not in caplog.text.replace("not believed lost:", "")
    assert loop.core.alive == {h.name for h in loop.topo.hosts}
    assert loop.core.placement()["chains"] == placed


def test_a_port_down_during_a_switchs_return_is_final_at_once(loop, caplog):
    """The switch's word on its port needs no compile to be believed: a
    step inside the compile that follows it finds the host lost."""
    hub_yielding(loop)
    host = loop.topo.host("h1")
    with caplog.at_level(logging.WARNING):
        stepping = eventlet.spawn(loop.step)
        loop.core.port_status(dpid(loop, host.switch), host.port, False, "link down")
        stepping.wait()
    assert "host h1 lost: its switch port is down" in caplog.text
    assert "h1" not in loop.core.alive


def test_a_switch_back_while_others_stay_gone_keeps_their_grace(loop, caplog):
    """The grace is each switch's own: one leaf's return during a step
    neither ends another's grace nor shortens it; the log says why the
    other's hosts are lost once it is over (not a port that went down)."""
    left_at = loop.core.now             # the time of the last step (the core has no clock)
    for name in ("leaf1", "leaf2"):
        loop.core.switch_left(dpid(loop, name))
    loop.step()
    hub_yielding(loop)
    stepping = eventlet.spawn(loop.step)
    loop.core.switch_connected(dpid(loop, "leaf1"))
    stepping.wait()
    assert loop.core.alive == {h.name for h in loop.topo.hosts}
    with caplog.at_level(logging.WARNING):
        loop.step(dt=loop.core.grace.grace_s)
    assert loop.core.alive == {h.name for h in loop.topo.hosts} - {"h3", "h4"}
    gone = (f"its switch leaf2 left {loop.now - left_at:.1f} s ago and is not back "
            f"(its 3 s grace is over)")
    for host in ("h3", "h4"):
        assert f"host {host} lost: {gone}" in caplog.text
        assert f"host {host} lost: no switch reaches it ({gone})" in caplog.text
    assert "port is down" not in caplog.text
