/* util.h - errors, the one host allocator, timing and small helpers shared by every module.
 * Not a dumping ground: anything with a concern of its own gets its own file. */
#ifndef MS_UTIL_H
#define MS_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "moestream.h"

/* An error record: a status and a readable one-line message. Library functions that can fail
 * take an `ms_err *` (may be NULL) and return a status; only front ends print. */
typedef ms_error ms_err;

/* Records status and a printf-style message in e (if non-NULL). Returns status, so callers can
 * write `return ms_fail(e, MS_ERR_FORMAT, "...")`. */
ms_status ms_fail(ms_err *e, ms_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Host allocations go through these so tests can inject failures (see ms_set_alloc_hook).
 * They return NULL on failure (never abort); ms_free(NULL) is a no-op. */
void *ms_malloc(size_t n);
void *ms_calloc(size_t count, size_t size);
void *ms_realloc(void *p, size_t n);
void ms_free(void *p);
/* Aligned (64 B) allocation, freed with ms_free_aligned. */
void *ms_malloc_aligned(size_t n);
void ms_free_aligned(void *p);
/* Big read-mostly arrays (weights): anonymous memory on 2 MiB boundaries, with the kernel asked
 * for transparent huge pages (one TLB entry per 2 MiB, and a stream of reads is not cut at every
 * 4 KiB page). Freed with ms_free_huge(p, n), n as allocated. */
void *ms_alloc_huge(size_t n);
void ms_free_huge(void *p, size_t n);
/* Whether madvise(MADV_HUGEPAGE) can give transparent huge pages ("always" or "madvise"). */
int ms_thp_enabled(void);
/* Bytes this process can still take without swapping or a cgroup limit: MemAvailable, or less
 * when the memory cgroup (v1 or v2) leaves less. 0 when unknown. */
uint64_t ms_mem_available(void);
char *ms_strdup(const char *s);

/* Test hook: when set, every ms_malloc/ms_calloc/ms_realloc first calls hook(ud) and fails the
 * allocation if it returns 0. Process-wide; set it only from tests, before any other thread runs. */
void ms_set_alloc_hook(int (*hook)(void *ud), void *ud);

/* pread(2) for the reads that can fail at run time (expert slices, dense weights, embedding
 * rows): the place where tests inject read faults (see ms_faults_init). */
long ms_pread(int fd, void *buf, size_t n, uint64_t off);

/* Test-only fault injection, off unless the environment variable MS_FAULTS names a control file
 * when the first model is loaded (ms_model_load calls this; tests may call it earlier). The file is
 * read again at every injection point, so a test can change the faults of a running process (the
 * server) by rewriting it. Its first word says what fails:
 *   read-eio [N]      every ms_pread fails with EIO (after the first N since the file changed)
 *   read-eio-slow [N] as read-eio, each after 50 ms (so a read is still in flight when tested)
 *   read-eof [N]      every ms_pread reads nothing, as at the end of a file cut short
 *   read-partial [N]  every ms_pread of 8 KiB or more returns half of it (4 KiB-aligned): no error
 *   alloc N           the Nth host allocation (ms_malloc & co.) after the file last changed fails
 * Anything else, an empty or a missing file: no fault. Unset, it costs a load and a branch. */
void ms_faults_init(void);

/* Monotonic time in seconds. */
double ms_time(void);

/* Parses "8G", "512M", "1.5GiB", "4096" into bytes. Returns 0 on success, -1 on bad input. */
int ms_parse_size(const char *s, uint64_t *out);

/* Overflow-checked size arithmetic: return 0 on success, -1 on overflow. */
static inline int ms_mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}
static inline int ms_add_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return __builtin_add_overflow(a, b, out) ? -1 : 0;
}

#define MS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MS_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
