# `onvm bench fastpath` in loop mode with more flows than the ring holds:
# as looped packets come back in, each gets the next flow's source address
# and ports (flow i: 10.1.0.0 + i % 65534 + 1, ports 1024 + i // 65534 and
# 5000 + i % 1000, as host_agent.bench.bench_frames writes them), IP
# checksum recomputed, so N distinct flows go round through 4096 mbufs.
# The next flow is the cursor's, or with a table (--zipf) the table's
# entry at the cursor (flows drawn by popularity); with a base that moves
# (--new-flows R: `base` flows a cycle) the window of N flows slides, so
# new flows arrive at R a second and old ones stop and age out.
# With `tcp_next` (--payload http) nothing is rewritten but each TCP
# segment's sequence number, advanced by its payload as it comes back in,
# so every pass is the next segment of its flow's stream (an IDS scans it
# as new data, not as a retransmission).
# Called by the manager's loop only when a benchmark set it (Manager.set_bench).
# Not here: the frames themselves (host_agent.bench), anything for real traffic.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from dpdk.rte_mbuf cimport rte_mbuf
from nflib.nf cimport onvm_mtod, wr16, wr32, rd16, rd32, rte_get_tsc_hz


cdef struct bench_t:
    uint32_t flows          # 0: off
    uint64_t cursor
    uint32_t *table         # the flow of each cursor position (--zipf), or NULL
    uint32_t table_len
    double new_per_s        # --new-flows: how fast the window slides
    uint64_t start          # TSC when it started sliding
    uint8_t tcp_next        # --payload http: advance each segment's sequence number


cdef inline int bench_set_table(bench_t *b, object table) except -1:
    """The table (a sequence of ints below 2**32, copied), or None."""
    free(b.table)
    b.table, b.table_len = NULL, 0
    if table is None or len(table) == 0:
        return 0
    b.table = <uint32_t *>malloc(len(table) * sizeof(uint32_t))
    if b.table == NULL:
        raise MemoryError()
    for i, v in enumerate(table):
        b.table[i] = v
    b.table_len = len(table)
    return 0


cdef inline void bench_step(bench_t *b, rte_mbuf **pkts, unsigned n, uint64_t now) noexcept nogil:
    """bench_rewrite with the window slid as far as `now` says."""
    cdef uint64_t base = 0
    if b.tcp_next:
        tcp_advance(pkts, n)
        return
    if b.new_per_s > 0:
        if b.start == 0:
            b.start = now
        base = <uint64_t>((now - b.start) * b.new_per_s / rte_get_tsc_hz())
    bench_rewrite(pkts, n, &b.cursor, b.flows, b.table, b.table_len, base)

cdef inline void bench_rewrite(rte_mbuf **pkts, unsigned n, uint64_t *cursor,
                               uint32_t flows, const uint32_t *table, uint32_t table_len,
                               uint64_t base) noexcept nogil:
    cdef unsigned i
    cdef uint8_t *ip
    cdef uint32_t c, s, old, src
    for i in range(n):
        if pkts[i].data_len < 38:
            continue
        ip = onvm_mtod(pkts[i]) + 14
        # the cursor wraps by comparison, not by a division a packet
        if table_len:
            if cursor[0] >= table_len:
                cursor[0] = 0
            c = table[cursor[0]]
        else:
            if cursor[0] >= flows:
                cursor[0] = 0
            c = <uint32_t>cursor[0]
        if base:
            c = <uint32_t>((base + c) % 4227729408ULL)     # 65534 sources x 64512 ports
        cursor[0] += 1
        old = rd32(ip + 12)
        src = 0x0A010000 + c % 65534 + 1
        wr32(ip + 12, src)
        wr16(ip + 20, 1024 + c // 65534)
        wr16(ip + 22, 5000 + c % 1000)
        # The header checksum updated for the new source (RFC 1624, eqn. 3:
        # HC' = ~(~HC + ~m + m') over the address's two 16-bit words), not
        # summed anew: the bench's own work stays small beside the loop's.
        s = (~rd16(ip + 10) & 0xffff) + (~(old >> 16) & 0xffff) + (~old & 0xffff) \
            + (src >> 16) + (src & 0xffff)
        s = (s & 0xffff) + (s >> 16)
        s = (s & 0xffff) + (s >> 16)
        wr16(ip + 10, ~s & 0xffff)


cdef inline void tcp_advance(rte_mbuf **pkts, unsigned n) noexcept nogil:
    """Each IPv4 TCP segment's sequence number plus its payload's length."""
    cdef unsigned i
    cdef uint8_t *ip
    cdef uint32_t ihl, doff, total
    for i in range(n):
        if pkts[i].data_len < 54:
            continue
        ip = onvm_mtod(pkts[i]) + 14
        ihl = (ip[0] & 15) * 4
        if ip[9] != 6 or pkts[i].data_len < 14 + ihl + 20:
            continue
        doff = (ip[ihl + 12] >> 4) * 4
        total = (<uint32_t>ip[2] << 8) | ip[3]
        if total > ihl + doff:
            wr32(ip + ihl + 4, rd32(ip + ihl + 4) + total - ihl - doff)
