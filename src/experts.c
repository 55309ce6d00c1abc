/* experts.c - the expert store. This first mode serves experts straight from the file mapping
 * (what llama.cpp does: the OS pages them in on first touch). */
#include "experts.h"

struct ms_store {
    const struct ms_model *m;
    ms_store_stats st;
};

ms_store *experts_open(const struct ms_model *m, ms_err *e) {
    ms_store *s = ms_calloc(1, sizeof *s);
    if (!s) {
        ms_fail(e, MS_ERR_NOMEM, "out of memory");
        return NULL;
    }
    s->m = m;
    return s;
}

void experts_close(ms_store *s) { ms_free(s); }

int experts_acquire(ms_store *s, int il, const int *ids, int n, ms_expert_ref *out, ms_err *e) {
    const ms_layer *ly = &s->m->layers[il];
    for (int i = 0; i < n; i++) {
        int x = ids[i];
        if (x < 0 || x >= ly->gate_exps.n_expert)
            return ms_fail(e, MS_ERR_ARG, "expert %d out of range in layer %d", x, il);
        out[i].gate = ly->gate_exps.data + (size_t)x * ly->gate_exps.stride;
        out[i].up = ly->up_exps.data + (size_t)x * ly->up_exps.stride;
        out[i].down = ly->down_exps.data + (size_t)x * ly->down_exps.stride;
    }
    s->st.requests += (uint64_t)n;
    s->st.hits += (uint64_t)n;
    return MS_OK;
}

void experts_release(ms_store *s, int il, const int *ids, int n) {
    (void)s; (void)il; (void)ids; (void)n;
}

void experts_stats(const ms_store *s, ms_store_stats *out) { *out = s->st; }
