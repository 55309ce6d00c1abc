/* experts.h - the expert store: the one narrow door through which forward code gets the bytes of
 * a routed expert, whether they come from the file mapping, an owned cache, or disk.
 *
 * Not here: what an expert computes (forward.c). Forward code never learns where bytes came
 * from; it asks for a layer's experts right after routing (experts_request starts every read
 * at once), computes what needs no expert bytes, then waits for each expert in turn.
 *
 * Residency modes:
 *   mmap       experts are read through the file mapping; the OS pages them in (llama.cpp's way)
 *   pagecache  buffered preads into an owned cache of slots; the OS page cache caches too
 *   direct     O_DIRECT preads into an owned cache of slots with a byte budget; nothing else caches
 */
#ifndef MS_EXPERTS_H
#define MS_EXPERTS_H

#include <stdint.h>

#include "model.h"
#include "util.h"

/* Bytes of one expert: its gate, up and down matrices (layouts as in ms_layer's ms_mat3s). */
typedef struct ms_expert_ref {
    const uint8_t *gate, *up, *down;
} ms_expert_ref;

typedef struct ms_store ms_store;

/* mmap: experts read in place from the file mapping; pagecache, direct: a cache of expert slots
 * filled by pread (O_DIRECT for direct); ram: the whole model read into memory at load
 * (model_make_resident), experts read in place there. */
enum ms_io_mode { MS_IO_MMAP, MS_IO_PAGECACHE, MS_IO_DIRECT, MS_IO_RAM };
/* Whether experts are read where the model's pointers are (mmap, ram): no slots, no reads, no
 * cache for a budget to size. */
static inline int experts_mode_in_place(int mode) { return mode == MS_IO_MMAP || mode == MS_IO_RAM; }
enum ms_evict { MS_EVICT_LRU, MS_EVICT_LFU };

typedef struct ms_store_params {
    int io_mode;        /* enum ms_io_mode */
    int policy;         /* enum ms_evict */
    int io_threads;     /* preads in flight at once (default 32) */
    int track_residency;/* mmap mode: count hits with mincore (costs a syscall per slice) */
} ms_store_params;

typedef struct ms_store_stats {
    uint64_t requests;    /* experts asked for (acquire) */
    uint64_t hits;        /* found in the cache (a prefetched expert counts in prefetch_used instead) */
    uint64_t bytes_read;  /* bytes read from the file (aligned windows included) */
    uint64_t reads;       /* read requests issued */
    double read_seconds;  /* summed time of individual reads */
    double wait_seconds;  /* time callers spent blocked waiting for expert bytes */
    uint64_t prefetches, prefetch_used; /* experts prefetched, and those later requested */
    uint64_t cache_slots, cache_bytes;  /* the owned cache (0 in mmap mode) */
} ms_store_stats;

/* Opens a store over the model's routed experts (no cache yet: see experts_set_cache).
 * Returns NULL on error. */
ms_store *experts_open(const struct ms_model *m, const ms_store_params *p, ms_err *e);
void experts_close(ms_store *s);

/* Sizes the owned cache (pagecache/direct modes) to at most cache_bytes; must leave room for
 * at least two layers' worth of experts in use at once. Idempotent when the size is unchanged;
 * returns MS_ERR_BUDGET with a message when the cache would be too small. No-op in mmap mode. */
int experts_set_cache(ms_store *s, uint64_t cache_bytes, ms_err *e);
/* Bytes one cache slot takes (one expert, aligned windows included); 0 in mmap mode. */
uint64_t experts_slot_bytes(const ms_store *s);

/* Starts making experts ids[0..n) of layer il available (reads for misses go out at once) and
 * pins them until experts_release. Never blocks on I/O. On failure none of them stays pinned. */
int experts_request(ms_store *s, int il, const int *ids, int n, ms_err *e);
/* Waits until expert id of layer il (requested before) is available and fills *out. Returns
 * MS_OK or MS_ERR_IO naming the expert and the failure (short read, EIO...). */
int experts_wait(ms_store *s, int il, int id, ms_expert_ref *out, ms_err *e);
/* 1 if experts_wait would not block for this (requested) expert. */
int experts_ready(ms_store *s, int il, int id);
/* request + wait for every id. */
int experts_acquire(ms_store *s, int il, const int *ids, int n, ms_expert_ref *out, ms_err *e);
void experts_release(ms_store *s, int il, const int *ids, int n);
/* A hint: start reading these experts if there is an unpinned slot to spare; never evicts
 * experts pinned or used since the current layer began. */
void experts_prefetch(ms_store *s, int il, const int *ids, int n);

/* How many experts can be pinned at once (the cache's slots; unbounded in mmap mode). */
int experts_capacity(const ms_store *s);

void experts_stats(const ms_store *s, ms_store_stats *out);
/* How often each expert of each layer was requested: counts[il * n_expert + e]. */
const uint64_t *experts_usage(const ms_store *s);
int experts_io_mode(const ms_store *s);

const char *experts_mode_name(int mode);
/* "mmap" / "pagecache" / "direct" -> mode, or -1. */
int experts_mode_from_name(const char *name);

#endif
