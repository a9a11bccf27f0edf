"""The NF library, as OpenNetVM's onvm_nflib is to its NFs.

`nflib/nf.pxd` is the one interface a Cython NF cimports: packet metadata
(with the L4 offset the fast path's parser filled in), verdicts, byte and
checksum helpers, the `NativeNF` base class, the ACL wrapper, the per-NF
flow table.  `nflib.api` holds the Python side: `PythonNF`, `NFConfigError`
and the registry of NF types (entry point group `onvm.nfs`).  `nflib.eal`
starts DPDK in a process (the host's agent, or an NF's own process).

The library owns the loop over a batch and the NF-process loop
(`nflib.nf.serve_nf`): an NF supplies its handler, nothing else.

Not here: the manager's loop, the parser, ports and plans (host_agent/),
the built-in NFs (nfs/).  Below it only dpdk/ and contracts/.
"""
