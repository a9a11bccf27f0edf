"""The REST API under /onvm/v1/, in the style of ryu.app.ofctl_rest.

    GET    /onvm/v1/topology        the topology the controller runs with
    GET    /onvm/v1/hosts           per host: topology entry, alive, plan/applied
    GET    /onvm/v1/chains          {name: chain} as stored in /onvm/chains/
    POST   /onvm/v1/chains          create a chain (201), 409 if the name exists
    GET    /onvm/v1/chains/<name>   one chain, 404 if unknown
    PUT    /onvm/v1/chains/<name>   change a chain (404 if unknown)
    DELETE /onvm/v1/chains/<name>   delete a chain (404 if unknown)
    GET    /onvm/v1/placement       the current placement (`onvm place --json`)
    GET    /onvm/v1/stats           {host: stats} as the agents report them
    POST   /onvm/v1/moves           move an NF instance to another host with
                                    its state (202; controller/moves.py)
    GET    /onvm/v1/moves           the moves in progress

A chain body is {"name", "ingress", "egress", "match", "nfs", "mpps"} and an
optional "spi" (else the lowest free one).  A wrong request gets 400
(malformed), 404 (unknown chain) or 409 (conflicts with the chains there, or
cannot be placed) with {"error": "..."} and changes nothing: a change is
checked by the chain manager's `check_chains` before it is stored.

A move body is {"host": A, "instance": ID, "to": B}.  The chain manager's
`request_move(host, instance, to)` checks it (controller.moves.check_move:
404 unknown host or instance, 400 A == B, 409 B not alive or without the
cores) and the reply is 202: the move completes once A's agent has
published the instance's state, which GET /onvm/v1/moves shows.

The deciding code (parsing and checking chain bodies, the request handlers)
is plain functions over a manager object; the Ryu parts at the bottom only
route requests to them.  Re-placing is the chain manager's job, not ours.
"""
from __future__ import annotations

import dataclasses
import json
import logging

from contracts.model import Chain
from controller.chains import (CHAIN_FIELDS, MAX_BODY, NAME_RE,  # noqa: F401  (the chain validator)
                               REQUIRED_FIELDS, RequestError, chain_from_json,
                               free_spi, parse_json_body)
from controller.chains import check_keys as _check_keys

LOG = logging.getLogger(__name__)

BASE = "/onvm/v1"
MANAGER_NAMES = ("chain_manager", "ChainManager")
MOVE_FIELDS = ("host", "instance", "to")


def _bad(cond, message, status=400):
    if not cond:
        raise RequestError(status, message)


# --- chains as JSON ---------------------------------------------------------

def chain_to_json(chain: Chain) -> dict:
    """The stored (and returned) form of a chain."""
    return {"name": chain.name, "ingress": chain.ingress, "egress": chain.egress,
            "match": dict(chain.match), "nfs": list(chain.nfs),
            "mpps": chain.mpps, "spi": chain.spi}


# --- the handlers, over a chain manager ---------------------------------------

def stored_chains(manager):
    """{name: model.Chain} from the store, in SPI order.  Stored chains were
    checked when written; one that is not even well-formed is logged and
    left out (nothing could place it)."""
    chains = {}
    for name, body in manager.store.chains().items():
        try:
            chains[name] = Chain(body["name"], body["ingress"], body["egress"],
                                 dict(body["match"]), tuple(body["nfs"]),
                                 float(body["mpps"]), int(body["spi"]))
        except (KeyError, TypeError, ValueError) as err:
            LOG.warning("stored chain /onvm/chains/%s is malformed (%s: %s) "
                        "and ignored", name, type(err).__name__, err)
    return dict(sorted(chains.items(), key=lambda kv: kv[1].spi))


def _commit(manager, chains, changed, verb):
    """Ask the manager whether the new chain set can be placed; only then store."""
    from controller.placement import PlacementError
    try:
        manager.check_chains(list(chains))
    except PlacementError as err:
        raise RequestError(409, f"chain {changed}: cannot be placed: {err}") from None
    LOG.info("REST: %s chain %s (placement checked)", verb, changed)


