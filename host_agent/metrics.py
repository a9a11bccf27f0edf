"""The agent's Prometheus endpoint: its counters as metrics, read at
scrape time from the fast path (nothing is counted twice), served over
HTTP or HTTPS, with or without a bearer token.

    settings = metrics_settings(args)        # ValueError naming file and flag
    serve_metrics(agent, settings)

Security (docs/deploy.md, "Security"): by default the endpoint listens on
127.0.0.1 only.  `--metrics-addr` exposes it; then give `--metrics-cert`/
`--metrics-key` (HTTPS) and `--metrics-token-file` (a file of mode 0600
with one or several tokens, one a line, as the REST API's: every scrape
sends `Authorization: Bearer TOKEN`, Prometheus's
`authorization: {credentials_file: ...}`; missing or wrong: 401).

Chains: an instance's counters carry a `chain` label, the SPIs of the
chains it serves in the applied plan (a reverse path counts as its
chain), joined with "+" when several chains share the instance ("none"
when it serves none).  `onvm_chain_packets_total{chain, kind}` gives each
chain's own packets: "in", what its first NF's instances on this host
take in (the chain's rate, summed over hosts), and "drops", what the
instances that serve this chain alone drop; a shared instance's packets
are in no chain's total (its `chain` label names them all).
`onvm status` maps an SPI to its chain's name.

Not here: the store's stats summary (host_agent.agent), the dashboard
(deploy/grafana).
"""
import dataclasses
import logging
import socket
import ssl
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import (CollectorRegistry, CounterMetricFamily,
                                    GaugeMetricFamily)
from prometheus_client.exposition import ThreadingWSGIServer

from contracts.secretfile import (MIN_TOKEN_CHARS, SecretFileError, bearer_token,
                                  read_tokens, token_in)
from contracts.tlsfiles import TLSFileError, check_pair
from contracts.wire import MAX_CHAIN_SPI, SI_FIRST

LOG = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "::1", "localhost")
HANDSHAKE_TIMEOUT_S = 10.0


class AgentCollector:
    def __init__(self, agent):
        self.agent = agent

    def collect(self):
        stats = self.agent.manager.stats()
        host = self.agent.host
        gen = GaugeMetricFamily("onvm_plan_generation", "Plan generation applied", labels=["host"])
        gen.add_metric([host], stats["generation"] if stats["generation"] is not None else -1)
        yield gen
        ports = CounterMetricFamily("onvm_port_packets", "Packets per port and direction",
                                    labels=["host", "port", "direction"])
        for name, p in stats["ports"].items():
            ports.add_metric([host, name, "rx"], p["rx"])
            ports.add_metric([host, name, "tx"], p["tx"])
        yield ports
        drops = CounterMetricFamily("onvm_drops", "Packets dropped, by reason",
                                    labels=["host", "reason"])
        for reason, n in stats["drops"].items():
            drops.add_metric([host, reason], n)
        yield drops
        serves, first = plan_chains(getattr(self.agent, "plan", None))
        inst = CounterMetricFamily("onvm_instance_packets", "Packets per NF instance",
                                   labels=["host", "instance", "nf", "chain", "direction"])
        queue = GaugeMetricFamily("onvm_instance_queue", "Packets waiting in an NF process's ring",
                                  labels=["host", "instance", "nf", "chain"])
        for iid, s in stats["instances"].items():
            chain = chain_label(serves.get(iid, ()))
            for direction in ("rx", "tx", "drops"):
                inst.add_metric([host, str(iid), s["nf"], chain, direction], s[direction])
            queue.add_metric([host, str(iid), s["nf"], chain], s["queue"])
        yield inst
        yield queue
        yield chain_metrics(host, stats["instances"], serves, first)
        yield from nf_counter_metrics(host, stats["instances"])
        flows = GaugeMetricFamily("onvm_flows", "Entries in the flow table", labels=["host"])
        flows.add_metric([host], stats["flows"])
        yield flows
        yield from _table_metrics(host, "onvm_pins", "onvm_pin_events", "pin table",
                                  stats["pins"])
        if "flow_table" in stats:       # a fast path's stats; older ones lack it
            yield from _table_metrics(host, "onvm_flow_table_entries",
                                      "onvm_flow_table_events", "flow table",
                                      stats["flow_table"])
        replicator = getattr(self.agent, "replicator", None)
        if replicator is not None:
            yield replica_metrics(host, replicator.counters)


def replica_metrics(host, counters):
    """The replicas' counters (host_agent.replicas): puts, bytes, adoptions,
    failures, and the fast path's time paused for snapshots."""
    family = CounterMetricFamily("onvm_replica_events", "Replicas of NF flow state: "
                                 "puts, bytes, adoptions, failures, seconds paused",
                                 labels=["host", "what"])
    for what in ("replicas_put", "bytes_put", "too_big", "failures", "adopted",
                 "adopted_entries", "adopt_failures", "paused_s", "work_s"):
        family.add_metric([host, what], counters.get(what, 0))
    return family


def plan_chains(plan):
    """({instance id: set of chain SPIs it serves}, {chain SPI: instance
    ids at its first hop}) of a plan's local hops; a reverse SPI counts as
    its chain's."""
    serves, first = {}, {}
    for hop in (plan or {}).get("hops", []):
        if not isinstance(hop, dict) or "local" not in hop:
            continue
        spi = hop["spi"] & MAX_CHAIN_SPI
        serves.setdefault(hop["local"], set()).add(spi)
        if hop["spi"] == spi and hop["si"] == SI_FIRST:
            first.setdefault(spi, set()).add(hop["local"])
    return serves, first


def chain_label(spis):
    return "+".join(str(spi) for spi in sorted(spis)) or "none"


