/* threads.c - the worker pool (see threads.h).
 *
 * Items are claimed from one 64-bit word that holds (job generation, item count, next item), so
 * a claim is valid only for the job it was made in. The caller takes items too and waits only
 * for items that were actually claimed: a worker that the OS has not scheduled (another process
 * holds the core) does not stall the job, the caller just does its share. Between jobs a worker
 * spins briefly before sleeping on a condition variable: decode issues many small jobs per
 * token, and a futex wake per job would cost more than the work.
 */
#include "threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>

#include "util.h"

#define SPIN_SECONDS 0.0005
#define GEN_SHIFT 40
#define N_SHIFT 20
#define FIELD (((uint64_t)1 << 20) - 1)

struct ms_pool {
    int n;
    pthread_t *tid;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    atomic_uint_fast64_t claim; /* generation << 40 | n_items << 20 | next item */
    atomic_int done;            /* items finished in the current job */
    atomic_int quit;
    uint64_t gen;               /* caller side: the current generation */
    int n_job;                  /* caller side: items of the job pool_wait has still to see done */
    ms_task_fn fn;
    void *ctx;
};

typedef struct worker_arg {
    ms_pool *p;
    int id;
} worker_arg;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Claims and runs items of generation gen until none are left (or the job changed). */
static void run_items(ms_pool *p, uint64_t gen, int thread) {
    uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
    for (;;) {
        if ((c >> GEN_SHIFT) != gen) return;
        uint64_t n = (c >> N_SHIFT) & FIELD, next = c & FIELD;
        if (next >= n) return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, c + 1, memory_order_acq_rel, memory_order_acquire))
            continue;
        p->fn(p->ctx, (int)next, thread);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        c = atomic_load_explicit(&p->claim, memory_order_acquire);
    }
}

/* Waits until the generation differs from seen (or quit); returns the new generation. */
static uint64_t wait_job(ms_pool *p, uint64_t seen) {
    double t0 = 0;
    for (unsigned spins = 0;; spins++) {
        uint64_t g = atomic_load_explicit(&p->claim, memory_order_acquire) >> GEN_SHIFT;
        if (g != seen || atomic_load(&p->quit)) return g;
        cpu_relax();
        if ((spins & 255) == 0) {
            double t = ms_time();
            if (!t0) t0 = t;
            else if (t - t0 > SPIN_SECONDS) break;
        }
    }
    pthread_mutex_lock(&p->mu);
    uint64_t g;
    while ((g = atomic_load(&p->claim) >> GEN_SHIFT) == seen && !atomic_load(&p->quit))
        pthread_cond_wait(&p->wake, &p->mu);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker(void *arg) {
    worker_arg wa = *(worker_arg *)arg;
    ms_free(arg);
    ms_pool *p = wa.p;
    uint64_t seen = 0;
    for (;;) {
        seen = wait_job(p, seen);
        if (atomic_load(&p->quit)) break;
        run_items(p, seen, wa.id);
    }
    return NULL;
}

ms_pool *pool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    ms_pool *p = ms_calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->tid = ms_calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->tid) { pool_free(p); return NULL; }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = ms_malloc(sizeof *wa);
        if (!wa) { pool_free(p); return NULL; }
        wa->p = p;
        wa->id = i;
        if (pthread_create(&p->tid[i], NULL, worker, wa) != 0) {
            ms_free(wa);
            pool_free(p);
            return NULL;
        }
        p->n = i + 1;
    }
    return p;
}

void pool_free(ms_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->tid[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    ms_free(p->tid);
    ms_free(p);
}

int pool_size(const ms_pool *p) { return p ? p->n : 1; }

void pool_run(ms_pool *p, ms_task_fn fn, void *ctx, int n) {
    pool_start(p, fn, ctx, n);
    pool_wait(p);
}

void pool_start(ms_pool *p, ms_task_fn fn, void *ctx, int n) {
    if (n <= 0) return;
    /* one item, no workers, or more items than a claim word counts (callers never ask for that) */
    if (!p || p->n == 1 || n == 1 || (uint64_t)n > FIELD) {
        for (int i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    p->gen = (p->gen + 1) & ((1u << 24) - 1);
    if (p->gen == 0) p->gen = 1; /* workers start having seen 0 */
    atomic_store_explicit(&p->claim, p->gen << GEN_SHIFT | (uint64_t)n << N_SHIFT, memory_order_release);
    /* wake sleepers; a worker checks the generation under the mutex before sleeping, so taking
     * the mutex here cannot lose a wake-up */
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    p->n_job = n;
}

void pool_wait(ms_pool *p) {
    if (!p || !p->n_job) return;
    run_items(p, p->gen, 0);
    /* every item is claimed; wait for those still running elsewhere */
    for (unsigned spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) < p->n_job; spins++) {
        cpu_relax();
        if ((spins & 1023) == 1023) sched_yield(); /* the claimant may be waiting for this core */
    }
    p->n_job = 0;
}

int ms_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
