/* synth.c - synthetic MoE models of real shapes (see synth.h).
 *
 * Every tensor is generated row by row from (seed, tensor, row), so the writer can stream a
 * 200 GB file without holding any of it. Quantized rows are random codes with scales chosen so
 * each sub-block has zero mean and the matrix has std gain/sqrt(n_in).
 *
 * Skew: dimension 0 of the residual stream is a constant (every token embedding holds `EMBD0`
 * there and every matrix that writes the residual has a zero row 0), so after the RMS norm it
 * acts as a bias input; the router's column 0 then holds a per-expert bias of
 * -skew * ln(rank), giving Zipf-like popularity over a random ranking per layer.
 */
#include "synth.h"

#include <math.h>
#include <string.h>

#include "gguf_write.h"
#include "quant.h"

#define EMBD0 2.0f

typedef struct preset {
    const char *name, *arch;
    int n_layer, n_embd, n_vocab, n_ctx;
    int n_head, n_head_kv, head_dim, n_rot;
    int n_expert, n_expert_used, n_ff_exp, n_ff_shexp, n_ff;
    int n_k_heads, n_v_heads, d_state, d_conv, interval; /* Gated DeltaNet (hybrid archs) */
    float rope_base;
    int sections[4];
} preset;

static const preset PRESETS[] = {
    /* name               arch        L   embd  vocab   ctx     hd  kv  hdim rot  E    k   ff   sff  ff_dense  kh vh  ds cv iv  rope */
    {"qwen35-397b-a17b", "qwen35moe", 60, 4096, 248320, 262144, 32, 2, 256, 64, 512, 10, 1024, 1024, 10240, 16, 64, 128, 4, 4, 1e7f, {11, 11, 10, 0}},
    {"qwen3next-80b-a3b", "qwen3next", 48, 2048, 151936, 262144, 16, 2, 256, 64, 512, 10, 512, 512, 5120, 16, 32, 128, 4, 4, 1e7f, {0}},
    {"qwen3-30b-a3b", "qwen3moe", 48, 2048, 151936, 40960, 32, 4, 128, 128, 128, 8, 768, 0, 6144, 0, 0, 0, 0, 0, 1e6f, {0}},
    {"qwen3-235b-a22b", "qwen3moe", 94, 4096, 151936, 40960, 64, 4, 128, 128, 128, 8, 1536, 0, 12288, 0, 0, 0, 0, 0, 1e6f, {0}},
    /* small shapes of the same families, for tests and demos */
    {"test-qwen35moe", "qwen35moe", 4, 256, 1024, 4096, 4, 2, 64, 16, 32, 4, 256, 256, 512, 2, 4, 64, 4, 4, 1e7f, {3, 3, 2, 0}},
    {"test-qwen3next", "qwen3next", 4, 256, 1024, 4096, 4, 2, 64, 16, 32, 4, 256, 256, 512, 2, 4, 64, 4, 4, 1e7f, {0}},
    {"test-qwen3moe", "qwen3moe", 4, 256, 1024, 4096, 4, 2, 64, 64, 32, 4, 256, 0, 512, 0, 0, 0, 0, 0, 1e6f, {0}},
    /* experts dominate (~450 MB of 885 KB experts): a model larger than a test's memory budget */
    {"test-stream", "qwen35moe", 8, 1024, 1024, 4096, 8, 2, 64, 16, 64, 4, 512, 512, 2048, 4, 8, 64, 4, 4, 1e7f, {3, 3, 2, 0}},
};

const char *synth_presets(void) {
    return "qwen35-397b-a17b, qwen3next-80b-a3b, qwen3-30b-a3b, qwen3-235b-a22b, test-qwen35moe, test-qwen3next, "
           "test-qwen3moe, test-stream";
}

static const preset *find_preset(const char *name) {
    for (size_t i = 0; i < sizeof PRESETS / sizeof PRESETS[0]; i++)
        if (name && !strcmp(PRESETS[i].name, name)) return &PRESETS[i];
    return NULL;
}

/* ------------------------------------------------------------------ random rows */

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t next64(rng *r) { return mix64(r->s += 0x9e3779b97f4a7c15ull); }
static float uniform(rng *r) { return (float)((next64(r) >> 40) * (1.0 / 16777216.0)); }
/* approximately normal (Irwin-Hall of 4), unit variance */
static float gauss(rng *r) { return (uniform(r) + uniform(r) + uniform(r) + uniform(r) - 2.0f) * 1.7320508f; }

