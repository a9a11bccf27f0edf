"""The REST API under /onvm/v1/, in the style of ryu.app.ofctl_rest.

    GET    /onvm/v1/topology        the topology the controller runs with
    GET    /onvm/v1/hosts           per host: topology entry, alive, plan/applied
    GET    /onvm/v1/chains          {name: chain} as stored in /onvm/chains/
                                    (retired ones with "retired": true)
    POST   /onvm/v1/chains          create a chain (201), 409 if the name exists;
                                    a retired chain's name: create it again
    GET    /onvm/v1/chains/<name>   one chain, 404 if unknown
    PUT    /onvm/v1/chains/<name>   change a chain (404 if unknown, 409 if retired)
    DELETE /onvm/v1/chains/<name>   retire a chain: its traffic is dropped
                                    (404 if unknown)
    DELETE /onvm/v1/chains/<name>?traffic=forward
                                    delete it for good, retired or not: its
                                    traffic is forwarded without NFs
    GET    /onvm/v1/placement       the current placement (`onvm place --json`)
    GET    /onvm/v1/stats           {host: stats} as the agents report them
    POST   /onvm/v1/moves           move an NF instance to another host with
                                    its state (202; controller/moves.py)
    GET    /onvm/v1/moves           the moves in progress
    GET    /onvm/v1/autoscale       per chain its declared and placed rate and
                                    policy; the last scaling decisions and why
    GET    /onvm/v1/health          {"status": "ok"}: the only call without a token

Credentials (controller.apiauth): every call but the health check carries
`Authorization: Bearer TOKEN`; missing or wrong: 401 with {"error"} and
nothing changed; a read-only token may GET, anything else is a 403.  The
tokens come from [onvm] api_token_file / api_read_token_file (a generated
one in state_dir when none is named).  With [onvm] api_cert and api_key the
API is served over HTTPS by ryu-manager's own WSGI server (`serve_https`).

A chain body is {"name", "ingress", "egress", "match", "nfs", "mpps"} and an
optional "spi" (else the lowest free one) and "symmetric" (else true when
an NF keeps flow state and the egress is a server or a pool).  "egress" is
a host, an edge or a server, or a list of servers (a pool, which needs an
lb); controller.chains checks a body exactly as a topology file's chain.  A wrong request gets 400
(malformed), 404 (unknown chain) or 409 (conflicts with the chains there, or
cannot be placed) with {"error": "..."} and changes nothing: the cluster's
`put_chain` checks that every chain can still be placed before it stores.

Deleting a chain fails closed.  A plain DELETE (or `?traffic=drop`)
*retires* the chain (controller.view): it is placed nowhere and frees its
cores, but its record stays in the store with "retired": true, its SPI and
its match stay reserved, and its ingress switch drops and counts its
traffic.  Only `?traffic=forward`, said explicitly, removes the record and
lets the traffic take plain forwarding, through none of its NFs.  A second
plain DELETE of a retired chain changes nothing (a retried request never
opens the traffic).  Both answer 200 with {"deleted", "retired",
"traffic": "dropped" | "forwarded", "detail"}.  While retired, a new chain
with its SPI or its ingress and match is refused (409, saying so); POST
with the retired chain's name creates it again, keeping its SPI.

A move body is {"host": A, "instance": ID, "to": B}.  The cluster's
`request_move(host, instance, to)` checks it (controller.moves.check_move:
404 unknown host or instance, 400 A == B, 409 B not alive or without the
cores) and the reply is 202: the move completes once A's agent has
published the instance's state, which GET /onvm/v1/moves shows.

The handlers are plain functions over a `controller.view.ClusterView` (the
cluster core implements it) and call nothing else of the controller; the
Ryu parts at the bottom only route requests to them.  Re-placing is the
core's job, not ours.
"""
from __future__ import annotations

import dataclasses
import json
import logging

from contracts.store import StoreError
from controller.apiauth import Tokens, authorize, load_tokens
from controller.chains import (CHAIN_FIELDS, MAX_BODY, NAME_RE,  # noqa: F401  (the chain validator)
                               REQUIRED_FIELDS, RequestError, chain_from_json,
                               free_spi, is_retired, parse_json_body)
from controller.chains import check_keys as _check_keys
from controller.moves import MoveError
from controller.placement import PlacementError
from controller.view import ClusterView, chain_to_json

