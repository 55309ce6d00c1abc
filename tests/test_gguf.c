/* test_gguf.c - the GGUF reader and writer: every metadata type round-trips, split files open
 * from their first part and give the same model, and truncated, corrupt or unsupported files
 * fail with a message (never a crash: this test also runs under ASan/UBSan). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "gguf_write.h"
#include "model.h"
#include "moestream.h"
#include "quant.h"
#include "testlib.h"

static char dir[256];

static const char *tmp(const char *name) {
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(p, 1, n, f);
    fclose(f);
}

/* A file with one key of every type and a few tensors. */
static void test_roundtrip(void) {
    gguf_writer *w = gguf_writer_new();
    uint8_t u8 = 200; int8_t i8 = -5; uint16_t u16 = 60000; int16_t i16 = -30000;
    uint32_t u32 = 4000000000u; int32_t i32 = -2000000000; float f32 = 1.5f; uint8_t bl = 1;
    uint64_t u64 = 1ull << 60; int64_t i64 = -(1ll << 60); double f64 = 2.25;
    const char *str = "hello \xe4\xb8\x96\xe7\x95\x8c";
    gguf_writer_kv(w, "t.u8", GGUF_U8, &u8);
    gguf_writer_kv(w, "t.i8", GGUF_I8, &i8);
    gguf_writer_kv(w, "t.u16", GGUF_U16, &u16);
    gguf_writer_kv(w, "t.i16", GGUF_I16, &i16);
    gguf_writer_kv(w, "t.u32", GGUF_U32, &u32);
    gguf_writer_kv(w, "t.i32", GGUF_I32, &i32);
    gguf_writer_kv(w, "t.f32", GGUF_F32, &f32);
    gguf_writer_kv(w, "t.bool", GGUF_BOOL, &bl);
    gguf_writer_kv(w, "t.str", GGUF_STRING, &str);
    gguf_writer_kv(w, "t.u64", GGUF_U64, &u64);
    gguf_writer_kv(w, "t.i64", GGUF_I64, &i64);
    gguf_writer_kv(w, "t.f64", GGUF_F64, &f64);
    int32_t ai[3] = {-1, 2, -3};
    float af[2] = {0.5f, -0.25f};
    const char *as[3] = {"a", "", "ccc"};
    gguf_writer_kv_arr(w, "t.ai32", GGUF_I32, ai, 3);
    gguf_writer_kv_arr(w, "t.af32", GGUF_F32, af, 2);
    gguf_writer_kv_arr(w, "t.astr", GGUF_STRING, as, 3);
    float data[64 * 3];
    for (int i = 0; i < 64 * 3; i++) data[i] = (float)i * 0.5f;
    int64_t ne[2] = {64, 3};
    gguf_writer_tensor(w, "a", MS_TYPE_F32, 2, ne, data, NULL, NULL);
    uint8_t q8[34 * 2] = {0};
    int64_t ne2[1] = {64};
    gguf_writer_tensor(w, "b", MS_TYPE_Q8_0, 1, ne2, q8, NULL, NULL);
    ms_err e;
    CHECK(gguf_writer_write(w, tmp("rt.gguf"), 0, NULL, &e) == MS_OK, "write: %s", e.msg);
    gguf_writer_free(w);

    gguf_file *f = gguf_open(tmp("rt.gguf"), &e);
    CHECK(f != NULL, "open: %s", f ? "" : e.msg);
    if (!f) return;
    uint64_t v;
    uint32_t v32;
    float fv;
    int b;
    CHECK(!gguf_get_u64(f, "t.u8", &v) && v == 200, "u8");
    CHECK(gguf_get_u64(f, "t.i8", &v) == -1, "negative i8 must not read as unsigned");
    CHECK(gguf_get(f, "t.i8")->v.i == -5, "i8");
    CHECK(!gguf_get_u32(f, "t.u16", &v32) && v32 == 60000, "u16");
    CHECK(gguf_get(f, "t.i16")->v.i == -30000, "i16");
    CHECK(!gguf_get_u32(f, "t.u32", &v32) && v32 == 4000000000u, "u32");
    CHECK(gguf_get(f, "t.i32")->v.i == -2000000000, "i32");
    CHECK(!gguf_get_f32(f, "t.f32", &fv) && fv == 1.5f, "f32");
    CHECK(!gguf_get_bool(f, "t.bool", &b) && b == 1, "bool");
    char *s = gguf_get_str(f, "t.str");
    CHECK(s && !strcmp(s, str), "string");
    ms_free(s);
    CHECK(!gguf_get_u64(f, "t.u64", &v) && v == (1ull << 60), "u64");
    CHECK(gguf_get_u32(f, "t.u64", &v32) == -1, "u64 beyond u32 must not narrow");
    CHECK(gguf_get(f, "t.i64")->v.i == -(1ll << 60), "i64");
    CHECK(gguf_get(f, "t.f64")->v.f == 2.25, "f64");
    const gguf_kv *kv = gguf_get(f, "t.ai32");
    double d;
    CHECK(kv && kv->v.arr.n == 3 && !gguf_arr_f64(kv, 2, &d) && d == -3, "i32 array");
    kv = gguf_get(f, "t.af32");
    CHECK(kv && !gguf_arr_f64(kv, 1, &d) && d == -0.25, "f32 array");
    kv = gguf_get(f, "t.astr");
    CHECK(kv && kv->v.arr.n == 3 && kv->v.arr.strs[2].len == 3 && !memcmp(kv->v.arr.strs[2].ptr, "ccc", 3), "string array");
    const gguf_tensor *t = gguf_find_tensor(f, "a");
    CHECK(t && t->ne[0] == 64 && t->ne[1] == 3 && t->nbytes == sizeof data && !memcmp(t->data, data, sizeof data), "tensor a");
    CHECK(t && t->file_offset % 32 == 0, "tensor data aligned");
    t = gguf_find_tensor(f, "b");
    CHECK(t && t->type == MS_TYPE_Q8_0 && t->nbytes == 68, "tensor b");
    CHECK(gguf_find_tensor(f, "c") == NULL, "absent tensor");
    gguf_close(f);
}