enum kind { K_MATRIX, K_ONES, K_ZEROS, K_NORMAL, K_SSM_A, K_ROUTER, K_EMBD };

typedef struct tgen {
    int kind, type;
    int64_t n_in, n_rows;  /* row length; rows per matrix (rows of stacked experts repeat) */
    uint64_t seed;
    float std;
    int zero_row0;         /* the row writing residual dimension 0 is zero */
    const float *bias;     /* K_ROUTER: per-expert bias on column 0 */
    size_t row_bytes;
    uint8_t *row;          /* scratch for partial rows */
} tgen;

static void put_f16(uint8_t *p, float f) {
    uint16_t h = ms_f32_to_f16(f);
    memcpy(p, &h, 2);
}

/* K-quant 6-bit scales and mins of 8 sub-blocks, packed as ggml's get_scale_min_k4 reads them. */
static void pack_k4_scales(uint8_t out[12], const uint8_t sc[8], const uint8_t m[8]) {
    for (int j = 0; j < 4; j++) {
        out[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        out[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        out[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
}

static void random_bytes(rng *r, uint8_t *p, size_t n) {
    while (n >= 8) {
        uint64_t v = next64(r);
        memcpy(p, &v, 8);
        p += 8;
        n -= 8;
    }
    if (n) {
        uint64_t v = next64(r);
        memcpy(p, &v, n);
    }
}

/* One row of a matrix of the given type, values of standard deviation std and zero mean. */
static void quant_row(int type, int64_t n, float std, rng *r, uint8_t *out) {
    int64_t nb;
    switch (type) {
    case MS_TYPE_Q8_0: /* d, 32 x int8 uniform in [-127, 127] */
        nb = n / 32;
        for (int64_t b = 0; b < nb; b++, out += 34) {
            put_f16(out, std * 1.7320508f / 127.0f);
            for (int i = 0; i < 32; i++) out[2 + i] = (uint8_t)(int8_t)((int)(next64(r) % 255) - 127);
        }
        break;
    case MS_TYPE_Q4_0: /* d * (q - 8): mean -d/2, so the sign of d alternates per block */
        nb = n / 32;
        for (int64_t b = 0; b < nb; b++, out += 18) {
            put_f16(out, (b & 1 ? -1.0f : 1.0f) * std / 4.6098f);
            random_bytes(r, out + 2, 16);
        }
        break;
    case MS_TYPE_Q4_K:
    case MS_TYPE_Q5_K: { /* sc * d * q - m * dmin with m = sc, dmin = mean(q) * d */
        int q5 = type == MS_TYPE_Q5_K;
        float qstd = q5 ? 9.2331f : 4.6098f, qmean = q5 ? 15.5f : 7.5f;
        int bytes = q5 ? 176 : 144;
        nb = n / 256;
        for (int64_t b = 0; b < nb; b++, out += bytes) {
            uint8_t sc[8];
            for (int j = 0; j < 8; j++) sc[j] = (uint8_t)(24 + next64(r) % 33);
            float d = std / (41.12f * qstd);
            put_f16(out, d);
            put_f16(out + 2, d * qmean);
            pack_k4_scales(out + 4, sc, sc);
            random_bytes(r, out + 16, (size_t)(bytes - 16));
        }
        break;
    }
    case MS_TYPE_Q6_K: /* d * sc * (q - 32): mean -d*sc/2, so scale signs alternate */
        nb = n / 256;
        for (int64_t b = 0; b < nb; b++, out += 210) {
            random_bytes(r, out, 192); /* ql, qh */
            for (int j = 0; j < 16; j++) {
                int s = 24 + (int)(next64(r) % 33);
                out[192 + j] = (uint8_t)(int8_t)(j & 1 ? -s : s);
            }
            put_f16(out + 208, std / (41.12f * 18.4730f));
        }
        break;
    case MS_TYPE_F32:
        for (int64_t i = 0; i < n; i++) {
            float v = std * gauss(r);
            memcpy(out + 4 * i, &v, 4);
        }
        break;
    case MS_TYPE_F16:
        for (int64_t i = 0; i < n; i++) put_f16(out + 2 * i, std * gauss(r));
        break;
    case MS_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            float v = std * gauss(r);
            uint32_t u;
            memcpy(&u, &v, 4);
            uint16_t h = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
            memcpy(out + 2 * i, &h, 2);
        }
        break;
    }
}

static void set_f(const tgen *g, uint8_t *out, int64_t i, float v) {
    if (g->type == MS_TYPE_F32) memcpy(out + 4 * i, &v, 4);
    else put_f16(out + 2 * i, v);
}

static void gen_row(const tgen *g, int64_t row, uint8_t *out) {
    rng r = {mix64(g->seed ^ mix64((uint64_t)row + 1))};
    int64_t local = row % g->n_rows;
    switch (g->kind) {
    case K_MATRIX:
        if (g->zero_row0 && local == 0) memset(out, 0, g->row_bytes);
        else quant_row(g->type, g->n_in, g->std, &r, out);
        return;
    case K_ONES:
    case K_ZEROS:
        for (int64_t i = 0; i < g->n_in; i++) set_f(g, out, i, g->kind == K_ONES ? 1.0f : 0.0f);
        return;
    case K_NORMAL:
        for (int64_t i = 0; i < g->n_in; i++) set_f(g, out, i, g->std * gauss(&r));
        return;
    case K_SSM_A: /* -exp(A_log), A in [1, 16] */
        for (int64_t i = 0; i < g->n_in; i++) set_f(g, out, i, -expf(uniform(&r) * 2.7725887f));
        return;
    case K_ROUTER:
        quant_row(g->type, g->n_in, g->std, &r, out);
        set_f(g, out, 0, g->bias[local]);
        return;
    case K_EMBD:
        quant_row(g->type, g->n_in, 1.0f, &r, out);
        set_f(g, out, 0, EMBD0);
        return;
    }
}

static void fill(void *ud, uint8_t *dst, uint64_t off, uint64_t n) {
    tgen *g = ud;
    uint64_t rb = g->row_bytes;
    while (n) {
        int64_t row = (int64_t)(off / rb);
        uint64_t in = off % rb, take = MS_MIN(n, rb - in);
        if (in == 0 && take == rb) {
            gen_row(g, row, dst);
        } else {
            gen_row(g, row, g->row);
            memcpy(dst, g->row + in, (size_t)take);
        }
        dst += take;
        off += take;
        n -= take;
    }
}

/* ------------------------------------------------------------------ the model */

typedef struct builder {
    gguf_writer *w;
    tgen *gens;
    int n_gens, cap_gens;
    float *biases; /* [n_layer][n_expert] */
    uint64_t seed, bytes;
    int failed;
    char why[160];      /* the first failure, when it is not a lack of memory */
} builder;

static void add(builder *b, const char *name, int kind, int type, int n_dims, int64_t ne0, int64_t ne1, int64_t ne2,
                float std, int zero_row0, const float *bias) {
    if (b->failed) return;
    const ms_type_info *info = quant_info(type);
    if (ne0 % info->block_size) {
        snprintf(b->why, sizeof b->why, "tensor '%s' has rows of %lld values, not a multiple of %s's block of %d", name,
                 (long long)ne0, info->name, info->block_size);
        b->failed = 1;
        return;
    }
    if (b->n_gens == b->cap_gens) {
        b->failed = 1; /* capacity is computed up front */
        return;
    }
    tgen *g = &b->gens[b->n_gens++];
    memset(g, 0, sizeof *g);
    g->kind = kind;
    g->type = type;
    g->n_in = ne0;
    g->n_rows = n_dims > 1 ? ne1 : 1;
    g->seed = mix64(b->seed + (uint64_t)b->n_gens * 0x632be59bd9b4e019ull);
    g->std = std;
    g->zero_row0 = zero_row0;
    g->bias = bias;
    g->row_bytes = quant_row_bytes(type, ne0);
    g->row = ms_malloc(g->row_bytes);
    int64_t ne[3] = {ne0, ne1, ne2};
    if (!g->row || gguf_writer_tensor(b->w, name, type, n_dims, ne, NULL, fill, g)) b->failed = 1;
    uint64_t rows = (uint64_t)(n_dims > 1 ? ne1 : 1) * (uint64_t)(n_dims > 2 ? ne2 : 1);
    b->bytes += rows * g->row_bytes;
}

static void kv_u32(builder *b, const char *arch, const char *k, uint32_t v) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, k);
    if (gguf_writer_kv(b->w, key, GGUF_U32, &v)) b->failed = 1;
}

static void kv_f32(builder *b, const char *arch, const char *k, float v) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, k);
    if (gguf_writer_kv(b->w, key, GGUF_F32, &v)) b->failed = 1;
}

