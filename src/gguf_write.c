/* gguf_write.c - GGUF writer (see gguf_write.h). Metadata is serialized as it is added; tensor
 * data is streamed through one large buffer at write time, so a file far larger than RAM can
 * be written at disk speed. */
#include "gguf_write.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "quant.h"

#define ALIGN 32
#define IO_CHUNK (8u << 20)

typedef struct wtensor {
    char *name;
    int type, n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    uint64_t nbytes;
    const void *data;
    gguf_fill_fn fill;
    void *ud;
    int part;
    uint64_t offset; /* within its part's data section */
} wtensor;

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

struct gguf_writer {
    buf kv;            /* serialized key/values */
    int64_t n_kv;
    wtensor *t;
    int64_t n_t, cap_t;
    int oom;
};

static int buf_put(buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        uint8_t *p = ms_realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
    return 0;
}

static int put_u32(buf *b, uint32_t v) { return buf_put(b, &v, 4); } /* little-endian hosts only */
static int put_u64(buf *b, uint64_t v) { return buf_put(b, &v, 8); }
static int put_str(buf *b, const char *s, uint64_t n) { return put_u64(b, n) || buf_put(b, s, n); }

gguf_writer *gguf_writer_new(void) { return ms_calloc(1, sizeof(gguf_writer)); }

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    ms_free(w->kv.p);
    for (int64_t i = 0; i < w->n_t; i++) ms_free(w->t[i].name);
    ms_free(w->t);
    ms_free(w);
}

int gguf_writer_kv(gguf_writer *w, const char *key, int type, const void *val) {
    buf *b = &w->kv;
    if (put_str(b, key, strlen(key)) || put_u32(b, (uint32_t)type)) return -1;
    if (type == GGUF_STRING) {
        const char *s = *(const char *const *)val;
        if (put_str(b, s, strlen(s))) return -1;
    } else {
        int sz = gguf_vtype_size(type);
        if (!sz || buf_put(b, val, (size_t)sz)) return -1;
    }
    w->n_kv++;
    return 0;
}

int gguf_writer_kv_arr(gguf_writer *w, const char *key, int et, const void *data, uint64_t n) {
    buf *b = &w->kv;
    if (put_str(b, key, strlen(key)) || put_u32(b, GGUF_ARRAY) || put_u32(b, (uint32_t)et) || put_u64(b, n)) return -1;
    if (et == GGUF_STRING) {
        const char *const *s = data;
        for (uint64_t i = 0; i < n; i++)
            if (put_str(b, s[i], strlen(s[i]))) return -1;
    } else {
        int sz = gguf_vtype_size(et);
        if (!sz || buf_put(b, data, (size_t)(n * (uint64_t)sz))) return -1;
    }
    w->n_kv++;
    return 0;
}

int gguf_writer_kv_copy(gguf_writer *w, const gguf_kv *kv) {
    buf *b = &w->kv;
    if (kv->type == GGUF_ARRAY) {
        int et = kv->v.arr.type;
        if (et == GGUF_ARRAY) return -1;
        if (put_str(b, kv->key, strlen(kv->key)) || put_u32(b, GGUF_ARRAY) || put_u32(b, (uint32_t)et) ||
            put_u64(b, kv->v.arr.n))
            return -1;
        if (et == GGUF_STRING) {
            for (uint64_t i = 0; i < kv->v.arr.n; i++)
                if (put_str(b, kv->v.arr.strs[i].ptr, kv->v.arr.strs[i].len)) return -1;
        } else if (buf_put(b, kv->v.arr.data, (size_t)(kv->v.arr.n * (uint64_t)gguf_vtype_size(et)))) {
            return -1;
        }
        w->n_kv++;
        return 0;
    }
    if (kv->type == GGUF_STRING) {
        if (put_str(b, kv->key, strlen(kv->key)) || put_u32(b, GGUF_STRING) || put_str(b, kv->v.s.ptr, kv->v.s.len)) return -1;
        w->n_kv++;
        return 0;
    }
    /* scalars: rebuild the little-endian value from the decoded union */
    uint8_t raw[8];
    int sz = gguf_vtype_size(kv->type);
    if (kv->type == GGUF_F32) { float f = (float)kv->v.f; memcpy(raw, &f, 4); }
    else if (kv->type == GGUF_F64) memcpy(raw, &kv->v.f, 8);
    else { uint64_t u = kv->v.u; memcpy(raw, &u, (size_t)sz); }
    return gguf_writer_kv(w, kv->key, kv->type, raw);
}

int gguf_writer_tensor(gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne, const void *data,
                       gguf_fill_fn fill, void *ud) {
    const ms_type_info *info = quant_info(type);
    if (!info || n_dims < 1 || n_dims > GGUF_MAX_DIMS || (!data && !fill)) return -1;
    if (ne[0] % info->block_size) return -1;
    if (w->n_t == w->cap_t) {
        int64_t cap = w->cap_t ? w->cap_t * 2 : 64;
        wtensor *t = ms_realloc(w->t, sizeof(wtensor) * (size_t)cap);
        if (!t) return -1;
        w->t = t;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    t->name = ms_strdup(name);
    if (!t->name) return -1;
    t->type = type;
    t->n_dims = n_dims;
    uint64_t nel = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = d < n_dims ? ne[d] : 1;
        nel *= (uint64_t)t->ne[d];
    }
    t->nbytes = nel / (uint64_t)info->block_size * (uint64_t)info->block_bytes;
    t->data = data;
    t->fill = fill;
    t->ud = ud;
    w->n_t++;
    return 0;
}

