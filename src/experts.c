/* experts.c - the expert store (see experts.h): residency modes, an owned cache of fixed-size
 * slots with LRU or decayed-frequency eviction, and a pool of I/O threads that keeps many
 * preads in flight (one per expert matrix slice, aligned windows for O_DIRECT).
 *
 * Locking: one mutex guards the slot table, the queue and the stats; readers block on `ready`,
 * I/O threads on `work`. Slots being read (LOADING) or pinned are never evicted.
 */
#include "experts.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ALIGN 4096u
#define LFU_HALF_LIFE 2000.0 /* in requests: how fast old popularity fades */

enum { SLOT_EMPTY, SLOT_LOADING, SLOT_READY, SLOT_ERROR };

typedef struct slot {
    int key;            /* il * n_expert + e, or -1 */
    int state, pins, pending, prefetched;
    int unowned;        /* the read ran with no caller pinned (a prefetch, or a failed layer let go):
                         * its error is not reported to a later caller but read again */
    int err;            /* errno of a failed read; -1: short read (file truncated?) */
    uint64_t last_use;  /* tick of the last request */
    double score;       /* LFU: decayed request count as of last_use */
    uint8_t *buf;
    ms_expert_ref ref;
} slot;

typedef struct io_job {
    int slot, which, fd;
    uint64_t off, len;  /* the slice */
    uint8_t *dst;       /* window start (aligned in direct mode) */
} io_job;

struct ms_store {
    const struct ms_model *m;
    ms_store_params p;
    int n_layer, n_expert;
    int *fd;             /* per GGUF part: the fd reads go through */
    int own_fds;         /* fd[] were opened here (O_DIRECT) */
    uint64_t sub_bytes[3], slot_bytes;
    slot *slots;
    int n_slots;
    uint8_t *arena;
    size_t arena_bytes;
    int *where;          /* [n_layer * n_expert]: slot or -1 */
    uint64_t *usage;     /* [n_layer * n_expert] */
    pthread_mutex_t mu;
    pthread_cond_t ready, work;
    io_job *queue;
    int q_head, q_len, q_cap;
    pthread_t *io;
    int n_io, quit;
    uint64_t tick;       /* one per request call: protects this layer's experts from prefetch */
    ms_store_stats st;
};

static const ms_mat3 *mat_of(const ms_store *s, int il, int which) {
    const ms_layer *ly = &s->m->layers[il];
    return which == 0 ? &ly->gate_exps : which == 1 ? &ly->up_exps : &ly->down_exps;
}

static int in_place(const ms_store *s) { return experts_mode_in_place(s->p.io_mode); }

const char *experts_mode_name(int mode) {
    return mode == MS_IO_MMAP        ? "mmap"
           : mode == MS_IO_PAGECACHE ? "pagecache"
           : mode == MS_IO_DIRECT    ? "direct"
           : mode == MS_IO_RAM       ? "ram"
                                     : "?";
}

int experts_mode_from_name(const char *name) {
    for (int m = MS_IO_MMAP; m <= MS_IO_RAM; m++)
        if (!strcmp(name, experts_mode_name(m))) return m;
    return -1;
}

int experts_io_mode(const ms_store *s) { return s->p.io_mode; }

/* ------------------------------------------------------------------ I/O threads */

static double now(void) { return ms_time(); }

/* Reads the window holding [off, off + len) into dst; returns 0 or an errno (-1: short). */
static int read_window(const ms_store *s, const io_job *j, uint64_t *got_out) {
    uint64_t a = s->p.io_mode == MS_IO_DIRECT ? ALIGN : 1;
    uint64_t start = j->off / a * a, end = (j->off + j->len + a - 1) / a * a, need = j->off + j->len - start;
    uint64_t got = 0;
    while (got < end - start) {
        long r = ms_pread(j->fd, j->dst + got, (size_t)(end - start - got), start + got);
        if (r < 0) {
            if (errno == EINTR) continue;
            *got_out = got;
            return errno ? errno : EIO;
        }
        if (r == 0) break; /* end of file */
        got += (uint64_t)r;
    }
    *got_out = got;
    return got >= need ? 0 : -1;
}

