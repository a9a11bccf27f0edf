"""Issue 12: the ddos sketch's secret seed, from the controller to the
instances.  The plans give every ddos instance one seed (their sketches
are added together, so they must hash alike), a new leader keeps the seed
of the plans it reads back, and instances built from one plan, on three
agents sharing a real etcd, merge their sketches and block a SYN flood
from an IPv6 source spread under each one's threshold, while a victim
whose address has the attacker's CRC digest goes on."""
import logging
import time

import pytest
from scapy.all import IPv6, TCP

from controller import plans
from controller.placement import place
from controller.topology import parse_topology
from nfs.configs import check_config
from ipv6crc import collide
from test_core import NAT_TOPO, Loop
from test_nf_firewall_ipv6 import labelled
from test_sharing_agents import SYN_THRESHOLD, agents, offer

TOPO = NAT_TOPO.split("nfs:")[0].replace("name: natted", "name: guarded") + """\
nfs:
  ddos: {cores: 1, mpps: 1%s}
chains:
  - {name: web, ingress: inside, egress: internet, match: {ipv4_src: 10.9.0.0/16}, nfs: [ddos], mpps: 2.5}
"""
SEED = 0x5eed_0f_c0ffee_0001


def topology(config=""):
    return parse_topology(TOPO % config, "guarded.yaml")


def ddos_configs(out):
    return {(h, i["id"]): i["config"] for h, p in out.items() for i in p["instances"]
            if i["nf"] == "ddos"}


def test_every_ddos_instance_of_the_plans_gets_the_seed():
    topo = topology()
    configs = ddos_configs(plans.host_plans(topo, place(topo, say=False), 1, ddos_seed=SEED))
    assert len(configs) == 3 and all(c == {"seed": SEED} for c in configs.values())
    assert all(check_config("ddos", c)["seed"] == SEED for c in configs.values())
    # without a seed (onvm bench, older callers) the configs say none
    bare = ddos_configs(plans.host_plans(topo, place(topo, say=False), 1))
    assert all("seed" not in c for c in bare.values())


def test_the_catalog_file_is_inlined_and_its_own_seed_wins(tmp_path):
    written = tmp_path / "ddos.yaml"
    written.write_text("window: 2\nsyn_threshold: 50\n")
    topo = topology(f", config: {written}")
    configs = ddos_configs(plans.host_plans(topo, place(topo, say=False), 1, ddos_seed=SEED))
    assert all(c == {"window": 2, "syn_threshold": 50, "seed": SEED} for c in configs.values())
    own = tmp_path / "own.yaml"
    own.write_text("window: 2\nseed: 7\n")
    topo = topology(f", config: {own}")
    configs = ddos_configs(plans.host_plans(topo, place(topo, say=False), 1, ddos_seed=SEED))
    assert all(c["seed"] == 7 for c in configs.values())


def test_the_seed_read_back_from_plans_is_the_one_most_instances_carry():
    def plan(*seeds):
        return {"instances": [{"id": i + 1, "nf": "ddos", "config": {"seed": s}}
                              for i, s in enumerate(seeds)]
                + [{"id": 9, "nf": "nat", "config": {"seed": 1}}]}
    assert plans.ddos_seed_from({"h1": plan(5, 9), "h2": plan(9)}) == 9
    assert plans.ddos_seed_from({"h1": plan(5), "h2": plan(3)}) == 3
    assert plans.ddos_seed_from({"h1": plan(True, -1, 2 ** 64, "7")}) is None
    assert plans.ddos_seed_from({"h1": {"instances": []}}) is None
    assert plans.ddos_seed_from(None) is None


@pytest.fixture
def ddos_loop():
    loop = Loop(topology())
    loop.register("h1", "h2", "h3")
    loop.step()
    return loop


def stored_seeds(store):
    return [c.get("seed") for c in ddos_configs(store.plans()).values()]


def test_the_leader_writes_one_seed_and_a_new_leader_keeps_it(ddos_loop):
    seeds = stored_seeds(ddos_loop.store)
    assert len(seeds) == 3 and len(set(seeds)) == 1 and isinstance(seeds[0], int)
    kept = seeds[0]
    ddos_loop.step()
    assert set(stored_seeds(ddos_loop.store)) == {kept}, "the seed stays from plan to plan"
    successor = Loop(ddos_loop.topo, ddos_loop.store)
    successor.register("h1", "h2", "h3")
    successor.step()
    assert successor.core.ddos_seed == kept
    assert set(stored_seeds(successor.store)) == {kept}
    # a cluster of its own draws a seed of its own
    other = Loop(topology())
    other.register("h1", "h2", "h3")
    other.step()
    assert set(stored_seeds(other.store)) != {kept}


# -- instances of one plan on three agents (real fast paths, real etcd) --------

VICTIM = "2001:db8:9::10"
ATTACKER = collide(VICTIM, "2001:db8:66::")


def syn6(src, n):
    return [labelled(IPv6(src=src, dst="2001:db8:1::5") / TCP(sport=2000 + i, dport=80, flags="S"))
            for i in range(n)]


def test_instances_built_from_one_plan_share_the_seed_and_block_a_split_ipv6_flood(etcd, caplog):
    topo = topology()
    configs = ddos_configs(plans.host_plans(topo, place(topo, say=False), 1, ddos_seed=SEED))
    config, = {tuple(sorted(c.items())) for c in configs.values()}    # one config for all
    config = dict(config, window=1.0, syn_threshold=SYN_THRESHOLD, packet_threshold=10 ** 6)
    per_instance = SYN_THRESHOLD * 2 // 3       # a window each: under the threshold
    frames = [syn6(ATTACKER, 300) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="onvm.nf.ddos"):
        with agents(etcd, "ddos", config) as run:
            assert [h.nf(1).seed for h, _ in run] == [SEED] * 3
            rx = [h.rx for h, _ in run]
            start, blocked_at = time.monotonic(), None
            while time.monotonic() - start < 4.0 and blocked_at is None:
                offer(rx, frames, 3 * per_instance, (1 / 3,) * 3, 0.1)
                if all([b["src"] for b in h.nf(1).blocked()] == [ATTACKER] for h, _ in run):
                    blocked_at = time.monotonic() - start
            counters = [h.nf(1).counters() for h, _ in run]
            assert blocked_at is not None and blocked_at <= 2 * config["window"], counters
            # the victim of the attacker's digest passes everywhere
            for h, _ in run:
                h.tx.drain()
                h.rx.fill(syn6(VICTIM, 1), 1)
                h.rx.fill(syn6(ATTACKER, 1), 1)
            time.sleep(0.3)
            assert [h.tx.drain() for h, _ in run] == [1, 1, 1]
    assert any(f"blocking {ATTACKER} for" in r.getMessage() for r in caplog.records)
