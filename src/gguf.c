/* gguf.c - GGUF reader (see gguf.h). Every length read from the file is checked against the
 * bytes that remain before it is used, and every size computation is overflow-checked, so a
 * truncated or hostile file yields an error message, never an out-of-bounds read. */
#include "gguf.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant.h"

#define GGUF_MAX_ARRAY_DEPTH 8
#define GGUF_MAX_PARTS 4096

/* A bounded cursor over one mapped file. */
typedef struct cursor {
    const uint8_t *base;
    uint64_t size, pos;
    const char *path;
    ms_err *e;
    int failed;
} cursor;

static int cur_fail(cursor *c, const char *what) {
    if (!c->failed)
        ms_fail(c->e, MS_ERR_FORMAT, "%s: truncated or corrupt GGUF: %s at byte %llu (file is %llu bytes)",
                c->path, what, (unsigned long long)c->pos, (unsigned long long)c->size);
    c->failed = 1;
    return -1;
}

static int cur_need(cursor *c, uint64_t n, const char *what) {
    if (c->failed) return -1;
    if (n > c->size - c->pos) return cur_fail(c, what);
    return 0;
}

static uint64_t rd_uint(cursor *c, int bytes, const char *what) {
    if (cur_need(c, (uint64_t)bytes, what)) return 0;
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)c->base[c->pos + i] << (8 * i);
    c->pos += bytes;
    return v;
}

static gguf_str rd_str(cursor *c, const char *what) {
    gguf_str s = {0, ""};
    uint64_t n = rd_uint(c, 8, what);
    if (cur_need(c, n, what)) return s;
    s.len = n;
    s.ptr = (const char *)c->base + c->pos;
    c->pos += n;
    return s;
}

static char *str_dup(gguf_str s) {
    char *d = ms_malloc(s.len + 1);
    if (d) {
        memcpy(d, s.ptr, s.len);
        d[s.len] = 0;
    }
    return d;
}

int gguf_vtype_size(int t) {
    switch (t) {
    case GGUF_U8: case GGUF_I8: case GGUF_BOOL: return 1;
    case GGUF_U16: case GGUF_I16: return 2;
    case GGUF_U32: case GGUF_I32: case GGUF_F32: return 4;
    case GGUF_U64: case GGUF_I64: case GGUF_F64: return 8;
    default: return 0;
    }
}

const char *gguf_vtype_name(int t) {
    static const char *names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                  "string", "array", "u64", "i64", "f64"};
    return t >= 0 && t < GGUF_VTYPE_COUNT ? names[t] : "unknown";
}

static int64_t sign_extend(uint64_t v, int bytes) {
    if (bytes == 8) return (int64_t)v;
    int shift = 64 - 8 * bytes;
    return (int64_t)(v << shift) >> shift;
}

/* Reads a scalar of type t into kv. */
static int rd_scalar(cursor *c, int t, gguf_kv *kv) {
    int sz = gguf_vtype_size(t);
    uint64_t raw = rd_uint(c, sz, "metadata value");
    if (c->failed) return -1;
    switch (t) {
    case GGUF_I8: case GGUF_I16: case GGUF_I32: case GGUF_I64: kv->v.i = sign_extend(raw, sz); break;
    case GGUF_F32: { uint32_t u = (uint32_t)raw; float f; memcpy(&f, &u, 4); kv->v.f = f; break; }
    case GGUF_F64: { double d; memcpy(&d, &raw, 8); kv->v.f = d; break; }
    case GGUF_BOOL:
        if (raw > 1) return cur_fail(c, "bool value not 0 or 1");
        kv->v.u = raw;
        break;
    default: kv->v.u = raw; break;
    }
    return 0;
}

/* Skips an array value of element type t and count n (used for nested arrays). */
static int skip_array(cursor *c, int t, uint64_t n, int depth) {
    if (depth > GGUF_MAX_ARRAY_DEPTH) return cur_fail(c, "arrays nested too deeply");
    if (t == GGUF_STRING) {
        for (uint64_t i = 0; i < n && !c->failed; i++) rd_str(c, "string in array");
    } else if (t == GGUF_ARRAY) {
        for (uint64_t i = 0; i < n && !c->failed; i++) {
            int et = (int)rd_uint(c, 4, "nested array type");
            uint64_t en = rd_uint(c, 8, "nested array length");
            if (!c->failed) skip_array(c, et, en, depth + 1);
        }
    } else {
        int sz = gguf_vtype_size(t);
        uint64_t bytes;
        if (!sz) return cur_fail(c, "unknown array element type");
        if (ms_mul_ok(n, (uint64_t)sz, &bytes) || cur_need(c, bytes, "array data")) return cur_fail(c, "array data");
        c->pos += bytes;
    }
    return c->failed ? -1 : 0;
}

