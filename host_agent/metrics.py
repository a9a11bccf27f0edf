"""The agent's Prometheus endpoint: its counters as metrics, read at
scrape time from the fast path (nothing is counted twice)."""
from prometheus_client import start_http_server
from prometheus_client.core import (CollectorRegistry, CounterMetricFamily,
                                    GaugeMetricFamily)


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
        inst = CounterMetricFamily("onvm_instance_packets", "Packets per NF instance",
                                   labels=["host", "instance", "nf", "direction"])
        queue = GaugeMetricFamily("onvm_instance_queue", "Packets waiting in an NF process's ring",
                                  labels=["host", "instance", "nf"])
        for iid, s in stats["instances"].items():
            for direction in ("rx", "tx", "drops"):
                inst.add_metric([host, str(iid), s["nf"], direction], s[direction])
            queue.add_metric([host, str(iid), s["nf"]], s["queue"])
        yield inst
        yield queue
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


def serve_metrics(agent, port, addr="127.0.0.1"):
    """Start the HTTP endpoint in a thread; returns the registry."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    start_http_server(port, addr=addr, registry=registry)
    return registry