/* GPT-2's byte -> printable code point mapping, as UTF-8. */
static void byte_token(int byte, char out[4]) {
    int cp;
    if ((byte >= 33 && byte <= 126) || (byte >= 161 && byte <= 172) || (byte >= 174 && byte <= 255)) {
        cp = byte;
    } else {
        int n = 0;
        for (int c = 0; c < byte; c++)
            if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255))) n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 63));
        out[2] = 0;
    }
}

/* A byte-level BPE vocabulary: 256 byte tokens, specials, letter-pair merges, unused fill. */
static void add_tokenizer(builder *b, int n_vocab) {
    char **tok = ms_calloc((size_t)n_vocab, sizeof(char *));
    int32_t *type = ms_calloc((size_t)n_vocab, sizeof(int32_t));
    const char *letters = "etaoinsrhl";
    char **merges = ms_calloc(128, sizeof(char *));
    if (!tok || !type || !merges) {
        b->failed = 1;
        goto out;
    }
    int n = 0, n_merges = 0;
    char buf[64];
    for (int c = 0; c < 256; c++, n++) {
        byte_token(c, buf);
        tok[n] = ms_strdup(buf);
        type[n] = 1;
    }
    const char *specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    const char *user[] = {"<think>", "</think>", "<tool_call>", "</tool_call>"};
    int eos = n;
    for (int i = 0; i < 3; i++, n++) tok[n] = ms_strdup(specials[i]), type[n] = 3;
    for (int i = 0; i < 4; i++, n++) tok[n] = ms_strdup(user[i]), type[n] = 4;
    for (int i = 0; i < 10; i++) /* "Ġx": space + letter */
        if (n < n_vocab) {
            snprintf(buf, sizeof buf, "\xc4\xa0%c", letters[i]);
            tok[n] = ms_strdup(buf), type[n++] = 1;
            snprintf(buf, sizeof buf, "\xc4\xa0 %c", letters[i]);
            merges[n_merges++] = ms_strdup(buf);
        }
    for (int i = 0; i < 10; i++)
        for (int j = 0; j < 10 && n < n_vocab && n_merges < 128; j++) {
            snprintf(buf, sizeof buf, "%c%c", letters[i], letters[j]);
            tok[n] = ms_strdup(buf), type[n++] = 1;
            snprintf(buf, sizeof buf, "%c %c", letters[i], letters[j]);
            merges[n_merges++] = ms_strdup(buf);
        }
    for (int i = 0; n < n_vocab; i++, n++) {
        snprintf(buf, sizeof buf, "<|unused_%d|>", i);
        tok[n] = ms_strdup(buf);
        type[n] = 5;
    }
    for (int i = 0; i < n_vocab; i++)
        if (!tok[i]) b->failed = 1;
    for (int i = 0; i < n_merges; i++)
        if (!merges[i]) b->failed = 1;
    if (b->failed) goto out;
    const char *model = "gpt2", *pre = "qwen2";
    const char *tmpl = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                       "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    uint32_t eos_id = (uint32_t)eos, eot_id = (uint32_t)eos + 2;
    b->failed |= gguf_writer_kv(b->w, "tokenizer.ggml.model", GGUF_STRING, &model);
    b->failed |= gguf_writer_kv(b->w, "tokenizer.ggml.pre", GGUF_STRING, &pre);
    b->failed |= gguf_writer_kv_arr(b->w, "tokenizer.ggml.tokens", GGUF_STRING, tok, (uint64_t)n_vocab);
    b->failed |= gguf_writer_kv_arr(b->w, "tokenizer.ggml.token_type", GGUF_I32, type, (uint64_t)n_vocab);
    b->failed |= gguf_writer_kv_arr(b->w, "tokenizer.ggml.merges", GGUF_STRING, merges, (uint64_t)n_merges);
    b->failed |= gguf_writer_kv(b->w, "tokenizer.ggml.eos_token_id", GGUF_U32, &eos_id);
    b->failed |= gguf_writer_kv(b->w, "tokenizer.ggml.eot_token_id", GGUF_U32, &eot_id);
    b->failed |= gguf_writer_kv(b->w, "tokenizer.ggml.padding_token_id", GGUF_U32, &eos_id);
    b->failed |= gguf_writer_kv(b->w, "tokenizer.chat_template", GGUF_STRING, &tmpl);
out:
    for (int i = 0; tok && i < n_vocab; i++) ms_free(tok[i]);
    for (int i = 0; merges && i < 128; i++) ms_free(merges[i]);
    ms_free(tok);
    ms_free(type);
    ms_free(merges);
}

