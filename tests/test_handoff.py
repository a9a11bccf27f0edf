"""Worker handoff (host_agent/handoff.pxd, host_agent.workers): MPLS-tagged
traffic from other hosts, which a NIC puts on one queue, is spread over
the workers by its inner flow; every flow runs on one worker, in order;
stateful NFs keep their per-flow decisions; a full handoff ring drops,
counted; an instance's state with workers is the union of its workers'.
Real fast path: ring-backed ports with one queue pair per worker."""
import struct

from scapy.all import IP, TCP, UDP, Ether, IPv6, raw

from host_agent import fastpath as fp
from host_agent.harness import HOST_MAC, NODE_LABEL, SPI, chain_plan
from host_agent.workers import HANDOFF_RING, WorkerNFs, queue_of
from nflib.api import make_nf
from test_cores import (check_out, flow_frames, stamp_factory, stamp_plan,  # noqa: F401
    workers)                # the fixture: Workers on ring ports, mbufs balanced after

PEER_MAC = "02:00:00:00:00:09"


def tagged(frame, spi=SPI, si=255, node=NODE_LABEL):
    """`frame` as another host sends it here: the SFC label stack of
    DESIGN.md (transport, SPI, SI) between Ethernet and IP."""
    frame = bytes(frame)
    labels = struct.pack("!III", (node << 12) | 64, (spi << 12) | 64,
                         (si << 12) | 0x100 | 64)
    return (bytes.fromhex(HOST_MAC.replace(":", "")) + bytes.fromhex(PEER_MAC.replace(":", ""))
            + b"\x88\x47" + labels + frame[14:])


def ipv6_frames(flows):
    return [raw(Ether(dst=HOST_MAC) / IPv6(src=f"2001:db8::{f + 1:x}", dst="2001:db8:1::1")
                / UDP(sport=2000 + f, dport=53) / b"q") for f in range(flows)]


def test_queue_of_is_the_loops_hash_for_ipv4_ipv6_and_tagged_frames(workers):
    """Frames spread by queue_of stay on their queue (no handoff), and a
    tagged frame's queue is its inner frame's: the loop and queue_of
    hash alike."""
    port, w, rxs, txs = workers(2)
    w.apply_plan(chain_plan([("forward", {})], port, port,
                            match={"ipv4_dst": "0.0.0.0/0"}), make_nf)
    plain = flow_frames(64, 1) + ipv6_frames(64)
    for f in plain:
        assert queue_of(tagged(f), 2) == queue_of(f, 2)
    assert {queue_of(f, 2) for f in ipv6_frames(64)} == {0, 1}
    for rx, q in zip(rxs, range(2)):
        share = [f for f in flow_frames(64, 1) if queue_of(f, 2) == q]
        assert rx.fill(share, len(share)) == len(share)
    w.run(idle_seconds=0.05)
    assert w.stats()["handoffs"] == {"sent": 0, "received": 0}
    # IPv6 frames tagged (the plan's classifier is IPv4-only): all on queue 0
    frames = [tagged(f) for f in ipv6_frames(64)]
    rxs[0].fill(frames, len(frames))
    w.run(idle_seconds=0.05)
    outs = [tx.drain(keep=True) for tx in txs]
    assert len(outs[0]) + len(outs[1]) == 64 + 64
    for q, out in enumerate(outs):
        for f in out:
            assert queue_of(f, 2) == q
    moved = sum(queue_of(f, 2) for f in frames)
    assert w.stats()["handoffs"] == {"sent": moved, "received": moved}


def test_tagged_traffic_of_many_flows_spreads_each_flow_on_one_worker_in_order(workers):
    port, w, rxs, txs = workers(2)
    w.apply_plan(stamp_plan(port), stamp_factory)
    plain = flow_frames(200, 15)
    frames = [tagged(f) for f in plain]
    assert rxs[0].fill(frames, len(frames)) == len(frames)     # the NIC: one queue
    runs = w.run(idle_seconds=0.1)
    seen = check_out([tx.drain(keep=True) for tx in txs], 200, 15)
    for flow, (queues, _) in seen.items():
        assert queues == {queue_of(plain[flow], 2)}
    stats = w.stats()
    moved = sum(queue_of(f, 2) for f in frames)
    assert 0 < moved < len(frames)
    assert stats["handoffs"] == {"sent": moved, "received": moved}
    assert [x["processed"] for x in stats["workers"]] == [len(frames) - moved, moved]
    assert all(n > 0 for n, _ in runs)
    assert stats["drops"] == {reason: 0 for reason in fp.DROP_REASONS}
    assert stats["flow_table"]["entries"] == 200      # each flow in one worker's table