LOG = logging.getLogger(__name__)

BASE = "/onvm/v1"
CHAIN_MANAGER = "chain_manager"   # the Ryu app that holds the cluster core
MOVE_FIELDS = ("host", "instance", "to")
TRAFFIC = ("drop", "forward")     # DELETE ...?traffic=: what its traffic does


def _bad(cond, message, status=400):
    if not cond:
        raise RequestError(status, message)


# --- the handlers, over a ClusterView ---------------------------------------

def _placed_or_409(name, change, *args):
    """Run a chain change of the view; its PlacementError is a 409."""
    try:
        return change(*args)
    except PlacementError as err:
        raise RequestError(409, f"chain {name}: cannot be placed: {err}") from None


def _store(view: ClusterView, chain, verb):
    """Store `chain` once the cluster says every chain can be placed with it."""
    _placed_or_409(chain.name, view.put_chain, chain)
    LOG.info("REST: %s chain %s (placement checked)", verb, chain.name)
    return chain_to_json(chain)


def _release_hint(name):
    return f"DELETE {BASE}/chains/{name}?traffic=forward"


def create_chain(view: ClusterView, body):
    """A new chain, or a retired chain's name again: created anew, keeping
    its SPI unless the body names one."""
    chains, retired = view.chains(), view.retired_chains()
    name = body.get("name") if isinstance(body, dict) else None
    _bad(name not in chains, f"chain {name} exists; change it with PUT "
                             f"{BASE}/chains/{name}", 409)
    old = retired.pop(name, None)
    chain = chain_from_json(body, view.topology(), chains.values(),
                            spi=old.spi if old else None, retired=retired.values())
    return 201, _store(view, chain, "created again (it was retired; its traffic "
                                    "is steered through its NFs again)"
                       if old else "created")


def change_chain(view: ClusterView, name, body):
    chains, retired = view.chains(), view.retired_chains()
    _bad(name not in retired, f"chain {name} is retired (its traffic is dropped); "
                              f"create it again with POST {BASE}/chains, or release "
                              f"its traffic with {_release_hint(name)}", 409)
    _bad(name in chains, f"no chain {name}", 404)
    if isinstance(body, dict):
        _bad(body.setdefault("name", name) == name,
             f"chain.name: {body.get('name')!r} differs from the URL's {name!r}; "
             "a chain cannot be renamed")
    old = chains.pop(name)
    chain = chain_from_json(body, view.topology(), chains.values(), spi=old.spi,
                            retired=retired.values())
    return 200, _store(view, chain, "changed")


def _traffic(query):
    """DELETE's one query parameter, `traffic`: "drop" (the default) or
    "forward"."""
    query = dict(query or {})
    traffic = query.pop("traffic", "drop")
    _bad(not query, f"unknown query parameter(s) {', '.join(sorted(query))}; "
                    f"known: traffic")
    _bad(traffic in TRAFFIC, f"traffic: must be drop (the default: retire the chain, "
                             f"its traffic dropped at its ingress) or forward (delete "
                             f"it, its traffic forwarded without NFs), not {traffic!r}")
    return traffic


def delete_chain(view: ClusterView, name, query=None):
    """Retire a chain (its traffic dropped), or with ?traffic=forward delete
    it for good (its traffic forwarded without NFs); see the docstring."""
    traffic = _traffic(query)
    body = view.chain(name)
    _bad(body is not None, f"no chain {name}", 404)
    if traffic == "forward":
        _placed_or_409(name, view.delete_chain, name)
        detail = (f"chain {name} deleted: its traffic now takes plain forwarding to "
                  f"its destination, through none of its NFs")
        LOG.warning("REST: %s (released on request, traffic=forward)", detail)
        return 200, {"deleted": name, "retired": False, "traffic": "forwarded",
                     "detail": detail}
    _bad(is_retired(body) or name in view.chains(),
         f"chain {name} is malformed in the store, so nothing steers or drops its "
         f"traffic; delete it with {_release_hint(name)}", 409)
    fresh = _placed_or_409(name, view.retire_chain, name)
    ingress = body.get("ingress") if isinstance(body, dict) else None
    detail = (f"chain {name} {'retired' if fresh else 'was retired already'}: placed "
              f"nowhere; its traffic is dropped and counted at ingress {ingress} "
              f"until released with {_release_hint(name)}")
    LOG.warning("REST: %s", detail)
    return 200, {"deleted": name, "retired": True, "traffic": "dropped",
                 "detail": detail}


