"""Ruleset updates without a restart, through the real fast path: the
agent notices a rewritten rule file (its loop's poll) or a plan that
changes only an ids instance's config, and the same NF object takes the
new rules between two batches, keeping an established flow's reassembly
state; a file or config that cannot run leaves the old rules in force,
counted in reload_failures."""
import pytest

from host_agent.agent import Agent
from host_agent.harness import chain_plan
from nflib.api import NFConfigError

from test_nf_helpers import harness, tcp, wait_for

CLIENT, SERVER = "198.51.100.7", "10.0.1.5"
QUIET = 'alert tcp any any -> any 80 (msg:"never"; content:"NOPE"; sid:1; rev:1;)\n'
FIRES = ('drop tcp any any -> any 80 (msg:"attack"; flow:established,to_server; '
         'content:"attack"; sid:2; rev:3;)\n')


def segment(payload, seq, sport=40000):
    return tcp(CLIENT, SERVER, sport, 80, "PA", payload, seq=seq)


def hits(nf):
    return {r["sid"]: r["hits"] for r in nf.counters()["rules"]}


def agent_over(h):
    agent = Agent("harness", h.manager, stats_interval=0.02)
    return agent


def test_a_rewritten_rule_file_is_reloaded_by_the_agent_loop(tmp_path):
    rules = tmp_path / "ids.rules"
    rules.write_text(QUIET)
    config = {"rules": str(rules)}
    with harness([("ids", config)]) as h:
        agent = agent_over(h)
        assert agent.apply(chain_plan([("ids", config)], h.in_port, h.out_port, generation=2))
        nf = h.nf(1)
        # An established flow, its last bytes "...att" kept as the tail.
        assert len(h.send([tcp(CLIENT, SERVER, 40000, 80, "S", seq=99),
                           segment(b"GET /att", 100)])) == 2
        agent.run(seconds=0.1)
        assert nf.counters()["reloads"] == 0          # nothing changed yet
        rules.write_text(QUIET + FIRES)
        agent.run(seconds=0.1)                        # its loop polls and reloads
        assert h.nf(1) is nf
        c = nf.counters()
        assert c["reloads"] == 1 and c["reload_failures"] == 0
        assert sorted(hits(nf)) == [1, 2]
        # "att" + "ack": found across the two segments, so the flow's tail
        # and its direction (from the SYN) survived the reload.
        assert h.send([segment(b"ack!", 108)]) == []
        assert hits(nf)[2] == 1
        # A broken file: nothing runs; the rules in force stay, the failure
        # is counted once (not retried until the file changes again).
        rules.write_text("alert tcp any any -> any 80 (msg:\"no sid\"; content:\"x\";)\n")
        agent.run(seconds=0.1)
        c = nf.counters()
        assert c["reloads"] == 1 and c["reload_failures"] == 1
        assert h.send([segment(b"GET /attack", 100, sport=40001)]) == []
        assert hits(nf)[2] == 2
        assert agent.reload_changed_rules() == []
        # Touched, same bytes as the running set's: no reload.
        rules.write_text(QUIET + FIRES)
        assert agent.reload_changed_rules() == []
        assert nf.counters()["reloads"] == 1


def test_a_plan_changing_only_the_ids_config_reloads_in_place(tmp_path):
    alerts = tmp_path / "eve.json"
    before = {"rules_text": QUIET, "alerts": str(alerts)}
    with harness([("ids", before)]) as h:
        agent = agent_over(h)
        nf = h.nf(1)
        assert len(h.send([tcp(CLIENT, SERVER, 40000, 80, "S", seq=99),
                           segment(b"GET /att", 100)])) == 2
        after = {"rules_text": QUIET + FIRES, "alerts": str(alerts)}
        assert agent.apply(chain_plan([("ids", after)], h.in_port, h.out_port, generation=2))
        assert h.nf(1) is nf and nf.counters()["reloads"] == 1
        assert h.send([segment(b"ack!", 108)]) == []
        assert '"signature_id": 2, "rev": 3' in alerts.read_text()
        # A config that cannot run: the plan is refused, the rules stay.
        bad = {"rules_text": 'alert tcp any any -> any 80 (content:"x"; sid:oops;)\n'}
        assert not agent.apply(chain_plan([("ids", bad)], h.in_port, h.out_port, generation=3))
        assert "<rules_text>:1" in agent.plan_error
        assert h.nf(1) is nf and nf.counters()["reload_failures"] == 1
        assert h.send([segment(b"GET /attack", 100, sport=40001)]) == []
        # Another max_flows needs another flow table: a new NF object.
        bigger = dict(after, max_flows=1024)
        assert agent.apply(chain_plan([("ids", bigger)], h.in_port, h.out_port, generation=4))
        assert h.nf(1) is not nf


def test_reload_errors_name_the_file_and_line(tmp_path):
    rules = tmp_path / "r.rules"
    rules.write_text(QUIET)
    with harness([("ids", {"rules": str(rules)})]) as h:
        nf = h.nf(1)
        rules.write_text('alert tcp any any -> any 80 (content:"x"; bogus:1; sid:7;)\n')
        with pytest.raises(NFConfigError, match=f"{rules}:1: .*bogus"):
            nf.reload({"rules": str(rules)})
        assert [r["sid"] for r in nf.counters()["rules"]] == [1]
        got = nf.reload({"rules_text": FIRES})
        assert got["loaded"] == 1 and got["skipped"] == 0 and got["ms"] >= 0
        assert [r["sid"] for r in nf.counters()["rules"]] == [2]


def test_reloads_while_the_loop_runs():
    # The agent's loop thread forwards while the rules are swapped 40
    # times under it: every packet is scanned by one whole set or the
    # other, none is lost, the pool balances (the harness checks).
    with harness([("ids", {"rules_text": QUIET})]) as h:
        agent = agent_over(h)
        nf = h.nf(1)
        agent.start()
        sent = 0
        try:
            for i in range(40):
                frames = [segment(b"GET /x", 100, sport=41000 + 8 * i + k) for k in range(8)]
                assert h.rx.fill(frames, len(frames)) == len(frames)
                sent += len(frames)
                nf.reload({"rules_text": QUIET if i % 2 else QUIET + FIRES})
            wait_for(lambda: nf.counters()["packets"] == sent, "every packet scanned")
        finally:
            agent.stop()
        c = nf.counters()
        assert c["reloads"] == 40 and c["dropped"] == 0 and c["scan_errors"] == 0
        assert len(h.tx.drain(keep=True)) == sent