static uint64_t align_up(uint64_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

static int write_all(int fd, const void *p, size_t n, const char *path, ms_err *e) {
    const uint8_t *c = p;
    while (n) {
        ssize_t r = write(fd, c, n);
        if (r < 0) {
            if (errno == EINTR) continue;
            return ms_fail(e, MS_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        }
        c += r;
        n -= (size_t)r;
    }
    return MS_OK;
}

static int write_part(gguf_writer *w, const char *path, int part, int n_parts, uint8_t *io, ms_err *e) {
    buf h = {0};
    int64_t n_t = 0;
    for (int64_t i = 0; i < w->n_t; i++) n_t += w->t[i].part == part;
    int64_t n_kv = (part == 0 ? w->n_kv : 0) + (n_parts > 1 ? 3 : 0);
    int bad = buf_put(&h, "GGUF", 4) || put_u32(&h, 3) || put_u64(&h, (uint64_t)n_t) || put_u64(&h, (uint64_t)n_kv);
    if (part == 0) bad = bad || buf_put(&h, w->kv.p, w->kv.n);
    if (n_parts > 1) {
        uint16_t no = (uint16_t)part, cnt = (uint16_t)n_parts;
        int32_t total = (int32_t)w->n_t;
        bad = bad || put_str(&h, "split.no", 8) || put_u32(&h, GGUF_U16) || buf_put(&h, &no, 2);
        bad = bad || put_str(&h, "split.count", 11) || put_u32(&h, GGUF_U16) || buf_put(&h, &cnt, 2);
        bad = bad || put_str(&h, "split.tensors.count", 19) || put_u32(&h, GGUF_I32) || buf_put(&h, &total, 4);
    }
    for (int64_t i = 0; i < w->n_t && !bad; i++) {
        const wtensor *t = &w->t[i];
        if (t->part != part) continue;
        bad = put_str(&h, t->name, strlen(t->name)) || put_u32(&h, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims && !bad; d++) bad = put_u64(&h, (uint64_t)t->ne[d]);
        bad = bad || put_u32(&h, (uint32_t)t->type) || put_u64(&h, t->offset);
    }
    static const uint8_t zeros[ALIGN];
    bad = bad || buf_put(&h, zeros, (size_t)(align_up(h.n) - h.n));
    if (bad) {
        ms_free(h.p);
        return ms_fail(e, MS_ERR_NOMEM, "out of memory building the GGUF header");
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        ms_free(h.p);
        return ms_fail(e, MS_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    int rc = write_all(fd, h.p, h.n, path, e);
    ms_free(h.p);
    /* data: tensors in order, each padded to the alignment, streamed through io */
    size_t fill = 0;
    for (int64_t i = 0; i < w->n_t && !rc; i++) {
        const wtensor *t = &w->t[i];
        if (t->part != part) continue;
        uint64_t padded = align_up(t->nbytes);
        for (uint64_t off = 0; off < padded && !rc;) {
            size_t n = (size_t)MS_MIN((uint64_t)(IO_CHUNK - fill), padded - off);
            uint64_t real = off < t->nbytes ? MS_MIN((uint64_t)n, t->nbytes - off) : 0;
            if (real) {
                if (t->data) memcpy(io + fill, (const uint8_t *)t->data + off, (size_t)real);
                else t->fill(t->ud, io + fill, off, real);
            }
            memset(io + fill + real, 0, n - (size_t)real);
            fill += n;
            off += n;
            if (fill == IO_CHUNK) {
                rc = write_all(fd, io, fill, path, e);
                fill = 0;
            }
        }
    }
    if (!rc && fill) rc = write_all(fd, io, fill, path, e);
    if (close(fd) && !rc) rc = ms_fail(e, MS_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    return rc;
}

int gguf_writer_write(gguf_writer *w, const char *path, uint64_t split_bytes, int *n_parts_out, ms_err *e) {
    int part = 0;
    uint64_t used = 0;
    for (int64_t i = 0; i < w->n_t; i++) {
        uint64_t sz = align_up(w->t[i].nbytes);
        if (split_bytes && used > 0 && used + sz > split_bytes) {
            part++;
            used = 0;
        }
        w->t[i].part = part;
        w->t[i].offset = used;
        used += sz;
    }
    int n_parts = part + 1;
    if (n_parts > 9999) return ms_fail(e, MS_ERR_ARG, "split size too small: %d parts", n_parts);
    if (n_parts_out) *n_parts_out = n_parts;
    uint8_t *io = ms_malloc_aligned(IO_CHUNK);
    if (!io) return ms_fail(e, MS_ERR_NOMEM, "out of memory");
    int rc = MS_OK;
    for (int p = 0; p < n_parts && !rc; p++) {
        char name[4096];
        if (split_bytes) snprintf(name, sizeof name, "%s-%05d-of-%05d.gguf", path, p + 1, n_parts);
        else snprintf(name, sizeof name, "%s", path);
        rc = write_part(w, name, p, n_parts, io, e);
    }
    ms_free_aligned(io);
    return rc;
}