static int rd_value(cursor *c, gguf_kv *kv) {
    int t = kv->type;
    if (t == GGUF_STRING) {
        kv->v.s = rd_str(c, "string value");
    } else if (t == GGUF_ARRAY) {
        int et = (int)rd_uint(c, 4, "array type");
        uint64_t n = rd_uint(c, 8, "array length");
        if (c->failed) return -1;
        if (et < 0 || et >= GGUF_VTYPE_COUNT) return cur_fail(c, "unknown array element type");
        kv->v.arr.type = et;
        kv->v.arr.n = n;
        kv->v.arr.data = c->base + c->pos;
        if (et == GGUF_STRING) {
            /* each string takes at least 8 bytes: bound n before allocating */
            if (n > (c->size - c->pos) / 8) return cur_fail(c, "string array length");
            kv->v.arr.strs = ms_malloc(sizeof(gguf_str) * (n ? n : 1));
            if (!kv->v.arr.strs) return ms_fail(c->e, MS_ERR_NOMEM, "out of memory reading metadata"), c->failed = 1, -1;
            for (uint64_t i = 0; i < n && !c->failed; i++) kv->v.arr.strs[i] = rd_str(c, "string in array");
        } else {
            skip_array(c, et, n, 1);
        }
    } else if (t >= 0 && t < GGUF_VTYPE_COUNT) {
        rd_scalar(c, t, kv);
    } else {
        return cur_fail(c, "unknown metadata value type");
    }
    return c->failed ? -1 : 0;
}

/* --- name -> tensor index (open addressing) --- */

typedef struct gguf_index {
    uint64_t cap;
    int64_t *slot; /* tensor index + 1, 0 = empty */
} gguf_index;

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    while (*s) h = (h ^ (uint8_t)*s++) * 1099511628211ull;
    return h;
}

static int index_build(gguf_file *f, ms_err *e) {
    gguf_index *ix = ms_calloc(1, sizeof *ix);
    if (!ix) return ms_fail(e, MS_ERR_NOMEM, "out of memory indexing tensors");
    f->index = ix;
    ix->cap = 16;
    while (ix->cap < (uint64_t)f->n_tensors * 2) ix->cap *= 2;
    ix->slot = ms_calloc(ix->cap, sizeof(int64_t));
    if (!ix->slot) return ms_fail(e, MS_ERR_NOMEM, "out of memory indexing tensors");
    for (int64_t i = 0; i < f->n_tensors; i++) {
        uint64_t h = hash_str(f->tensors[i].name) & (ix->cap - 1);
        while (ix->slot[h]) {
            if (!strcmp(f->tensors[ix->slot[h] - 1].name, f->tensors[i].name))
                return ms_fail(e, MS_ERR_FORMAT, "%s: duplicate tensor name '%s'",
                               f->parts[0].path, f->tensors[i].name);
            h = (h + 1) & (ix->cap - 1);
        }
        ix->slot[h] = i + 1;
    }
    return MS_OK;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    if (!f->index) return NULL;
    const gguf_index *ix = f->index;
    uint64_t h = hash_str(name) & (ix->cap - 1);
    while (ix->slot[h]) {
        const gguf_tensor *t = &f->tensors[ix->slot[h] - 1];
        if (!strcmp(t->name, name)) return t;
        h = (h + 1) & (ix->cap - 1);
    }
    return NULL;
}

/* --- metadata access --- */

int64_t gguf_find_key(const gguf_file *f, const char *key) {
    for (int64_t i = 0; i < f->n_kv; i++)
        if (!strcmp(f->kv[i].key, key)) return i;
    return -1;
}

const gguf_kv *gguf_get(const gguf_file *f, const char *key) {
    int64_t i = gguf_find_key(f, key);
    return i < 0 ? NULL : &f->kv[i];
}