def get_chain(view: ClusterView, name):
    body = view.chain(name)
    _bad(body is not None, f"no chain {name}", 404)
    return 200, body


def get_topology(view: ClusterView):
    topology = view.topology()
    topo = dataclasses.asdict(topology)
    topo["nfs"] = {k: dataclasses.asdict(v) for k, v in topology.nfs.items()}
    return 200, topo


def get_hosts(view: ClusterView):
    return 200, view.hosts()


def get_placement(view: ClusterView):
    placement = view.placement()
    _bad(placement is not None, "no placement yet: the controller has not "
                                "placed the chains (is any host alive?)", 503)
    return 200, placement


def get_stats(view: ClusterView):
    return 200, view.stats()


def get_chains(view: ClusterView):
    out = {name: chain_to_json(c, retired=True)
           for name, c in view.retired_chains().items()}
    out.update((name, chain_to_json(c)) for name, c in view.chains().items())
    return 200, out


def create_move(view: ClusterView, body):
    """Hand a checked move request to the cluster."""
    _check_keys(body, "move", MOVE_FIELDS, MOVE_FIELDS)
    for field in ("host", "to"):
        _bad(isinstance(body[field], str), f"move.{field}: must be a host name, "
                                           f"not {body[field]!r}")
    iid = body["instance"]
    _bad(isinstance(iid, int) and not isinstance(iid, bool),
         f"move.instance: must be an instance id (an integer), not {iid!r}")
    try:
        move = view.request_move(body["host"], iid, body["to"])
    except MoveError as err:
        raise RequestError(err.status, err.message) from None
    LOG.info("REST: move of instance %d from %s to %s accepted", iid, body["host"],
             body["to"])
    return 202, {"move": move, "status": "waiting for the instance's state from "
                                         f"{body['host']}"}


def get_moves(view: ClusterView):
    return 200, view.moves()


def get_autoscale(view: ClusterView):
    return 200, view.autoscaling()


def drain_host(view: ClusterView, name, drain=True):
    """POST .../hosts/NAME/drain or /undrain."""
    verb = "drain" if drain else "undrain"
    try:
        changed = (view.drain_host if drain else view.undrain_host)(name)
    except KeyError:
        raise RequestError(404, f"no host {name!r} in the topology") from None
    except PlacementError as err:
        raise RequestError(409, f"host {name} not drained: the chains do not fit on "
                                f"the other hosts: {err}") from None
    LOG.info("REST: %s of host %s%s", verb, name, "" if changed else " (no change)")
    return 200, {"host": name, "drained": drain, "changed": changed}


# --- Ryu adapter --------------------------------------------------------------

import onvm_compat  # noqa: E402,F401  (eventlet 0.33 lacks what ryu.app.wsgi imports)
from ryu.app.wsgi import ControllerBase, Response, WSGIApplication, route  # noqa: E402
from ryu.base import app_manager  # noqa: E402
from ryu import cfg  # noqa: E402  (ryu-manager parses into ryu.cfg.CONF)

from controller import config  # noqa: E402,F401  (registers the [onvm] options)

API_DATA = "onvm_cluster_view"
API_TOKENS = "onvm_api_tokens"


def _json_response(status, body):
    return Response(status=status, content_type="application/json",
                    body=json.dumps(body, sort_keys=True).encode())


def _refused(req, tokens: Tokens):
    """The 401/403 response for a request its token does not allow, else None."""
    refusal = authorize(tokens, req.method, req.headers.get("Authorization"))
    if refusal is None:
        return None
    status, message = refusal
    LOG.warning("REST %s %s from %s refused (%d): %s", req.method, req.path,
                req.remote_addr, status, message)
    resp = _json_response(status, {"error": message})
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="onvm"'
    return resp


def _serve(req, handler, *args, with_body=False):
    try:
        if with_body:
            args = (*args, parse_json_body(req.body))
        status, body = handler(*args)
    except RequestError as err:
        LOG.info("REST %s %s refused (%d): %s", req.method, req.path,
                 err.status, err.message)
        return _json_response(err.status, {"error": err.message})
    except StoreError as err:
        # The store of record refused or did not answer (a full store names
        # its alarm and the fix): nothing was changed, say so, never a 500.
        LOG.warning("REST %s %s not done, the store failed: %s", req.method, req.path, err)
        return _json_response(503, {"error": f"the store failed, the request was not carried out: {err}"})
    return _json_response(status, body)