static int build(builder *b, const ms_synth_params *p, const preset *ps, int L) {
    const char *A = ps->arch;
    int hybrid = ps->n_v_heads > 0;
    int E = ps->n_embd, T = p->type;
    float res_gain = 1.0f / sqrtf(2.0f * (float)L); /* matrices writing the residual */
    char name[128];
    char full[160];
    snprintf(full, sizeof full, "synthetic %s (moestream synth)", ps->name);
    const char *fullp = full;
    b->failed |= gguf_writer_kv(b->w, "general.architecture", GGUF_STRING, &A);
    b->failed |= gguf_writer_kv(b->w, "general.name", GGUF_STRING, &fullp);
    b->failed |= gguf_writer_kv(b->w, "general.type", GGUF_STRING, &(const char *){"model"});
    kv_u32(b, A, "block_count", (uint32_t)L);
    kv_u32(b, A, "context_length", (uint32_t)ps->n_ctx);
    kv_u32(b, A, "embedding_length", (uint32_t)E);
    kv_u32(b, A, "feed_forward_length", (uint32_t)ps->n_ff);
    kv_u32(b, A, "attention.head_count", (uint32_t)ps->n_head);
    kv_u32(b, A, "attention.head_count_kv", (uint32_t)ps->n_head_kv);
    kv_u32(b, A, "attention.key_length", (uint32_t)ps->head_dim);
    kv_u32(b, A, "attention.value_length", (uint32_t)ps->head_dim);
    kv_f32(b, A, "attention.layer_norm_rms_epsilon", 1e-6f);
    kv_f32(b, A, "rope.freq_base", ps->rope_base);
    kv_u32(b, A, "rope.dimension_count", (uint32_t)ps->n_rot);
    kv_u32(b, A, "expert_count", (uint32_t)ps->n_expert);
    kv_u32(b, A, "expert_used_count", (uint32_t)ps->n_expert_used);
    kv_u32(b, A, "expert_feed_forward_length", (uint32_t)ps->n_ff_exp);
    if (hybrid) {
        kv_u32(b, A, "expert_shared_feed_forward_length", (uint32_t)ps->n_ff_shexp);
        kv_u32(b, A, "ssm.conv_kernel", (uint32_t)ps->d_conv);
        kv_u32(b, A, "ssm.state_size", (uint32_t)ps->d_state);
        kv_u32(b, A, "ssm.group_count", (uint32_t)ps->n_k_heads);
        kv_u32(b, A, "ssm.time_step_rank", (uint32_t)ps->n_v_heads);
        kv_u32(b, A, "ssm.inner_size", (uint32_t)(ps->n_v_heads * ps->d_state));
        kv_u32(b, A, "full_attention_interval", (uint32_t)ps->interval);
        if (!strcmp(A, "qwen35moe")) {
            char key[128];
            snprintf(key, sizeof key, "%s.rope.dimension_sections", A);
            int32_t s[4] = {ps->sections[0], ps->sections[1], ps->sections[2], ps->sections[3]};
            b->failed |= gguf_writer_kv_arr(b->w, key, GGUF_I32, s, 4);
        }
    }
    add_tokenizer(b, ps->n_vocab);

    /* router biases: a random ranking of the experts per layer */
    float h0 = EMBD0 / sqrtf((EMBD0 * EMBD0 + (float)(E - 1)) / (float)E); /* normed dimension 0 */
    for (int il = 0; il < L; il++) {
        float *bias = b->biases + (size_t)il * ps->n_expert;
        int *rank = ms_malloc(sizeof(int) * (size_t)ps->n_expert);
        if (!rank) return b->failed = 1;
        for (int e = 0; e < ps->n_expert; e++) rank[e] = e;
        rng r = {mix64(b->seed ^ (0xabcdull + (uint64_t)il))};
        for (int e = ps->n_expert - 1; e > 0; e--) {
            int j = (int)(next64(&r) % (uint64_t)(e + 1));
            int t = rank[e];
            rank[e] = rank[j];
            rank[j] = t;
        }
        for (int e = 0; e < ps->n_expert; e++) bias[e] = -p->skew * logf((float)rank[e] + 1.0f) / h0;
        ms_free(rank);
    }

    float s_e = 1.0f / sqrtf((float)E);
    add(b, "token_embd.weight", K_EMBD, MS_TYPE_F16, 2, E, ps->n_vocab, 1, 1.0f, 0, NULL);
    for (int il = 0; il < L && !b->failed; il++) {
#define N(s) (snprintf(name, sizeof name, "blk.%d.%s", il, s), name)
        int recurrent = hybrid && (il + 1) % ps->interval != 0;
        add(b, N("attn_norm.weight"), K_ONES, MS_TYPE_F32, 1, E, 1, 1, 0, 0, NULL);
        add(b, N(hybrid ? "post_attention_norm.weight" : "ffn_norm.weight"), K_ONES, MS_TYPE_F32, 1, E, 1, 1, 0, 0, NULL);
        if (!recurrent) {
            int qd = ps->n_head * ps->head_dim, kvd = ps->n_head_kv * ps->head_dim;
            add(b, N("attn_q.weight"), K_MATRIX, T, 2, E, qd * (hybrid ? 2 : 1), 1, s_e, 0, NULL);
            add(b, N("attn_k.weight"), K_MATRIX, T, 2, E, kvd, 1, s_e, 0, NULL);
            add(b, N("attn_v.weight"), K_MATRIX, T, 2, E, kvd, 1, s_e, 0, NULL);
            add(b, N("attn_output.weight"), K_MATRIX, T, 2, qd, E, 1, res_gain / sqrtf((float)qd), 1, NULL);
            add(b, N("attn_q_norm.weight"), K_ONES, MS_TYPE_F32, 1, ps->head_dim, 1, 1, 0, 0, NULL);
            add(b, N("attn_k_norm.weight"), K_ONES, MS_TYPE_F32, 1, ps->head_dim, 1, 1, 0, 0, NULL);
        } else {
            int vd = ps->n_v_heads * ps->d_state, cd = 2 * ps->n_k_heads * ps->d_state + vd;
            add(b, N("attn_qkv.weight"), K_MATRIX, T, 2, E, cd, 1, s_e, 0, NULL);
            add(b, N("attn_gate.weight"), K_MATRIX, T, 2, E, vd, 1, s_e, 0, NULL);
            add(b, N("ssm_conv1d.weight"), K_NORMAL, MS_TYPE_F32, 2, ps->d_conv, cd, 1, 0.5f, 0, NULL);
            add(b, N("ssm_dt.bias"), K_ZEROS, MS_TYPE_F32, 1, ps->n_v_heads, 1, 1, 0, 0, NULL);
            add(b, N("ssm_a"), K_SSM_A, MS_TYPE_F32, 1, ps->n_v_heads, 1, 1, 0, 0, NULL);
            if (!strcmp(A, "qwen3next")) {
                add(b, N("ssm_ba.weight"), K_NORMAL, MS_TYPE_F32, 2, E, 2 * ps->n_v_heads, 1, s_e, 0, NULL);
            } else {
                add(b, N("ssm_beta.weight"), K_NORMAL, MS_TYPE_F32, 2, E, ps->n_v_heads, 1, s_e, 0, NULL);
                add(b, N("ssm_alpha.weight"), K_NORMAL, MS_TYPE_F32, 2, E, ps->n_v_heads, 1, s_e, 0, NULL);
            }
            add(b, N("ssm_norm.weight"), K_ONES, MS_TYPE_F32, 1, ps->d_state, 1, 1, 0, 0, NULL);
            add(b, N("ssm_out.weight"), K_MATRIX, T, 2, vd, E, 1, res_gain / sqrtf((float)vd), 1, NULL);
        }
        add(b, N("ffn_gate_inp.weight"), K_ROUTER, MS_TYPE_F32, 2, E, ps->n_expert, 1, s_e, 0,
            b->biases + (size_t)il * ps->n_expert);
        int ff = ps->n_ff_exp, nx = ps->n_expert;
        add(b, N("ffn_gate_exps.weight"), K_MATRIX, T, 3, E, ff, nx, s_e, 0, NULL);
        add(b, N("ffn_up_exps.weight"), K_MATRIX, T, 3, E, ff, nx, s_e, 0, NULL);
        add(b, N("ffn_down_exps.weight"), K_MATRIX, T, 3, ff, E, nx, res_gain / sqrtf((float)ff), 1, NULL);
        if (ps->n_ff_shexp) {
            int sf = ps->n_ff_shexp;
            add(b, N("ffn_gate_inp_shexp.weight"), K_NORMAL, MS_TYPE_F32, 1, E, 1, 1, s_e, 0, NULL);
            add(b, N("ffn_gate_shexp.weight"), K_MATRIX, T, 2, E, sf, 1, s_e, 0, NULL);
            add(b, N("ffn_up_shexp.weight"), K_MATRIX, T, 2, E, sf, 1, s_e, 0, NULL);
            add(b, N("ffn_down_shexp.weight"), K_MATRIX, T, 2, sf, E, 1, res_gain / sqrtf((float)sf), 1, NULL);
        }
#undef N
    }
    add(b, "output_norm.weight", K_ONES, MS_TYPE_F32, 1, E, 1, 1, 0, 0, NULL);
    add(b, "output.weight", K_MATRIX, T, 2, E, ps->n_vocab, 1, s_e, 0, NULL);
    return b->failed;
}

