"""The stats summary an agent puts in the store (contracts.statsum) and how
often it puts it (host_agent.agent.Agent._publish): bounded, without rule
texts, every publish_interval and at once when the controller's inputs
change."""
import json
import logging

from contracts.statsum import MAX_BYTES, summarize
from contracts.store import open_store
from host_agent.agent import Agent


def fw_rules(n):
    return [{"line": i + 1, "rule": f"allow tcp 10.0.{i % 256}.0/24 any port {i}",
             "hits": i} for i in range(n)]


def full_stats(instances=1, rules=1000, generation=3):
    insts = {}
    for i in range(1, instances + 1):
        insts[i] = {"nf": "firewall", "mode": "inline", "rx": 1000 * i, "tx": 990 * i,
                    "drops": 10, "ring_full": 0, "queue": 5,
                    "counters": {"passed": 990, "dropped": 10, "default": 1,
                                 "ipv6_default": 0, "label": "text is left out",
                                 "rules": fw_rules(rules)}}
    return {"generation": generation, "processed": 5000, "flows": 17, "flow_table_full": 0,
            "ports": {"p0": {"port": 0, "rx": 5000, "tx": 4900, "tx_full": 0,
                             "missed": 0, "errors": 0}},
            "instances": insts, "drops": {"no_label": 2, "nf_drop": 10},
            "pins": {"entries": 3, "inserts": 4, "expired": 1, "full": 0}}


def test_a_thousand_rule_firewall_is_summarised_without_its_rules():
    full = dict(full_stats(), host="h1", time=1.0, plan_error=None)
    full["instances"] = {"1": dict(full["instances"][1], mpps=0.25)}
    summary, notes = summarize(full)
    assert notes == []
    text = json.dumps(summary)
    assert len(text) < 1024 < 50 * len(text) < len(json.dumps(full))
    inst = summary["instances"]["1"]
    assert inst == {"nf": "firewall", "mode": "inline", "rx": 1000, "tx": 990, "drops": 10,
                    "ring_full": 0, "queue": 5, "mpps": 0.25,
                    "counters": {"passed": 990, "dropped": 10, "default": 1,
                                 "ipv6_default": 0}}
    assert summary["drops"] == {"no_label": 2, "nf_drop": 10}
    assert summary["ports"]["p0"]["rx"] == 5000 and summary["flows"] == 17
    assert (summary["host"], summary["generation"], summary["plan_error"]) == ("h1", 3, None)


def test_a_nat_keeps_its_range_slice_and_per_protocol_counters():
    counters = {"passed": 5, "port_range": [20000, 23999], "slice": 1,
                "tcp": {"mappings": 3, "pool": 4000, "use": 0.00075, "note": "x"},
                "table_full": 0, "long": [1, 2, 3]}
    full = {"instances": {"4": {"nf": "nat", "rx": 5, "counters": counters}}}
    kept = summarize(full)[0]["instances"]["4"]["counters"]
    assert kept == {"passed": 5, "port_range": [20000, 23999], "slice": 1,
                    "tcp": {"mappings": 3, "pool": 4000, "use": 0.00075}, "table_full": 0}


def test_the_cap_is_hard_and_says_what_it_left_out():
    full = full_stats(instances=300, rules=0)
    for i, inst in full["instances"].items():
        inst["mpps"] = i / 1000
        inst["counters"].update({f"c{k}": k for k in range(12)})
    summary, notes = summarize(full, max_bytes=8192)
    assert len(json.dumps(summary, sort_keys=True, separators=(",", ":"))) <= 8192
    assert notes[0] == "the instances' NF counters"
    assert notes[1].endswith("of its 300 instances (the least busy)")
    kept = sorted(int(i) for i in summary["instances"])
    assert kept and kept[-1] == 300 and kept == list(range(301 - len(kept), 301))
    assert summary["summary"]["left_out"] == notes
    big = full_stats(instances=1, rules=0)
    big["ports"] = {f"port{i}": {"rx": i} for i in range(5000)}
    summary, notes = summarize(big)
    assert len(json.dumps(summary)) <= MAX_BYTES and notes[-1] == "its 5000 ports' counters"


class FakeManager:
    def __init__(self):
        self.full = full_stats()

    @property
    def generation(self):
        return self.full["generation"]

    def stats(self):
        return json.loads(json.dumps(self.full), object_hook=lambda d: {
            (int(k) if k.isdigit() else k): v for k, v in d.items()})


def test_the_agent_puts_its_summary_every_period_and_at_once_on_a_change(monkeypatch, caplog):
    store = open_store("memory://")
    clock = [100.0]
    monkeypatch.setattr("host_agent.agent.time.monotonic", lambda: clock[0])
    agent = Agent("h1", FakeManager(), store=store, publish_interval=5.0)
    puts = []
    real = store.put_stats
    monkeypatch.setattr(store, "put_stats", lambda h, s: puts.append(s) or real(h, s))
    for _ in range(10):                      # the loop samples every second
        agent._publish()
        clock[0] += 1.0
    assert len(puts) == 2                   # at 100 s and 105 s
    assert "rules" not in json.dumps(store.get_stats("h1"))
    assert agent.latest["instances"]["1"]["counters"]["rules"][999]["hits"] == 999
    agent.manager.full["generation"] = 4    # a plan applied: at once
    agent._publish()
    assert len(puts) == 3 and store.get_stats("h1")["generation"] == 4
    agent.exported = {1: {"state": {"flows": list(range(5000))}, "state_generation": 4}}
    agent._publish()                        # a move's snapshot: at once, past the cap
    got = store.get_stats("h1")["instances"]["1"]
    assert len(puts) == 4 and got["state_generation"] == 4 and len(got["state"]["flows"]) == 5000
    assert agent.publications == 4 and agent.published_bytes > 5000
    agent.manager.full = full_stats(instances=400, rules=0)
    with caplog.at_level(logging.ERROR, "onvm.agent"):
        agent._publish()
        agent._publish(force=True)
    assert caplog.text.count("would exceed 16384 bytes") == 1, caplog.text


def test_the_full_counters_stay_on_the_prometheus_endpoint():
    from prometheus_client.exposition import generate_latest
    from prometheus_client.core import CollectorRegistry
    from host_agent.metrics import AgentCollector
    registry = CollectorRegistry()
    registry.register(AgentCollector(Agent("h1", FakeManager())))
    text = generate_latest(registry).decode()
    assert 'onvm_nf_counter{counter="passed",host="h1",instance="1",nf="firewall"} 990.0' \
        in text
    assert 'onvm_nf_rule_hits_total{host="h1",instance="1",nf="firewall",rule="1000"} 999.0' \
        in text
