/* sampler.c - token selection (see sampler.h). Candidates are sorted only as far as needed:
 * top-k first bounds the work, as in llama.cpp. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

typedef struct cand {
    int32_t id;
    float logit, p;
} cand;

struct ms_sampler {
    ms_sampler_params p;
    int n_vocab;
    uint64_t rng;
    cand *c;
    int32_t *hist; /* ring of the last repeat_last_n tokens */
    int hist_n, hist_pos;
};

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform01(uint64_t *s) { return (splitmix(s) >> 11) * (1.0 / 9007199254740992.0); }

ms_sampler *sampler_new(const ms_sampler_params *p, int n_vocab) {
    ms_sampler *s = ms_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->rng = p->seed == MS_SEED_RANDOM ? (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)s : p->seed;
    s->c = ms_malloc(sizeof(cand) * (size_t)n_vocab);
    int hn = p->repeat_last_n > 0 ? p->repeat_last_n : 1;
    s->hist = ms_calloc((size_t)hn, sizeof(int32_t));
    if (!s->c || !s->hist) {
        sampler_free(s);
        return NULL;
    }
    return s;
}

void sampler_free(ms_sampler *s) {
    if (!s) return;
    ms_free(s->c);
    ms_free(s->hist);
    ms_free(s);
}

void sampler_reset(ms_sampler *s) { s->hist_n = s->hist_pos = 0; }

void sampler_accept(ms_sampler *s, int32_t token) {
    if (s->p.repeat_last_n <= 0) return;
    s->hist[s->hist_pos] = token;
    s->hist_pos = (s->hist_pos + 1) % s->p.repeat_last_n;
    if (s->hist_n < s->p.repeat_last_n) s->hist_n++;
}

static int by_logit_desc(const void *a, const void *b) {
    float x = ((const cand *)a)->logit, y = ((const cand *)b)->logit;
    if (x != y) return x < y ? 1 : -1;
    return ((const cand *)a)->id - ((const cand *)b)->id;
}

/* Moves the k largest to the front, sorted (partial selection, then sort of k). */
static void top_k_sort(cand *c, int n, int k) {
    if (k >= n) {
        qsort(c, (size_t)n, sizeof *c, by_logit_desc);
        return;
    }
    /* quickselect the k-th boundary, then sort the head */
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = c[(lo + hi) / 2].logit;
        int i = lo, j = hi;
        while (i <= j) {
            while (c[i].logit > pivot) i++;
            while (c[j].logit < pivot) j--;
            if (i <= j) {
                cand t = c[i];
                c[i] = c[j];
                c[j] = t;
                i++;
                j--;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
    qsort(c, (size_t)k, sizeof *c, by_logit_desc);
}

int32_t sampler_sample(ms_sampler *s, const float *logits) {
    int n = s->n_vocab;
    cand *c = s->c;
    for (int i = 0; i < n; i++) c[i] = (cand){i, logits[i], 0};
    if (s->p.repeat_penalty != 1.0f && s->p.repeat_penalty > 0) {
        for (int h = 0; h < s->hist_n; h++) {
            int32_t t = s->hist[h];
            if (t < 0 || t >= n) continue;
            /* apply once per distinct token: mark by checking earlier duplicates */
            int dup = 0;
            for (int g = 0; g < h; g++) dup |= s->hist[g] == t;
            if (dup) continue;
            c[t].logit = c[t].logit > 0 ? c[t].logit / s->p.repeat_penalty : c[t].logit * s->p.repeat_penalty;
        }
    }
    if (s->p.temperature <= 0.0f) {
        int best = 0;
        for (int i = 1; i < n; i++)
            if (c[i].logit > c[best].logit) best = i;
        return c[best].id;
    }
    int k = s->p.top_k > 0 && s->p.top_k < n ? s->p.top_k : n;
    top_k_sort(c, n, k);
    n = k;
    /* softmax at temperature 1 for top-p / min-p (llama.cpp applies temperature last) */
    float mx = c[0].logit;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (c[i].p = expf(c[i].logit - mx));
    for (int i = 0; i < n; i++) c[i].p = (float)(c[i].p / sum);
    if (s->p.top_p > 0.0f && s->p.top_p < 1.0f) {
        double cum = 0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cum += c[i].p;
            if (cum >= s->p.top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (s->p.min_p > 0.0f) {
        float thr = c[0].p * s->p.min_p;
        int keep = 1;
        while (keep < n && c[keep].p >= thr) keep++;
        n = keep;
    }
    sum = 0;
    for (int i = 0; i < n; i++) sum += (c[i].p = expf((c[i].logit - mx) / s->p.temperature));
    double r = uniform01(&s->rng) * sum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += c[i].p;
        if (r < acc) return c[i].id;
    }
    return c[n - 1].id;
}