static int check_params(const ms_synth_params *p, const preset **ps, int *L, ms_err *e) {
    *ps = find_preset(p->preset);
    if (!*ps) return ms_fail(e, MS_ERR_ARG, "unknown preset '%s' (presets: %s)", p->preset ? p->preset : "", synth_presets());
    int t = p->type;
    if (t != MS_TYPE_Q4_K && t != MS_TYPE_Q5_K && t != MS_TYPE_Q6_K && t != MS_TYPE_Q8_0 && t != MS_TYPE_Q4_0 &&
        t != MS_TYPE_F16 && t != MS_TYPE_BF16 && t != MS_TYPE_F32)
        return ms_fail(e, MS_ERR_ARG, "synth writes Q4_K, Q5_K, Q6_K, Q8_0, Q4_0, F16, BF16 or F32, not %s", quant_name(t));
    *L = p->n_layer > 0 ? p->n_layer : (*ps)->n_layer;
    if (*L > (*ps)->n_layer * 4) return ms_fail(e, MS_ERR_ARG, "--layers %d is far beyond the preset's %d", *L, (*ps)->n_layer);
    if (p->skew < 0 || p->skew > 10) return ms_fail(e, MS_ERR_ARG, "--skew must be in [0, 10]");
    return MS_OK;
}

