/* test_threads.c - the worker pool (src/threads.h): every item of a job runs exactly once, on a
 * thread index inside the pool, whether the job is run whole (pool_run) or started and waited
 * for with the caller busy in between (pool_start / pool_wait, as the CUDA backend does with
 * its host experts); the cases that run inline (no pool, one thread, one item); many small jobs
 * back to back. Run under TSan too (make tsan-test). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "threads.h"

enum { N_ITEMS = 1000 };

typedef struct job {
    atomic_int runs[N_ITEMS];
    atomic_int bad_thread;
    int n_threads;
} job;

static void count_item(void *ctx, int i, int thread) {
    job *j = (job *)ctx;
    atomic_fetch_add(&j->runs[i], 1);
    if (thread < 0 || thread >= j->n_threads) atomic_fetch_add(&j->bad_thread, 1);
}

static void job_reset(job *j, int n_threads) {
    for (int i = 0; i < N_ITEMS; i++) atomic_store(&j->runs[i], 0);
    atomic_store(&j->bad_thread, 0);
    j->n_threads = n_threads;
}

/* Items [0, n) ran exactly `times` times each, the others not at all. */
static void check_runs(const job *j, int n, int times, const char *what) {
    int wrong = 0, first = -1;
    for (int i = 0; i < N_ITEMS; i++) {
        const int want = i < n ? times : 0;
        if (atomic_load(&j->runs[i]) != want) {
            wrong++;
            if (first < 0) first = i;
        }
    }
    CHECK(wrong == 0, "%s: %d items ran the wrong number of times (first: item %d, %d runs)", what, wrong, first,
          first >= 0 ? atomic_load(&j->runs[first]) : 0);
    CHECK(atomic_load(&j->bad_thread) == 0, "%s: %d items saw a thread index outside the pool", what,
          atomic_load(&j->bad_thread));
}

/* Work for the caller between pool_start and pool_wait. */
static double busy(int n) {
    double x = 1.0;
    for (int i = 0; i < n; i++) x = x * 1.0000001 + 1e-9;
    return x;
}

int main(int argc, char **argv) {
    t_fixtures(argc, argv);
    job *j = calloc(1, sizeof *j);
    ms_pool *p = pool_new(4);
    CHECK(p && pool_size(p) == 4, "pool_new(4) gave %d threads", p ? pool_size(p) : 0);
    if (!p || !j) return t_done("test_threads");

    job_reset(j, 4);
    pool_run(p, count_item, j, N_ITEMS);
    check_runs(j, N_ITEMS, 1, "pool_run");

    /* started, the caller busy, then waited for; then again at once (a new generation) */
    job_reset(j, 4);
    pool_start(p, count_item, j, N_ITEMS);
    volatile double sink = busy(200000);
    (void)sink;
    pool_wait(p);
    check_runs(j, N_ITEMS, 1, "pool_start, caller busy, pool_wait");
    pool_start(p, count_item, j, N_ITEMS);
    pool_wait(p);
    check_runs(j, N_ITEMS, 2, "a second pool_start right after");
    pool_wait(p); /* nothing started: returns at once */
    check_runs(j, N_ITEMS, 2, "pool_wait with nothing started");

    /* one item runs inline in pool_start */
    job_reset(j, 4);
    pool_start(p, count_item, j, 1);
    check_runs(j, 1, 1, "one item, before pool_wait");
    pool_wait(p);
    check_runs(j, 1, 1, "one item, after pool_wait");

    /* many small jobs back to back, alternating the two ways */
    job_reset(j, 4);
    for (int r = 0; r < 2000; r++) {
        if (r & 1) pool_run(p, count_item, j, 7);
        else {
            pool_start(p, count_item, j, 7);
            pool_wait(p);
        }
    }
    check_runs(j, 7, 2000, "2000 jobs of 7 items");
    pool_free(p);

    /* no workers: a pool of one thread, and no pool at all */
    ms_pool *one = pool_new(1);
    job_reset(j, 1);
    pool_start(one, count_item, j, 50);
    check_runs(j, 50, 1, "a pool of one thread, before pool_wait");
    pool_wait(one);
    check_runs(j, 50, 1, "a pool of one thread, after pool_wait");
    pool_free(one);
    job_reset(j, 1);
    pool_start(NULL, count_item, j, 50);
    pool_wait(NULL);
    pool_run(NULL, count_item, j, 50);
    check_runs(j, 50, 2, "no pool");
    free(j);
    return t_done("test_threads");
}
