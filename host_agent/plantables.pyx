# cython: language_level=3
"""The loader: copies the plan compiler's flat arrays (host_agent.tables)
into a fresh tables_t for the manager's loop, binds each inline instance's
NF through the NF library and finds each process instance's rings.

Not here: deciding anything about the plan (host_agent.tables does, in
plain Python), swapping tables in (host_agent.manager).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, intptr_t
from libc.stdlib cimport calloc, free
from dpdk.rte_eal cimport rte_socket_id
from dpdk.rte_hash cimport rte_hash_add_key_data, rte_hash_free
from dpdk.rte_acl cimport rte_acl_free
from dpdk.rte_ring cimport rte_ring_lookup, rte_ring_create, RING_F_SP_ENQ, RING_F_SC_DEQ
from nflib.eal cimport new_hash
from nflib.nf cimport Acl, bind_nf

from nflib.eal import FastPathError, dpdk_error
from nflib.nf import ring_names
from host_agent import tables as _compiler

# One set of numbers for the compiler and the loop.
for _name, _value in (("SLOTS", SLOTS), ("MAX_INSTANCES", MAX_INSTANCES),
                      ("HOP_LOCAL", HOP_LOCAL), ("HOP_REMOTE", HOP_REMOTE),
                      ("HOP_END", HOP_END), ("FLAG_PINNED", FLAG_PINNED),
                      ("FLAG_KEPT", FLAG_KEPT)):
    if getattr(_compiler, _name) != _value:
        raise ImportError(f"host_agent.tables.{_name} is {getattr(_compiler, _name)}, "
                          f"the loop's (plantables.pxd) is {_value}: rebuild")


cdef uint32_t _stamps = 0       # the last tables' stamp


cdef tables_t *load_tables(object compiled, dict instances, str host) except NULL:
    """Tables from `compiled` (host_agent.tables.PlanTables).  `instances`
    maps each instance id to (NF object or None, stats pointer as int).
    Nothing the loop uses is touched until the caller swaps the pointer."""
    cdef tables_t *t = <tables_t *>calloc(1, sizeof(tables_t))
    if t == NULL:
        raise MemoryError()
    try:
        _load_header(t, compiled)
        _load_instances(t, compiled, instances, host)
        _load_hops(t, compiled)
        _load_classifiers(t, compiled)
        return t
    except BaseException:
        free_tables(t)
        raise


cdef int _load_header(tables_t *t, object c) except -1:
    cdef const uint8_t[:] mac = c.mac
    cdef int i
    global _stamps
    _stamps = _stamps + 1 if _stamps + 1 != 0 else 1
    t.stamp = _stamps
    t.generation = c.generation
    t.node_label = c.node_label
    for i in range(6):
        t.mac[i] = mac[i]
    t.uplink = c.uplink
    for i in range(65536):
        t.slot_of_id[i] = -1
    return 0


cdef int _load_instances(tables_t *t, object c, dict instances, str host) except -1:
    cdef inst_t *inst
    for slot, (iid, mode) in enumerate(c.instances):
        obj, stats = instances[iid]
        inst = &t.instances[slot]
        inst.id = iid
        inst.stats = <inst_stats_t *><intptr_t>stats
        if mode == "process":
            inst.mode = MODE_PROCESS
            to_name, from_name = ring_names(host, iid)
            inst.to_nf = _ring(to_name)
            inst.from_nf = _ring(from_name)
        else:
            inst.mode = MODE_INLINE
            bind_nf(obj, &inst.fn, &inst.ctx)
        t.slot_of_id[iid] = slot
    t.ninstances = len(c.instances)
    return 0


cdef int _load_hops(tables_t *t, object c) except -1:
    cdef const unsigned int[:] spi = c.hop_spi
    cdef const unsigned char[:] si = c.hop_si
    cdef const unsigned char[:] kind = c.hop_kind
    cdef const unsigned short[:] slot = c.hop_slot
    cdef const int[:] nxt = c.hop_next
    cdef const unsigned int[:] remote_off = c.hop_remote_off
    cdef const unsigned short[:] port = c.hop_port
    cdef const uint8_t[:] dst_mac = c.hop_dst_mac
    cdef const unsigned short[:] remote = c.remote
    cdef const unsigned int[:] peer_label = c.peer_label
    cdef const unsigned int[:] peer_pin = c.peer_pin
    cdef const uint8_t[:] peer_mac = c.peer_mac
    cdef const unsigned int[:] peer_off = c.hop_peer_off
    cdef const unsigned short[:] npeers = c.hop_npeers
    cdef const unsigned int[:] pinned_off = c.hop_pinned_off
    cdef const unsigned short[:] npinned = c.hop_npinned
    cdef const unsigned char[:] flags = c.hop_flags
    cdef const int[:] rev = c.hop_rev
    cdef const unsigned int[:] reply = c.hop_reply
    cdef const unsigned int[:] server_off = c.hop_server_off
    cdef const unsigned short[:] nservers = c.hop_nservers
    cdef const unsigned int[:] server_ip = c.server_ip
    cdef const uint8_t[:] server_mac = c.server_mac
    cdef const uint8_t[:] server_ip6 = c.server_ip6
    cdef Py_ssize_t n = spi.shape[0], i, k
    cdef hop_t *h
    t.nhops = n
    t.hops = <hop_t *>calloc(max(1, n), sizeof(hop_t))
    t.remote = <uint16_t *>calloc(max(1, remote.shape[0]), sizeof(uint16_t))
    t.peers = <peer_t *>calloc(max(1, peer_label.shape[0]), sizeof(peer_t))
    t.server_ip = <uint32_t *>calloc(max(1, server_ip.shape[0]), sizeof(uint32_t))
    t.server_mac = <uint8_t *>calloc(max(1, server_mac.shape[0]), 1)
    t.server_ip6 = <uint8_t *>calloc(max(1, server_ip6.shape[0]), 1)
    if t.hops == NULL or t.remote == NULL or t.peers == NULL or t.server_ip == NULL \
            or t.server_mac == NULL or t.server_ip6 == NULL:
        raise MemoryError()
    t.hop_index = new_hash("hops", max(64, 2 * n), sizeof(uint64_t))   # hop_key(spi, si)
    for i in range(n):
        h = &t.hops[i]
        h.spi = spi[i]
        h.si = si[i]
        h.kind = kind[i]
        h.slot = slot[i]
        h.next = nxt[i]
        h.remote_off = remote_off[i]
        h.port = port[i]
        for k in range(6):
            h.dst_mac[k] = dst_mac[6 * i + k]
        h.flags = flags[i]
        h.rev = rev[i]
        h.reply = reply[i]
        h.peer_off = peer_off[i]
        h.npeers = npeers[i]
        h.pinned_off = pinned_off[i]
        h.npinned = npinned[i]
        h.server_off = server_off[i]
        h.nservers = nservers[i]
        if h.reply:
            t.has_reply = True
        _hop_add(t, h.spi, h.si, i)
    for i in range(remote.shape[0]):
        t.remote[i] = remote[i]
    for i in range(peer_label.shape[0]):
        t.peers[i].label = peer_label[i]
        t.peers[i].pin = peer_pin[i]
        for k in range(6):
            t.peers[i].mac[k] = peer_mac[6 * i + k]
    for i in range(server_ip.shape[0]):
        t.server_ip[i] = server_ip[i]
    for i in range(server_mac.shape[0]):
        t.server_mac[i] = server_mac[i]
    for i in range(server_ip6.shape[0]):
        t.server_ip6[i] = server_ip6[i]
    return 0


cdef int _load_classifiers(tables_t *t, object c) except -1:
    cdef const int[:] class_hop = c.class_hop
    cdef Py_ssize_t i
    cdef Acl acl
    t.class_hop = <int32_t *>calloc(max(1, class_hop.shape[0]), sizeof(int32_t))
    if t.class_hop == NULL:
        raise MemoryError()
    for i in range(class_hop.shape[0]):
        t.class_hop[i] = class_hop[i]
    if c.acl_rules:
        acl = Acl(c.acl_rules)
        t.classifier = acl.ctx
        acl.ctx = NULL      # the tables own it now
    return 0


cdef int _hop_add(tables_t *t, uint32_t spi, uint8_t si, int idx) except -1:
    cdef uint64_t key = hop_key(spi, si)
    if rte_hash_add_key_data(t.hop_index, &key, <void *><intptr_t>idx) < 0:
        raise FastPathError(f"hop table full at SPI {spi} SI {si}")
    return 0


cdef rte_ring *_ring(name) except NULL:
    cdef rte_ring *r = rte_ring_lookup(name.encode())
    if r == NULL:
        r = rte_ring_create(name.encode(), 4096, rte_socket_id(),
                            RING_F_SP_ENQ | RING_F_SC_DEQ)
    if r == NULL:
        raise dpdk_error(f"ring {name}")
    return r


cdef void free_tables(tables_t *t) noexcept:
    if t == NULL:
        return
    if t.hop_index != NULL:
        rte_hash_free(t.hop_index)
    if t.classifier != NULL:
        rte_acl_free(t.classifier)
    free(t.hops)
    free(t.remote)
    free(t.peers)
    free(t.server_ip)
    free(t.server_mac)
    free(t.server_ip6)
    free(t.class_hop)
    free(t)