/* Every prefix of a valid file that cuts into its header or tensor data must be refused with a
 * message (cutting only the final alignment padding leaves a valid file). */
static void test_truncation(void) {
    size_t n;
    uint8_t *all = t_read_file(tmp("rt.gguf"), &n);
    CHECK(all && n > 64, "read back");
    if (!all) return;
    ms_err e0;
    gguf_file *whole = gguf_open(tmp("rt.gguf"), &e0);
    size_t data_end = 0;
    for (int64_t i = 0; whole && i < whole->n_tensors; i++)
        data_end = MS_MAX(data_end, (size_t)(whole->tensors[i].file_offset + whole->tensors[i].nbytes));
    gguf_close(whole);
    CHECK(data_end > 0 && data_end <= n, "data end %zu", data_end);
    n = data_end;
    int refused = 0;
    for (size_t len = 0; len < n; len++) {
        write_bytes(tmp("trunc.gguf"), all, len);
        ms_err e = {0};
        gguf_file *f = gguf_open(tmp("trunc.gguf"), &e);
        if (!f && e.msg[0]) refused++;
        gguf_close(f);
    }
    CHECK(refused == (int)n, "%d of %zu truncated prefixes refused with a message", refused, n);
    free(all);
}

/* Random byte corruption of the header: anything may happen except a crash or a silent read
 * beyond the file (ASan watches). */
static void test_corruption(void) {
    size_t n;
    uint8_t *all = t_read_file(tmp("rt.gguf"), &n);
    if (!all) return;
    uint64_t rng = 12345;
    int opened = 0, refused = 0;
    for (int iter = 0; iter < 3000; iter++) {
        uint8_t *c = malloc(n);
        memcpy(c, all, n);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (rng >> 33) % 700; /* the header and tensor table */
            if (pos < n) c[pos] ^= (uint8_t)(1u << ((rng >> 20) & 7));
        }
        write_bytes(tmp("corrupt.gguf"), c, n);
        ms_err e = {0};
        gguf_file *f = gguf_open(tmp("corrupt.gguf"), &e);
        if (f) {
            opened++;
            /* a file that opens must hold tensors entirely inside the mapping */
            for (int64_t i = 0; i < f->n_tensors; i++) {
                const gguf_tensor *t = &f->tensors[i];
                if (t->file_offset + t->nbytes > f->parts[t->part].size) opened = -1000000;
            }
        } else {
            refused += e.msg[0] != 0;
        }
        gguf_close(f);
        free(c);
    }
    CHECK(opened >= 0, "a corrupt file opened with a tensor beyond the end");
    CHECK(opened + refused == 3000, "every corrupt file either opened sanely or was refused with a message");
    free(all);
}

