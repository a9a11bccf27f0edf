"""Issue 14, autoscaling (controller.autoscale): the policy's checks (the
topology file's FILE:LINE and the REST API's key path), the decisions on
measured load (hot, cold, hysteresis, cool-down, min/max), and the cluster
core re-placing a chain scaled from the stats its agents publish, with a
memory:// store and a fake clock as tests/test_core.py drives it."""
import dataclasses

import pytest

from controller import topogen
from controller.autoscale import Autoscaler, check_policy
from controller.chains import RequestError, chain_from_json
from controller.core import STATS_DECIDE_SECONDS
from controller.placement import place
from controller.topology import TopologyError, load_topology
from controller.view import chain_to_json
from test_core import Loop

POLICY = {"min": 1, "max": 3, "hot_s": 3, "cold_s": 10, "cooldown_s": 5}


@pytest.fixture
def topo():
    generated = topogen.leaf_spine(2, 2, 2, chains=1)
    chain = dataclasses.replace(generated.chains[0], mpps=0.5, autoscale=dict(POLICY))
    return generated.with_chains([chain])


def problems(value):
    out = []
    check_policy(value, lambda path, message: out.append((path, message)))
    return out


def test_a_policy_is_checked_field_by_field():
    assert problems({}) == [] and problems(POLICY) == []
    assert problems({"min": 3, "max": 2}) == [(("min",), "must not exceed max (2), is 3")]
    assert problems({"low": 0.8, "high": 0.5})[0][0] == ("low",)
    assert problems({"max": 0})[0] == (("max",), "must be an integer 1..64, not 0")
    assert problems({"hot": 1})[0][0] == ("hot",)
    assert problems({"high": 1.5})[0][0] == ("high",)
    assert problems([1])[0][0] == ()


def test_rest_and_file_name_the_field_at_fault(topo, tmp_path):
    body = dict(chain_to_json(topo.chains[0]), autoscale={"min": 4, "max": 2})
    with pytest.raises(RequestError) as err:
        chain_from_json(body, topo, [], spi=topo.chains[0].spi)
    assert err.value.status == 400
    assert "chain.autoscale.min: must not exceed max (2), is 4" in str(err.value)
    good = chain_from_json(dict(body, autoscale=POLICY), topo, [], spi=topo.chains[0].spi)
    assert good.autoscale == POLICY and chain_to_json(good)["autoscale"] == POLICY
    text = open("topologies/minimal.yaml").read()
    assert "    mpps: " in text
    path = tmp_path / "t.yaml"
    path.write_text(text.replace("    mpps: ", "    autoscale: {min: 2, max: 1}\n    mpps: ", 1))
    with pytest.raises(TopologyError) as err:
        load_topology(str(path))
    assert f"{path}:" in str(err.value) and "autoscale.min" in str(err.value)


def stats_at(placement, chain, real_mpps):
    """Stats summaries in which every instance of `chain` reports `real_mpps`."""
    out = {}
    for hop in placement.hops[chain.name]:
        for (host, iid), _ in hop:
            out.setdefault(host, {"instances": {}})["instances"][str(iid)] = {"mpps": real_mpps}
    return out


def test_hot_for_hot_s_scales_out_once_within_max_and_cold_scales_in(topo):
    chain = topo.chains[0]
    scaler = Autoscaler(pps_per_mpps=100)       # the emulation's scale
    placement = place(topo, say=False)
    cap = min(topo.nfs[n].mpps for n in chain.nfs)     # the busiest hop's
    hop = [topo.nfs[n].mpps for n in chain.nfs].index(cap)
    hot = stats_at(placement, chain, 0.95 * cap * 100 / 1e6)   # 95 % of one instance
    assert scaler.decide(0.0, [chain], topo.nfs, placement, hot) == []
    assert scaler.decide(2.0, [chain], topo.nfs, placement, hot) == [], "hot < hot_s"
    assert scaler.decide(3.5, [chain], topo.nfs, placement, hot) == [chain.name]
    rate = scaler.rate(chain)
    assert rate == pytest.approx(0.95 * cap / 0.55, rel=1e-3)   # to mid-band
    assert scaler.decisions[-1][4].startswith("measured ")
    scaled = place(topo.with_chains(scaler.effective([chain])), say=False)
    assert len(scaled.hops[chain.name][hop]) == 2
    # far over: max 3 instances, and not again within the cool-down
    flood = stats_at(scaled, chain, 10 * cap * 100 / 1e6)
    assert scaler.decide(4.0, [chain], topo.nfs, scaled, flood) == []
    assert scaler.decide(8.0, [chain], topo.nfs, scaled, flood) == []
    assert scaler.decide(9.0, [chain], topo.nfs, scaled, flood) == [chain.name]
    assert scaler.rate(chain) == pytest.approx(3 * cap)
    # cold for cold_s: in, to min 1
    three = place(topo.with_chains(scaler.effective([chain])), say=False)
    cold = stats_at(three, chain, 0.01 * cap * 100 / 1e6)
    assert scaler.decide(20.0, [chain], topo.nfs, three, cold) == []
    assert scaler.decide(29.0, [chain], topo.nfs, three, cold) == []
    assert scaler.decide(30.5, [chain], topo.nfs, three, cold) == [chain.name]
    assert len(place(topo.with_chains(scaler.effective([chain])), say=False)
               .hops[chain.name][hop]) == 1
    # in the band: nothing, and a new declared rate starts over
    assert scaler.decide(50.0, [chain], topo.nfs, three,
                         stats_at(three, chain, 0.5 * cap * 100 / 1e6)) in ([], [chain.name])
    redeclared = dataclasses.replace(chain, mpps=0.7)
    scaler.decide(60.0, [redeclared], topo.nfs, three, cold)
    assert scaler.rate(redeclared) == 0.7