static void *io_main(void *arg) {
    ms_store *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->q_len && !s->quit) pthread_cond_wait(&s->work, &s->mu);
        if (s->quit) break;
        io_job j = s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % s->q_cap;
        s->q_len--;
        pthread_mutex_unlock(&s->mu);
        double t0 = now();
        uint64_t got = 0;
        int err = read_window(s, &j, &got);
        double dt = now() - t0;
        pthread_mutex_lock(&s->mu);
        s->st.read_seconds += dt;
        s->st.bytes_read += got;
        s->st.reads++;
        slot *sl = &s->slots[j.slot];
        if (err && !sl->err) sl->err = err;
        if (--sl->pending == 0) {
            sl->state = sl->err ? SLOT_ERROR : SLOT_READY;
            pthread_cond_broadcast(&s->ready);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Makes room for n more jobs in the queue. */
static int reserve_jobs(ms_store *s, int n) {
    if (s->q_len + n <= s->q_cap) return 0;
    int cap = s->q_cap ? s->q_cap * 2 : 256;
    while (cap < s->q_len + n) cap *= 2;
    io_job *q = ms_malloc(sizeof(io_job) * (size_t)cap);
    if (!q) return -1;
    for (int i = 0; i < s->q_len; i++) q[i] = s->queue[(s->q_head + i) % s->q_cap];
    ms_free(s->queue);
    s->queue = q;
    s->q_head = 0;
    s->q_cap = cap;
    return 0;
}

/* Queues a job (room reserved). */
static void push_job(ms_store *s, io_job j) {
    s->queue[(s->q_head + s->q_len) % s->q_cap] = j;
    s->q_len++;
}

/* ------------------------------------------------------------------ slots */

static double priority(const ms_store *s, const slot *sl) {
    if (s->p.policy == MS_EVICT_LFU)
        return sl->score * exp2(-(double)(s->tick - sl->last_use) / LFU_HALF_LIFE);
    return (double)sl->last_use;
}

static void touch(ms_store *s, slot *sl) {
    if (s->p.policy == MS_EVICT_LFU) sl->score = priority(s, sl) + 1.0;
    sl->last_use = s->tick;
}

/* The slot to fill next: an empty one, else the unpinned ready one of lowest priority.
 * protect_tick > 0 also spares slots used at or after that tick. -1 if none. */
static int victim(ms_store *s, uint64_t protect_tick) {
    int best = -1;
    double bp = 0;
    for (int i = 0; i < s->n_slots; i++) {
        slot *sl = &s->slots[i];
        if (sl->state == SLOT_EMPTY) return i;
        if (sl->pins || sl->state == SLOT_LOADING) continue;
        if (protect_tick && sl->last_use >= protect_tick) continue;
        double pr = sl->state == SLOT_ERROR ? -1.0 : priority(s, sl);
        if (best < 0 || pr < bp) best = i, bp = pr;
    }
    return best;
}

/* 1 if a slot is loading with no caller pinned on it: it will be a victim once its read ends. */
static int busy_unpinned(const ms_store *s) {
    for (int i = 0; i < s->n_slots; i++)
        if (s->slots[i].state == SLOT_LOADING && !s->slots[i].pins) return 1;
    return 0;
}

/* Points the slot at key and queues its three reads. Caller holds the mutex. On failure (no
 * memory for the queue) nothing has changed. */
static int start_load(ms_store *s, int si, int key) {
    if (reserve_jobs(s, 3)) return -1;
    slot *sl = &s->slots[si];
    if (sl->key >= 0) s->where[sl->key] = -1;
    sl->key = key;
    s->where[key] = si;
    sl->state = SLOT_LOADING;
    sl->err = 0;
    sl->pending = 3;
    sl->prefetched = 0;
    sl->unowned = 0;
    sl->score = 0;
    int il = key / s->n_expert, x = key % s->n_expert;
    uint8_t *dst = sl->buf;
    const uint8_t **refs[3] = {&sl->ref.gate, &sl->ref.up, &sl->ref.down};
    for (int w = 0; w < 3; w++) {
        const ms_mat3 *mt = mat_of(s, il, w);
        uint64_t off = mt->src->file_offset + (uint64_t)x * mt->stride;
        uint64_t a = s->p.io_mode == MS_IO_DIRECT ? ALIGN : 1;
        *refs[w] = dst + (off - off / a * a);
        io_job j = {si, w, s->fd[mt->src->part], off, mt->stride, dst};
        push_job(s, j);
        dst += s->sub_bytes[w];
    }
    pthread_cond_broadcast(&s->work);
    return 0;
}

/* ------------------------------------------------------------------ API */

static uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

ms_store *experts_open(const struct ms_model *m, const ms_store_params *p, ms_err *e) {
    ms_store *s = ms_calloc(1, sizeof *s);
    if (!s) {
        ms_fail(e, MS_ERR_NOMEM, "out of memory");
        return NULL;
    }
    s->m = m;
    if (p) s->p = *p;
    if (s->p.io_threads <= 0) s->p.io_threads = 32;
    s->n_layer = m->hp.n_layer;
    s->n_expert = m->hp.n_expert;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->ready, NULL);
    pthread_cond_init(&s->work, NULL);
    size_t nk = (size_t)s->n_layer * s->n_expert;
    s->where = ms_malloc(sizeof(int) * nk);
    s->usage = ms_calloc(nk, sizeof(uint64_t));
    const gguf_file *f = m->gguf;
    s->fd = ms_malloc(sizeof(int) * (size_t)f->n_parts);
    if (!s->where || !s->usage || !s->fd) {
        ms_fail(e, MS_ERR_NOMEM, "out of memory");
        experts_close(s);
        return NULL;
    }
    for (size_t i = 0; i < nk; i++) s->where[i] = -1;
    for (int i = 0; i < f->n_parts; i++) s->fd[i] = f->parts[i].fd;
    if (s->p.io_mode == MS_IO_DIRECT) {
        s->own_fds = 1;
        for (int i = 0; i < f->n_parts; i++) s->fd[i] = -1;
        for (int i = 0; i < f->n_parts; i++) {
            s->fd[i] = open(f->parts[i].path, O_RDONLY | O_DIRECT | O_CLOEXEC);
            if (s->fd[i] < 0) {
                ms_fail(e, MS_ERR_IO, "%s: cannot open for direct I/O: %s (try --io pagecache)", f->parts[i].path,
                        strerror(errno));
                experts_close(s);
                return NULL;
            }
        }
    }
    for (int il = 0; il < s->n_layer; il++)
        for (int w = 0; w < 3; w++)
            s->sub_bytes[w] = MS_MAX(s->sub_bytes[w], round_up(mat_of(s, il, w)->stride + 2 * ALIGN, ALIGN));
    s->slot_bytes = s->sub_bytes[0] + s->sub_bytes[1] + s->sub_bytes[2];
    return s;
}

