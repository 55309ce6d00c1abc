/* util.c - error records, the hookable host allocator, clocks and size parsing. */
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

ms_status ms_fail(ms_err *e, ms_status status, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->status = status;
    }
    return status;
}

/* ---- test-only fault injection (util.h: ms_faults_init) ---- */

static const char *fault_path; /* MS_FAULTS, or NULL: no faults */
static pthread_once_t fault_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t fault_mu = PTHREAD_MUTEX_INITIALIZER;
static char fault_seen[128]; /* the control text the counts below started from */
static long fault_allocs, fault_reads;

static void fault_setup(void) {
    const char *p = getenv("MS_FAULTS");
    if (p && *p) fault_path = p;
}

void ms_faults_init(void) { pthread_once(&fault_once, fault_setup); }

/* The control file's first 127 bytes, NUL-terminated ("" when it is absent). No allocation. */
static void fault_read(char buf[128]) {
    buf[0] = 0;
    int fd = open(fault_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t r = read(fd, buf, 127);
    close(fd);
    buf[r > 0 ? r : 0] = 0;
}

/* Reads the control file into f and counts one allocation (alloc) or read: returns the count
 * since the file last changed. */
static long fault_count(char f[128], int alloc) {
    fault_read(f);
    pthread_mutex_lock(&fault_mu);
    if (strcmp(f, fault_seen)) {
        memcpy(fault_seen, f, sizeof fault_seen);
        fault_allocs = fault_reads = 0;
    }
    long n = alloc ? ++fault_allocs : ++fault_reads;
    pthread_mutex_unlock(&fault_mu);
    return n;
}

static int fault_alloc(void) {
    char f[128];
    long n, k = fault_count(f, 1);
    return sscanf(f, "alloc %ld", &n) == 1 && k == n;
}

long ms_pread(int fd, void *buf, size_t n, uint64_t off) {
    if (fault_path) {
        char f[128], what[16];
        long k = fault_count(f, 0), after = 0;
        int nf = sscanf(f, "%15s %ld", what, &after);
        if (nf >= 1 && k > after) { /* "read-eio N": the reads after the first N fail */
            int slow = !strcmp(what, "read-eio-slow");
            if (slow || !strcmp(what, "read-eio")) {
                if (slow) usleep(50000);
                errno = EIO;
                return -1;
            }
            if (!strcmp(what, "read-eof")) return 0;
            if (!strcmp(what, "read-partial") && n >= 8192) n = n / 2 / 4096 * 4096;
        }
    }
    return (long)pread(fd, buf, n, (off_t)off);
}

/* ---- the host allocator ---- */

static int (*alloc_hook)(void *ud);
static void *alloc_hook_ud;

void ms_set_alloc_hook(int (*hook)(void *ud), void *ud) {
    alloc_hook = hook;
    alloc_hook_ud = ud;
}

static int alloc_allowed(void) {
    if (fault_path && fault_alloc()) return 0;
    return !alloc_hook || alloc_hook(alloc_hook_ud);
}

void *ms_malloc(size_t n) { return alloc_allowed() ? malloc(n ? n : 1) : NULL; }
void *ms_calloc(size_t count, size_t size) {
    return alloc_allowed() ? calloc(count ? count : 1, size ? size : 1) : NULL;
}
void *ms_realloc(void *p, size_t n) { return alloc_allowed() ? realloc(p, n ? n : 1) : NULL; }
void ms_free(void *p) { free(p); }

void *ms_malloc_aligned(size_t n) {
    if (!alloc_allowed()) return NULL;
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) return NULL;
    return p;
}
void ms_free_aligned(void *p) { free(p); }

#define HUGE_PAGE ((size_t)2 << 20)

