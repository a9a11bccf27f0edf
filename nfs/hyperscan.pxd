# Hyperscan's C API (hs.h, Debian libhyperscan-dev): what nfs/ids.pyx uses.
cdef extern from "hs/hs.h" nogil:
    ctypedef int hs_error_t
    ctypedef struct hs_database_t:
        pass
    ctypedef struct hs_scratch_t:
        pass
    ctypedef struct hs_platform_info_t:
        pass
    ctypedef struct hs_compile_error_t:
        char *message
        int expression
    ctypedef struct hs_expr_info_t:
        unsigned int min_width
        unsigned int max_width
        char unordered_matches
        char matches_at_eod
        char matches_only_at_eod
    ctypedef int (*match_event_handler)(unsigned int id, unsigned long long frm,
                                        unsigned long long to, unsigned int flags,
                                        void *context) noexcept nogil

    int HS_SUCCESS
    int HS_SCAN_TERMINATED
    unsigned int HS_FLAG_CASELESS
    unsigned int HS_FLAG_DOTALL
    unsigned int HS_FLAG_MULTILINE
    unsigned int HS_FLAG_SINGLEMATCH
    unsigned int HS_FLAG_ALLOWEMPTY
    unsigned int HS_MODE_BLOCK
    unsigned int HS_MODE_VECTORED

    hs_error_t hs_compile_multi(const char *const *expressions, const unsigned int *flags,
                                const unsigned int *ids, unsigned int elements,
                                unsigned int mode, const hs_platform_info_t *platform,
                                hs_database_t **db, hs_compile_error_t **error)
    hs_error_t hs_expression_info(const char *expression, unsigned int flags,
                                  hs_expr_info_t **info, hs_compile_error_t **error)
    hs_error_t hs_free_compile_error(hs_compile_error_t *error)
    hs_error_t hs_free_database(hs_database_t *db)
    hs_error_t hs_alloc_scratch(const hs_database_t *db, hs_scratch_t **scratch)
    hs_error_t hs_free_scratch(hs_scratch_t *scratch)
    hs_error_t hs_scan_vector(const hs_database_t *db, const char *const *data,
                              const unsigned int *length, unsigned int count,
                              unsigned int flags, hs_scratch_t *scratch,
                              match_event_handler onEvent, void *context)
    const char *hs_version()