static void stop_io(ms_store *s) {
    pthread_mutex_lock(&s->mu);
    s->quit = 1;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_io; i++) pthread_join(s->io[i], NULL);
    s->n_io = 0;
    s->quit = 0;
    ms_free(s->io);
    s->io = NULL;
}

static void free_cache(ms_store *s) {
    if (s->arena) munmap(s->arena, s->arena_bytes);
    s->arena = NULL;
    ms_free(s->slots);
    s->slots = NULL;
    s->n_slots = 0;
}

void experts_close(ms_store *s) {
    if (!s) return;
    stop_io(s);
    free_cache(s);
    if (s->own_fds && s->fd)
        for (int i = 0; i < s->m->gguf->n_parts; i++)
            if (s->fd[i] >= 0) close(s->fd[i]);
    ms_free(s->fd);
    ms_free(s->where);
    ms_free(s->usage);
    ms_free(s->queue);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->ready);
    pthread_cond_destroy(&s->work);
    ms_free(s);
}

uint64_t experts_slot_bytes(const ms_store *s) { return in_place(s) ? 0 : s->slot_bytes; }

int experts_set_cache(ms_store *s, uint64_t cache_bytes, ms_err *e) {
    if (in_place(s)) return MS_OK;
    int n = (int)MS_MIN(cache_bytes / s->slot_bytes, (uint64_t)s->n_layer * s->n_expert);
    int need = 2 * s->m->hp.n_expert_used;
    if (n < need)
        return ms_fail(e, MS_ERR_BUDGET,
                       "the memory budget leaves %.1f MiB for the expert cache: %d experts of %.2f MiB, but decoding needs at least %d (raise --mem)",
                       cache_bytes / 1048576.0, n, s->slot_bytes / 1048576.0, need);
    if (n == s->n_slots) return MS_OK;
    stop_io(s);
    free_cache(s);
    for (size_t i = 0; i < (size_t)s->n_layer * s->n_expert; i++) s->where[i] = -1;
    s->arena_bytes = (size_t)n * s->slot_bytes;
    /* populated now: the cache is memory the budget grants, and zeroing pages on first touch
     * would otherwise land in the middle of decoding */
    void *a = mmap(NULL, s->arena_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    s->slots = ms_calloc((size_t)n, sizeof(slot));
    if (a == MAP_FAILED || !s->slots) {
        if (a != MAP_FAILED) munmap(a, s->arena_bytes);
        ms_free(s->slots);
        s->slots = NULL;
        return ms_fail(e, MS_ERR_NOMEM, "cannot allocate the expert cache (%.1f MiB)", s->arena_bytes / 1048576.0);
    }
    s->arena = a;
    s->n_slots = n;
    for (int i = 0; i < n; i++) {
        s->slots[i].key = -1;
        s->slots[i].buf = s->arena + (size_t)i * s->slot_bytes;
    }
    s->io = ms_calloc((size_t)s->p.io_threads, sizeof(pthread_t));
    for (int i = 0; s->io && i < s->p.io_threads; i++) {
        if (pthread_create(&s->io[i], NULL, io_main, s) != 0) break;
        s->n_io++;
    }
    if (!s->n_io) { /* no half-built cache: a later call starts over */
        stop_io(s);
        free_cache(s);
        return ms_fail(e, MS_ERR_NOMEM, "cannot start I/O threads for the expert cache");
    }
    s->st.cache_slots = (uint64_t)n;
    s->st.cache_bytes = s->arena_bytes;
    return MS_OK;
}

static int check_ids(const ms_store *s, int il, const int *ids, int n, ms_err *e) {
    if (il < 0 || il >= s->n_layer) return ms_fail(e, MS_ERR_ARG, "layer %d out of range", il);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->n_expert) return ms_fail(e, MS_ERR_ARG, "expert %d out of range in layer %d", ids[i], il);
    return MS_OK;
}