void *ms_alloc_huge(size_t n) {
    if (!alloc_allowed()) return NULL;
    size_t len = (n + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    if (!len) len = HUGE_PAGE;
    uint8_t *raw = mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    /* keep the 2 MiB-aligned part: huge pages need the boundary */
    uint8_t *p = (uint8_t *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    if (p > raw) munmap(raw, (size_t)(p - raw));
    if (p + len < raw + len + HUGE_PAGE) munmap(p + len, (size_t)(raw + len + HUGE_PAGE - (p + len)));
    madvise(p, len, MADV_HUGEPAGE); /* advice: without THP the memory is still good */
    return p;
}

void ms_free_huge(void *p, size_t n) {
    if (p) munmap(p, n ? (n + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE : HUGE_PAGE);
}

int ms_thp_enabled(void) {
    char buf[128] = "";
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, "[always]") || strstr(buf, "[madvise]");
}

/* The first number in a file, or -1 ("max", missing, unreadable). */
static int64_t read_num(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long long v;
    int ok = fscanf(f, "%lld", &v) == 1;
    fclose(f);
    return ok && v >= 0 ? (int64_t)v : -1;
}

/* The least (limit - usage) over the cgroup at dir and its parents up to root; UINT64_MAX when
 * none sets a limit. */
static uint64_t cgroup_room(char *dir, size_t root_len, const char *limit_file, const char *usage_file) {
    uint64_t room = UINT64_MAX;
    for (;;) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", dir, limit_file);
        int64_t lim = read_num(path);
        snprintf(path, sizeof path, "%s/%s", dir, usage_file);
        int64_t use = read_num(path);
        /* v1 says "no limit" with a number near 2^63 */
        if (lim >= 0 && lim < ((int64_t)1 << 60) && use >= 0)
            room = MS_MIN(room, lim > use ? (uint64_t)(lim - use) : 0);
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < root_len) return room;
        *slash = 0;
    }
}

uint64_t ms_mem_available(void) {
    uint64_t avail = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) avail = (uint64_t)kb * 1024;
        fclose(f);
    }
    f = fopen("/proc/self/cgroup", "r");
    if (!f) return avail;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c2 = 0;
        const char *ctrl = c1 + 1, *cg = c2 + 1;
        char dir[4096];
        uint64_t room = UINT64_MAX;
        if (!*ctrl) { /* v2: "0::/path" */
            size_t root = (size_t)snprintf(dir, sizeof dir, "/sys/fs/cgroup");
            snprintf(dir + root, sizeof dir - root, "%s", strcmp(cg, "/") ? cg : "");
            room = cgroup_room(dir, root, "memory.max", "memory.current");
        } else if (strstr(ctrl, "memory")) { /* v1: "N:memory:/path" */
            size_t root = (size_t)snprintf(dir, sizeof dir, "/sys/fs/cgroup/memory");
            snprintf(dir + root, sizeof dir - root, "%s", strcmp(cg, "/") ? cg : "");
            room = cgroup_room(dir, root, "memory.limit_in_bytes", "memory.usage_in_bytes");
        }
        if (room != UINT64_MAX && (!avail || room < avail)) avail = room;
    }
    fclose(f);
    return avail;
}

char *ms_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = ms_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

double ms_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int ms_parse_size(const char *s, uint64_t *out) {
    char *end;
    if (!s || !*s) return -1;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    while (*end == ' ') end++;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 'K': mul = 1024.0; end++; break;
    case 'M': mul = 1024.0 * 1024; end++; break;
    case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    case '\0': break;
    case 'B': break;
    default: return -1;
    }
    if (*end == 'i' || *end == 'I') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return -1;
    double bytes = v * mul;
    if (bytes > 1.8e19) return -1;
    *out = (uint64_t)bytes;
    return 0;
}

const char *ms_status_name(ms_status s) {
    switch (s) {
    case MS_OK: return "ok";
    case MS_ERR_IO: return "I/O error";
    case MS_ERR_FORMAT: return "bad file format";
    case MS_ERR_UNSUPPORTED: return "unsupported";
    case MS_ERR_NOMEM: return "out of memory";
    case MS_ERR_ARG: return "bad argument";
    case MS_ERR_CONTEXT: return "context full";
    case MS_ERR_BUDGET: return "memory budget exceeded";
    }
    return "unknown error";
}