def test_a_full_handoff_ring_drops_counted_and_frees_every_packet(workers):
    port, w, rxs, txs = workers(2)
    w.apply_plan(stamp_plan(port), stamp_factory)
    mine = [tagged(f) for f in flow_frames(400, 2) if queue_of(f, 2) == 0]
    frames = mine + [tagged(f) for f in flow_frames(400, 40) if queue_of(f, 2) == 1][:6000]
    theirs = sum(queue_of(f, 2) for f in frames)
    assert theirs == 6000 > HANDOFF_RING
    assert rxs[0].fill(frames, len(frames)) == len(frames)
    w.managers[0].run(idle_seconds=0.05)          # worker 1 does not run: its ring fills
    s = w.stats()
    assert s["handoffs"]["sent"] == HANDOFF_RING - 1            # an rte_ring holds size - 1
    assert s["drops"]["handoff_full"] == theirs - (HANDOFF_RING - 1)
    w.managers[1].run(idle_seconds=0.05)
    s = w.stats()
    assert s["handoffs"]["received"] == HANDOFF_RING - 1
    out = [tx.drain() for tx in txs]
    assert out == [len(frames) - theirs, HANDOFF_RING - 1]
    assert s["processed"] + s["drops"]["handoff_full"] == len(frames)


# ----------------------------------------------------------- stateful NFs

RULES = "allow tcp 10.0.0.0/8 any any 80\ndefault deny\n"


def tcp_frames(flows, per_flow, reply=False, flags="A"):
    out = []
    for s in range(per_flow):
        for f in range(flows):
            a, b = f"10.0.{f // 200}.{f % 200 + 1}", "203.0.113.9"
            sport, dport = 20000 + f, 80
            if reply:
                a, b, sport, dport = b, a, dport, sport
            out.append(raw(Ether(dst=HOST_MAC) / IP(src=a, dst=b)
                           / TCP(sport=sport, dport=dport, flags=flags, seq=1000 + s)
                           / f"{f:05d}".encode()))
    return out


def send_tagged(w, rxs, txs, frames):
    """Frames tagged, all into queue 0; what came out of each worker."""
    frames = [tagged(f) for f in frames]
    assert rxs[0].fill(frames, len(frames)) == len(frames)
    w.run(idle_seconds=0.1)
    return [tx.drain(keep=True) for tx in txs]


def test_stateful_firewall_on_workers_passes_every_tagged_reply_of_its_connections(workers):
    """Both directions of a connection come tagged from other hosts onto
    one queue; the reply reaches the worker that saw the SYN, so all
    pass, and unsolicited ones are dropped (counted)."""
    port, w, rxs, txs = workers(2)
    w.apply_plan(chain_plan([("firewall-stateful", {"rules_text": RULES})], port, port),
                 make_nf)
    out = send_tagged(w, rxs, txs, tcp_frames(100, 1, flags="S"))
    assert sum(map(len, out)) == 100 and all(out)
    out = send_tagged(w, rxs, txs, tcp_frames(100, 3, reply=True))
    assert sum(map(len, out)) == 300
    strangers = [raw(Ether(dst=HOST_MAC) / IP(src="203.0.113.9", dst="10.9.0.1")
                     / TCP(sport=80, dport=30000 + i, flags="A")) for i in range(20)]
    out = send_tagged(w, rxs, txs, strangers)
    assert out == [[], []]
    s = w.stats()
    assert s["drops"]["nf_drop"] == 20 and s["drops"]["handoff_full"] == 0
    counters = s["instances"][1]["counters"]
    assert counters["connections"] == 100 and counters["replies"] == 300


LB = {"vip": "203.0.113.9", "table_size": 4093,
      "backends": [{"name": f"web{i}", "ip": f"10.0.2.{i}", "mac": f"02:00:00:00:02:0{i}"}
                   for i in range(1, 5)]}


def backends(outs):
    """{(src, sport): {backend ip}} and {(src, sport): {worker}}."""
    by_flow, on = {}, {}
    for q, out in enumerate(outs):
        for f in out:
            pkt = Ether(f)
            key = (pkt[IP].src, pkt[TCP].sport)
            by_flow.setdefault(key, set()).add(pkt[IP].dst)
            on.setdefault(key, set()).add(q)
    return by_flow, on


def test_lb_on_workers_keeps_each_flows_backend_and_moves_its_state_whole(workers):
    port, w, rxs, txs = workers(2)
    w.apply_plan(chain_plan([("lb", LB)], port, port), make_nf)
    by_flow, on = backends(send_tagged(w, rxs, txs, tcp_frames(300, 4)))
    assert len(by_flow) == 300
    assert all(len(b) == 1 for b in by_flow.values())         # one backend per flow
    assert all(len(q) == 1 for q in on.values()) and {min(q) for q in on.values()} == {0, 1}
    # the instance's state: each flow in one worker's object, the union in nf_object's
    nf = w.nf_object(1)
    assert isinstance(nf, WorkerNFs)
    each = [len(o.export_state()["flows"]) for o in w.nf_objects(1)]
    assert all(each) and sum(each) == 300
    state = nf.export_state()
    assert len(state["flows"]) == 300
    entries, cursor = [], 0
    while cursor is not None:
        cursor, chunk = nf.export_chunk(cursor, 64)
        entries += chunk
    assert len(nf.state_of(entries)["flows"]) == 300          # as replicas read it
    assert nf.counters()["flows"] == 300
    # moved to a host whose pool has a fifth backend: Maglev alone would
    # move some flows; with the state, none moves
    bigger = dict(LB, backends=LB["backends"] + [
        {"name": "web5", "ip": "10.0.2.5", "mac": "02:00:00:00:02:05"}])
    port2, w2, rxs2, txs2 = workers(2)

    def moved_in(inst):
        obj = make_nf(inst)
        obj.import_state(state)
        return obj
    w2.apply_plan(chain_plan([("lb", bigger)], port2, port2), moved_in)
    after, _ = backends(send_tagged(w2, rxs2, txs2, tcp_frames(300, 2)))
    assert after == by_flow
    port3, w3, rxs3, txs3 = workers(2)
    w3.apply_plan(chain_plan([("lb", bigger)], port3, port3), make_nf)
    fresh, _ = backends(send_tagged(w3, rxs3, txs3, tcp_frames(300, 1)))
    assert fresh != by_flow                                   # the state mattered


