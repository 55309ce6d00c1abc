/* fuzz_gguf.c - fuzz target: the GGUF reader (header, metadata, tensor table) and everything that
 * reads a parsed file: the typed getters, the tokenizer builder, the model loader (hyperparameters,
 * tensor shapes and types), the public load with each residency mode and, for inputs that load, a
 * context and a short forward pass.
 *
 * Input: one flags byte, then the file. Flags: bit 0 pads the file with 8 MiB of zeros (the seeds
 * are the fixtures' headers without their tensor data, so tensors stay in bounds while metadata
 * and shapes are mutated); bit 1 loads through ms_model_load (mmap, or pagecache with bit 2);
 * bit 3 then makes a context and evaluates two tokens; bit 4 makes a split model: the input is
 * two parts separated by the bytes "\0SPLIT\0", written as M-00001-of-00002.gguf and
 * M-00002-of-00002.gguf (each padded with bit 0) and opened from the first.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "gguf.h"
#include "model.h"
#include "moestream.h"
#include "quant.h"
#include "tokenizer.h"

static int fd = -1;
static char mem_path[64], split_dir[32], split_path[2][128];

static void remove_split(void) {
    unlink(split_path[0]);
    unlink(split_path[1]);
    rmdir(split_dir);
}

int fuzz_gguf_init(void) {
    fd = memfd_create("fuzz.gguf", 0);
    if (fd < 0) return -1;
    snprintf(mem_path, sizeof mem_path, "/proc/self/fd/%d", fd);
    snprintf(split_dir, sizeof split_dir, "/tmp/ms_fuzz_gguf_XXXXXX");
    if (!mkdtemp(split_dir)) return -1;
    for (int i = 0; i < 2; i++) snprintf(split_path[i], sizeof split_path[i], "%s/m-%05d-of-00002.gguf", split_dir, i + 1);
    atexit(remove_split);
    quant_init();
    return 0;
}

/* Replaces the contents of the file open as f with data, padded with zeros. */
static void put(int f, const uint8_t *data, size_t size, size_t pad) {
    if (ftruncate(f, 0)) abort();
    for (size_t off = 0; off < size;) {
        ssize_t w = pwrite(f, data + off, size - off, (off_t)off);
        if (w <= 0) abort();
        off += (size_t)w;
    }
    if (pad && ftruncate(f, (off_t)(size + pad))) abort();
}

static void put_file(const char *p, const uint8_t *data, size_t size, size_t pad) {
    int f = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (f < 0) abort();
    put(f, data, size, pad);
    close(f);
}

/* Every getter on every key, every tensor found by name and inside its file. */
static void walk(const gguf_file *f) {
    for (int64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        uint64_t u;
        uint32_t u32;
        float x;
        int b;
        gguf_get_u64(f, kv->key, &u);
        gguf_get_u32(f, kv->key, &u32);
        gguf_get_f32(f, kv->key, &x);
        gguf_get_bool(f, kv->key, &b);
        FUZZ_CHECK(gguf_get(f, kv->key) != NULL, "key '%s' not found", kv->key);
        char *s = gguf_get_str(f, kv->key);
        FUZZ_CHECK((s != NULL) == (kv->type == GGUF_STRING), "string getter on type %d", kv->type);
        ms_free(s);
        if (kv->type == GGUF_ARRAY) {
            uint64_t n = kv->v.arr.n < 64 ? kv->v.arr.n : 64;
            for (uint64_t k = 0; k < n; k++) {
                double d;
                gguf_arr_u64(kv, k, &u);
                gguf_arr_f64(kv, k, &d);
            }
            FUZZ_CHECK(gguf_arr_u64(kv, kv->v.arr.n, &u) == -1, "array read past its end");
        }
        (void)gguf_vtype_name(kv->type);
    }
    for (int64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        FUZZ_CHECK(gguf_find_tensor(f, t->name) == t, "tensor '%s' not found by name", t->name);
        const gguf_part *p = &f->parts[t->part];
        FUZZ_CHECK(t->file_offset <= p->size && t->nbytes <= p->size - t->file_offset,
                   "tensor '%s' [%llu, +%llu) outside its %llu-byte file", t->name,
                   (unsigned long long)t->file_offset, (unsigned long long)t->nbytes, (unsigned long long)p->size);
        FUZZ_CHECK(t->data == p->map + t->file_offset, "tensor '%s' data pointer", t->name);
    }
}