static int is_signed(int t) { return t == GGUF_I8 || t == GGUF_I16 || t == GGUF_I32 || t == GGUF_I64; }
static int is_unsigned(int t) {
    return t == GGUF_U8 || t == GGUF_U16 || t == GGUF_U32 || t == GGUF_U64 || t == GGUF_BOOL;
}

int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out) {
    const gguf_kv *kv = gguf_get(f, key);
    if (!kv) return -1;
    if (is_unsigned(kv->type)) { *out = kv->v.u; return 0; }
    if (is_signed(kv->type) && kv->v.i >= 0) { *out = (uint64_t)kv->v.i; return 0; }
    return -1;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out) {
    uint64_t v;
    if (gguf_get_u64(f, key, &v) || v > UINT32_MAX) return -1;
    *out = (uint32_t)v;
    return 0;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out) {
    const gguf_kv *kv = gguf_get(f, key);
    if (!kv) return -1;
    if (kv->type == GGUF_F32 || kv->type == GGUF_F64) { *out = (float)kv->v.f; return 0; }
    if (is_unsigned(kv->type)) { *out = (float)kv->v.u; return 0; }
    if (is_signed(kv->type)) { *out = (float)kv->v.i; return 0; }
    return -1;
}

int gguf_get_bool(const gguf_file *f, const char *key, int *out) {
    uint64_t v;
    if (gguf_get_u64(f, key, &v)) return -1;
    *out = v != 0;
    return 0;
}

char *gguf_get_str(const gguf_file *f, const char *key) {
    const gguf_kv *kv = gguf_get(f, key);
    if (!kv || kv->type != GGUF_STRING) return NULL;
    return str_dup(kv->v.s);
}

int gguf_arr_u64(const gguf_kv *kv, uint64_t i, uint64_t *out) {
    if (kv->type != GGUF_ARRAY || i >= kv->v.arr.n) return -1;
    int t = kv->v.arr.type, sz = gguf_vtype_size(t);
    if (!sz || t == GGUF_F32 || t == GGUF_F64) return -1;
    uint64_t raw = 0;
    const uint8_t *p = (const uint8_t *)kv->v.arr.data + i * sz;
    for (int b = 0; b < sz; b++) raw |= (uint64_t)p[b] << (8 * b);
    if (is_signed(t)) {
        int64_t s = sign_extend(raw, sz);
        if (s < 0) return -1;
        raw = (uint64_t)s;
    }
    *out = raw;
    return 0;
}

int gguf_arr_f64(const gguf_kv *kv, uint64_t i, double *out) {
    if (kv->type != GGUF_ARRAY || i >= kv->v.arr.n) return -1;
    int t = kv->v.arr.type;
    const uint8_t *p = (const uint8_t *)kv->v.arr.data;
    if (t == GGUF_F32) { float x; memcpy(&x, p + 4 * i, 4); *out = x; return 0; }
    if (t == GGUF_F64) { memcpy(out, p + 8 * i, 8); return 0; }
    if (is_signed(t)) {
        int sz = gguf_vtype_size(t);
        uint64_t raw = 0;
        for (int b = 0; b < sz; b++) raw |= (uint64_t)p[i * sz + b] << (8 * b);
        *out = (double)sign_extend(raw, sz);
        return 0;
    }
    uint64_t u;
    if (gguf_arr_u64(kv, i, &u)) return -1;
    *out = (double)u;
    return 0;
}

/* --- opening --- */

