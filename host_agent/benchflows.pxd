# `onvm bench fastpath` in loop mode with more flows than the ring holds:
# as looped packets come back in, each gets the next flow's source address
# and ports (flow i: 10.1.0.0 + i % 65534 + 1, ports 1024 + i // 65534 and
# 5000 + i % 1000, as host_agent.bench.bench_frames writes them), IP
# checksum recomputed, so N distinct flows go round through 4096 mbufs.
# The next flow is the cursor's, or with a table (--zipf) the table's
# entry at the cursor (flows drawn by popularity); with a base that moves
# (--new-flows R: `base` flows a cycle) the window of N flows slides, so
# new flows arrive at R a second and old ones stop and age out.
# Called by the manager's loop only when a benchmark set Manager.bench_flows.
# Not here: the frames themselves (host_agent.bench), anything for real traffic.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from dpdk.rte_mbuf cimport rte_mbuf
from nflib.nf cimport onvm_mtod, wr32

cdef inline void bench_rewrite(rte_mbuf **pkts, unsigned n, uint64_t *cursor,
                               uint32_t flows, const uint32_t *table, uint32_t table_len,
                               uint64_t base) noexcept nogil:
    cdef unsigned i, j
    cdef uint8_t *ip
    cdef uint32_t c, s
    for i in range(n):
        if pkts[i].data_len < 38:
            continue
        ip = onvm_mtod(pkts[i]) + 14
        if table_len:
            c = table[cursor[0] % table_len]
        else:
            c = <uint32_t>(cursor[0] % flows)
        c = <uint32_t>((base + c) % 4227729408ULL)     # 65534 sources x 64512 ports
        cursor[0] += 1
        wr32(ip + 12, 0x0A010000 + c % 65534 + 1)
        ip[20] = <uint8_t>((1024 + c // 65534) >> 8)
        ip[21] = <uint8_t>((1024 + c // 65534) & 0xff)
        ip[22] = <uint8_t>((5000 + c % 1000) >> 8)
        ip[23] = <uint8_t>((5000 + c % 1000) & 0xff)
        ip[10] = 0
        ip[11] = 0
        s = 0
        for j in range(0, 20, 2):
            s += (<uint32_t>ip[j] << 8) | ip[j + 1]
        s = (s & 0xffff) + (s >> 16)
        s = ~((s & 0xffff) + (s >> 16)) & 0xffff
        ip[10] = <uint8_t>(s >> 8)
        ip[11] = <uint8_t>(s & 0xff)