static void check_error(const ms_err *e, const char *what) {
    FUZZ_CHECK(e->status != MS_OK && e->msg[0], "%s failed without a status and message", what);
}

int fuzz_gguf_one(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int flags = data[0];
    data++, size--;
    size_t pad = flags & 1 ? 8u << 20 : 0;
    const char *path = mem_path;
    if (flags & 16) {
        const uint8_t *mark = memmem(data, size, "\0SPLIT\0", 7);
        size_t n1 = mark ? (size_t)(mark - data) : size;
        put_file(split_path[0], data, n1, pad);
        put_file(split_path[1], mark ? mark + 7 : data, mark ? size - n1 - 7 : 0, pad);
        path = split_path[0];
    } else {
        put(fd, data, size, pad);
    }

    ms_err e;
    memset(&e, 0, sizeof e);
    gguf_file *f = gguf_open(path, &e);
    if (!f) {
        check_error(&e, "gguf_open");
        return 0;
    }
    walk(f);
    memset(&e, 0, sizeof e);
    ms_tokenizer *tok = tokenizer_load(f, &e);
    if (tok) {
        int32_t *ids = NULL;
        int n = 0;
        const char *text = "<|im_start|>user\nHello, world! 123<|im_end|>";
        FUZZ_CHECK(tokenizer_encode(tok, text, strlen(text), 1, &ids, &n, &e) == MS_OK, "encode: %s", e.msg);
        char *back = NULL;
        size_t len;
        FUZZ_CHECK(tokenizer_decode(tok, ids, n, 1, &back, &len, &e) == MS_OK, "decode: %s", e.msg);
        ms_free(back);
        ms_free(ids);
        tokenizer_free(tok);
    } else {
        check_error(&e, "tokenizer_load");
    }
    memset(&e, 0, sizeof e);
    struct ms_model *m = model_load(f, 0, &e); /* owns f */
    if (!m) check_error(&e, "model_load");
    model_free(m);

    if (!(flags & 2)) return 0;
    ms_model_params mp;
    ms_model_params_default(&mp);
    mp.io = flags & 4 ? "pagecache" : "mmap";
    mp.io_threads = 2;
    ms_model *mm;
    ms_error err;
    memset(&err, 0, sizeof err);
    if (ms_model_load(path, &mp, &mm, &err)) {
        check_error(&err, "ms_model_load");
        return 0;
    }
    ms_model_info info;
    ms_model_get_info(mm, &info);
    if (flags & 8) {
        ms_context_params cp;
        ms_context_params_default(&cp);
        cp.n_ctx = 8;
        cp.n_batch = 4;
        cp.n_threads = 1;
        ms_context *c;
        if (ms_context_new(mm, &cp, &c, &err) == MS_OK) {
            /* a context of 8 positions needs scratch in proportion to the weights, never more:
             * metadata alone must not size it (a finding: tests/regress/gguf/) */
            ms_stats cs;
            ms_context_stats(c, &cs);
            size_t file = 2 * (size + pad);
            FUZZ_CHECK(cs.bytes_context <= ((uint64_t)64 << 20) + 64 * (uint64_t)file,
                       "a context of %llu bytes for a %zu-byte file", (unsigned long long)cs.bytes_context, file);
            int32_t ids[2] = {0, (int32_t)(ms_n_vocab(mm) - 1)};
            if (ms_eval(c, ids, 2, 0, &err) == MS_OK) FUZZ_CHECK(ms_logits(c, -1) != NULL, "no logits");
            else check_error(&err, "ms_eval");
            ms_context_free(c);
        } else {
            check_error(&err, "ms_context_new");
            /* no allocation fails here (nothing injects faults): running out of memory means
             * some size came from metadata unchecked */
            FUZZ_CHECK(err.status != MS_ERR_NOMEM, "an 8-position context ran out of memory: %s", err.msg);
        }
    }
    ms_model_free(mm);
    return 0;
}

FUZZ_ENTRY(gguf)
