/* quant.h - GGML tensor types: block layouts, scalar reference dequantization and dot products,
 * and the run-time dispatched SIMD kernels (AVX2 / AVX-512) that are tested against them.
 *
 * Not here: which tensor is which (model.c), threading (threads.c), matrix shapes beyond one
 * row. Type numbers are GGML's, as stored in GGUF tensor infos.
 *
 * Glossary: a row of n values is n / block_size blocks of block_bytes bytes each.
 */
#ifndef MS_QUANT_H
#define MS_QUANT_H

#include <stddef.h>
#include <stdint.h>

typedef enum ms_type {
    MS_TYPE_F32 = 0,
    MS_TYPE_F16 = 1,
    MS_TYPE_Q4_0 = 2,
    MS_TYPE_Q4_1 = 3,
    MS_TYPE_Q5_0 = 6,
    MS_TYPE_Q5_1 = 7,
    MS_TYPE_Q8_0 = 8,
    MS_TYPE_Q8_1 = 9,
    MS_TYPE_Q2_K = 10,
    MS_TYPE_Q3_K = 11,
    MS_TYPE_Q4_K = 12,
    MS_TYPE_Q5_K = 13,
    MS_TYPE_Q6_K = 14,
    MS_TYPE_Q8_K = 15,
    MS_TYPE_IQ4_NL = 20,
    MS_TYPE_IQ4_XS = 23,
    MS_TYPE_BF16 = 30,
    MS_TYPE_MXFP4 = 39,
    MS_TYPE_COUNT = 43, /* GGML's count: type numbers are below this */
} ms_type;

typedef struct ms_type_info {
    const char *name;  /* "Q4_K" */
    int block_size;    /* values per block */
    int block_bytes;   /* bytes per block */
    int supported;     /* 1 if dequant/dot are implemented */
} ms_type_info;

/* Layout of a type, or NULL if the number is not a GGML type this build knows (even by name). */
const ms_type_info *quant_info(int type);
/* Name of a type number ("Q4_K"), or "type<N>" in a static buffer for unknown numbers. */
const char *quant_name(int type);
/* Bytes of a row of n values; 0 if n is not a multiple of the block size or type unknown. */
size_t quant_row_bytes(int type, int64_t n);

/* Scalar reference paths (the oracle every faster path is tested against).
 * n must be a multiple of the type's block size. */
void quant_dequant_ref(int type, const void *src, float *dst, int64_t n);
float quant_dot_ref(int type, const void *row, const float *x, int64_t n);

/* Fastest available path for this CPU, chosen once at quant_init (idempotent, thread-safe to
 * call before threads start). Results equal the reference within float rounding. */
void quant_init(void);
void quant_dequant(int type, const void *src, float *dst, int64_t n);
float quant_dot(int type, const void *row, const float *x, int64_t n);

/* y[r] = dot(row r of W, x) for r in [r0, r1). W rows are row_bytes apart. */
void quant_matvec(int type, const void *w, size_t row_bytes, const float *x, float *y,
                  int64_t n, int64_t r0, int64_t r1);

/* Name of the kernel set in use: "avx512", "avx2" or "scalar". */
const char *quant_isa(void);
/* Forces a kernel set ("scalar", "avx2", "avx512") for tests; returns 0, or -1 if unavailable. */
int quant_force_isa(const char *name);

/* Half-precision conversions, exact. */
float ms_f16_to_f32(uint16_t h);
uint16_t ms_f32_to_f16(float f);
static inline float ms_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}

#endif
