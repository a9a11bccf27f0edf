"""The data center as the controller sees it: switches, hosts, links, edges,
the NF catalog and the chains, as frozen values.

This module only holds the shapes.  Reading and checking a topology file is
`controller.topology`; placing chains is `controller.placement`; building the
graph of the fabric is `controller.fabric`.  Every other part of the
controller passes these objects around and never a raw dict from YAML.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Optional, Tuple

from contracts.wire import FIRST_NODE_LABEL, FIRST_SPI, MAX_LABEL  # noqa: F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class Switch:
    name: str
    dpid: int


@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    switch: str
    port: int
    mac: str
    ip: str            # with prefix length, as in the file: "10.0.0.1/24"
    cores: int
    label: int         # MPLS node label (transport label of this host)


@dataclasses.dataclass(frozen=True)
class Link:
    a: str
    a_port: int
    b: str
    b_port: int
    gbps: float


@dataclasses.dataclass(frozen=True)
class Edge:
    """Where traffic enters and leaves the data center."""
    name: str
    switch: str
    port: int


@dataclasses.dataclass(frozen=True)
class Server:
    """An application server: a plain machine that runs no agent, outside
    the trust boundary like an edge (it may only answer)."""
    name: str
    switch: str
    port: int
    mac: str
    ip: str            # with prefix length, as in the file
    ip6: Optional[str] = None   # its IPv6 address, as in the file (IPv6 chains to a pool)


@dataclasses.dataclass(frozen=True)
class NFType:
    """Catalog entry: what one instance of this NF type needs and serves."""
    name: str
    cores: int
    mpps: float
    config: Optional[str] = None   # rule or config file for the NF, if any


@dataclasses.dataclass(frozen=True)
class Chain:
    name: str
    ingress: str                   # an edge name
    egress: str                    # a host, an edge or a server name (a pool's first)
    match: Mapping[str, object]    # OpenFlow-style match fields
    nfs: Tuple[str, ...]
    mpps: float
    spi: int                       # service path id, FIRST_SPI.. in file order
    symmetric: bool = False        # replies come back through the same instances
    pool: Tuple[str, ...] = ()     # the servers of a pool egress (egress is the first)
    autoscale: Optional[Mapping[str, object]] = None   # controller.autoscale's policy


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    switches: Tuple[Switch, ...]
    hosts: Tuple[Host, ...]
    links: Tuple[Link, ...]
    edges: Tuple[Edge, ...]
    nfs: Mapping[str, NFType]
    chains: Tuple[Chain, ...]
    source: str = "<memory>"       # the file it came from, for messages
    # What its check could not vouch for (an NF config nobody here can
    # check), as `FILE:LINE: warning: ...`; not part of the topology's value.
    warnings: Tuple[str, ...] = dataclasses.field(default=(), compare=False)
    servers: Tuple[Server, ...] = ()   # application servers (no agent)

    @functools.cached_property
    def _index(self):
        """{kind: {name: value}}: lookups by name in O(1).  Computed once
        per (frozen) topology; `with_chains`/`without_hosts` give new ones."""
        index = {}
        for kind, values in (("host", self.hosts), ("switch", self.switches),
                             ("edge", self.edges), ("chain", self.chains),
                             ("server", self.servers)):
            by_name = index[kind] = {}
            for value in values:            # the first of a name wins, as in the file
                by_name.setdefault(value.name, value)
        return index

    def host(self, name: str) -> Host:
        return self._index["host"][name]

    def switch(self, name: str) -> Switch:
        return self._index["switch"][name]

    def edge(self, name: str) -> Edge:
        return self._index["edge"][name]

    def server(self, name: str) -> Server:
        return self._index["server"][name]

    def chain(self, name: str) -> Chain:
        return self._index["chain"][name]

    def with_chains(self, chains) -> "Topology":
        return dataclasses.replace(self, chains=tuple(chains))

    def without_hosts(self, names) -> "Topology":
        gone = set(names)
        return dataclasses.replace(
            self, hosts=tuple(h for h in self.hosts if h.name not in gone))
