"""What the REST API may see and ask of the cluster: the `ClusterView`
interface, and a chain's stored form.  `controller.core.ClusterCore` implements it; the REST app
(`controller.apps.rest_api`) calls nothing else, so it is tested against
the real core with a `memory://` store, and the core can change inside
without the API noticing.

A chain deleted with its traffic held is *retired*: its record stays
under `/onvm/chains/<name>` with `"retired": true` (controller.chains.RETIRED),
it is placed nowhere and uses no cores, its SPI and (ingress, match) stay
reserved, and its ingress switch drops and counts its match (the
chain_drop rule of controller.flows) until an operator releases it
(`delete_chain`).  Being in the store, that survives a controller restart
and a change of leader.

Not here: the implementation (`controller.core`), HTTP (`rest_api`),
checking a chain body (the chain validator `rest_api` calls).
"""
from __future__ import annotations

import abc
from typing import Dict, Optional

from contracts.model import Chain
from controller.chains import RETIRED, STATEFUL_NFS


def chain_to_json(chain: Chain, retired=False) -> dict:
    """A chain as it is stored in /onvm/chains/ and shown by the API: a
    pool as the list of its servers; `symmetric` where it is not the
    default of a chain without stateful NFs (so it reads back the same);
    `"retired": true` for a retired chain (module docstring)."""
    out = {"name": chain.name, "ingress": chain.ingress,
           "egress": list(chain.pool) if chain.pool else chain.egress,
           "match": dict(chain.match), "nfs": list(chain.nfs),
           "mpps": chain.mpps, "spi": chain.spi}
    if chain.symmetric or STATEFUL_NFS & set(chain.nfs):
        out["symmetric"] = chain.symmetric
    if chain.autoscale is not None:
        out["autoscale"] = dict(chain.autoscale)
    if retired:
        out[RETIRED] = True
    return out


class ClusterView(abc.ABC):
    """The cluster as the REST API sees it.  Methods that change something
    check first and raise (PlacementError, MoveError) without changing
    anything when they refuse."""

    @abc.abstractmethod
    def topology(self):
        """The controller.topology.Topology the controller runs with."""

    @abc.abstractmethod
    def hosts(self) -> Dict[str, dict]:
        """{host: {"topology", "alive", "serving", "info", "plan_generation",
        "applied_generation"}}; hosts registered that the topology lacks too."""

    @abc.abstractmethod
    def chains(self) -> Dict[str, Chain]:
        """{name: Chain} of the stored, well-formed chains that are not
        retired, in SPI order: the chains to place."""

    @abc.abstractmethod
    def retired_chains(self) -> Dict[str, Chain]:
        """{name: Chain} of the retired chains, in SPI order."""

    @abc.abstractmethod
    def chain(self, name) -> Optional[dict]:
        """The chain `name` as stored (even a malformed one), or None."""

    @abc.abstractmethod
    def put_chain(self, chain: Chain) -> None:
        """Create or replace a chain once every chain can be placed with it;
        raises controller.placement.PlacementError, storing nothing."""

    @abc.abstractmethod
    def retire_chain(self, name) -> bool:
        """Retire a chain (module docstring): placed nowhere from now on,
        its traffic dropped and counted at its ingress.  False when it was
        retired already; raises PlacementError, changing nothing, when the
        chains left could not be placed."""

    @abc.abstractmethod
    def delete_chain(self, name) -> bool:
        """Delete a stored chain, retired or not: its record goes, and its
        traffic takes plain forwarding (no NFs).  False when there was none."""

    @abc.abstractmethod
    def placement(self) -> Optional[dict]:
        """The placement in force as `onvm place --json` prints it (with
        the time its last solve took), or None before the first."""

    @abc.abstractmethod
    def stats(self) -> Dict[str, dict]:
        """{host: stats} as the agents report them."""

    @abc.abstractmethod
    def request_move(self, host, instance, to) -> dict:
        """Start moving an instance with its state; raises
        controller.moves.MoveError (with an HTTP status) when refused."""

    @abc.abstractmethod
    def autoscaling(self) -> dict:
        """{"chains": {name: {"declared_mpps", "placed_mpps", "policy"}},
        "decisions": [...]}: the rates chains are placed at, and the last
        scaling decisions with what made them (controller.autoscale)."""

    @abc.abstractmethod
    def moves(self) -> dict:
        """{"moving": [...], "landing": [...], "draining": [...]}: the moves
        in progress and the instances draining (controller.moves.Drains)."""

    @abc.abstractmethod
    def drain_host(self, name) -> bool:
        """Move every instance off host `name` and give it none; False if it
        was drained already; KeyError for an unknown host; PlacementError
        when the chains do not fit elsewhere (nothing changes)."""

    @abc.abstractmethod
    def undrain_host(self, name) -> bool:
        """Host `name` takes instances again; False if it was not drained;
        KeyError for an unknown host."""
