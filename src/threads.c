/* threads.c - the worker pool (see threads.h). Workers sleep on a condition variable between
 * jobs; items are claimed with an atomic counter, so uneven items balance themselves. */
#include "threads.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "util.h"

struct ms_pool {
    int n;
    pthread_t *tid;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    uint64_t generation; /* bumped per job */
    int quit;
    int busy;            /* workers still in the current job */
    ms_task_fn fn;
    void *ctx;
    int n_items;
    atomic_int next;
};

typedef struct worker_arg {
    ms_pool *p;
    int id;
} worker_arg;

static void run_items(ms_pool *p, int thread) {
    for (;;) {
        int i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n_items) break;
        p->fn(p->ctx, i, thread);
    }
}

static void *worker(void *arg) {
    worker_arg wa = *(worker_arg *)arg;
    ms_free(arg);
    ms_pool *p = wa.p;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_items(p, wa.id);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

ms_pool *pool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    ms_pool *p = ms_calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
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
    p->quit = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->tid[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
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
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_items = n;
    atomic_store(&p->next, 0);
    p->busy = p->n - 1;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_items(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->busy > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

int ms_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