/* mmap mode: fraction of the expert's pages resident, when tracking is on. */
static int mapped_resident(const ms_store *s, int il, int x) {
    unsigned char vec[64];
    long page = sysconf(_SC_PAGESIZE);
    for (int w = 0; w < 3; w++) {
        const ms_mat3 *mt = mat_of(s, il, w);
        const uint8_t *p = mt->data + (size_t)x * mt->stride;
        uintptr_t a = (uintptr_t)p / (uintptr_t)page * (uintptr_t)page;
        size_t len = (size_t)((uintptr_t)p + mt->stride - a);
        for (size_t off = 0; off < len; off += sizeof vec * (size_t)page) {
            size_t chunk = MS_MIN(len - off, sizeof vec * (size_t)page);
            if (mincore((void *)(a + off), chunk, vec)) return 0;
            for (size_t i = 0; i < (chunk + (size_t)page - 1) / (size_t)page; i++)
                if (!(vec[i] & 1)) return 0;
        }
    }
    return 1;
}

int experts_request(ms_store *s, int il, const int *ids, int n, ms_err *e) {
    if (check_ids(s, il, ids, n, e)) return e ? e->status : MS_ERR_ARG;
    pthread_mutex_lock(&s->mu);
    s->tick++;
    s->st.requests += (uint64_t)n;
    int rc = MS_OK, i;
    for (i = 0; i < n; i++) {
        int key = il * s->n_expert + ids[i];
        s->usage[key]++;
        if (in_place(s)) {
            if (s->p.io_mode == MS_IO_RAM || (s->p.track_residency && mapped_resident(s, il, ids[i]))) s->st.hits++;
            continue;
        }
        int si = s->where[key];
        if (si >= 0) {
            slot *sl = &s->slots[si];
            /* a failed read is no hit: with no caller left (release forgets the others) it is
             * unowned, and experts_wait reads it again; a prefetched expert still came from disk:
             * it counts for the prefetch, not as a hit */
            if (sl->state != SLOT_ERROR) {
                if (sl->prefetched) {
                    s->st.prefetch_used++;
                    sl->prefetched = 0;
                } else {
                    s->st.hits++;
                }
            }
            sl->pins++;
            touch(s, sl);
            continue;
        }
        si = victim(s, 0);
        /* slots still reading for no one (a prefetch, or a failed layer let go) free up soon */
        while (si < 0 && busy_unpinned(s)) {
            pthread_cond_wait(&s->ready, &s->mu);
            si = victim(s, 0);
        }
        if (si < 0) {
            rc = ms_fail(e, MS_ERR_BUDGET, "expert cache too small: all %d slots are in use (raise --mem)", s->n_slots);
            break;
        }
        if (start_load(s, si, key)) {
            rc = ms_fail(e, MS_ERR_NOMEM, "out of memory queueing reads");
            break;
        }
        s->slots[si].pins = 1;
        touch(s, &s->slots[si]);
    }
    pthread_mutex_unlock(&s->mu);
    /* on failure nothing stays pinned (callers release only after a request succeeded) */
    if (rc && !in_place(s)) experts_release(s, il, ids, i);
    return rc;
}

