# cython: language_level=3
"""HTTP request parts as the IDS matches them (nfs/ids.pyx, its HTTP
buffers): the URI normalised as a web server reads it, and one header's
value.  C, no GIL, no allocation.

Not here: finding a request in a payload and scanning its parts (ids.pyx).
"""
from libc.stdint cimport uint8_t, uint32_t


cdef inline uint8_t lower(uint8_t c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline int hexval(uint8_t c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    c = lower(c)
    if 97 <= c <= 102:
        return c - 87
    return -1


cdef inline uint32_t normalise_uri(const uint8_t *u, uint32_t n, uint8_t *out,
                            uint32_t cap) noexcept nogil:
    """The URI as a web server reads it (as libhtp normalises for
    Suricata's http.uri): %XX decoded, backslashes as slashes, and in the
    path (before '?') `//` collapsed, `/./` dropped, `/../` taking back a
    segment.  Returns its length (at most cap)."""
    cdef uint32_t i = 0, o = 0
    cdef bint in_path = True
    cdef int hi, lo
    cdef uint8_t c
    while i < n and o < cap:
        c = u[i]
        if c == 37 and i + 2 < n and hexval(u[i + 1]) >= 0 \
                and hexval(u[i + 2]) >= 0:           # %XX
            c = <uint8_t>(hexval(u[i + 1]) * 16 + hexval(u[i + 2]))
            i += 3
        else:
            i += 1
        if in_path and c == 63:                      # '?': the query, kept as sent
            in_path = False
        elif in_path and c == 92:                    # '\\' read as '/'
            c = 47
        if in_path and c == 47 and o and out[o - 1] == 47:
            continue                                 # '//' -> '/'
        out[o] = c
        o += 1
        if in_path and o >= 2 and out[o - 1] == 47 and out[o - 2] == 46 \
                and (o == 2 or out[o - 3] == 47):    # '/./' -> '/'
            o -= 2
            if o == 0:
                out[0] = 47
                o = 1
        elif in_path and o >= 3 and out[o - 1] == 47 and out[o - 2] == 46 \
                and out[o - 3] == 46 and (o == 3 or out[o - 4] == 47):   # '/../'
            o -= 3
            if o > 1:
                o -= 1
                while o > 0 and out[o - 1] != 47:
                    o -= 1
            if o == 0:
                out[0] = 47
                o = 1
    return o


cdef inline uint32_t header_value(const uint8_t *h, uint32_t n, const char *name, uint32_t nlen,
                           const uint8_t **value) noexcept nogil:
    """The value of header `name` (lower case, with its colon) in the header
    block h[0:n], leading spaces skipped; its length, 0 if absent."""
    cdef uint32_t i = 0, j, e
    while i < n:
        e = i
        while e < n and h[e] != 13 and h[e] != 10:
            e += 1
        if e - i > nlen:
            j = 0
            while j < nlen and lower(h[i + j]) == <uint8_t>name[j]:
                j += 1
            if j == nlen:
                j = i + nlen
                while j < e and (h[j] == 32 or h[j] == 9):
                    j += 1
                value[0] = h + j
                return e - j
        i = e + 1
        if i < n and h[i] == 10:
            i += 1
    return 0
