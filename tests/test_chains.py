"""controller.chains, the one chain validator: a REST body reports every
error by key path, and a topology file gets the very same message text
after its FILE:LINE place."""
import os

import pytest

from controller.chains import RequestError, chain_from_json
from controller.topology import TopologyError, load_topology, parse_topology

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINIMAL = load_topology(os.path.join(REPO, "topologies", "minimal.yaml"))
BODY = {"name": "mail", "ingress": "internet", "egress": "h2",
        "match": {"ipv4_dst": "10.0.0.9/32"}, "nfs": ["firewall"], "mpps": 1.0}


def refused(body, others=()):
    with pytest.raises(RequestError) as err:
        chain_from_json(body, MINIMAL, list(others))
    assert err.value.message == str(err.value) == "\n".join(err.value.errors)
    return err.value.status, err.value.errors


def test_a_good_body_becomes_a_chain_with_the_lowest_free_spi():
    chain = chain_from_json(BODY, MINIMAL, MINIMAL.chains)
    assert (chain.name, chain.spi, chain.nfs, chain.mpps) == ("mail", 17, ("firewall",), 1.0)


def test_a_body_with_two_errors_reports_both():
    body = dict(BODY, egress="nowhere", match={"ipv4_dst": "10.0.0.9/32", "tcp_dst": 70000})
    assert refused(body) == (400, [
        "chain.egress: 'nowhere' is not a host, a server or an edge of topology minimal",
        "chain.match.tcp_dst: must be 0..65535"])


def test_every_field_error_and_the_keys_are_reported_together():
    body = dict(BODY, colour="red", name="a b", nfs=["dpi"], mpps=0)
    del body["ingress"]
    assert refused(body) == (400, [
        "chain: unknown field(s) colour; known: name, ingress, egress, match, nfs, mpps, spi, symmetric, autoscale",
        "chain: missing field(s) ingress",
        "chain.name: must be 1..64 letters, digits, '_', '.', '-', not 'a b'",
        "chain.nfs[0]: NF type 'dpi' is not in the catalog (nfs: firewall, monitor)",
        "chain.mpps: must be a number > 0, not 0"])


def test_clashes_are_409_and_both_are_reported():
    web = MINIMAL.chain("web")
    body = dict(BODY, spi=web.spi, match=dict(web.match))
    assert refused(body, [web]) == (409, [
        f"chain.spi: SPI {web.spi} is already used by chain web",
        "chain.match: same ingress and match as chain web; the edge switch "
        "could not tell them apart"])


def test_a_retired_chain_holds_its_spi_and_match():
    web = MINIMAL.chain("web")
    hint = ("chain web (retired: its traffic is dropped until released with DELETE "
            "/onvm/v1/chains/web?traffic=forward)")
    body = dict(BODY, spi=web.spi, match=dict(web.match))
    with pytest.raises(RequestError) as err:
        chain_from_json(body, MINIMAL, [], retired=[web])
    assert (err.value.status, err.value.errors) == (409, [
        f"chain.spi: SPI {web.spi} is already used by {hint}",
        f"chain.match: same ingress and match as {hint}; the edge switch could "
        "not tell them apart"])
    assert chain_from_json(BODY, MINIMAL, [], retired=[web]).spi == web.spi + 1
    # the retired chain's own name: created again, keeping what it held
    again = chain_from_json(dict(BODY, name="web", match=dict(web.match)), MINIMAL, [],
                            spi=web.spi, retired=[web])
    assert again.spi == web.spi


# Each case: (chain body change, line of the key in TOPOLOGY, key path,
# the message after the place in both).
SAME = [
    ({"ingress": "h1"}, 11, "ingress",
     "'h1' is not an edge of topology t; traffic enters the fabric only at edges: internet"),
    ({"mpps": -1}, 12, "mpps", "must be a number > 0, not -1"),
    ({"match": {"udp_dst": 99999}}, 11, "match.udp_dst", "must be 0..65535"),
    ({"spi": 7}, 12, "spi", "must be an integer 16..524287 (a symmetric chain's replies use SPI + 2^19), not 7"),
]

TOPOLOGY = """\
name: t
switches:
  - {name: s1, dpid: 0x101}
hosts:
  - {name: h1, switch: s1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.0.1/24, cores: 4}
edges:
  - {name: internet, switch: s1, port: 10}
nfs:
  monitor: {cores: 1, mpps: 14}
chains:
  - {name: web, ingress: %(ingress)s, egress: h1, match: %(match)s, nfs: [monitor],
     mpps: %(mpps)s, spi: %(spi)s}
"""


@pytest.mark.parametrize("change, line, key, message", SAME, ids=[c[2] for c in SAME])
def test_topology_and_rest_say_the_same_after_the_place(change, line, key, message):
    body = {"name": "web", "ingress": "internet", "egress": "h1",
            "match": {"ipv4_dst": "10.0.0.1/32"}, "nfs": ["monitor"], "mpps": 1.0,
            "spi": 16}
    body.update(change)
    text = TOPOLOGY % {k: (v if not isinstance(v, dict) else
                           "{" + ", ".join(f"{a}: {b}" for a, b in v.items()) + "}")
                       for k, v in body.items()}
    with pytest.raises(TopologyError) as err:
        parse_topology(text, "t.yaml")
    assert err.value.errors == [f"t.yaml:{line}: chain web: {key}: {message}"]
    topo = parse_topology(TOPOLOGY % {"ingress": "internet", "match": "{ipv4_dst: 10.0.0.1/32}",
                                      "mpps": 1, "spi": 16}, "t.yaml")
    with pytest.raises(RequestError) as err:
        chain_from_json(body, topo, [])
    assert err.value.errors == [f"chain.{key}: {message}"]


SERVED = load_topology(os.path.join(REPO, "tests", "served.yaml"))
POOL = {"name": "shop", "ingress": "internet", "egress": ["web1", "web2"],
        "match": {"ipv4_dst": "10.0.1.101/32"}, "nfs": ["nat", "lb"], "mpps": 0.5}


def test_a_pool_body_becomes_a_symmetric_chain_ending_at_its_first_server():
    chain = chain_from_json(POOL, SERVED, SERVED.chains)
    assert (chain.egress, chain.pool, chain.symmetric, chain.spi) == (
        "web1", ("web1", "web2"), True, 18)
    one = chain_from_json(dict(POOL, egress="web2", nfs=["monitor"]), SERVED, [])
    assert (one.egress, one.pool, one.symmetric) == ("web2", (), False)
    told = chain_from_json(dict(POOL, symmetric=False), SERVED, [])
    assert told.symmetric is False


def test_stored_bodies_read_back_the_same_chain():
    from controller.chains import Scope
    from controller.chains import chains_from_store
    from controller.view import chain_to_json
    chains = [chain_from_json(POOL, SERVED, SERVED.chains), *SERVED.chains]
    stored = {c.name: chain_to_json(c) for c in chains}
    assert list(chains_from_store(stored, Scope.of(SERVED)).values()) == sorted(
        chains, key=lambda c: c.spi)
    old = dict(stored["shop"])
    del old["symmetric"]        # a body stored before chains had it: the default
    assert chains_from_store({"shop": old}, Scope.of(SERVED))["shop"].symmetric is True
