/* experts.h - the expert store: the one narrow door through which forward code gets the bytes of
 * a routed expert, whether they come from the file mapping, an owned cache, or disk.
 *
 * Not here: what an expert computes (forward.c). Residency policy, reads and budgets live in
 * experts.c; forward code never learns where bytes came from.
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

typedef struct ms_store_stats {
    uint64_t requests;  /* experts asked for */
    uint64_t hits;      /* served without a read */
    uint64_t bytes_read;
    double read_seconds;
} ms_store_stats;

/* Opens a store over the model's routed experts. Returns NULL on error. */
ms_store *experts_open(const struct ms_model *m, ms_err *e);
void experts_close(ms_store *s);

/* Makes experts ids[0..n) of layer il available, filling out[0..n). Blocks until all are; they
 * stay valid until experts_release with the same ids. Returns MS_OK or an error (e.g. I/O). */
int experts_acquire(ms_store *s, int il, const int *ids, int n, ms_expert_ref *out, ms_err *e);
void experts_release(ms_store *s, int il, const int *ids, int n);

void experts_stats(const ms_store *s, ms_store_stats *out);

#endif