def test_the_core_scales_a_chain_out_from_its_agents_stats(topo):
    loop = Loop(topo, pps_per_mpps=100)
    hosts = [h.name for h in topo.hosts]
    loop.register(*hosts)
    loop.step()
    chain = topo.chains[0]
    cap = min(topo.nfs[n].mpps for n in chain.nfs)
    hop = [topo.nfs[n].mpps for n in chain.nfs].index(cap)
    assert len(loop.core.current.hops[chain.name][hop]) == 1
    for _ in range(int(3 * STATS_DECIDE_SECONDS / 0.25)):      # three decision periods
        for host, summary in stats_at(loop.core.current, chain,
                                      0.95 * cap * 100 / 1e6).items():
            loop.store.put_stats(host, summary)
            loop.core.store_changed("/onvm/stats/" + host, summary)
        loop.step()
    assert len(loop.core.current.hops[chain.name][hop]) == 2
    shown = loop.core.autoscaling()
    assert shown["chains"][chain.name]["declared_mpps"] == 0.5
    assert shown["chains"][chain.name]["placed_mpps"] > 0.5
    assert shown["decisions"] and shown["decisions"][0]["chain"] == chain.name
    # the stored chain is untouched: the declared rate stays the user's
    assert loop.store.chains()[chain.name]["mpps"] == 0.5


def test_a_scaled_rate_that_does_not_fit_is_taken_back_and_the_chain_stays(topo, caplog):
    """max 8 instances a hop, but a hop has at most one instance a host:
    a flood asks for more than the hosts can give."""
    chain = dataclasses.replace(topo.chains[0], autoscale=dict(POLICY, max=8))
    loop = Loop(topo.with_chains([chain]), pps_per_mpps=100)
    loop.register(*[h.name for h in topo.hosts])
    loop.step()
    cap = min(topo.nfs[n].mpps for n in chain.nfs)
    with caplog.at_level("WARNING", logger="onvm.autoscale"):
        for _ in range(int(3 * STATS_DECIDE_SECONDS / 0.25)):
            for host, summary in stats_at(loop.core.current, chain,
                                          100 * cap * 100 / 1e6).items():
                loop.store.put_stats(host, summary)
                loop.core.store_changed("/onvm/stats/" + host, summary)
            loop.step()
    assert "does not fit" in caplog.text and "staying at" in caplog.text
    assert chain.name not in loop.core.unplaced
    assert chain.name in loop.core.current.hops


def test_an_autoscaled_chain_gives_up_instances_its_lower_rate_does_not_need(topo):
    """The placement keeps a chain's instances when its rate falls (a
    rate change that fits moves nothing), unless the chain is autoscaled:
    then the least loaded instances of each hop go, the rest stay."""
    chain = topo.chains[0]
    cap = min(topo.nfs[n].mpps for n in chain.nfs)
    hop = [topo.nfs[n].mpps for n in chain.nfs].index(cap)
    for policy, kept in ((dict(POLICY), 1), (None, 2)):
        c = dataclasses.replace(chain, autoscale=policy)
        two = place(topo.with_chains([dataclasses.replace(c, mpps=1.6 * cap)]), say=False)
        assert len(two.hops[c.name][hop]) == 2
        one = place(topo.with_chains([dataclasses.replace(c, mpps=0.8 * cap)]),
                    previous=two, say=False)
        assert len(one.hops[c.name][hop]) == kept
        assert set(k for k, _ in one.hops[c.name][hop]) <= set(k for k, _ in two.hops[c.name][hop])