static int map_part(gguf_part *p, ms_err *e) {
    p->fd = open(p->path, O_RDONLY | O_CLOEXEC);
    if (p->fd < 0)
        return ms_fail(e, MS_ERR_IO, "%s: cannot open: %s", p->path, strerror(errno));
    struct stat st;
    if (fstat(p->fd, &st) != 0)
        return ms_fail(e, MS_ERR_IO, "%s: cannot stat: %s", p->path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return ms_fail(e, MS_ERR_IO, "%s: not a regular file", p->path);
    p->size = (uint64_t)st.st_size;
    if (p->size < 24)
        return ms_fail(e, MS_ERR_FORMAT, "%s: not a GGUF file (only %llu bytes)", p->path,
                       (unsigned long long)p->size);
    void *m = mmap(NULL, p->size, PROT_READ, MAP_SHARED, p->fd, 0);
    if (m == MAP_FAILED) return ms_fail(e, MS_ERR_IO, "%s: cannot map: %s", p->path, strerror(errno));
    p->map = m;
    return MS_OK;
}

/* Parses one part: appends its kv (first part only) and tensors to f. */
static int parse_part(gguf_file *f, int pi, int64_t *tensor_cap, ms_err *e) {
    gguf_part *p = &f->parts[pi];
    cursor c = {p->map, p->size, 0, p->path, e, 0};
    if (memcmp(p->map, "GGUF", 4) != 0) {
        return ms_fail(e, MS_ERR_FORMAT, "%s: not a GGUF file (magic is '%.4s', expected 'GGUF')",
                       p->path, isprint(p->map[0]) ? (const char *)p->map : "????");
    }
    c.pos = 4;
    uint32_t version = (uint32_t)rd_uint(&c, 4, "version");
    if (version < 2 || version > 3)
        return ms_fail(e, MS_ERR_UNSUPPORTED, "%s: GGUF version %u not supported (expected 2 or 3)",
                       p->path, version);
    if (pi == 0) f->version = version;
    uint64_t n_tensors = rd_uint(&c, 8, "tensor count");
    uint64_t n_kv = rd_uint(&c, 8, "metadata count");
    /* every kv takes >= 12 bytes and every tensor info >= 24: bound the counts by the file */
    if (n_kv > p->size / 12 || n_tensors > p->size / 24)
        return ms_fail(e, MS_ERR_FORMAT, "%s: corrupt GGUF: %llu tensors / %llu metadata entries cannot fit in %llu bytes",
                       p->path, (unsigned long long)n_tensors, (unsigned long long)n_kv,
                       (unsigned long long)p->size);

    gguf_kv *kvs = ms_calloc(n_kv ? n_kv : 1, sizeof(gguf_kv));
    if (!kvs) return ms_fail(e, MS_ERR_NOMEM, "out of memory reading metadata");
    uint32_t alignment = 32;
    int status = MS_OK;
    uint64_t i;
    for (i = 0; i < n_kv; i++) {
        gguf_str key = rd_str(&c, "metadata key");
        kvs[i].type = (int)rd_uint(&c, 4, "metadata type");
        if (c.failed) break;
        kvs[i].key = str_dup(key);
        if (!kvs[i].key) { status = ms_fail(e, MS_ERR_NOMEM, "out of memory reading metadata"); break; }
        for (uint64_t j = 0; j < i; j++)
            if (!strcmp(kvs[j].key, kvs[i].key)) {
                status = ms_fail(e, MS_ERR_FORMAT, "%s: duplicate metadata key '%s'", p->path, kvs[i].key);
                break;
            }
        if (status || rd_value(&c, &kvs[i])) break;
        if (!strcmp(kvs[i].key, "general.alignment")) {
            if (kvs[i].type != GGUF_U32 || kvs[i].v.u == 0 || (kvs[i].v.u & (kvs[i].v.u - 1)) || kvs[i].v.u > (1u << 20)) {
                status = ms_fail(e, MS_ERR_FORMAT, "%s: general.alignment must be a power-of-two u32, got type %s",
                                 p->path, gguf_vtype_name(kvs[i].type));
                break;
            }
            alignment = (uint32_t)kvs[i].v.u;
        }
    }
    if (!status && c.failed) status = e ? e->status : MS_ERR_FORMAT;
    if (pi == 0) {
        f->kv = kvs;
        f->n_kv = (int64_t)(status ? i + 1 : n_kv);
        f->alignment = alignment;
    } else {
        for (uint64_t j = 0; j < n_kv && j <= i; j++) {
            ms_free(kvs[j].key);
            if (kvs[j].type == GGUF_ARRAY) ms_free(kvs[j].v.arr.strs);
        }
        ms_free(kvs);
    }
    if (status) return status;

    /* tensor infos */
    if ((uint64_t)f->n_tensors + n_tensors > (uint64_t)*tensor_cap) {
        int64_t cap = f->n_tensors + (int64_t)n_tensors;
        gguf_tensor *nt = ms_realloc(f->tensors, sizeof(gguf_tensor) * (cap ? cap : 1));
        if (!nt) return ms_fail(e, MS_ERR_NOMEM, "out of memory reading tensor table");
        f->tensors = nt;
        *tensor_cap = cap;
    }
    int64_t first = f->n_tensors;
    for (uint64_t t = 0; t < n_tensors; t++) {
        gguf_tensor *ti = &f->tensors[f->n_tensors];
        memset(ti, 0, sizeof *ti);
        gguf_str name = rd_str(&c, "tensor name");
        uint32_t n_dims = (uint32_t)rd_uint(&c, 4, "tensor dimension count");
        if (c.failed) return e ? e->status : MS_ERR_FORMAT;
        ti->name = str_dup(name);
        if (!ti->name) return ms_fail(e, MS_ERR_NOMEM, "out of memory reading tensor table");
        f->n_tensors++;
        if (name.len == 0 || name.len > 256)
            return ms_fail(e, MS_ERR_FORMAT, "%s: tensor %llu has a name of %llu bytes (expected 1..256)",
                           p->path, (unsigned long long)t, (unsigned long long)name.len);
        if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
            return ms_fail(e, MS_ERR_FORMAT, "%s: tensor '%s' has %u dimensions (expected 1..%d)",
                           p->path, ti->name, n_dims, GGUF_MAX_DIMS);
        ti->n_dims = (int)n_dims;
        uint64_t nel = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) ti->ne[d] = 1;
        for (uint32_t d = 0; d < n_dims; d++) {
            uint64_t ne = rd_uint(&c, 8, "tensor dimension");
            if (c.failed) return e ? e->status : MS_ERR_FORMAT;
            if (ne > INT64_MAX || ms_mul_ok(nel, ne, &nel) || nel > INT64_MAX)
                return ms_fail(e, MS_ERR_FORMAT, "%s: tensor '%s' dimensions overflow", p->path, ti->name);
            ti->ne[d] = (int64_t)ne;
        }
        ti->type = (int)rd_uint(&c, 4, "tensor type");
        uint64_t off = rd_uint(&c, 8, "tensor offset");
        if (c.failed) return e ? e->status : MS_ERR_FORMAT;
        const ms_type_info *info = quant_info(ti->type);
        if (!info)
            return ms_fail(e, MS_ERR_UNSUPPORTED, "%s: tensor '%s' has unknown tensor type %d",
                           p->path, ti->name, ti->type);
        if (ti->ne[0] % info->block_size)
            return ms_fail(e, MS_ERR_FORMAT, "%s: tensor '%s' row of %lld values is not a multiple of %s's block of %d",
                           p->path, ti->name, (long long)ti->ne[0], info->name, info->block_size);
        uint64_t nbytes;
        if (ms_mul_ok(nel / info->block_size, (uint64_t)info->block_bytes, &nbytes))
            return ms_fail(e, MS_ERR_FORMAT, "%s: tensor '%s' size overflows", p->path, ti->name);
        ti->nbytes = nbytes;
        ti->part = pi;
        ti->file_offset = off; /* relative for now */
        if (off % alignment)
            return ms_fail(e, MS_ERR_FORMAT, "%s: tensor '%s' offset %llu is not aligned to %u",
                           p->path, ti->name, (unsigned long long)off, alignment);
    }
    uint64_t data_start = (c.pos + alignment - 1) / alignment * alignment;
    if (data_start > p->size && n_tensors > 0)
        return ms_fail(e, MS_ERR_FORMAT, "%s: truncated GGUF: tensor data would start at byte %llu but the file has %llu",
                       p->path, (unsigned long long)data_start, (unsigned long long)p->size);
    for (int64_t t = first; t < f->n_tensors; t++) {
        gguf_tensor *ti = &f->tensors[t];
        uint64_t abs, end;
        if (ms_add_ok(data_start, ti->file_offset, &abs) || ms_add_ok(abs, ti->nbytes, &end) || end > p->size)
            return ms_fail(e, MS_ERR_FORMAT,
                           "%s: truncated GGUF: tensor '%s' needs bytes up to %llu but the file has %llu",
                           p->path, ti->name, (unsigned long long)(data_start + ti->file_offset + ti->nbytes),
                           (unsigned long long)p->size);
        ti->file_offset = abs;
        ti->data = p->map + abs;
    }
    return MS_OK;
}