def chain_metrics(host, instances, serves, first):
    """onvm_chain_packets_total: each chain's packets in at its first NF
    and drops by the instances serving it alone (module docstring)."""
    family = CounterMetricFamily("onvm_chain_packets", "Packets per chain: in at its "
                                 "first NF, dropped by its own instances",
                                 labels=["host", "chain", "kind"])
    for spi in sorted(set(first) | {s for spis in serves.values() for s in spis}):
        taken = sum(instances[i]["rx"] for i in first.get(spi, ()) if i in instances)
        dropped = sum(s["drops"] for i, s in instances.items() if serves.get(i) == {spi})
        family.add_metric([host, str(spi), "in"], taken)
        family.add_metric([host, str(spi), "drops"], dropped)
    return family


def _table_metrics(host, gauge, counter, what, table):
    """The entries (gauge) and events (counter, by event) of an aging
    table's stats (host_agent.aging)."""
    entries = GaugeMetricFamily(gauge, f"Entries in the {what}", labels=["host"])
    entries.add_metric([host], table["entries"])
    yield entries
    events = CounterMetricFamily(counter,
                                 f"Entries of the {what} made, expired, refused (table full)",
                                 labels=["host", "event"])
    for event in ("inserts", "expired", "full"):
        events.add_metric([host, event], table[event])
    yield events


def nf_counter_metrics(host, instances):
    """Each NF's own counters (the store's summary keeps only a few of
    them, contracts.statsum): its numeric counters, and the hits of each
    rule of a rule list (the firewall's and the ids' "rules")."""
    counters = GaugeMetricFamily("onvm_nf_counter", "An NF instance's own counters",
                                 labels=["host", "instance", "nf", "counter"])
    rules = CounterMetricFamily("onvm_nf_rule_hits", "Packets that matched each rule",
                                labels=["host", "instance", "nf", "rule"])
    for iid, s in instances.items():
        for name, value in (s.get("counters") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                counters.add_metric([host, str(iid), s["nf"], name], value)
            elif isinstance(value, dict):           # one level: a NAT's per protocol
                for sub, n in value.items():
                    if isinstance(n, (int, float)) and not isinstance(n, bool):
                        counters.add_metric([host, str(iid), s["nf"], f"{name}_{sub}"], n)
            elif isinstance(value, list):
                for i, rule in enumerate(value):
                    if isinstance(rule, dict) and isinstance(rule.get("hits"), int):
                        ident = rule.get("line", rule.get("sid", i))
                        rules.add_metric([host, str(iid), s["nf"], str(ident)], rule["hits"])
    yield counters
    yield rules


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    port: int
    addr: str = "127.0.0.1"
    cert: str = None
    key: str = None
    tokens: tuple = ()              # accepted bearer tokens; empty: none asked
    token_file: str = None


def metrics_settings(args):
    """MetricsSettings of the agent's --metrics-* options (or its config
    file's metrics_* keys); ValueError naming the file and the flag when a
    file cannot be used.  Checked before anything starts."""
    port = args.metrics_port
    addr = getattr(args, "metrics_addr", None) or "127.0.0.1"
    cert, key = getattr(args, "metrics_cert", None), getattr(args, "metrics_key", None)
    token_file = getattr(args, "metrics_token_file", None)
    if (cert is None) != (key is None):
        raise ValueError("--metrics-cert and --metrics-key go together")
    try:
        if cert is not None:
            check_pair(cert, key, "--metrics-cert", "--metrics-key")
        tokens = tuple(read_tokens(token_file, "--metrics-token-file", MIN_TOKEN_CHARS,
                                   several=True)) if token_file else ()
    except (TLSFileError, SecretFileError) as err:
        raise ValueError(str(err)) from None
    if port and addr not in LOOPBACK and not tokens:
        LOG.warning("metrics on %s:%s with no --metrics-token-file: anyone who reaches "
                    "the port reads them", addr, port)
    return MetricsSettings(port, addr, cert, key, tokens, token_file)


def guarded(app, tokens):
    """The WSGI `app` behind a bearer token check (401 without one of `tokens`)."""
    def check(environ, start_response):
        token = bearer_token(environ.get("HTTP_AUTHORIZATION"))
        if token is None or not token_in(token, tokens):
            body = (b"missing credentials: send 'Authorization: Bearer TOKEN'\n"
                    if token is None else b"wrong token\n")
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                 ("WWW-Authenticate", "Bearer"),
                                                 ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)
    return check


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        """Scrapes are not logged."""


def serve_metrics(agent, settings, addr="127.0.0.1"):
    """Start the endpoint in a thread; returns the registry.  `settings`:
    MetricsSettings, or a port (plain HTTP on `addr`)."""
    if isinstance(settings, int):
        settings = MetricsSettings(settings, addr)
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    app = make_wsgi_app(registry)
    if settings.tokens:
        app = guarded(app, settings.tokens)

    context = None
    if settings.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(settings.cert, settings.key)

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in settings.addr else socket.AF_INET

        def finish_request(self, request, client_address):
            # The TLS handshake in the request's own thread, with a deadline:
            # a client that connects and says nothing holds up no other.
            if context is not None:
                request.settimeout(HANDSHAKE_TIMEOUT_S)
                try:
                    request = context.wrap_socket(request, server_side=True)
                except OSError as err:          # ssl.SSLError too
                    LOG.debug("metrics: TLS handshake with %s failed: %s",
                              client_address, err)
                    return
            super().finish_request(request, client_address)

    httpd = make_server(settings.addr, settings.port, app, Server,
                        handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    LOG.info("metrics on %s://%s:%d/metrics%s", "https" if settings.cert else "http",
             settings.addr, settings.port,
             f" (bearer token from {settings.token_file})" if settings.tokens else "")
    return registry