def create_chain(manager, body):
    chains = stored_chains(manager)
    name = body.get("name") if isinstance(body, dict) else None
    _bad(name not in chains, f"chain {name} exists; change it with PUT "
                             f"{BASE}/chains/{name}", 409)
    chain = chain_from_json(body, manager.topology, chains.values())
    _commit(manager, [*chains.values(), chain], chain.name, "created")
    manager.set_chain(chain_to_json(chain))
    return 201, chain_to_json(chain)


def change_chain(manager, name, body):
    chains = stored_chains(manager)
    _bad(name in chains, f"no chain {name}", 404)
    if isinstance(body, dict):
        _bad(body.setdefault("name", name) == name,
             f"chain.name: {body.get('name')!r} differs from the URL's {name!r}; "
             "a chain cannot be renamed")
    old = chains.pop(name)
    chain = chain_from_json(body, manager.topology, chains.values(), spi=old.spi)
    _commit(manager, [*chains.values(), chain], name, "changed")
    manager.set_chain(chain_to_json(chain))
    return 200, chain_to_json(chain)


def delete_chain(manager, name):
    chains = stored_chains(manager)
    _bad(name in chains or manager.store.get_chain(name) is not None,
         f"no chain {name}", 404)
    rest = [c for n, c in chains.items() if n != name]
    _commit(manager, rest, name, "deleted")
    manager.delete_chain(name)
    return 200, {"deleted": name}


def get_chain(manager, name):
    body = manager.store.get_chain(name)
    _bad(body is not None, f"no chain {name}", 404)
    return 200, body


def get_topology(manager):
    topo = dataclasses.asdict(manager.topology)
    topo["nfs"] = {k: dataclasses.asdict(v) for k, v in manager.topology.nfs.items()}
    return 200, topo


def get_hosts(manager):
    alive = manager.store.hosts()
    plans = manager.store.plans()
    out = {}
    for host in manager.topology.hosts:
        plan = plans.get(host.name)
        out[host.name] = {
            "topology": dataclasses.asdict(host),
            "alive": host.name in alive,
            "info": alive.get(host.name),
            "plan_generation": plan.get("generation") if plan else None,
            "applied_generation": manager.store.get_applied(host.name),
        }
    for name in sorted(set(alive) - set(out)):
        out[name] = {"topology": None, "alive": True, "info": alive[name],
                     "plan_generation": None,
                     "applied_generation": manager.store.get_applied(name)}
    return 200, out


def get_placement(manager):
    placement = getattr(manager, "placement", None)
    _bad(placement is not None, "no placement yet: the controller has not "
                                "placed the chains (is it the leader?)", 503)
    return 200, placement.to_json(getattr(manager, "solve_ms", 0.0))


def get_stats(manager):
    return 200, manager.store.stats()


def get_chains(manager):
    return 200, manager.store.chains()


def create_move(manager, body):
    """Hand a checked move request to the chain manager."""
    from controller.moves import MoveError
    _check_keys(body, "move", MOVE_FIELDS, MOVE_FIELDS)
    for field in ("host", "to"):
        _bad(isinstance(body[field], str), f"move.{field}: must be a host name, "
                                           f"not {body[field]!r}")
    iid = body["instance"]
    _bad(isinstance(iid, int) and not isinstance(iid, bool),
         f"move.instance: must be an instance id (an integer), not {iid!r}")
    try:
        move = manager.request_move(body["host"], iid, body["to"])
    except MoveError as err:
        raise RequestError(err.status, err.message) from None
    LOG.info("REST: move of instance %d from %s to %s accepted", iid, body["host"],
             body["to"])
    return 202, {"move": move, "status": "waiting for the instance's state from "
                                         f"{body['host']}"}


