# The fast path's parser, inline in the manager's loop: fills a received
# packet's metadata (5-tuple, flow hash, l3_off and l4_off for the NFs,
# SPI/SI of a tagged packet whose label stack it pops) and finds an
# untagged packet's first hop.  A drop is returned as one of the reasons
# below; contracts/wire.py names them (DROP_REASONS, same order).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t
from libc.string cimport memcpy, memmove, memset
from dpdk.rte_mbuf cimport (rte_mbuf, rte_pktmbuf_adj, rte_pktmbuf_prepend, rte_pktmbuf_alloc,
    rte_pktmbuf_append, rte_pktmbuf_free)
from dpdk.rte_hash cimport rte_hash_crc
from dpdk.rte_acl cimport rte_acl_classify
from nflib.nf cimport onvm_meta, onvm_flow_key, onvm_meta_of, onvm_mtod, rd16, rd32, wr32
from host_agent.plantables cimport tables_t, peer_t
from host_agent.aging cimport aged_rec_t
from host_agent.pinkey cimport flow_hash_words, pin_key_t, pin_key_of, flow_key_hash
from nflib.eal cimport packet_pool

cdef enum:
    ETH_MPLS = 0x8847
    ETH_MPLS_MC = 0x8848
    ETH_IPV4 = 0x0800
    ETH_IPV6 = 0x86DD
    ETH_VLAN = 0x8100

cdef enum:
    R_TRUNCATED, R_NOT_IP, R_BAD_LABELS, R_TTL, R_WRONG_NODE, R_UNKNOWN_HOP,
    R_NO_CHAIN, R_NF_DROP, R_RING_FULL, R_TX_FULL, R_LOOP, R_BAD_PORT,
    R_NO_PLAN, R_NO_PIN, R_PIN_LOST, R_NO_SERVER, R_BAD_IPV6, R_HANDOFF_FULL, N_REASONS
    IPV6_EXT_MAX = 8        # extension headers walked before a packet is refused


cdef inline int check_wire(object wire, int si_first) except -1:
    """ImportError unless the parser's EtherTypes, its first SI and its
    drop reasons (contracts.wire.DROP_REASONS, in the order of the R_*
    codes: every drop is counted under one) are the wire format's."""
    for name, value in (("ETH_MPLS", ETH_MPLS), ("ETH_MPLS_MC", ETH_MPLS_MC),
                        ("ETH_IPV4", ETH_IPV4), ("ETH_IPV6", ETH_IPV6), ("SI_FIRST", si_first)):
        if getattr(wire, name) != value:
            raise ImportError(f"contracts.wire.{name} is {getattr(wire, name):#x}, "
                              f"the parser's is {value:#x}: rebuild")
    if len(wire.DROP_REASONS) != N_REASONS:
        raise ImportError(f"contracts.wire.DROP_REASONS has {len(wire.DROP_REASONS)} "
                          f"reasons, the loop counts {N_REASONS}: rebuild")
    return 0


