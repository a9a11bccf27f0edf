"""Yield points for long pure computations: the rule compile
(controller.rulebook, controller.flows, controller.fabric's ECMP tables)
and plan building (controller.plans) take a `pause` callable and call it
every few units of work (chains, switches, rows of next hops), so the Ryu
app can pass one that yields to the eventlet hub while these modules stay
free of eventlet.  The default, `no_pause`, does nothing.
`FullCollections` keeps the garbage collector's full passes, which yield
nowhere, out of such a computation.

Not here: yielding itself or measuring the stretches between yields
(controller.rulebook.Stretches, controller.apps.chain_manager), deciding
which computation supersedes which (controller.livegraph.LiveFabric.rules).
"""

import gc

# Units of work between two pauses, at most.  Measured on a k=16 fat tree
# (2000 chains, this machine): a chain's rules about 0.14 ms, a chain's plan
# hops about 0.05 ms, checking a host's plan about 0.05 ms, one switch's row of ECMP next hops about 0.6 ms, one
# switch's transport and plain rules about 20 ms (one switch per pause).
CHAINS = 16
PLACE_CHAINS = 16
PLAN_CHAINS = 32
PLAN_HOSTS = 64
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



class FullCollections:
    """A block during which Python's cyclic garbage collector makes no full
    (generation 2) pass; if `freeze` was set true inside it, what survives
    is moved to the permanent generation on leaving (gc.freeze):

        with FullCollections() as held:
            ...compile...
            held.freeze = True

    Why: a full pass walks every tracked object and yields nowhere; with a
    k=16 fabric's million rules in memory one takes 200 to 460 ms (measured
    with gc.callbacks during the compile), longer than the probes' 150 ms.
    Frozen objects are never walked again; they are still freed by their
    reference counts, as rules and rule-book parts (which hold no cycles)
    are.  The cost: a reference cycle that was alive when frozen and dies
    later is never collected, so freeze after steps that compiled rules,
    not after every step.  Young generations are collected as usual, and
    once more before freezing."""

    def __enter__(self):
        self.freeze = False
        self.old = gc.get_threshold()
        gc.set_threshold(self.old[0], self.old[1], 1 << 30)
        return self

    def __exit__(self, *exc):
        gc.set_threshold(*self.old)
        if self.freeze:
            gc.collect(1)
            gc.freeze()
        return False