def get_moves(manager):
    moves = getattr(manager, "moves", None)
    return 200, moves.status() if moves is not None else {"moving": [], "landing": []}


# --- Ryu adapter --------------------------------------------------------------

import onvm_compat  # noqa: E402,F401  (eventlet 0.33 lacks what ryu.app.wsgi imports)
from ryu.app.wsgi import ControllerBase, Response, WSGIApplication, route  # noqa: E402
from ryu.base import app_manager  # noqa: E402

API_DATA = "onvm_rest_manager"


def _json_response(status, body):
    return Response(status=status, content_type="application/json",
                    body=json.dumps(body, sort_keys=True).encode())


def _serve(req, handler, *args, with_body=False):
    try:
        if with_body:
            args = (*args, parse_json_body(req.body))
        status, body = handler(*args)
    except RequestError as err:
        LOG.info("REST %s %s refused (%d): %s", req.method, req.path,
                 err.status, err.message)
        return _json_response(err.status, {"error": err.message})
    return _json_response(status, body)


class OnvmController(ControllerBase):
    """Routes /onvm/v1/ requests to the handlers above."""

    def __init__(self, req, link, data, **config):
        super().__init__(req, link, data, **config)
        self.get_manager = data[API_DATA]

    def _manager(self):
        manager = self.get_manager()
        if manager is None:
            raise RequestError(503, "the chain manager app is not running")
        return manager

    def _call(self, req, handler, *args, with_body=False):
        try:
            manager = self._manager()
        except RequestError as err:
            return _json_response(err.status, {"error": err.message})
        return _serve(req, handler, manager, *args, with_body=with_body)

    @route("onvm", BASE + "/topology", methods=["GET"])
    def topology(self, req, **_):
        return self._call(req, get_topology)

    @route("onvm", BASE + "/hosts", methods=["GET"])
    def hosts(self, req, **_):
        return self._call(req, get_hosts)

    @route("onvm", BASE + "/chains", methods=["GET"])
    def list_chains(self, req, **_):
        return self._call(req, get_chains)

    @route("onvm", BASE + "/chains", methods=["POST"])
    def post_chain(self, req, **_):
        return self._call(req, create_chain, with_body=True)

    @route("onvm", BASE + "/chains/{name}", methods=["GET"])
    def one_chain(self, req, name, **_):
        return self._call(req, get_chain, name)

    @route("onvm", BASE + "/chains/{name}", methods=["PUT"])
    def put_chain(self, req, name, **_):
        return self._call(req, change_chain, name, with_body=True)

    @route("onvm", BASE + "/chains/{name}", methods=["DELETE"])
    def remove_chain(self, req, name, **_):
        return self._call(req, delete_chain, name)

    @route("onvm", BASE + "/placement", methods=["GET"])
    def placement(self, req, **_):
        return self._call(req, get_placement)

    @route("onvm", BASE + "/stats", methods=["GET"])
    def stats(self, req, **_):
        return self._call(req, get_stats)

    @route("onvm", BASE + "/moves", methods=["POST"])
    def post_move(self, req, **_):
        return self._call(req, create_move, with_body=True)

    @route("onvm", BASE + "/moves", methods=["GET"])
    def list_moves(self, req, **_):
        return self._call(req, get_moves)


def register(wsgi_app, get_manager):
    """Mount the API on a ryu WSGIApplication; `get_manager()` returns the
    chain manager (or None while it is not there)."""
    wsgi_app.register(OnvmController, {API_DATA: get_manager})


def find_chain_manager():
    for name in MANAGER_NAMES:
        app = app_manager.lookup_service_brick(name)
        if app is not None:
            return app
    return None


class RestApi(app_manager.RyuApp):
    """Ryu app: serves the API on ryu-manager's WSGI server (--wsapi-port)."""
    _CONTEXTS = {"wsgi": WSGIApplication}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = "onvm_rest_api"
        register(kwargs["wsgi"], find_chain_manager)
        LOG.info("REST API mounted under %s", BASE)