cdef inline int parse_packet(rte_mbuf *m, tables_t *t, uint16_t port) noexcept nogil:
    """Fill the packet's metadata; returns a drop reason, or -1 if it goes on."""
    cdef uint8_t *d = onvm_mtod(m)
    cdef uint32_t length = m.data_len
    cdef onvm_meta *meta = onvm_meta_of(m)
    cdef uint16_t etype
    cdef uint32_t l0, l1, l2, off = 14, ihl, l4
    cdef int32_t l6
    cdef uint8_t ver, family
    memset(meta, 0, sizeof(onvm_meta))
    meta.in_port = port
    meta.flow_id = -1
    if length < 14:
        return R_TRUNCATED
    etype = rd16(d + 12)
    if etype == ETH_MPLS or etype == ETH_MPLS_MC:
        if length < 14 + 12 + 1:
            return R_TRUNCATED
        l0 = rd32(d + 14)
        l1 = rd32(d + 18)
        l2 = rd32(d + 22)
        if (l0 & 0x100) or (l1 & 0x100) or not (l2 & 0x100):
            return R_BAD_LABELS
        if (l0 & 0xff) == 0 or (l1 & 0xff) == 0 or (l2 & 0xff) == 0:
            return R_TTL
        if (l0 >> 12) != t.node_label:
            return R_WRONG_NODE
        meta.spi = l1 >> 12
        meta.si = l2 >> 12
        if meta.si == 0:
            return R_BAD_LABELS
        ver = d[26] >> 4
        if ver == 4:
            etype = ETH_IPV4
        elif ver == 6:
            etype = ETH_IPV6
        else:
            return R_NOT_IP
        # Pop the stack: move the MAC addresses up over it.
        memmove(d + 12, d, 12)
        rte_pktmbuf_adj(m, 12)
        d = d + 12
        length -= 12
        d[12] = etype >> 8
        d[13] = etype & 0xff
    elif etype == ETH_VLAN:
        if length < 18:
            return R_TRUNCATED
        etype = rd16(d + 16)
        off = 18
    meta.l3_off = off
    if etype == ETH_IPV4:
        if length < off + 20 or (d[off] >> 4) != 4:
            return R_TRUNCATED if length < off + 20 else R_NOT_IP
        ihl = (d[off] & 0x0f) * 4
        if ihl < 20 or length < off + ihl:
            return R_TRUNCATED
        family = 4
        meta.key.family = family
        meta.key.proto = d[off + 9]
        memcpy(&meta.key.src, d + off + 12, 8)     # src then dst, as in the header
        l4 = off + ihl
        if (rd16(d + off + 6) & 0x1fff) == 0:
            meta.l4_off = l4        # not for later fragments: no L4 header
        # Ports only for first fragments of TCP, UDP, SCTP.
        if (meta.key.proto == 6 or meta.key.proto == 17 or meta.key.proto == 132) \
                and meta.l4_off:
            if length < l4 + 4:
                return R_TRUNCATED
            memcpy(&meta.key.sport, d + l4, 4)     # sport then dport (key_hash)
    elif etype == ETH_IPV6:
        if length < off + 40:
            return R_TRUNCATED
        if (d[off] >> 4) != 6:
            return R_NOT_IP
        family = 6
        meta.key.family = family
        meta.key.src = rte_hash_crc(d + off + 8, 16, 0)
        meta.key.dst = rte_hash_crc(d + off + 24, 16, 0)
        l6 = ipv6_l4(d, length, off, meta)
        if l6 < 0:
            return R_BAD_IPV6
        l4 = <uint32_t>l6
        if l6 == 0:
            pass                    # a later fragment, or no next header: no ports
        elif meta.key.proto == 6 or meta.key.proto == 17 or meta.key.proto == 132:
            if length < l4 + 4:
                return R_TRUNCATED
            memcpy(&meta.key.sport, d + l4, 4)     # sport then dport (key_hash)
    else:
        return R_NOT_IP
    meta.flow_hash = key_hash(&meta.key, family)
    return -1


cdef inline uint32_t key_hash(const onvm_flow_key *k, uint8_t family) noexcept nogil:
    """rte_hash_crc(k, 16, 0) of a key whose pad is 0 (parse_packet clears
    the metadata), read field by field: the fields were just stored one by
    one, and 8-byte loads over several smaller stores still in flight
    cannot be forwarded from them (the CPU waits until they are written,
    about a dozen cycles a packet).  So the parser stores the ports as
    one 4-byte word (and IPv4's addresses as one 8-byte one) and the family
    comes as an argument, lest the compiler merge the loads of proto and
    family into one over two byte stores.  Those loads were undefined besides
    (strict aliasing): with DPDK 22.11's header, gcc -O2 hashed a struct
    written field by field as if it were all zeros.  CRC32C is byte by
    byte, so 4-byte steps give rte_hash_crc's 8-byte steps' value
    (checked on a million random keys against the 8-byte steps over the
    key's bytes)."""
    cdef uint32_t ports
    memcpy(&ports, &k.sport, 4)
    return flow_hash_words(<uint32_t>k.proto | (<uint32_t>family << 8), k.src, k.dst, ports)