static void expect_error(const char *path, ms_status want, const char *needle) {
    ms_model *m = NULL;
    ms_error err = {0};
    ms_status st = ms_model_load(path, NULL, &m, &err);
    CHECK(st == want, "%s: status %d (%s), expected %d", path, st, err.msg, want);
    CHECK(strstr(err.msg, needle) != NULL, "message '%s' should mention '%s'", err.msg, needle);
    CHECK(strchr(err.msg, '\n') == NULL, "message must be one line: '%s'", err.msg);
    ms_model_free(m);
}

/* Copies a fixture into a writer, with changes: drop a tensor, set a kv, change a tensor type. */
typedef struct edit {
    const char *drop_tensor;
    const char *arch;
    const char *retype_tensor;
    int new_type;
} edit;

static int copy_model(const char *src, const char *dst, uint64_t split, const edit *ed, int *n_parts) {
    ms_err e;
    gguf_file *f = gguf_open(src, &e);
    if (!f) return -1;
    gguf_writer *w = gguf_writer_new();
    for (int64_t i = 0; i < f->n_kv; i++) {
        if (ed && ed->arch && !strcmp(f->kv[i].key, "general.architecture")) {
            gguf_writer_kv(w, "general.architecture", GGUF_STRING, &ed->arch);
            continue;
        }
        gguf_writer_kv_copy(w, &f->kv[i]);
    }
    for (int64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        if (ed && ed->drop_tensor && !strcmp(t->name, ed->drop_tensor)) continue;
        int type = t->type;
        if (ed && ed->retype_tensor && !strcmp(t->name, ed->retype_tensor)) type = ed->new_type;
        gguf_writer_tensor(w, t->name, type, t->n_dims, t->ne, t->data, NULL, NULL);
    }
    int rc = gguf_writer_write(w, dst, split, n_parts, &e);
    gguf_writer_free(w);
    gguf_close(f);
    return rc;
}

static float *logits_of(const char *path, const int32_t *ids, int n) {
    ms_model *m;
    ms_error err;
    if (ms_model_load(path, NULL, &m, &err)) {
        CHECK(0, "%s: %s", path, err.msg);
        return NULL;
    }
    ms_context *c;
    ms_context_new(m, NULL, &c, &err);
    ms_eval(c, ids, n, 0, &err);
    int nv = ms_n_vocab(m);
    float *out = malloc(sizeof(float) * nv);
    memcpy(out, ms_logits(c, -1), sizeof(float) * nv);
    ms_context_free(c);
    ms_model_free(m);
    return out;
}

