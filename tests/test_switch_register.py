"""The chain manager registers a switch's connection before the core
hears the switch connected: the core's compile of the switch's return
yields to the hub, and a step run there hands the switch its rules, which
need the connection.  (Registered after, a step inside that yield counted
the switch programmed with nowhere to send its rules, and it never was:
chaos `ovs_restarted`, leaf3, in a fresh clone's run of 2026-12-06.)"""
from types import SimpleNamespace

from ryu.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER

from controller.apps.chain_manager import ChainManager


class Core:
    """Records whether the connection was registered when it was called."""
    def __init__(self, known):
        self.known, self.seen, self.left = known, [], []

    def switch_connected(self, dpid):
        self.seen.append(dpid in self.app.datapaths)
        return self.known

    def switch_left(self, dpid):
        self.left.append(dpid)


def app(known=True):
    core = Core(known)
    a = SimpleNamespace(datapaths={}, core=core,
                        confirmed=SimpleNamespace(forget=lambda dpid: None))
    core.app = a
    return a


def event(dp, state):
    return SimpleNamespace(datapath=dp, state=state)


def test_connection_is_registered_before_the_core_compiles_the_switchs_return():
    a, dp = app(), SimpleNamespace(id=0x203)
    ChainManager._state_change(a, event(dp, MAIN_DISPATCHER))
    assert a.core.seen == [True] and a.datapaths == {0x203: dp}


def test_a_switch_the_topology_lacks_is_not_kept():
    a, dp = app(known=False), SimpleNamespace(id=0x999)
    ChainManager._state_change(a, event(dp, MAIN_DISPATCHER))
    assert a.datapaths == {}


def test_an_old_connections_death_after_the_switch_reconnected_is_not_its_leaving():
    a, old, new = app(), SimpleNamespace(id=0x203), SimpleNamespace(id=0x203)
    ChainManager._state_change(a, event(old, MAIN_DISPATCHER))
    ChainManager._state_change(a, event(new, MAIN_DISPATCHER))
    ChainManager._state_change(a, event(old, DEAD_DISPATCHER))
    assert a.datapaths == {0x203: new} and a.core.left == []
    ChainManager._state_change(a, event(new, DEAD_DISPATCHER))
    assert a.datapaths == {} and a.core.left == [0x203]
