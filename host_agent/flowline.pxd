# The host's flow line: one 64-byte line a flow id, where the manager keeps
# the flow's entry in the flow table (aging.pxd aged_rec_t: last use,
# cached first hop, the tables it is for), the flow's incarnation
# (meta.flow_gen) and, where there is room, the per-flow records of the
# NFs it runs inline (nflib/nf.pxd nf_flows_t).  A packet of a known flow
# then costs the host and its chain one cache line, where with a million
# flows the flow entry and each NF's record were a cache miss each.
#
# Room is given first come, first served, as instances are made
# (Manager._instances_for), 8-byte aligned; an NF that finds none keeps
# its own array, as does one run as its own process.  Bytes an NF held
# are zeroed across all lines before another NF gets them (the loop runs
# on, writing other bytes of the lines: byte ranges never overlap), so no
# record of a removed instance is read as a new one's.
# Not here: the table's keys and aging (aging.pxd, manager.pyx).
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t
from libc.string cimport memset
from nflib.nf cimport nf_flows_t, nf_flows_of, FLOW_LINE, FLOW_LINE_NF_BYTES, ONVM_FLOW_ENTRIES
from host_agent.aging cimport aged_rec_t


cdef struct flow_line_t:
    aged_rec_t rec                  # the flow table's entry
    uint32_t gen                    # the flow holding the id (meta.flow_gen), never 0
    uint32_t pad
    uint8_t nf[FLOW_LINE_NF_BYTES]  # NFs' records (nf_flows_t.line_off)


cdef struct line_room_t:
    uint64_t used                   # a bit a byte of nf[] that an NF's records hold
    uint64_t dirty                  # ... or held since the lines were zeroed


cdef inline uint32_t line_new_flow(flow_line_t *line) noexcept nogil:
    """A new flow took the line's id: its incarnation, never 0."""
    line.gen += 1
    if line.gen == 0:
        line.gen = 1
    return line.gen


cdef inline uint64_t line_bytes(uint32_t off, uint32_t size) noexcept:
    """The mask of bytes off .. off+size-1 of a line's nf[] (line_room_t)."""
    return ((<uint64_t>1 << size) - 1) << off


cdef inline int32_t line_place(flow_line_t *lines, uint32_t count, line_room_t *room,
                               nf_flows_t *f) noexcept:
    """Move `f`'s records (none written yet) onto the `count` lines where
    f.size bytes are free; their offset in nf[], -1 if there is no room
    (they stay on the NF's own array)."""
    cdef uint32_t off, i
    cdef uint64_t mask
    if f.line_off >= 0 or f.size == 0 or f.size > FLOW_LINE_NF_BYTES or f.size % 8:
        return -1
    for off in range(0, FLOW_LINE_NF_BYTES - f.size + 1, 8):
        mask = line_bytes(off, f.size)
        if room.used & mask:
            continue
        if room.dirty & mask:
            for i in range(count):
                memset(&lines[i].nf[off], 0, f.size)
        room.used |= mask
        room.dirty |= mask
        f.base = &lines[0].nf[off]
        f.stride = FLOW_LINE
        f.count = count if count < ONVM_FLOW_ENTRIES else ONVM_FLOW_ENTRIES
        f.line_off = off
        return off
    return -1


cdef inline void line_release(line_room_t *room, nf_flows_t *f) noexcept:
    """`f` (whose NF no longer runs) back on its own array; its bytes of
    the lines free for another NF, once zeroed."""
    if f.line_off < 0:
        return
    room.used &= ~line_bytes(f.line_off, f.size)
    f.base = f.own
    f.stride = f.size
    f.count = ONVM_FLOW_ENTRIES
    f.line_off = -1


cdef inline list lines_place(flow_line_t *lines, uint32_t count, line_room_t *room,
                             dict entries):
    """line_place for the NF of each new instance (the manager's entries:
    id -> (type, config, NF object, ...)): [(id, bytes a flow, offset or
    -1)] for those with records."""
    cdef nf_flows_t *f
    out = []
    for iid, entry in entries.items():
        f = nf_flows_of(entry[2])
        if f != NULL:
            out.append((iid, f.size, line_place(lines, count, room, f)))
    return out


cdef inline int lines_release(line_room_t *room, dict entries) except -1:
    """line_release for the NF of each instance that no longer runs."""
    cdef nf_flows_t *f
    for entry in entries.values():
        f = nf_flows_of(entry[2])
        if f != NULL:
            line_release(room, f)
    return 0