class OnvmController(ControllerBase):
    """Routes /onvm/v1/ requests to the handlers above."""

    def __init__(self, req, link, data, **config):
        super().__init__(req, link, data, **config)
        self.get_view = data[API_DATA]
        self.tokens = data[API_TOKENS]

    def _call(self, req, handler, *args, with_body=False):
        refused = _refused(req, self.tokens)
        if refused is not None:
            return refused
        view = self.get_view()
        if view is None:
            return _json_response(503, {"error": "the chain manager app is not running"})
        return _serve(req, handler, view, *args, with_body=with_body)

    @route("onvm", BASE + "/health", methods=["GET"])
    def health(self, req, **_):
        return _json_response(200, {"status": "ok"})

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
        return self._call(req, delete_chain, name, dict(req.GET))

    @route("onvm", BASE + "/placement", methods=["GET"])
    def placement(self, req, **_):
        return self._call(req, get_placement)

    @route("onvm", BASE + "/stats", methods=["GET"])
    def stats(self, req, **_):
        return self._call(req, get_stats)

    @route("onvm", BASE + "/moves", methods=["POST"])
    def post_move(self, req, **_):
        return self._call(req, create_move, with_body=True)

    @route("onvm", BASE + "/hosts/{name}/drain", methods=["POST"])
    def post_drain(self, req, name, **_):
        return self._call(req, drain_host, name)

    @route("onvm", BASE + "/hosts/{name}/undrain", methods=["POST"])
    def post_undrain(self, req, name, **_):
        return self._call(req, drain_host, name, False)

    @route("onvm", BASE + "/moves", methods=["GET"])
    def list_moves(self, req, **_):
        return self._call(req, get_moves)

    @route("onvm", BASE + "/autoscale", methods=["GET"])
    def autoscale(self, req, **_):
        return self._call(req, get_autoscale)


def register(wsgi_app, get_view, tokens: Tokens):
    """Mount the API on a ryu WSGIApplication; `get_view()` returns the
    ClusterView (or None while there is none); `tokens` say who may call."""
    wsgi_app.register(OnvmController, {API_DATA: get_view, API_TOKENS: tokens})


def serve_https(certfile, keyfile):
    """Have ryu-manager's WSGI server (made by ryu.app.wsgi.start_service
    after the apps) listen with TLS: its listening socket is wrapped, each
    connection's handshake runs in that connection's green thread.  The
    certificate and key are loaded here, so a bad one fails before anything
    listens."""
    from eventlet.green import ssl as green_ssl
    from ryu.app import wsgi as ryu_wsgi
    if not (certfile and keyfile):
        raise ValueError("REST API over HTTPS: [onvm] api_cert and api_key go "
                         f"together (api_cert={certfile}, api_key={keyfile})")
    context = green_ssl.SSLContext(green_ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = green_ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    start_plain = ryu_wsgi.start_service

    def start_https(app_mgr):
        server = start_plain(app_mgr)
        if server is not None:
            server.server = context.wrap_socket(server.server, server_side=True)
        return server
    ryu_wsgi.start_service = start_https


def find_cluster_view():
    """The chain manager app's ClusterView, or None while it is not running."""
    app = app_manager.lookup_service_brick(CHAIN_MANAGER)
    return app.cluster_view() if app is not None else None


class RestApi(app_manager.RyuApp):
    """Ryu app: serves the API on ryu-manager's WSGI server (--wsapi-port)."""
    _CONTEXTS = {"wsgi": WSGIApplication}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = "onvm_rest_api"
        onvm = cfg.CONF.onvm
        tokens = load_tokens(onvm.api_token_file, onvm.api_read_token_file, onvm.state_dir)
        if onvm.api_cert or onvm.api_key:
            serve_https(onvm.api_cert, onvm.api_key)
        register(kwargs["wsgi"], find_cluster_view, tokens)
        LOG.info("REST API mounted under %s (%s, bearer token required)", BASE,
                 "HTTPS" if onvm.api_cert else "plain HTTP")