cdef inline int32_t ipv6_l4(const uint8_t *d, uint32_t length, uint32_t off,
                            onvm_meta *meta) noexcept nogil:
    """Walk an IPv6 packet's extension headers (RFC 8200 4.1: hop-by-hop,
    routing, fragment, destination options; AH by RFC 4302's length) to
    its upper-layer protocol, set as the key's proto.  Returns the L4
    offset (also meta.l4_off), 0 for none (a fragment after the first,
    No Next Header), -1 for a chain that is cut short, or longer than
    IPV6_EXT_MAX headers: such packets are dropped (bad_ipv6), never
    passed on with a protocol the NFs would misread."""
    cdef uint8_t nh = d[off + 6]
    cdef uint32_t at = off + 40, size
    cdef int n = 0
    while nh == 0 or nh == 43 or nh == 44 or nh == 60 or nh == 51:
        if n == IPV6_EXT_MAX or length < at + 8:
            return -1
        if nh == 44:
            size = 8
            if (rd16(d + at + 2) & 0xFFF8) != 0:     # fragment offset: not the first
                meta.key.proto = d[at]
                return 0
        elif nh == 51:
            size = (<uint32_t>d[at + 1] + 2) * 4
        else:
            size = (<uint32_t>d[at + 1] + 1) * 8
        nh = d[at]
        at += size
        n += 1
    if length < at:
        return -1
    meta.key.proto = nh
    if nh == 59:
        return 0
    meta.l4_off = at
    return at


cdef inline int32_t classify(tables_t *t, onvm_meta *meta, aged_rec_t *flow) noexcept nogil:
    """First hop of an untagged packet: the answer cached in its flow's
    record `flow` (NULL: none) by these tables, or the classifier's (then
    cached there, stamped as these tables')."""
    cdef int32_t hop
    cdef uint32_t res = 0
    cdef const uint8_t *key = <const uint8_t *>&meta.key
    if flow != NULL and flow.stamp == t.stamp:
        return <int32_t>flow.value
    hop = -1
    if t.classifier != NULL and meta.key.family == 4:
        rte_acl_classify(t.classifier, &key, &res, 1, 1)
        if res:
            hop = t.class_hop[res - 1]
    if flow != NULL:
        flow.value = <uint32_t>hop
        flow.stamp = t.stamp
    return hop


cdef inline bint push_labels(rte_mbuf *m, const uint8_t *src_mac, const peer_t *peer,
                             const onvm_meta *meta) noexcept nogil:
    """The reverse of parse_packet's pop: transport, SPI and SI labels
    (DESIGN's wire format) under a new Ethernet header to `peer`; False if
    the mbuf has no headroom for them."""
    cdef uint8_t *d = <uint8_t *>rte_pktmbuf_prepend(m, 12)
    if d == NULL:
        return False
    memcpy(d, peer.mac, 6)
    memcpy(d + 6, src_mac, 6)
    d[12] = 0x88
    d[13] = 0x47
    wr32(d + 14, (peer.label << 12) | 64)
    wr32(d + 18, (meta.spi << 12) | 64)
    wr32(d + 22, (<uint32_t>meta.si << 12) | 0x100 | 64)
    return True


cdef inline object flow_hashes(tables_t *t, bytes frame):
    """(the parser's flow hash, the flow table's hash of the flow key) of
    `frame` parsed with tables `t`, None if the parser drops it: the two
    must be equal, or each lookup of the flow misses (tests)."""
    cdef rte_mbuf *m = rte_pktmbuf_alloc(packet_pool())
    cdef char *d = rte_pktmbuf_append(m, len(frame)) if m != NULL else NULL
    cdef pin_key_t k
    if t == NULL or d == NULL:
        rte_pktmbuf_free(m)
        raise ValueError(f"flow_hashes: no plan, or no mbuf for {len(frame)} bytes")
    memcpy(d, <const char *>frame, len(frame))
    try:
        if parse_packet(m, t, 0) >= 0 or not pin_key_of(m, onvm_meta_of(m), 0, 0, False, &k):
            return None
        return onvm_meta_of(m).flow_hash, flow_key_hash(&k, sizeof(pin_key_t), 0)
    finally:
        rte_pktmbuf_free(m)
