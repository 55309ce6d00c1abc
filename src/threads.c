/* threads.c - the worker pool (see threads.h). Between jobs a worker spins briefly on the job
 * counter before sleeping on a condition variable: decode issues many small jobs per token, and
 * a futex wake per job would cost more than the work. Items are claimed with an atomic counter,
 * so uneven items balance themselves. */
#include "threads.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "util.h"

#define SPIN_SECONDS 0.0005

struct ms_pool {
    int n;
    pthread_t *tid;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    atomic_uint_fast64_t generation; /* bumped per job */
    atomic_int quit;
    atomic_int pending;              /* workers still in the current job */
    ms_task_fn fn;
    void *ctx;
    int n_items;
    atomic_int next;
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

static void run_items(ms_pool *p, int thread) {
    for (;;) {
        int i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->n_items) break;
        p->fn(p->ctx, i, thread);
    }
}

/* Waits until the generation differs from seen (or quit); returns the new generation. */
static uint64_t wait_job(ms_pool *p, uint64_t seen) {
    double t0 = 0;
    for (unsigned spins = 0;; spins++) {
        uint64_t g = atomic_load_explicit(&p->generation, memory_order_acquire);
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
    while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->quit)) pthread_cond_wait(&p->wake, &p->mu);
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
        run_items(p, wa.id);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
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
    if (n <= 0) return;
    if (!p || p->n == 1 || n == 1) {
        for (int i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n_items = n;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    /* publish the job, then wake sleepers; a worker checks the generation under the mutex
     * before sleeping, so taking the mutex here cannot lose a wake-up */
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_items(p, 0);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) cpu_relax();
}

int ms_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