static int build_all(builder *b, const ms_synth_params *p, ms_err *e) {
    const preset *ps = NULL;
    int L = 0;
    if (check_params(p, &ps, &L, e)) return e ? e->status : MS_ERR_ARG;
    b->w = gguf_writer_new();
    b->cap_gens = 24 * L + 8;
    b->gens = ms_calloc((size_t)b->cap_gens, sizeof(tgen));
    b->biases = ms_calloc((size_t)L * ps->n_expert, sizeof(float));
    b->seed = mix64(p->seed + 1);
    if (!b->w || !b->gens || !b->biases || build(b, p, ps, L)) {
        if (b->why[0]) return ms_fail(e, MS_ERR_ARG, "%s", b->why);
        return ms_fail(e, MS_ERR_NOMEM, "out of memory building the model");
    }
    return MS_OK;
}

static void builder_free(builder *b) {
    gguf_writer_free(b->w);
    for (int i = 0; b->gens && i < b->n_gens; i++) ms_free(b->gens[i].row);
    ms_free(b->gens);
    ms_free(b->biases);
}

uint64_t synth_size(const ms_synth_params *p) {
    builder b = {0};
    uint64_t bytes = build_all(&b, p, NULL) ? 0 : b.bytes;
    builder_free(&b);
    return bytes;
}

int synth_write(const ms_synth_params *p, const char *path, uint64_t *bytes_out, ms_err *e) {
    builder b = {0};
    int rc = build_all(&b, p, e);
    if (!rc) rc = gguf_writer_write(b.w, path, p->split_bytes, NULL, e);
    if (!rc && bytes_out) *bytes_out = b.bytes;
    builder_free(&b);
    return rc;
}
