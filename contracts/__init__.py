"""The contracts every part of onvm-cluster shares: the bottom layer.

Everything above imports from here and nothing here imports from above:

    onvm/         the `onvm` program, the emulation            (top)
    controller/   decides: placement, plans, switch rules, REST
    host_agent/   forwards: the DPDK fast path and the agent
    nfs/          the built-in network functions
    nflib/        the NF library every NF is written against
    dpdk/         DPDK's C declarations for Cython
    contracts/    this package: the model, the wire format, the plan
                  schema and its checks, the store's keys and client  (bottom)

Modules: `model` (the data center as frozen values), `wire` (constants of
the label stack, DESIGN.md "Wire format"), `plan` (a host's plan and its
checks), `store` (the keys of DESIGN.md in etcd, and their client, with
`store_api`, `store_etcd` and `store_memory` behind it), `validate` (the
one validation style: every error collected with its place).
"""
__version__ = "0.1.0"