NAT = {"external_ip": "198.51.100.1", "internal": "10.0.0.0/8", "port_range": [40000, 49999]}


def test_nat_on_workers_keeps_each_flows_mapping_and_exports_them_all(workers):
    port, w, rxs, txs = workers(2)
    w.apply_plan(chain_plan([("nat", NAT)], port, port), make_nf)
    outs = send_tagged(w, rxs, txs, tcp_frames(200, 3))
    assert sum(map(len, outs)) == 600
    mapping, on = {}, {}
    for q, out in enumerate(outs):
        for f in out:
            pkt = Ether(f)
            assert pkt[IP].src == NAT["external_ip"]
            flow = int(bytes(pkt[TCP].payload))
            mapping.setdefault(flow, set()).add(pkt[TCP].sport)
            on.setdefault(flow, set()).add(q)
    assert sorted(mapping) == list(range(200))
    assert all(len(p) == 1 for p in mapping.values())         # one mapping per flow
    assert all(len(q) == 1 for q in on.values())
    state = w.nf_object(1).export_state()
    assert sorted(m["external_port"] for m in state["mappings"]) == \
        sorted(min(p) for p in mapping.values())


def test_agent_on_workers_exports_an_instances_whole_state_and_moves_it(workers):
    """The agent's move (controller/moves.py): "export" on the old host
    snapshots the instance (the union of its workers' objects), "state"
    on the new host imports it into each worker's object."""
    from host_agent.agent import Agent
    port, w, rxs, txs = workers(2)
    old = Agent("harness", w, eal_args=[])
    assert old.apply(chain_plan([("lb", LB)], port, port)), old.plan_error
    by_flow, _ = backends(send_tagged(w, rxs, txs, tcp_frames(300, 2)))
    plan = chain_plan([("lb", LB)], port, port, generation=2)
    plan["instances"][0]["export"] = True
    assert old.apply(plan), old.plan_error
    state = old.exported[1]["state"]
    assert len(state["flows"]) == 300
    bigger = dict(LB, backends=LB["backends"] + [
        {"name": "web5", "ip": "10.0.2.5", "mac": "02:00:00:00:02:05"}])
    port2, w2, rxs2, txs2 = workers(2)
    new = Agent("harness", w2, eal_args=[])
    plan = chain_plan([("lb", bigger)], port2, port2)
    plan["instances"][0]["state"] = state
    assert new.apply(plan), new.plan_error
    assert [len(o.export_state()["flows"]) for o in w2.nf_objects(1)] == [300, 300]
    after, _ = backends(send_tagged(w2, rxs2, txs2, tcp_frames(300, 2)))
    assert after == by_flow


def test_bench_handoff_reports_each_way_with_its_handoffs():
    import json
    import os
    import subprocess
    import sys
    import glob
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runtime = set(glob.glob("/var/run/dpdk/onvm_hbench*"))
    out = subprocess.run([sys.executable, "-m", "onvm.cli", "bench", "handoff", "--chain",
                          "forward", "--cores", "2", "--rounds", "1", "--json"], cwd=repo,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(r["mpps"]) == ["one_queue", "spread", "tagged"]
    assert all(v > 0 for v in r["mpps"].values())
    assert r["handoffs"]["spread"] == r["handoff_full"]["spread"] == 0
    # about half of 49152 frames belong to worker 1: handed over or dropped, counted
    for way in ("tagged", "one_queue"):
        moved = r["handoffs"][way] + r["handoff_full"][way]
        assert 20000 < moved < 29152, (way, moved)
    assert set(r["drops"]) <= {"handoff_full"}
    assert set(glob.glob("/var/run/dpdk/onvm_hbench*")) <= runtime    # it cleaned up


def test_workers_close_while_running_stops_them_all_first(workers):
    """Closing workers whose loops run (the agent stops on SIGTERM) stops
    each before any ring is freed: no packet is handed to a closed ring."""
    import threading
    port, w, rxs, txs = workers(2)
    w.apply_plan(stamp_plan(port), stamp_factory)
    runner = threading.Thread(target=w.run)
    runner.start()
    frames = [tagged(f) for f in flow_frames(100, 20)]
    rxs[0].fill(frames, len(frames))
    w.close()
    runner.join(10)
    assert not runner.is_alive() and not any(m.running for m in w.managers)
