"""Yield points for long pure computations: the rule compile
(controller.rulebook, controller.flows, controller.fabric's ECMP tables)
and plan building (controller.plans) take a `pause` callable and call it
every few units of work (chains, switches, rows of next hops), so the Ryu
app can pass one that yields to the eventlet hub while these modules stay
free of eventlet.  The default, `no_pause`, does nothing.

Not here: yielding itself or measuring the stretches between yields
(controller.rulebook.Stretches, controller.apps.chain_manager), deciding
which computation supersedes which (controller.livegraph.LiveFabric.rules).
"""

# Units of work between two pauses, at most.  Measured on a k=16 fat tree
# (2000 chains, this machine): a chain's rules about 0.14 ms, a chain's plan
# hops about 0.05 ms, one switch's row of ECMP next hops about 0.6 ms, one
# switch's transport and plain rules about 20 ms (one switch per pause).
CHAINS = 16
PLAN_CHAINS = 32
ROWS = 16


def no_pause():
    """The pause of a caller that does not yield."""


def every(n, pause):
    """A callable for a loop: calls `pause` on its n-th, 2n-th, ... call."""
    if pause is None or pause is no_pause:
        return no_pause
    left = [n]

    def tick():
        left[0] -= 1
        if left[0] <= 0:
            left[0] = n
            pause()
    return tick
