"""The host's fast path as the agent, the harness, the benchmarks and the
tests use it: one place to import it from.  The code lives by concern:

* nflib.eal: DPDK's EAL in this process, the packet pool, FastPathError;
* nflib.nf: the NF library (verdicts, the NF-process loop serve_nf);
* host_agent.ports: ports in memory and probed vdevs, Ring;
* host_agent.tables: the plan compiler (plain Python, flat arrays);
* host_agent.plantables: their loader into the loop's C tables;
* host_agent.parser (.pxd): the packet parser, inline in the loop;
* host_agent.manager: the Manager and its loop.

Not here: any code of its own.
"""
from nflib.eal import (FastPathError, LcoreThread, default_eal_args,  # noqa: F401
                       eal_cleanup, eal_init, eal_running, hugepages_available, pool_counts,
                       remove_runtime_files, tsc_hz, worker_lcores)
from nflib.nf import (DROP, NEXT, OUT, TONF, Acl, ring_names, serve_nf,  # noqa: F401
                      stop_serving)
from host_agent.manager import DROP_REASONS, FLOW_ENTRIES, Manager  # noqa: F401
from host_agent.ports import (Ring, port_name, probe_port, rewrite_cycles, ring_pair_port,  # noqa: F401
                              ring_port, ring_queues_port)
from host_agent.tables import (SLOTS, compile_plan, consistent_slots,  # noqa: F401
                               match_to_acl_rule)
