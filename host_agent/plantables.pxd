# The fast path's tables of one plan, in C: what the manager's loop reads
# (host_agent/manager.pyx) and the loader fills from the plan compiler's
# arrays (host_agent/tables.py).  The constants must equal tables.py's:
# plantables.pyx checks them when it is imported.
from libc.stdint cimport uint8_t, uint16_t, int16_t, uint32_t, int32_t, uint64_t
from libc.string cimport memcmp
from dpdk.rte_hash cimport rte_hash
from dpdk.rte_acl cimport rte_acl_ctx
from dpdk.rte_ring cimport rte_ring
from nflib.nf cimport nf_batch_fn

cdef enum:
    SLOTS = 256            # consistent-hash slots per remote hop
    MAX_INSTANCES = 64

cdef enum:
    HOP_LOCAL = 1
    HOP_REMOTE = 2
    HOP_END = 3

cdef enum:
    FLAG_PINNED = 1        # the hop has a "pinned" list: pin lookup first
    FLAG_KEPT = 2          # a local hop with a "kept" list: pinned flows go on there

cdef enum:
    MODE_INLINE = 1
    MODE_PROCESS = 2


cdef struct hop_t:
    uint32_t spi
    uint8_t si
    uint8_t kind
    uint16_t slot          # instance slot (HOP_LOCAL)
    int32_t next           # hop index of (spi, si - 1), -1 if none
    uint32_t remote_off    # first of SLOTS entries in tables.remote (HOP_REMOTE)
    uint16_t port          # HOP_END
    uint8_t dst_mac[6]     # HOP_END
    uint8_t flags          # FLAG_PINNED
    int32_t rev            # hop index of "reverse" (R, SI_R), -1 if none
    uint32_t reply         # HOP_END: end.reply (R), 0 if none
    uint32_t peer_off      # HOP_REMOTE: its peers; FLAG_KEPT: the "kept" hosts
    uint16_t npeers
    uint16_t npinned       # FLAG_PINNED: the "pinned" hosts in tables.peers
    uint32_t pinned_off
    uint32_t server_off    # HOP_END: end.servers in server_ip / server_mac
    uint16_t nservers


cdef struct peer_t:
    uint32_t label              # the host packets to this peer are tagged for
    uint32_t pin                # the label a pin names to find it (label, or a lost host's)
    uint8_t mac[6]


cdef struct inst_stats_t:
    uint64_t rx
    uint64_t tx
    uint64_t drops
    uint64_t ring_full


cdef struct inst_t:
    uint16_t id
    uint8_t mode
    nf_batch_fn fn
    void *ctx
    rte_ring *to_nf
    rte_ring *from_nf
    inst_stats_t *stats


cdef struct tables_t:
    uint64_t generation
    uint32_t node_label
    uint8_t mac[6]
    uint16_t uplink
    rte_hash *hop_index        # (spi << 8 | si) -> hop index
    hop_t *hops
    uint32_t nhops
    uint16_t *remote           # peer index per slot
    peer_t *peers
    uint32_t *server_ip        # IPv4, host byte order
    uint8_t *server_mac        # 6 per server
    uint8_t *server_ip6        # 16 per server (zeros: no IPv6 address)
    bint has_reply             # some end has "reply": untagged packets look up pins
    uint32_t stamp             # these tables' own number (never 0): the flow table's
                               # cached first hops (aging.pxd aged_rec_t) are theirs
                               # if stamped with it
    rte_acl_ctx *classifier    # userdata = hop index + 1
    int32_t *class_hop         # classifier rule -> hop index
    inst_t instances[MAX_INSTANCES]
    uint16_t ninstances
    int16_t slot_of_id[65536]  # instance id -> slot, -1 if not here


cdef inline uint64_t hop_key(uint32_t spi, uint8_t si) noexcept nogil:
    return (<uint64_t>spi << 8) | si


cdef inline uint8_t *server_mac_of(tables_t *t, hop_t *h, const uint8_t *d, uint8_t family,
                                   int l3, uint32_t length) noexcept nogil:
    """The MAC of the pool end h's server whose address is the packet's
    destination (IPv4 or IPv6, at offset l3 of d); NULL if none is."""
    cdef uint32_t ip, j
    if family == 4 and length >= <uint32_t>l3 + 20:
        ip = (<uint32_t>d[l3 + 16] << 24) | (<uint32_t>d[l3 + 17] << 16) \
            | (<uint32_t>d[l3 + 18] << 8) | d[l3 + 19]
        for j in range(h.server_off, h.server_off + h.nservers):
            if t.server_ip[j] == ip:
                return &t.server_mac[6 * j]
    elif family == 6 and length >= <uint32_t>l3 + 40:
        for j in range(h.server_off, h.server_off + h.nservers):
            # A server without ip6 has zeros: never an IPv6 packet's destination
            # here (the unspecified address is no destination).
            if memcmp(&t.server_ip6[16 * j], d + l3 + 24, 16) == 0:
                return &t.server_mac[6 * j]
    return NULL


cdef inline peer_t *find_peer(tables_t *t, uint32_t off, uint16_t n, uint32_t label) noexcept nogil:
    """The peer a pin to `label` finds among t.peers[off:off + n] (the
    host with that label, or the one that adopted a lost host's flows),
    NULL if none."""
    cdef uint16_t j
    for j in range(n):
        if t.peers[off + j].pin == label:
            return &t.peers[off + j]
    return NULL


cdef tables_t *load_tables(object compiled, dict instances, str host) except NULL
cdef void free_tables(tables_t *t) noexcept