/* If path ends in -NNNNN-of-MMMMM.gguf, fills prefix length, part number and count. */
static int split_name(const char *path, size_t *prefix_len, int *no, int *count) {
    size_t n = strlen(path);
    const char *suffix = "-00001-of-00001.gguf";
    size_t sl = strlen(suffix);
    if (n < sl) return 0;
    const char *s = path + n - sl;
    int a, b;
    char tail[8];
    if (s[0] != '-' || sscanf(s, "-%5d-of-%5d%7s", &a, &b, tail) != 3 || strcmp(tail, ".gguf")) return 0;
    *prefix_len = (size_t)(s - path);
    *no = a;
    *count = b;
    return 1;
}

gguf_file *gguf_open(const char *path, ms_err *e) {
    gguf_file *f = ms_calloc(1, sizeof *f);
    if (!f) { ms_fail(e, MS_ERR_NOMEM, "out of memory"); return NULL; }
    f->parts = ms_calloc(1, sizeof(gguf_part));
    if (!f->parts) { ms_fail(e, MS_ERR_NOMEM, "out of memory"); ms_free(f); return NULL; }
    f->n_parts = 1;
    f->parts[0].fd = -1;
    f->parts[0].path = ms_strdup(path);
    int64_t tensor_cap = 0;
    if (!f->parts[0].path) { ms_fail(e, MS_ERR_NOMEM, "out of memory"); goto fail; }
    if (map_part(&f->parts[0], e) || parse_part(f, 0, &tensor_cap, e)) goto fail;

    uint32_t count = 1, no = 0;
    gguf_get_u32(f, "split.count", &count);
    gguf_get_u32(f, "split.no", &no);
    size_t prefix_len;
    int name_no, name_count;
    int named = split_name(path, &prefix_len, &name_no, &name_count);
    if (count > 1 || (named && name_count > 1)) {
        if (!named) {
            ms_fail(e, MS_ERR_FORMAT, "%s: split.count is %u but the name is not of the form PREFIX-00001-of-%05u.gguf",
                    path, count, count);
            goto fail;
        }
        if (no != 0 || name_no != 1) {
            ms_fail(e, MS_ERR_ARG, "%s: this is part %d of a split model; open the first part (-00001-of-%05d.gguf)",
                    path, name_no, name_count);
            goto fail;
        }
        if ((int)count != name_count || count > GGUF_MAX_PARTS) {
            ms_fail(e, MS_ERR_FORMAT, "%s: split.count is %u but the file name says %d parts", path, count, name_count);
            goto fail;
        }
        gguf_part *np = ms_realloc(f->parts, sizeof(gguf_part) * count);
        if (!np) { ms_fail(e, MS_ERR_NOMEM, "out of memory"); goto fail; }
        f->parts = np;
        for (uint32_t i = 1; i < count; i++) {
            gguf_part *p = &f->parts[i];
            memset(p, 0, sizeof *p);
            p->fd = -1;
            f->n_parts = (int)i + 1;
            p->path = ms_malloc(prefix_len + 32);
            if (!p->path) { ms_fail(e, MS_ERR_NOMEM, "out of memory"); goto fail; }
            snprintf(p->path, prefix_len + 32, "%.*s-%05u-of-%05u.gguf", (int)prefix_len, path, i + 1, count);
            if (map_part(p, e) || parse_part(f, (int)i, &tensor_cap, e)) goto fail;
        }
        uint64_t expect;
        if (!gguf_get_u64(f, "split.tensors.count", &expect) && expect != (uint64_t)f->n_tensors) {
            ms_fail(e, MS_ERR_FORMAT, "%s: split.tensors.count says %llu tensors but the %u parts hold %lld",
                    path, (unsigned long long)expect, count, (long long)f->n_tensors);
            goto fail;
        }
    }
    if (index_build(f, e)) goto fail;
    return f;
fail:
    gguf_close(f);
    return NULL;
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    for (int64_t i = 0; i < f->n_kv; i++) {
        ms_free(f->kv[i].key);
        if (f->kv[i].type == GGUF_ARRAY) ms_free(f->kv[i].v.arr.strs);
    }
    ms_free(f->kv);
    for (int64_t i = 0; i < f->n_tensors; i++) ms_free(f->tensors[i].name);
    ms_free(f->tensors);
    for (int i = 0; i < f->n_parts; i++) {
        gguf_part *p = &f->parts[i];
        if (p->map) munmap((void *)p->map, p->size);
        if (p->fd >= 0) close(p->fd);
        ms_free(p->path);
    }
    ms_free(f->parts);
    if (f->index) ms_free(f->index->slot);
    ms_free(f->index);
    ms_free(f);
}