int experts_wait(ms_store *s, int il, int id, ms_expert_ref *out, ms_err *e) {
    if (check_ids(s, il, &id, 1, e)) return e ? e->status : MS_ERR_ARG;
    if (in_place(s)) {
        const ms_layer *ly = &s->m->layers[il];
        out->gate = ly->gate_exps.data + (size_t)id * ly->gate_exps.stride;
        out->up = ly->up_exps.data + (size_t)id * ly->up_exps.stride;
        out->down = ly->down_exps.data + (size_t)id * ly->down_exps.stride;
        return MS_OK;
    }
    int key = il * s->n_expert + id, rc = MS_OK;
    pthread_mutex_lock(&s->mu);
    int si = s->where[key];
    if (si < 0) {
        pthread_mutex_unlock(&s->mu);
        return ms_fail(e, MS_ERR_ARG, "expert %d of layer %d was not requested", id, il);
    }
    slot *sl = &s->slots[si];
    for (int again = 1;; again = 0) {
        if (sl->state == SLOT_LOADING) {
            double t0 = now();
            while (sl->state == SLOT_LOADING) pthread_cond_wait(&s->ready, &s->mu);
            s->st.wait_seconds += now() - t0;
        }
        /* a read that failed while nobody waited on it (a prefetch, or one a failed layer let go
         * while a later request joined it) is read once more for this caller */
        if (!again || sl->state != SLOT_ERROR || !sl->unowned || start_load(s, si, key)) break;
    }
    if (sl->state == SLOT_ERROR) {
        const ms_mat3 *mt = mat_of(s, il, 0);
        rc = ms_fail(e, MS_ERR_IO, "%s: reading expert %d of layer %d failed: %s",
                     s->m->gguf->parts[mt->src->part].path, id, il,
                     sl->err < 0 ? "short read (was the file truncated?)" : strerror(sl->err));
    } else {
        *out = sl->ref;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int experts_ready(ms_store *s, int il, int id) {
    if (in_place(s)) return 1;
    if (il < 0 || il >= s->n_layer || id < 0 || id >= s->n_expert) return 0;
    pthread_mutex_lock(&s->mu);
    int si = s->where[il * s->n_expert + id];
    int ready = si >= 0 && s->slots[si].state != SLOT_LOADING;
    pthread_mutex_unlock(&s->mu);
    return ready;
}

int experts_acquire(ms_store *s, int il, const int *ids, int n, ms_expert_ref *out, ms_err *e) {
    int rc = experts_request(s, il, ids, n, e);
    if (rc) return rc;
    for (int i = 0; i < n && !rc; i++) rc = experts_wait(s, il, ids[i], &out[i], e);
    if (rc) experts_release(s, il, ids, n);
    return rc;
}

void experts_release(ms_store *s, int il, const int *ids, int n) {
    if (in_place(s)) return;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < n; i++) {
        if (il < 0 || il >= s->n_layer || ids[i] < 0 || ids[i] >= s->n_expert) continue;
        int si = s->where[il * s->n_expert + ids[i]];
        if (si < 0) continue;
        slot *sl = &s->slots[si];
        if (sl->pins > 0) sl->pins--;
        if (!sl->pins && sl->state == SLOT_LOADING) sl->unowned = 1;
        if (!sl->pins && sl->state == SLOT_ERROR) { /* forget it so the next request reads again */
            s->where[sl->key] = -1;
            sl->key = -1;
            sl->state = SLOT_EMPTY;
        }
    }
    pthread_mutex_unlock(&s->mu);
}

void experts_prefetch(ms_store *s, int il, const int *ids, int n) {
    if (il < 0 || il >= s->n_layer) return;
    if (s->p.io_mode == MS_IO_RAM) return; /* all in memory already */
    if (in_place(s)) {
        const ms_layer *ly = &s->m->layers[il];
        for (int i = 0; i < n; i++) {
            if (ids[i] < 0 || ids[i] >= s->n_expert) continue;
            for (int w = 0; w < 3; w++) {
                const ms_mat3 *mt = w == 0 ? &ly->gate_exps : w == 1 ? &ly->up_exps : &ly->down_exps;
                long page = sysconf(_SC_PAGESIZE);
                uintptr_t p = (uintptr_t)(mt->data + (size_t)ids[i] * mt->stride);
                uintptr_t a = p / (uintptr_t)page * (uintptr_t)page;
                madvise((void *)a, (size_t)(p + mt->stride - a), MADV_WILLNEED);
            }
        }
        s->st.prefetches += (uint64_t)n;
        return;
    }
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= s->n_expert) continue;
        int key = il * s->n_expert + ids[i];
        if (s->where[key] >= 0) continue;
        int si = victim(s, s->tick);
        if (si < 0) break;
        if (start_load(s, si, key)) break;
        s->slots[si].prefetched = 1;
        s->slots[si].unowned = 1;
        s->slots[si].last_use = s->tick ? s->tick - 1 : 0; /* not yet used: first in line if never requested */
        s->st.prefetches++;
    }
    pthread_mutex_unlock(&s->mu);
}

void experts_stats(const ms_store *s, ms_store_stats *out) {
    pthread_mutex_lock((pthread_mutex_t *)&s->mu);
    *out = s->st;
    pthread_mutex_unlock((pthread_mutex_t *)&s->mu);
}

const uint64_t *experts_usage(const ms_store *s) { return s->usage; }

int experts_capacity(const ms_store *s) { return in_place(s) ? 1 << 30 : s->n_slots; }
