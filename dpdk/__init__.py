"""DPDK declarations for Cython (one .pxd per DPDK header group) and shim.h
for the type-taking macros and the structs the fast path and the NFs share.

The lowest host-side layer: nothing here imports another package of the
project.  Not here: behaviour (host_agent/, nflib/).
"""
