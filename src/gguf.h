/* gguf.h - GGUF reader: parses and validates the header, metadata and tensor table of a GGUF
 * file (versions 2 and 3, split files opened from their first part) and maps the data read-only.
 *
 * Not here: what the tensors mean (model.c) or how expert bytes are streamed (experts.c). The
 * reader never exits and never prints; on failure it returns NULL/-1 and fills an ms_err.
 * Weights are not copied: tensor data pointers point into the read-only mappings.
 */
#ifndef MS_GGUF_H
#define MS_GGUF_H

#include <stddef.h>
#include <stdint.h>
#include "util.h"

enum gguf_vtype {
    GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4, GGUF_I32 = 5,
    GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_U64 = 10,
    GGUF_I64 = 11, GGUF_F64 = 12, GGUF_VTYPE_COUNT
};

/* A GGUF string: not NUL-terminated, points into the mapping. */
typedef struct gguf_str {
    uint64_t len;
    const char *ptr;
} gguf_str;

typedef struct gguf_kv {
    char *key;             /* NUL-terminated copy */
    int type;              /* enum gguf_vtype */
    union {
        uint64_t u;        /* unsigned ints and bool */
        int64_t i;         /* signed ints */
        double f;          /* F32, F64 */
        gguf_str s;        /* STRING */
        struct {
            int type;      /* element type */
            uint64_t n;    /* element count */
            const void *data; /* raw little-endian elements in the mapping (not for STRING/ARRAY) */
            gguf_str *strs;   /* for STRING arrays: n strings (owned array, pointing into the map) */
        } arr;
    } v;
} gguf_kv;

#define GGUF_MAX_DIMS 4

typedef struct gguf_tensor {
    char *name;            /* NUL-terminated copy */
    int type;              /* ms_type (GGML type number) */
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the fastest-varying (row length) */
    uint64_t nbytes;       /* size of the data */
    int part;              /* which split file holds it */
    uint64_t file_offset;  /* absolute byte offset of the data in that file */
    const uint8_t *data;   /* mapped data */
} gguf_tensor;

typedef struct gguf_part {
    char *path;
    int fd;                /* kept open: the expert store reads through it */
    uint64_t size;
    const uint8_t *map;
} gguf_part;

typedef struct gguf_file {
    uint32_t version;
    uint32_t alignment;
    int n_parts;
    gguf_part *parts;
    int64_t n_kv;
    gguf_kv *kv;           /* metadata of the first part (other parts' split.* keys are checked) */
    int64_t n_tensors;
    gguf_tensor *tensors;  /* all parts, in file order */
    struct gguf_index *index; /* name -> tensor hash index */
} gguf_file;

/* Opens and validates a GGUF file. A name of the form `*-00001-of-0000N.gguf` (or a file with
 * split.count > 1) opens every part. Returns NULL on error with e filled (MS_ERR_IO for missing
 * or unreadable files, MS_ERR_FORMAT for malformed ones). Free with gguf_close. */
gguf_file *gguf_open(const char *path, ms_err *e);
void gguf_close(gguf_file *f);

/* Metadata lookup: index into f->kv, or -1. */
int64_t gguf_find_key(const gguf_file *f, const char *key);
const gguf_kv *gguf_get(const gguf_file *f, const char *key);

/* Typed getters. Integers convert between integer types when the value fits; floats accept
 * F32/F64. Return 0 on success, -1 if missing or of an incompatible type (out untouched). */
int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out);
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_f32(const gguf_file *f, const char *key, float *out);
int gguf_get_bool(const gguf_file *f, const char *key, int *out);
/* String value as a NUL-terminated malloc'd copy (caller ms_free's), or NULL. */
char *gguf_get_str(const gguf_file *f, const char *key);
/* Element i of an integer/float/bool array, converted. Return 0 on success, -1 otherwise. */
int gguf_arr_u64(const gguf_kv *kv, uint64_t i, uint64_t *out);
int gguf_arr_f64(const gguf_kv *kv, uint64_t i, double *out);

/* Tensor lookup by name, or NULL. */
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* Bytes of a scalar value type (0 for strings, arrays and unknown types). */
int gguf_vtype_size(int type);
/* Name of a value type ("u32", "string", ...). */
const char *gguf_vtype_name(int type);

#endif
