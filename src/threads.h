/* threads.h - a fixed pool of worker threads running parallel-for loops.
 * Not a task scheduler: one job at a time, the caller's thread takes part and waits. */
#ifndef MS_THREADS_H
#define MS_THREADS_H

typedef struct ms_pool ms_pool;

/* fn(ctx, i, thread) is called for every i in [0, n); `thread` is in [0, pool_size). */
typedef void (*ms_task_fn)(void *ctx, int i, int thread);

/* Starts n_threads - 1 workers (the caller is the n-th). Returns NULL on failure. */
ms_pool *pool_new(int n_threads);
void pool_free(ms_pool *p);
int pool_size(const ms_pool *p);
/* Runs fn over [0, n) across the pool and returns when all are done. Items are handed out
 * dynamically in order, so put expensive work first. p may be NULL (runs inline). */
void pool_run(ms_pool *p, ms_task_fn fn, void *ctx, int n);
/* pool_run in two halves: pool_start hands the items to the workers and returns, so the caller
 * can do other work meanwhile; pool_wait takes the caller's part of what is left and returns
 * when all are done. Without workers to hand them to, pool_start runs them itself. Nothing else
 * may run on p in between. */
void pool_start(ms_pool *p, ms_task_fn fn, void *ctx, int n);
void pool_wait(ms_pool *p);

/* Number of online CPUs. */
int ms_cpu_count(void);

#endif