static void test_split_and_errors(void) {
    char src[4096];
    snprintf(src, sizeof src, "%s", t_path("tiny/qwen35moe/qwen35moe-f32.gguf"));
    int parts = 0;
    CHECK(copy_model(src, tmp("split"), 1 << 20, NULL, &parts) == 0, "split copy");
    CHECK(parts >= 3, "expected >= 3 parts, got %d", parts);
    char first[600], second[600];
    snprintf(first, sizeof first, "%s-00001-of-%05d.gguf", tmp("split"), parts);
    snprintf(second, sizeof second, "%s-00002-of-%05d.gguf", tmp("split"), parts);
    ms_err e;
    gguf_file *f = gguf_open(first, &e);
    CHECK(f && f->n_parts == parts, "split open: %s", f ? "" : e.msg);
    gguf_file *one = gguf_open(src, &e);
    if (f && one) {
        CHECK(f->n_tensors == one->n_tensors, "tensor count %lld vs %lld", (long long)f->n_tensors, (long long)one->n_tensors);
        int same = 0;
        for (int64_t i = 0; i < one->n_tensors; i++) {
            const gguf_tensor *a = &one->tensors[i], *b = gguf_find_tensor(f, a->name);
            same += b && b->nbytes == a->nbytes && !memcmp(a->data, b->data, a->nbytes);
        }
        CHECK(same == one->n_tensors, "%d of %lld tensors identical across the split", same, (long long)one->n_tensors);
    }
    gguf_close(f);
    gguf_close(one);
    int32_t ids[5] = {60, 279, 229, 456, 353};
    float *a = logits_of(src, ids, 5), *b = logits_of(first, ids, 5);
    CHECK(a && b && !memcmp(a, b, sizeof(float) * 512), "split model gives identical logits");
    free(a);
    free(b);
    expect_error(second, MS_ERR_ARG, "open the first part");
    unlink(second);
    expect_error(first, MS_ERR_IO, "00002");

    edit ed = {0};
    ed.arch = "llama";
    copy_model(src, tmp("arch.gguf"), 0, &ed, NULL);
    expect_error(tmp("arch.gguf"), MS_ERR_UNSUPPORTED, "unknown architecture 'llama'");
    memset(&ed, 0, sizeof ed);
    ed.drop_tensor = "blk.3.attn_q.weight";
    copy_model(src, tmp("missing.gguf"), 0, &ed, NULL);
    expect_error(tmp("missing.gguf"), MS_ERR_FORMAT, "blk.3.attn_q.weight");
    memset(&ed, 0, sizeof ed);
    ed.retype_tensor = "blk.0.ffn_gate_inp.weight";
    ed.new_type = MS_TYPE_Q8_1; /* a GGML type that no engine reads as weights */
    copy_model(src, tmp("type.gguf"), 0, &ed, NULL);
    expect_error(tmp("type.gguf"), MS_ERR_UNSUPPORTED, "blk.0.ffn_gate_inp.weight");
    expect_error(tmp("nonexistent.gguf"), MS_ERR_IO, "nonexistent.gguf");
    /* an unknown type number in the tensor table */
    size_t n;
    uint8_t *all = t_read_file(tmp("rt.gguf"), &n);
    if (all) {
        /* tensor 'a' type field: find the name "a" followed by n_dims=2 in the table */
        for (size_t i = 0; i + 40 < n; i++)
            if (!memcmp(all + i, "\x01\0\0\0\0\0\0\0a\x02\0\0\0", 13)) {
                uint32_t bad = 99;
                memcpy(all + i + 13 + 16, &bad, 4);
                break;
            }
        write_bytes(tmp("badtype.gguf"), all, n);
        ms_err e2 = {0};
        gguf_file *g = gguf_open(tmp("badtype.gguf"), &e2);
        CHECK(!g && e2.status == MS_ERR_UNSUPPORTED && strstr(e2.msg, "unknown tensor type 99"), "unknown type: %s", e2.msg);
        gguf_close(g);
        all[4] = 1; /* version 1 */
        write_bytes(tmp("v1.gguf"), all, n);
        g = gguf_open(tmp("v1.gguf"), &e2);
        CHECK(!g && strstr(e2.msg, "version 1"), "v1: %s", e2.msg);
        gguf_close(g);
        memcpy(all, "GGML", 4);
        write_bytes(tmp("magic.gguf"), all, n);
        g = gguf_open(tmp("magic.gguf"), &e2);
        CHECK(!g && strstr(e2.msg, "not a GGUF file"), "magic: %s", e2.msg);
        gguf_close(g);
        free(all);
    }
}

int main(int argc, char **argv) {
    t_fixtures(argc, argv);
    snprintf(dir, sizeof dir, "/tmp/ms_test_gguf_XXXXXX");
    if (!mkdtemp(dir)) return 1;
    test_roundtrip();
    test_truncation();
    test_corruption();
    test_split_and_errors();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "cannot remove %s\n", dir);
    return t_done("test_gguf");
}
