"""Issue 14, part 5: a chain's rate limit is one budget, not one per
instance.  The plans split it among the chain's ratelimit instances by
their share of its rate (controller.plans), and three instances fed the
chain's traffic as the hops before them spread it pass the chain's
budget, where unsplit they would pass three times it."""

from contracts.plan import check_plan
from controller.placement import place
from controller.plans import host_plans
from controller.topology import load_topology
from host_agent import tables
from test_core import NAT_TOPO
from test_nf_helpers import harness, udp

# three hosts of two cores on one switch, as tests/test_core.py's NAT tests
TOPOLOGY = NAT_TOPO.split("nfs:")[0].replace("name: natted", "name: ratelimit-split") + """\
nfs:
  ratelimit: {cores: 1, mpps: 1, config: limit.yaml}
chains:
  - name: api
    ingress: internet
    egress: h3
    match: {ipv4_dst: 10.0.0.3/32, ip_proto: 17}
    nfs: [ratelimit]
    mpps: 2.5
    spi: 16
"""
LIMIT = "rate: 100000\nburst: 1000\nchains:\n  16: {rate: 3000, burst: 300}\n"


def split_configs(tmp_path):
    (tmp_path / "limit.yaml").write_text(LIMIT)
    (tmp_path / "t.yaml").write_text(TOPOLOGY)
    topo = load_topology(str(tmp_path / "t.yaml"))
    plans = host_plans(topo, place(topo, say=False), 3)
    configs = [i["config"] for p in plans.values() for i in p["instances"]
               if i["nf"] == "ratelimit"]
    for p in plans.values():
        tables.compile_plan(check_plan(p))
    return configs


def test_the_plans_split_a_chain_budget_by_share(tmp_path):
    configs = split_configs(tmp_path)
    assert len(configs) == 3
    limits = [c["chains"]["16"] for c in configs]
    assert abs(sum(x["rate"] for x in limits) - 3000) <= 3
    assert abs(sum(x["burst"] for x in limits) - 300) <= 3
    assert all(c["rate"] == 100000 and c["burst"] == 1000 for c in configs), \
        "the per-source limits stay as written"


def test_three_instances_pass_the_chain_budget_not_three_times_it(tmp_path):
    configs = split_configs(tmp_path)
    frames = [udp(f"192.0.2.{1 + i % 200}", "10.0.0.3", 1000 + i, 53) for i in range(900)]
    passed, unsplit = 0, 0
    for n, config in enumerate(configs):
        mine = frames[n::len(configs)]          # the hops before spread flows evenly
        with harness([("ratelimit", config)]) as h:
            passed += len(h.send(mine))
        whole = dict(config, chains={"16": {"rate": 3000, "burst": 300}})
        with harness([("ratelimit", whole)]) as h:
            unsplit += len(h.send(mine))
    assert abs(passed - 300) <= 30, passed             # the chain's burst, within 10 %
    assert unsplit == 900, "each instance alone would pass the whole budget"
