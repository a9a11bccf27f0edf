# cython: language_level=3
"""RuleSet's C side, for nfs/ids.pyx (see nfs/idsset.pyx)."""
from nfs.idsstate cimport ruleset_t


cdef class RuleSet:
    cdef ruleset_t *r
    cdef readonly object rules      # Ruleset: the rules that run, .skipped
    cdef readonly object source
    cdef readonly object v          # the config's own keys, checked
    cdef readonly object config
    cdef public object stamp        # the rule file's (mtime_ns, size, sha256) when read
    cdef readonly double build_ms
    cdef readonly bint thresholds
    cdef list msgs                  # keeps the alert_json strings alive
