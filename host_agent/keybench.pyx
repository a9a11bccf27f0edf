# cython: language_level=3
"""The host key table (host_agent/keytab.pxd) checked and measured on its
own: `check` runs random adds, finds, deletes and bulk lookups against a
Python dict (tests/test_keytab.py); `lookup_cycles` times a burst's bulk
lookup of random keys against rte_hash's (`onvm bench keytab`).

Not here: the tables' users (host_agent/aging.pxd, manager.pyx).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from libc.string cimport memset
from dpdk.rte_eal cimport rte_get_tsc_cycles, rte_get_tsc_hz
from dpdk.rte_hash cimport (rte_hash, rte_hash_add_key, rte_hash_free,
    rte_hash_lookup_with_hash_bulk)
from nflib.eal cimport new_hash
from host_agent.pinkey cimport pin_key_t, flow_key_hash
from host_agent.keytab cimport (keytab_t, kt_init, kt_free, kt_add, kt_del, kt_find,
    kt_hash, kt_lookup_bulk, KT_BULK)

import random

from nflib.eal import FastPathError


cdef void key_of(uint64_t i, pin_key_t *k) noexcept nogil:
    """Flow i's key: an IPv4 UDP 5-tuple, or IPv6 for odd i // 7."""
    memset(k, 0, sizeof(pin_key_t))
    k.proto = 17
    k.family = 6 if (i // 7) & 1 else 4
    k.src_ip[0], k.dst_ip[0] = 10, 10
    k.src_ip[1] = (i >> 16) & 255
    k.src_ip[2] = (i >> 8) & 255
    k.src_ip[3] = i & 255
    k.src_ip[15] = (i >> 24) & 255
    k.src_port = <uint16_t>(1024 + (i * 7919) % 60000)
    k.dst_port = 80


cdef uint32_t crowded_hash(const void *key, uint32_t key_len, uint32_t init) noexcept nogil:
    """A hash that puts every key in 8 first buckets with 15 tags: keys share
    tags (the lookups' slow path), fill both their buckets (moves), and
    a first bucket is another key's second (paths of several moves)."""
    return flow_key_hash(key, key_len, init) & 0xF0007


def check(uint32_t entries, uint32_t ops, seed=1, uint32_t universe=0, bint crowded=False):
    """`ops` random operations on a table of `entries` keys drawn from
    `universe` (default 3 x entries) flows, each checked against a dict;
    then the table filled to `entries` and one more refused.  `crowded`:
    keys crowd into 8 buckets (crowded_hash), so adds are also refused
    when no keys can be moved to make room, and there is no fill.  Returns
    the counts; raises AssertionError at the first disagreement."""
    cdef keytab_t k
    cdef pin_key_t keys[KT_BULK]
    cdef const void *kp[KT_BULK]
    cdef uint32_t hashes[KT_BULK]
    cdef int32_t pos[KT_BULK]
    cdef pin_key_t key
    cdef int32_t p
    cdef unsigned j, n
    rng = random.Random(seed)
    universe = universe or 3 * entries
    kt_init(&k, "keybench", entries, sizeof(pin_key_t),
            crowded_hash if crowded else flow_key_hash)
    model = {}                  # flow -> position
    owner = {}                  # position -> flow
    counts = {"adds": 0, "refused": 0, "deletes": 0, "finds": 0, "bulk": 0}
    try:
        for _ in range(ops):
            op = rng.random()
            i = rng.randrange(universe)
            key_of(i, &key)
            if op < 0.45:
                p = kt_add(&k, &key)
                if p < 0:
                    assert i not in model and (crowded or len(model) == entries), \
                        f"add of flow {i} refused with {len(model)} of {entries} in"
                    assert kt_find(&k, &key) == -1, f"refused flow {i} found"
                    counts["refused"] += 1
                else:
                    assert model.get(i, p) == p, f"flow {i} moved from {model[i]} to {p}"
                    assert owner.get(p, i) == i, f"position {p} given twice"
                    model[i] = p
                    owner[p] = i
                    counts["adds"] += 1
            elif op < 0.75:
                p = kt_del(&k, &key)
                assert p == model.pop(i, -1), f"delete of flow {i} gave {p}"
                owner.pop(p, None)
                counts["deletes"] += 1
            elif op < 0.9:
                p = kt_find(&k, &key)
                assert p == model.get(i, -1), f"find of flow {i} gave {p}"
                counts["finds"] += 1
            else:
                n = rng.randint(1, KT_BULK)
                flows = [rng.randrange(universe) for _ in range(n)]
                for j in range(n):
                    key_of(flows[j], &keys[j])
                    kp[j] = &keys[j]
                    hashes[j] = kt_hash(&k, &keys[j])
                kt_lookup_bulk(&k, kp, hashes, n, pos)
                for j in range(n):
                    assert pos[j] == model.get(flows[j], -1), \
                        f"bulk lookup of flow {flows[j]} gave {pos[j]}"
                counts["bulk"] += 1
        for f, p in model.items():         # nothing lost by the moves
            key_of(f, &key)
            assert kt_find(&k, &key) == p, f"flow {f} lost"
        counts["moves"], counts["paths"] = k.moves, k.paths
        if crowded:
            return counts
        i = 0
        while len(model) < entries:         # fill it: every position used once
            if i not in model:
                key_of(i, &key)
                p = kt_add(&k, &key)
                assert p >= 0, f"add refused with {len(model)} of {entries} in"
                model[i] = p
            i += 1
        assert sorted(model.values()) == list(range(entries)), "positions not 0..entries-1"
        while i in model:
            i += 1
        key_of(i, &key)
        assert kt_add(&k, &key) == -1, "a full table took one more key"
        for f, p in model.items():
            key_of(f, &key)
            assert kt_find(&k, &key) == p, f"flow {f} lost after the fill"
        counts["moves"] = k.moves
        return counts
    finally:
        kt_free(&k)


def lookup_cycles(uint32_t flows, uint32_t bursts=100000, str table="keytab", seed=1):
    """CPU cycles a key of a bulk lookup of KT_BULK random keys of `flows`
    in a table sized 2**20 (the host flow table's default): `table`
    "keytab" (host_agent/keytab.pxd) or "rte_hash".  Needs the EAL."""
    cdef keytab_t k
    cdef rte_hash *h = NULL
    cdef pin_key_t keys[KT_BULK]
    cdef const void *kp[KT_BULK]
    cdef uint32_t hashes[KT_BULK]
    cdef int32_t pos[KT_BULK]
    cdef pin_key_t key
    cdef uint32_t i, j, r
    cdef uint64_t t0, spent = 0, missing = 0, x = <uint64_t>seed * 2654435761ULL + 1
    cdef bint kt = table == "keytab"
    if table not in ("keytab", "rte_hash"):
        raise ValueError(f"table: keytab or rte_hash, not {table!r}")
    if not 1 <= flows <= (1 << 20):
        raise ValueError(f"flows: 1 .. {1 << 20}, not {flows}")
    kt_init(&k, "keybench", 1 << 20, sizeof(pin_key_t), flow_key_hash)
    try:
        if not kt:
            h = new_hash("keybench", 1 << 20, sizeof(pin_key_t), flow_key_hash)
        for i in range(flows):
            key_of(i, &key)
            if (kt_add(&k, &key) if kt else rte_hash_add_key(h, &key)) < 0:
                raise FastPathError(f"{table}: could not add flow {i} of {flows}")
        with nogil:
            for r in range(bursts):
                for j in range(KT_BULK):
                    x = x * 6364136223846793005ULL + 1442695040888963407ULL
                    key_of((x >> 33) % flows, &keys[j])
                    kp[j] = &keys[j]
                    hashes[j] = kt_hash(&k, &keys[j])
                t0 = rte_get_tsc_cycles()
                if kt:
                    kt_lookup_bulk(&k, kp, hashes, KT_BULK, pos)
                else:
                    rte_hash_lookup_with_hash_bulk(h, kp, hashes, KT_BULK, pos)
                spent += rte_get_tsc_cycles() - t0
                for j in range(KT_BULK):
                    missing += pos[j] < 0
        if missing:
            raise FastPathError(f"{table}: {missing} lookups of keys it holds failed")
        return spent / (<double>bursts * KT_BULK)
    finally:
        kt_free(&k)
        if h != NULL:
            rte_hash_free(h)



def cli_bench_keytab(args):
    """`onvm bench keytab`: a burst's bulk lookup, cycles a key, this key
    table against rte_hash, alternated round by round (the machine's speed
    drifts), medians over the rounds."""
    import json
    import os
    import statistics
    import sys
    from host_agent import fastpath as fp
    for flows in args.flows or ():
        if not 1 <= flows <= (1 << 20):
            print(f"onvm bench keytab: --flows must be 1 .. {1 << 20}, not {flows}",
                  file=sys.stderr)
            return 2
    if args.bursts < 1 or args.rounds < 1:
        print("onvm bench keytab: --bursts and --rounds must be at least 1", file=sys.stderr)
        return 2
    fp.eal_init(fp.default_eal_args(f"keybench{os.getpid()}"))
    try:
        result = {"bursts": args.bursts, "burst": KT_BULK, "table_size": 1 << 20,
                  "rounds": args.rounds, "cycles_per_key": {}}
        for flows in args.flows or (1024, 65536, 1_000_000):
            got = {"keytab": [], "rte_hash": []}
            for r in range(args.rounds):
                for table in (("keytab", "rte_hash") if r % 2 == 0 else ("rte_hash", "keytab")):
                    got[table].append(lookup_cycles(flows, args.bursts, table, seed=r + 1))
            result["cycles_per_key"][flows] = {
                t: round(statistics.median(v), 1) for t, v in got.items()}
            if not args.json:
                m = result["cycles_per_key"][flows]
                print(f"{flows:>9} keys: keytab {m['keytab']:6.1f}  rte_hash "
                      f"{m['rte_hash']:6.1f} cycles a key (median of {args.rounds})",
                      flush=True)
        if args.json:
            print(json.dumps(result))
    finally:
        fp.eal_cleanup()
    return 0
