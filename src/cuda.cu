/* cuda.cu - the CUDA backend (backend.h's table): dense weights, the KV cache and the recurrent
 * state live in VRAM; routed experts come through the expert store (experts.h) into a VRAM
 * expert cache with a byte budget.
 *
 * Not here: where expert bytes come from (experts.c), the reference arithmetic (forward.c: this
 * file mirrors it step by step and is tested against its scalar path), sampling, printing.
 * Exports only extern "C" functions: ms_backend_cuda() and the test hooks of cuda.h.
 *
 * Arithmetic: fp32 everywhere. Weights are dequantized exactly as quant.c does (the same
 * products, the same final add; quant_simd.h says why that is exact), activations are never
 * rounded, so the GPU agrees with the scalar CPU path up to summation order.
 *
 * Kernels: one dequantizer per GGML type that decodes 8 consecutive values of a row (dq8), used
 * by a matrix-vector kernel for up to 8 tokens (k_mv: a warp per row for many rows, four warps
 * per row for few long ones; one token of a Q4_K row takes 16-byte loads, q4k_dot) and a
 * 64x64-tiled matrix product for more (k_mm). Both take "groups" (one per expert: its weights
 * and a run of token slots), so all the experts of a layer go in one launch. One token of Q4_K
 * rows, the decode path of Q4_K models, goes to k_mvq instead: weight loads issued first, x in
 * shared memory (RMS-normed there for q|k|v), nibbles turned into floats without I2F, several
 * rows a warp, and all experts' down rows of one output row in one warp. q|k|v (and a Gated
 * DeltaNet layer's qkv|z) are stacked into one matrix at upload when they share a type. The
 * router's top-k runs in the last block of the router product for one token (with an F32 router,
 * k_router1: ffn norm, router and top-k in one launch). Attention uses an online softmax over
 * the KV cache (one kernel per token when decoding: norms, RoPE, cache write and attention,
 * position-parallel for head dims 64, 128 and 256, k_attn1b); the Gated DeltaNet recurrence
 * keeps each state row in a warp's registers across the batch's tokens, after one kernel for its
 * conv, L2 norms and gates. A resident decode step of an attention layer is 6 launches: q|k|v
 * (with the norm), attention, output, router (with norm and top-k), gate|up, down.
 *
 * The expert cache: VRAM slots of one expert each (gate | up | down). A (layer, expert) maps to
 * at most one slot. On a miss the victim is the least frequently requested owner among a
 * random sample of slots not used by the current layer (request counts are halved now and then
 * so popularity can change). When every expert fits, all are loaded at creation and decode
 * routes on the GPU with no host round trip per layer.
 *
 * Streams: per layer the compute stream runs attention, router and top-k, then copies the
 * choice to the host; the shared expert is queued behind it while the host waits. The host
 * looks the experts up, queues the misses' host-to-VRAM copies on the copy stream (each with
 * an event), launches the hits at once, and launches each miss's kernels behind a wait on its
 * own event, so the copy of expert i+1 runs while expert i computes. Copies go straight from
 * the file mapping when it could be page-locked (cudaHostRegister), otherwise through pinned
 * staging buffers filled by a few threads. Decoding replays CUDA graphs: a whole token when
 * every expert is resident, each layer's first part (everything before the routing decision)
 * otherwise; the position lives in device memory so one graph serves every position.
 *
 * Router lookahead (decode while streaming; on unless MS_CUDA_LOOKAHEAD=0): right after layer
 * il's routing, the compute stream also runs layer il + 1's router on the current residual (its
 * ffn_norm, as forward.c's lookahead) and copies that top-k to the host. Once layer il's experts
 * are queued, prefetch_next gives the predicted experts that are not in VRAM slots (never one of
 * layer il's) and queues their copies behind layer il's misses, so the copy engine works through
 * layer il's compute and layer il + 1's attention instead of idling. Layer il + 1 launches the
 * prefetched experts it routed to behind their copy events. On the 80B synthetic model the
 * prediction is right for 93% of the prefetched experts; decode at 24G went from 67 to 90 tok/s.
 *
 * Environment knobs (tests and tuning, not for users): MS_CUDA_CACHE_SLOTS=N caps the cache,
 * MS_CUDA_STAGING=1 forces staging buffers, MS_CUDA_REGISTER=0|1 (default: when the files fit in
 * RAM), MS_CUDA_GRAPHS=0, MS_CUDA_STACK=0 (no stacked projections), MS_CUDA_TIMING=1 (per-phase
 * GPU times from events), MS_CUDA_WIDE_ROWS / MS_CUDA_MV_ITEMS (k_mv's warps-per-row choice),
 * MS_CUDA_LOOKAHEAD=0|1 (router lookahead; default on, see GPU_LOOKAHEAD_DEFAULT), MS_CUDA_MVQ=0 (one
 * token of Q4_K on k_mv, not k_mvq), MS_CUDA_MVQ_R=a,b,c (k_mvq's rows a warp, see mvq_r),
 * MS_CUDA_CPU_SHARE=x|auto (overrides --cpu-share: the experts not in VRAM computed on the host; see moe_cpu_start).
 *
 * TODO: decode attention for other head dims is a warp per position stride and slows with depth;
 * k_mvq covers Q4_K only (Q6_K and Q5_K rows of Q4_K_M files still take k_mv). The lookahead
 * prefetches only for single-token decode (a prefill batch routes to most experts anyway), and
 * its prefetch and hit counts reach callers through ms_stats (gpu_prefetches,
 * gpu_prefetch_used). After a failed batch the slots of an unfinished copy (a miss or a
 * prefetch) stay mapped as if filled, as before.
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern "C" {
#include "backend.h"
#include "cuda.h"
#include "forward.h" /* MS_N_CHECKPOINTS: the same prefix-reuse contract */
#include "quant.h"
#include "threads.h"
}

/* ================================================================== device helpers */

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32); every thread gets the total. */
__device__ float block_sum(float v) {
    __shared__ float sh[32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float r = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(r);
}

__device__ float block_max(float v) {
    __shared__ float sh[32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float r = lane < nw ? sh[lane] : -INFINITY;
    return warp_max(r);
}

/* The same formulas as forward.c. */
__device__ __forceinline__ float d_silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float d_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float d_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* ================================================================== dequantization
 * dq8<TYPE>(row, c, v): values 8c .. 8c+7 of a row. Rows start 2-byte aligned at least (every
 * block size but MXFP4's is even, and tensors start 256-aligned); the loads below use the widest
 * width each layout's offsets allow. Products and offsets follow quant.c's block decoders. */

__device__ __forceinline__ float f16_at(const uint8_t *p) {
    return __half2float(__ushort_as_half(*(const uint16_t *)p));
}

/* 8 bytes at a 2-, 4- or 8-aligned address, little-endian in two words. */
__device__ __forceinline__ uint2 ld8_2(const uint8_t *p) {
    const uint16_t *h = (const uint16_t *)p;
    return make_uint2(h[0] | (uint32_t)h[1] << 16, h[2] | (uint32_t)h[3] << 16);
}
__device__ __forceinline__ uint2 ld8_4(const uint8_t *p) {
    const uint32_t *w = (const uint32_t *)p;
    return make_uint2(w[0], w[1]);
}
__device__ __forceinline__ uint2 ld8_8(const uint8_t *p) { return *(const uint2 *)p; }
__device__ __forceinline__ int byte_of(uint2 q, int j) { return (int)((j < 4 ? q.x >> (8 * j) : q.y >> (8 * (j - 4))) & 0xFF); }

/* Code books as packed bytes, so a lane-varying index costs a shift, not a memory access. */
__device__ __forceinline__ int kv_iq4nl(int n) {
    /* -127 -104 -83 -65 -49 -35 -22 -10 | 1 13 25 38 53 69 89 113 */
    const unsigned long long t = n < 8 ? 0xF6EADDCFBFAD9881ull : 0x7159453526190D01ull;
    return (int)(signed char)(t >> (8 * (n & 7)));
}
__device__ __forceinline__ int kv_mxfp4(int n) {
    /* E2M1 doubled: 0 1 2 3 4 6 8 12 | 0 -1 -2 -3 -4 -6 -8 -12 */
    const unsigned long long t = n < 8 ? 0x0C08060403020100ull : 0xF4F8FAFCFDFEFF00ull;
    return (int)(signed char)(t >> (8 * (n & 7)));
}

__device__ __forceinline__ float e8m0_half(int e) {
    return __uint_as_float(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

__device__ __forceinline__ void scale_min_k4(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

template <int T> __device__ __forceinline__ void dq8(const uint8_t *__restrict__ row, int c, float v[8]);

template <> __device__ __forceinline__ void dq8<MS_TYPE_F32>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const float4 *p = (const float4 *)(row + 32 * (size_t)c);
    float4 a = p[0], b = p[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

template <> __device__ __forceinline__ void dq8<MS_TYPE_F16>(const uint8_t *__restrict__ row, int c, float v[8]) {
    uint4 q = *(const uint4 *)(row + 16 * (size_t)c);
    uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        v[2 * i] = __half2float(__ushort_as_half((unsigned short)(w[i] & 0xFFFF)));
        v[2 * i + 1] = __half2float(__ushort_as_half((unsigned short)(w[i] >> 16)));
    }
}

template <> __device__ __forceinline__ void dq8<MS_TYPE_BF16>(const uint8_t *__restrict__ row, int c, float v[8]) {
    uint4 q = *(const uint4 *)(row + 16 * (size_t)c);
    uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        v[2 * i] = __uint_as_float(w[i] << 16);
        v[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
    }
}

/* Q4_0/IQ4_NL/MXFP4 and the Q5/Q4_1 family: 32 values a block; chunk s (0..3) of a block is
 * bytes 8*(s&1).. of the nibbles, low nibbles for s < 2, high for s >= 2. */
template <> __device__ __forceinline__ void dq8<MS_TYPE_Q4_0>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const uint8_t *b = row + 18 * (size_t)(c >> 2);
    const int s = c & 3, sh = 4 * (s >> 1);
    const float d = f16_at(b);
    const uint2 q = ld8_2(b + 2 + 8 * (s & 1));
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = d * (float)(((byte_of(q, j) >> sh) & 0xF) - 8);
}

template <> __device__ __forceinline__ void dq8<MS_TYPE_Q4_1>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const uint8_t *b = row + 20 * (size_t)(c >> 2);
    const int s = c & 3, sh = 4 * (s >> 1);
    const float d = f16_at(b), m = f16_at(b + 2);
    const uint2 q = ld8_4(b + 4 + 8 * (s & 1));
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = d * (float)((byte_of(q, j) >> sh) & 0xF) + m;
}

template <> __device__ __forceinline__ void dq8<MS_TYPE_Q5_0>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const uint8_t *b = row + 22 * (size_t)(c >> 2);
    const int s = c & 3, hb = s >> 1;
    const float d = f16_at(b);
    const uint32_t qh = *(const uint16_t *)(b + 2) | (uint32_t)(*(const uint16_t *)(b + 4)) << 16;
    const uint2 q = ld8_2(b + 6 + 8 * (s & 1));
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int idx = 8 * (s & 1) + j;
        const int x = ((byte_of(q, j) >> (4 * hb)) & 0xF) | ((qh >> (idx + 16 * hb)) & 1) << 4;
        v[j] = d * (float)(x - 16);
    }
}

template <> __device__ __forceinline__ void dq8<MS_TYPE_Q5_1>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const uint8_t *b = row + 24 * (size_t)(c >> 2);
    const int s = c & 3, hb = s >> 1;
    const float d = f16_at(b), m = f16_at(b + 2);
    const uint32_t qh = *(const uint32_t *)(b + 4);
    const uint2 q = ld8_4(b + 8 + 8 * (s & 1));
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int idx = 8 * (s & 1) + j;
        const int x = ((byte_of(q, j) >> (4 * hb)) & 0xF) | ((qh >> (idx + 16 * hb)) & 1) << 4;
        v[j] = d * (float)x + m;
    }
}

template <> __device__ __forceinline__ void dq8<MS_TYPE_Q8_0>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const uint8_t *b = row + 34 * (size_t)(c >> 2);
    const float d = f16_at(b);
    const uint2 q = ld8_2(b + 2 + 8 * (c & 3));
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = (float)(signed char)byte_of(q, j) * d;
}

template <> __device__ __forceinline__ void dq8<MS_TYPE_IQ4_NL>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const uint8_t *b = row + 18 * (size_t)(c >> 2);
    const int s = c & 3, sh = 4 * (s >> 1);
    const float d = f16_at(b);
    const uint2 q = ld8_2(b + 2 + 8 * (s & 1));
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = d * (float)kv_iq4nl((byte_of(q, j) >> sh) & 0xF);
}

template <> __device__ __forceinline__ void dq8<MS_TYPE_MXFP4>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const uint8_t *b = row + 17 * (size_t)(c >> 2);
    const int s = c & 3, sh = 4 * (s >> 1);
    const float d = e8m0_half(b[0]);
    const uint8_t *qs = b + 1 + 8 * (s & 1);
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = d * (float)kv_mxfp4((qs[j] >> sh) & 0xF);
}

/* k-quants: 256 values a block, so a warp's 32 chunks are exactly one block. Value i of a block
 * is 128h + 32g + l (Q2_K, Q3_K, Q6_K) or sub-block i/32 (Q4_K, Q5_K, IQ4_XS). */
template <> __device__ __forceinline__ void dq8<MS_TYPE_Q2_K>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const uint8_t *b = row + 84 * (size_t)(c >> 5);
    const int i = 8 * (c & 31), h = i >> 7, g = (i >> 5) & 3, l0 = i & 31;
    const int sc = b[i >> 4];
    const float dl = f16_at(b + 80) * (float)(sc & 0xF), ml = f16_at(b + 82) * (float)(sc >> 4);
    const uint2 q = ld8_4(b + 16 + 32 * h + l0);
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = dl * (float)((byte_of(q, j) >> (2 * g)) & 3) - ml;
}

template <> __device__ __forceinline__ void dq8<MS_TYPE_Q3_K>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const uint8_t *b = row + 110 * (size_t)(c >> 5);
    const int i = 8 * (c & 31), h = i >> 7, g = (i >> 5) & 3, l0 = i & 31, is = i >> 4;
    const int low = (b[96 + (is & 7)] >> (4 * (is >> 3))) & 0xF;
    const int high = (b[104 + (is & 3)] >> (2 * (is >> 2))) & 3;
    const float dl = f16_at(b + 108) * (float)((low | high << 4) - 32);
    const uint2 q = ld8_2(b + 32 + 32 * h + l0), hm = ld8_2(b + l0);
    const int bit = 4 * h + g;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        int x = (byte_of(q, j) >> (2 * g)) & 3;
        if (!((byte_of(hm, j) >> bit) & 1)) x -= 4;
        v[j] = dl * (float)x;
    }
}

template <> __device__ __forceinline__ void dq8<MS_TYPE_Q4_K>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const uint8_t *b = row + 144 * (size_t)(c >> 5);
    const int i = 8 * (c & 31), s = i >> 5, l0 = i & 31, sh = 4 * (s & 1);
    int sc, m;
    scale_min_k4(b + 4, s, &sc, &m);
    const float ds = f16_at(b) * (float)sc, ms = f16_at(b + 2) * (float)m;
    const uint2 q = ld8_8(b + 16 + 32 * (s >> 1) + l0);
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = ds * (float)((byte_of(q, j) >> sh) & 0xF) - ms;
}

template <> __device__ __forceinline__ void dq8<MS_TYPE_Q5_K>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const uint8_t *b = row + 176 * (size_t)(c >> 5);
    const int i = 8 * (c & 31), s = i >> 5, l0 = i & 31, sh = 4 * (s & 1);
    int sc, m;
    scale_min_k4(b + 4, s, &sc, &m);
    const float ds = f16_at(b) * (float)sc, ms = f16_at(b + 2) * (float)m;
    const uint2 q = ld8_8(b + 48 + 32 * (s >> 1) + l0), qh = ld8_8(b + 16 + l0);
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int x = ((byte_of(q, j) >> sh) & 0xF) | ((byte_of(qh, j) >> s) & 1) << 4;
        v[j] = ds * (float)x - ms;
    }
}

template <> __device__ __forceinline__ void dq8<MS_TYPE_Q6_K>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const uint8_t *b = row + 210 * (size_t)(c >> 5);
    const int i = 8 * (c & 31), h = i >> 7, g = (i >> 5) & 3, l0 = i & 31;
    const float ds = f16_at(b + 208) * (float)(signed char)b[192 + (i >> 4)];
    const uint2 ql = ld8_2(b + 64 * h + 32 * (g & 1) + l0), qh = ld8_2(b + 128 + 32 * h + l0);
    const int shl = 4 * (g >> 1), shh = 2 * g;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int x = ((byte_of(ql, j) >> shl) & 0xF) | ((byte_of(qh, j) >> shh) & 3) << 4;
        v[j] = ds * (float)(x - 32);
    }
}

template <> __device__ __forceinline__ void dq8<MS_TYPE_IQ4_XS>(const uint8_t *__restrict__ row, int c, float v[8]) {
    const uint8_t *b = row + 136 * (size_t)(c >> 5);
    const int i = 8 * (c & 31), s = i >> 5, w = i & 31;
    const int sh_bits = *(const uint16_t *)(b + 2);
    const int ls = ((b[4 + (s >> 1)] >> (4 * (s & 1))) & 0xF) | ((sh_bits >> (2 * s)) & 3) << 4;
    const float dl = f16_at(b) * (float)(ls - 32);
    const uint2 q = ld8_8(b + 8 + 16 * s + (w & 15));
    const int nsh = (w >> 4) * 4;
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = dl * (float)kv_iq4nl((byte_of(q, j) >> nsh) & 0xF);
}

__device__ __forceinline__ int byte_w(uint32_t w, int k) { return (int)((w >> (8 * k)) & 0xFF); }

/* Scale and min j of a Q4_K/Q5_K header's 12 scale bytes held in words s0 (bytes 0-3), s1 (4-7),
 * s2 (8-11); as quant_scale_min_k4. */
__device__ __forceinline__ void scale_min_w(uint32_t s0, uint32_t s1, uint32_t s2, int j, int *sc, int *m) {
    const uint32_t bytes[3] = {s0, s1, s2};
    if (j < 4) {
        *sc = byte_w(bytes[0], j) & 63;
        *m = byte_w(bytes[1], j) & 63;
    } else {
        *sc = (byte_w(bytes[2], j - 4) & 0xF) | ((byte_w(bytes[0], j - 4) >> 6) << 4);
        *m = (byte_w(bytes[2], j - 4) >> 4) | ((byte_w(bytes[1], j - 4) >> 6) << 4);
    }
}

/* One thread's share of row . x for a Q4_K row of n_in % 256 == 0 values, 16 quant bytes at a
 * time: the low nibbles are 16 values of sub-block 2k, the high ones 16 of sub-block 2k + 1, so
 * each piece needs one 16-byte quant load, the block header (16 bytes, shared by 8 lanes) and 32
 * activations. Per sub-block it sums q.x and x and applies the scale and min once, which is the
 * dequantized product up to float rounding. */
__device__ __forceinline__ float q4k_dot(const uint8_t *__restrict__ row, const float *__restrict__ x, int n_in, int lane, int step) {
    const int nu = n_in >> 5;
    float acc = 0.0f;
#pragma unroll 2
    for (int u = lane; u < nu; u += step) {
        const int b = u >> 3, p = u & 7, k = p >> 1;
        const uint8_t *blk = row + 144 * (size_t)b;
        const uint4 h = *(const uint4 *)blk;
        const uint4 q = *(const uint4 *)(blk + 16 + 16 * p);
        int sc0, m0, sc1, m1;
        scale_min_w(h.y, h.z, h.w, 2 * k, &sc0, &m0);
        scale_min_w(h.y, h.z, h.w, 2 * k + 1, &sc1, &m1);
        const float d = __half2float(__ushort_as_half((unsigned short)(h.x & 0xFFFF)));
        const float dmin = __half2float(__ushort_as_half((unsigned short)(h.x >> 16)));
        const float *x0 = x + 256 * (size_t)b + 64 * k + (p & 1) * 16, *x1 = x0 + 32;
        const uint32_t w[4] = {q.x, q.y, q.z, q.w};
        float sq0 = 0.0f, sx0 = 0.0f, sq1 = 0.0f, sx1 = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float4 a = *(const float4 *)(x0 + 4 * i), c = *(const float4 *)(x1 + 4 * i);
            const float av[4] = {a.x, a.y, a.z, a.w}, cv[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int by = byte_w(w[i], j);
                sq0 += (float)(by & 0xF) * av[j];
                sx0 += av[j];
                sq1 += (float)(by >> 4) * cv[j];
                sx1 += cv[j];
            }
        }
        acc += (d * (float)sc0) * sq0 - (dmin * (float)m0) * sx0 + (d * (float)sc1) * sq1 - (dmin * (float)m1) * sx1;
    }
    return acc;
}

/* Exact float of a small non-negative integer without I2F (a quarter-rate instruction): byte k
 * of w (at most 255) under the exponent of 2^23, minus 2^23. */
__device__ __forceinline__ float byte_f(uint32_t w, int k) {
    return __int_as_float(__byte_perm(w, 0x4B000000u, 0x7440 | k)) - 8388608.0f;
}
__device__ __forceinline__ float small_f(int v) { return __int_as_float(0x4B000000 | v) - 8388608.0f; }

/* One Q4_K piece times its activations: q holds quant bytes 16p .. 16p + 15 of a block (h its
 * 16-byte header, k = p / 2), whose low nibbles are 16 values of sub-block 2k and high nibbles
 * 16 of sub-block 2k + 1; xv[0..3] are the low nibbles' activations, xv[4..7] the high ones',
 * sx their two sums. The same products and scale/min as q4k_dot. */
__device__ __forceinline__ float q4k_piece(uint4 q, uint4 h, int k, const float4 xv[8], float2 sx) {
    int sc0, m0, sc1, m1;
    scale_min_w(h.y, h.z, h.w, 2 * k, &sc0, &m0);
    scale_min_w(h.y, h.z, h.w, 2 * k + 1, &sc1, &m1);
    const float d = __half2float(__ushort_as_half((unsigned short)(h.x & 0xFFFF)));
    const float dmin = __half2float(__ushort_as_half((unsigned short)(h.x >> 16)));
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
    float sq0 = 0.0f, sq1 = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const uint32_t lo = w[i] & 0x0F0F0F0Fu, hi = (w[i] >> 4) & 0x0F0F0F0Fu;
        const float4 a = xv[i], c = xv[4 + i];
        sq0 = fmaf(byte_f(lo, 0), a.x, sq0);
        sq0 = fmaf(byte_f(lo, 1), a.y, sq0);
        sq0 = fmaf(byte_f(lo, 2), a.z, sq0);
        sq0 = fmaf(byte_f(lo, 3), a.w, sq0);
        sq1 = fmaf(byte_f(hi, 0), c.x, sq1);
        sq1 = fmaf(byte_f(hi, 1), c.y, sq1);
        sq1 = fmaf(byte_f(hi, 2), c.z, sq1);
        sq1 = fmaf(byte_f(hi, 3), c.w, sq1);
    }
    return (d * small_f(sc0)) * sq0 - (dmin * small_f(m0)) * sx.x + (d * small_f(sc1)) * sq1 - (dmin * small_f(m1)) * sx.y;
}

/* Every type the backend runs, for the dispatchers below. */
#define MS_CUDA_TYPES(X)                                                                                    \
    X(MS_TYPE_F32) X(MS_TYPE_F16) X(MS_TYPE_BF16) X(MS_TYPE_Q4_0) X(MS_TYPE_Q4_1) X(MS_TYPE_Q5_0)           \
    X(MS_TYPE_Q5_1) X(MS_TYPE_Q8_0) X(MS_TYPE_Q2_K) X(MS_TYPE_Q3_K) X(MS_TYPE_Q4_K) X(MS_TYPE_Q5_K)         \
    X(MS_TYPE_Q6_K) X(MS_TYPE_IQ4_NL) X(MS_TYPE_IQ4_XS) X(MS_TYPE_MXFP4)

static int type_supported(int type) {
    switch (type) {
#define X(T) case T:
        MS_CUDA_TYPES(X)
#undef X
        return 1;
    default: return 0;
    }
}

/* ================================================================== matrix products
 * One launch computes, for every group g (an expert, or the whole batch for a dense weight) and
 * every token slot s in [g.s0, g.s0 + g.ns), the products of the rows of g.w with the input row
 * of s, and stores them by mode. Slot s reads x + (x_idx ? x_idx[s] : s) * ldx and writes
 * y + s * ldy (ldx 0: every slot reads row 0). */

typedef struct mv_group {
    const uint8_t *w, *w2; /* w2: second matrix for MV_SWIGLU (the up projection) */
    int s0, ns;
} mv_group;

enum { MV_STORE, MV_ADD, MV_SWIGLU, MV_GATED };

/* What the router's top-k writes: expert ids and weights [T][K]; with base (every expert
 * resident, one token) also the groups of the chosen experts for the expert kernels. */
typedef struct topk_args {
    int K, norm;
    float scale;
    int *sel;
    float *selw;
    const uint8_t *const *base;
    size_t off_up, off_down;
    mv_group *up, *down;
} topk_args;

#define TOPK_REG 16 /* up to 32 * TOPK_REG experts keep their probabilities in registers */

/* Picks k of the probabilities (register array pv of lane's elements x = lane + 32 i, or the
 * global array p when NE is larger); returns the chosen id/probability in (ci0, cw0) for k < 32
 * and (ci1, cw1) for k >= 32 at lane k % 32. Ties go to the lower index, as forward.c. */
__device__ __forceinline__ void topk_select(float *pv, float *p, int NE, int K, int lane, int *ci0, float *cw0, int *ci1,
                                            float *cw1) {
    for (int k = 0; k < K; k++) {
        float bv = -2.0f;
        int bi = 0x7fffffff;
        if (pv) {
#pragma unroll
            for (int i = 0; i < TOPK_REG; i++) {
                const int x = lane + 32 * i;
                if (x < NE && pv[i] > bv) bv = pv[i], bi = x; /* ascending x: the first of equals stays */
            }
        } else {
            for (int x = lane; x < NE; x += 32)
                if (p[x] > bv) bv = p[x], bi = x;
        }
        for (int o = 16; o; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
        }
        if (lane == (k & 31)) {
            if (k < 32) *ci0 = bi, *cw0 = bv;
            else *ci1 = bi, *cw1 = bv;
        }
        if (lane == (bi & 31)) { /* below every probability: taken */
            if (pv) {
#pragma unroll
                for (int i = 0; i < TOPK_REG; i++)
                    if (i == (bi >> 5)) pv[i] = -1.0f;
            } else {
                p[bi] = -1.0f;
            }
        }
    }
}

/* Softmax over the NE router logits p, top-k, optional renormalization and scale, for token t;
 * one warp. Each lane touches only its own elements x = lane + 32 i (p becomes probabilities
 * when NE is too large for registers). */
__device__ void topk_warp(float *p, int NE, const topk_args &ta, int t) {
    const int lane = threadIdx.x & 31, K = ta.K;
    int ci0 = 0, ci1 = 0;
    float cw0 = 0.0f, cw1 = 0.0f;
    if (NE <= 32 * TOPK_REG) {
        float pv[TOPK_REG], mx = -INFINITY, sum = 0.0f;
#pragma unroll
        for (int i = 0; i < TOPK_REG; i++) {
            const int x = lane + 32 * i;
            pv[i] = x < NE ? __ldcg(p + x) : -INFINITY;
            mx = fmaxf(mx, pv[i]);
        }
        mx = warp_max(mx);
#pragma unroll
        for (int i = 0; i < TOPK_REG; i++) {
            pv[i] = lane + 32 * i < NE ? expf(pv[i] - mx) : 0.0f;
            sum += pv[i];
        }
        sum = warp_sum(sum);
#pragma unroll
        for (int i = 0; i < TOPK_REG; i++) pv[i] = pv[i] / sum;
        topk_select(pv, NULL, NE, K, lane, &ci0, &cw0, &ci1, &cw1);
    } else {
        float mx = -INFINITY;
        for (int x = lane; x < NE; x += 32) mx = fmaxf(mx, __ldcg(p + x));
        mx = warp_max(mx);
        float sum = 0.0f;
        for (int x = lane; x < NE; x += 32) {
            const float e = expf(__ldcg(p + x) - mx);
            p[x] = e;
            sum += e;
        }
        sum = warp_sum(sum);
        for (int x = lane; x < NE; x += 32) p[x] = p[x] / sum;
        topk_select(NULL, p, NE, K, lane, &ci0, &cw0, &ci1, &cw1);
    }
    const float wsum = warp_sum(cw0 + cw1);
    for (int j = 0; j < 2; j++) {
        const int k = lane + 32 * j;
        if (k >= K) continue;
        float wk = j ? cw1 : cw0;
        const int id = j ? ci1 : ci0;
        if (ta.norm) wk /= wsum;
        if (ta.scale != 0.0f) wk *= ta.scale;
        ta.sel[(size_t)t * K + k] = id;
        ta.selw[(size_t)t * K + k] = wk;
        if (ta.base) {
            const uint8_t *b = ta.base[id];
            ta.up[k].w = b, ta.up[k].w2 = b + ta.off_up, ta.up[k].s0 = k, ta.up[k].ns = 1;
            ta.down[k].w = b + ta.off_down, ta.down[k].w2 = NULL, ta.down[k].s0 = k, ta.down[k].ns = 1;
        }
    }
}

typedef struct mv_args {
    const mv_group *groups; /* device array, or NULL for the single group g */
    mv_group g;
    int n_groups;
    int sum_groups;         /* one token: y[r] += sum over groups of scale[s0] * (row r . x[s0]) */
    size_t row_bytes;
    int n_in, n_out;
    const float *x;
    long long ldx;
    const int *x_idx;
    float *y;
    long long ldy;
    int mode;               /* MV_STORE y = v; MV_ADD y += scale[s] * v (scale NULL: 1);
                               MV_SWIGLU y = silu(v) * v2; MV_GATED y += sigmoid(scale[s]) * v */
    const float *scale;
    int *tail_done;         /* one token, 4 warps a row: the last block to finish runs the top-k */
    topk_args tk;
    const float *nw;        /* k_mvq only: x is RMS-normed with these weights first (one group) */
    float eps;
} mv_args;

__device__ __forceinline__ void mv_out(const mv_args &a, int s, int r, float v, float v2) {
    float *y = a.y + (size_t)s * a.ldy + r;
    switch (a.mode) {
    case MV_STORE: *y = v; break;
    case MV_ADD: *y += (a.scale ? a.scale[s] : 1.0f) * v; break;
    case MV_SWIGLU: *y = d_silu(v) * v2; break;
    default: *y += d_sigmoid(a.scale[s]) * v; break;
    }
}

__device__ __forceinline__ float dot8(const float v[8], const float *x) {
    const float4 a = *(const float4 *)x, b = *(const float4 *)(x + 4);
    return v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w + v[4] * b.x + v[5] * b.y + v[6] * b.z + v[7] * b.w;
}

#define MV_WARPS 4

/* Sums v over the WPR warps that share a row (their sums land in every thread of warp 0 of the
 * row's group); red holds one float per warp. */
template <int WPR> __device__ __forceinline__ float row_sum(float v, float *red) {
    v = warp_sum(v);
    if (WPR == 1) return v;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    float t = 0.0f;
#pragma unroll
    for (int i = 0; i < WPR; i++) t += red[(w / WPR) * WPR + i];
    return t;
}

/* One thread's share of a row times NT token rows: 8-value chunks lane, lane + step, ...; row2
 * (may be NULL) accumulates into acc2. One token of a Q4_K row takes q4k_dot. */
template <int TYPE, int NT>
__device__ __forceinline__ void mv_accum(const uint8_t *row, const uint8_t *row2, const float *const *xr, int nt, int lane, int step,
                                         int n_in, float *acc, float *acc2) {
    if (TYPE == MS_TYPE_Q4_K && NT == 1 && (n_in & 255) == 0) {
        acc[0] += q4k_dot(row, xr[0], n_in, lane, step);
        if (row2) acc2[0] += q4k_dot(row2, xr[0], n_in, lane, step);
        return;
    }
    const int nc = n_in >> 3;
    if (row2) {
#pragma unroll 2
        for (int c = lane; c < nc; c += step) {
            float v[8], v2[8];
            dq8<TYPE>(row, c, v);
            dq8<TYPE>(row2, c, v2);
#pragma unroll
            for (int j = 0; j < NT; j++)
                if (j < nt) {
                    acc[j] += dot8(v, xr[j] + 8 * c);
                    acc2[j] += dot8(v2, xr[j] + 8 * c);
                }
        }
    } else {
#pragma unroll 4
        for (int c = lane; c < nc; c += step) {
            float v[8];
            dq8<TYPE>(row, c, v);
#pragma unroll
            for (int j = 0; j < NT; j++)
                if (j < nt) acc[j] += dot8(v, xr[j] + 8 * c);
        }
    }
}

/* WPR warps per output row (1: a warp per row, for matrices with many rows; 4: the block's four
 * warps split a row, for few rows); lanes stride over the row's 8-value chunks; NT tokens at a
 * time. */
template <int TYPE, int NT, int WPR> __global__ void __launch_bounds__(MV_WARPS * 32) k_mv(mv_args a) {
    __shared__ float red[MV_WARPS];
    const int lane = (threadIdx.x & (32 * WPR - 1)), step = 32 * WPR, first = (threadIdx.x & (32 * WPR - 1)) == 0;
    const int r = blockIdx.x * (MV_WARPS / WPR) + (threadIdx.x >> 5) / WPR;
    /* whole blocks leave together (row_sum synchronizes the block when WPR > 1) */
    if (WPR == 1 && r >= a.n_out) return;
    const bool live = r < a.n_out;
    if (a.sum_groups) {
        /* lane-local weighted partial sums over every group, one reduction at the end, so the
         * groups' loads overlap instead of waiting on a reduction each */
        float part = 0.0f;
        for (int gi = 0; gi < a.n_groups && live; gi++) {
            const mv_group g = a.groups[gi];
            const uint8_t *row = g.w + (size_t)r * a.row_bytes;
            const float *xr = a.x + (size_t)(a.x_idx ? a.x_idx[g.s0] : g.s0) * a.ldx;
            const float sc = a.scale ? a.scale[g.s0] : 1.0f;
            float acc = 0.0f;
            mv_accum<TYPE, 1>(row, NULL, &xr, 1, lane, step, a.n_in, &acc, NULL);
            part += sc * acc;
        }
        part = row_sum<WPR>(part, red);
        if (first && live) a.y[r] += part;
        return;
    }
    const mv_group g = a.groups ? a.groups[blockIdx.y] : a.g;
    const uint8_t *row = g.w + (size_t)(live ? r : 0) * a.row_bytes;
    const uint8_t *row2 = g.w2 ? g.w2 + (size_t)(live ? r : 0) * a.row_bytes : NULL;
    for (int t0 = 0; t0 < g.ns; t0 += NT) {
        const int nt = min(NT, g.ns - t0);
        const float *xr[NT];
        float acc[NT], acc2[NT];
#pragma unroll
        for (int j = 0; j < NT; j++) {
            const int s = g.s0 + t0 + min(j, nt - 1);
            xr[j] = a.x + (size_t)(a.x_idx ? a.x_idx[s] : s) * a.ldx;
            acc[j] = acc2[j] = 0.0f;
        }
        if (live) mv_accum<TYPE, NT>(row, row2, xr, nt, lane, step, a.n_in, acc, acc2);
#pragma unroll
        for (int j = 0; j < NT; j++) {
            if (j < nt) {
                const float s1 = row_sum<WPR>(acc[j], red);
                const float s2 = row2 ? row_sum<WPR>(acc2[j], red) : 0.0f;
                if (first && live) mv_out(a, g.s0 + t0 + j, r, s1, s2);
            }
        }
    }
    if (WPR == 4 && a.tail_done) {
        /* the router's top-k in the last block (threadfence reduction): no launch of its own */
        __shared__ int last;
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            last = atomicAdd(a.tail_done, 1) == (int)(gridDim.x * gridDim.y) - 1;
        }
        __syncthreads();
        if (last && threadIdx.x < 32) {
            __threadfence();
            topk_warp(a.y, a.n_out, a.tk, 0);
            if (threadIdx.x == 0) *a.tail_done = 0;
        }
    }
}

/* One token of Q4_K rows (n_in % 256 == 0), the decode path: a block's warps take R rows each
 * (R gate/up pairs with DUAL), lanes take 32-value pieces ("items"). Every lane issues its
 * weight loads first, then the block copies x into shared memory (RMS-normed there when a.nw is
 * set, so no separate norm kernel runs), in piece order with a row of 36 floats per piece (no
 * bank conflicts) and the sums of each half-piece that the mins need. With sum_groups the items
 * run over every group's pieces, so the experts' down products of one row are a single warp's
 * work. NI: items per lane (the last may be partial). A block takes tiles of MVQ_WARPS * R rows
 * blockIdx.x, + gridDim.x, ...: large matrices copy x once per mvq_max_blocks, not per tile. */
#define MVQ_WARPS 4
#define MVQ_MAXG 64

template <int NI, int R, bool DUAL>
__device__ __forceinline__ void mvq_load(const mv_args &a, const uint8_t *(&base)[NI], const uint8_t *base2, const int (&poff)[NI],
                                         int items, int lane, int r0, uint4 (&q)[R][NI], uint4 (&hd)[R][NI],
                                         uint4 (&q2)[DUAL ? R : 1][NI], uint4 (&hd2)[DUAL ? R : 1][NI]) {
#pragma unroll
    for (int i = 0; i < NI; i++) {
        const bool on = lane + 32 * i < items;
        const size_t bo = 144 * (size_t)(poff[i] >> 3);
#pragma unroll
        for (int r = 0; r < R; r++) {
            const bool live = on && r0 + r < a.n_out;
            const size_t ro = (size_t)(r0 + r) * a.row_bytes + bo;
            q[r][i] = hd[r][i] = make_uint4(0, 0, 0, 0);
            if (live) {
                hd[r][i] = __ldg((const uint4 *)(base[i] + ro));
                q[r][i] = __ldg((const uint4 *)(base[i] + ro + 16 + 16 * (poff[i] & 7)));
            }
            if constexpr (DUAL) {
                q2[r][i] = hd2[r][i] = make_uint4(0, 0, 0, 0);
                if (live) {
                    hd2[r][i] = __ldg((const uint4 *)(base2 + ro));
                    q2[r][i] = __ldg((const uint4 *)(base2 + ro + 16 + 16 * (poff[i] & 7)));
                }
            }
        }
    }
}

template <int NI, int R, bool DUAL> __global__ void __launch_bounds__(MVQ_WARPS * 32) k_mvq(mv_args a) {
    extern __shared__ float4 mvq_smem[];
    const int lane = threadIdx.x & 31, upr = a.n_in >> 5;
    const int G = a.sum_groups ? a.n_groups : 1, items = G * upr;
    const mv_group g = a.sum_groups ? a.g : a.groups ? a.groups[blockIdx.y] : a.g;
    if (!a.sum_groups && g.ns <= 0) return; /* the whole block: g depends on blockIdx.y only */
    float *xs = (float *)mvq_smem;          /* [items][36] */
    float2 *xsum = (float2 *)(xs + (size_t)items * 36);
    const int n_tiles = (a.n_out + MVQ_WARPS * R - 1) / (MVQ_WARPS * R);
    /* each item's matrix, piece within the row (u = 8 * block + piece) and group scale */
    const uint8_t *base[NI];
    int poff[NI];
    float gsc[NI];
#pragma unroll
    for (int i = 0; i < NI; i++) {
        const int it = lane + 32 * i;
        const int gi = a.sum_groups ? it / upr : 0;
        poff[i] = it - gi * upr;
        base[i] = g.w;
        gsc[i] = 1.0f;
        if (a.sum_groups && it < items) {
            const mv_group gg = a.groups[gi];
            base[i] = gg.w;
            if (a.scale) gsc[i] = a.scale[gg.s0];
        }
    }
    uint4 q[R][NI], hd[R][NI], q2[DUAL ? R : 1][NI], hd2[DUAL ? R : 1][NI];
    int tile = blockIdx.x;
    mvq_load<NI, R, DUAL>(a, base, g.w2, poff, items, lane, (tile * MVQ_WARPS + (threadIdx.x >> 5)) * R, q, hd, q2, hd2);
    /* x into shared memory: thread t takes half-pieces t, t + blockDim, ... (16 values each);
     * when the norm's inputs are one half-piece a thread, they are read once, into registers */
    float sn = 1.0f;
    const bool one = 2 * items <= (int)blockDim.x;
    float4 xr0[4];
    if (a.nw) {
        const float *xr = a.x + (size_t)(a.x_idx ? a.x_idx[g.s0] : g.s0) * a.ldx;
        float ss = 0.0f;
        if (one) {
            const int hf = threadIdx.x, u = hf >> 1, p = u & 7;
            const int col = 256 * (u >> 3) + 64 * (p >> 1) + 32 * (hf & 1) + 16 * (p & 1);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                xr0[j] = hf < 2 * items ? *(const float4 *)(xr + col + 4 * j) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                ss += xr0[j].x * xr0[j].x + xr0[j].y * xr0[j].y + xr0[j].z * xr0[j].z + xr0[j].w * xr0[j].w;
            }
        } else {
            for (int i = threadIdx.x; i < a.n_in / 4; i += blockDim.x) {
                const float4 v = *(const float4 *)(xr + 4 * i);
                ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            }
        }
        ss = block_sum(ss);
        sn = (float)(1.0 / sqrt((double)ss / a.n_in + a.eps));
    }
    for (int hf = threadIdx.x; hf < 2 * items; hf += blockDim.x) {
        const int it = hf >> 1, half = hf & 1;
        const int gi = a.sum_groups ? it / upr : 0, u = it - gi * upr;
        const int s = a.sum_groups ? a.groups[gi].s0 : g.s0;
        const int p = u & 7, col = 256 * (u >> 3) + 64 * (p >> 1) + 32 * half + 16 * (p & 1);
        const float *src = a.x + (size_t)(a.x_idx ? a.x_idx[s] : s) * a.ldx + col;
        float *dst = xs + (size_t)it * 36 + 16 * half;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float4 v = a.nw && one ? xr0[j] : *(const float4 *)(src + 4 * j);
            if (a.nw) {
                const float4 w = *(const float4 *)(a.nw + col + 4 * j);
                v.x = v.x * sn * w.x, v.y = v.y * sn * w.y, v.z = v.z * sn * w.z, v.w = v.w * sn * w.w;
            }
            *(float4 *)(dst + 4 * j) = v;
            sum += v.x + v.y + v.z + v.w;
        }
        ((float *)xsum)[hf] = sum;
    }
    __syncthreads();
    for (;;) {
        const int r0 = (tile * MVQ_WARPS + (threadIdx.x >> 5)) * R;
        float acc[R], acc2[R];
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] = acc2[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < NI; i++) {
            const int it = lane + 32 * i;
            if (it >= items) break;
            const int k = (poff[i] & 7) >> 1;
            float4 xv[8];
            const float4 *xp = (const float4 *)(xs + (size_t)it * 36);
#pragma unroll
            for (int j = 0; j < 8; j++) xv[j] = xp[j];
            const float2 sx = xsum[it];
#pragma unroll
            for (int r = 0; r < R; r++) {
                acc[r] += gsc[i] * q4k_piece(q[r][i], hd[r][i], k, xv, sx);
                if constexpr (DUAL) acc2[r] += q4k_piece(q2[r][i], hd2[r][i], k, xv, sx);
            }
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float v = warp_sum(acc[r]), v2 = DUAL ? warp_sum(acc2[r]) : 0.0f;
            const int row = r0 + r;
            if (lane == 0 && row < a.n_out) {
                if (a.sum_groups) a.y[row] += v;
                else mv_out(a, g.s0, row, v, v2);
            }
        }
        tile += gridDim.x;
        if (tile >= n_tiles) break;
        mvq_load<NI, R, DUAL>(a, base, g.w2, poff, items, lane, (tile * MVQ_WARPS + (threadIdx.x >> 5)) * R, q, hd, q2, hd2);
    }
}

static int mvq_on = 1; /* MS_CUDA_MVQ=0: one-token Q4_K products on k_mv instead of k_mvq */

/* Items (32-value pieces) per row k_mvq would take for a, or 0 when it cannot run a. */
static int mvq_items(int type, const mv_args &a, int max_ns, int n_groups) {
    if (!mvq_on || type != MS_TYPE_Q4_K || max_ns > 1 || a.tail_done || (a.n_in & 255)) return 0;
    if (a.sum_groups && n_groups > MVQ_MAXG) return 0;
    if (a.nw && (a.sum_groups || n_groups != 1)) return 0;
    const int items = (a.sum_groups ? n_groups : 1) * (a.n_in >> 5);
    if (items > (a.mode == MV_SWIGLU ? 4 : 8) * 32 || (size_t)items * (36 * 4 + 8) > 48 * 1024) return 0;
    return items;
}

static int mvq_max_blocks = 132 * 8; /* k_mvq's grid.x at most: 8 blocks a multiprocessor */

template <int NI, int R, bool DUAL> static void launch_mvq_t(const mv_args &a, int n_groups, size_t smem, cudaStream_t st) {
    const int rows = MVQ_WARPS * R, tiles = (a.n_out + rows - 1) / rows;
    dim3 grid((unsigned)MS_MIN(tiles, mvq_max_blocks), a.sum_groups ? 1u : (unsigned)n_groups);
    k_mvq<NI, R, DUAL><<<grid, MVQ_WARPS * 32, smem, st>>>(a);
}

/* Rows a warp (R) for rows of at most 2 items a lane, of 3 to 6, and for gate/up pairs
 * (MS_CUDA_MVQ_R=a,b,c; 1, 2 or 4, 1 or 2, 1 or 2). More rows a warp read x from shared memory
 * once for all and make fewer, longer blocks: fewer copies of x, and the small matrices of one
 * token fit one wave of blocks. Measured (H100, qwen3-30b-a3b Q4_K decode): 4,2,1 317 tok/s,
 * 4,2,2 312, 2,2,1 312, 4,1,1 302, 1,1,1 299, 2,1,1 297, 2,1,2 291. */
static int mvq_r[3] = {4, 2, 1};

template <int NI> static void launch_mvq_ni(const mv_args &a, int n_groups, size_t smem, cudaStream_t st) {
    if constexpr (NI <= 4) {
        if (a.mode == MV_SWIGLU) {
            if constexpr (NI <= 2) {
                if (mvq_r[2] >= 2) {
                    launch_mvq_t<NI, 2, true>(a, n_groups, smem, st);
                    return;
                }
            }
            launch_mvq_t<NI, 1, true>(a, n_groups, smem, st);
            return;
        }
    }
    if constexpr (NI <= 2) {
        if (mvq_r[0] >= 4) launch_mvq_t<NI, 4, false>(a, n_groups, smem, st);
        else if (mvq_r[0] >= 2) launch_mvq_t<NI, 2, false>(a, n_groups, smem, st);
        else launch_mvq_t<NI, 1, false>(a, n_groups, smem, st);
    } else if constexpr (NI <= 6) {
        if (mvq_r[1] >= 2) launch_mvq_t<NI, 2, false>(a, n_groups, smem, st);
        else launch_mvq_t<NI, 1, false>(a, n_groups, smem, st);
    } else {
        launch_mvq_t<NI, 1, false>(a, n_groups, smem, st);
    }
}

static void launch_mvq(const mv_args &a, int items, int n_groups, cudaStream_t st) {
    const size_t smem = (size_t)items * (36 * 4 + 8);
    const int ni = (items + 31) / 32;
    if (ni <= 1) launch_mvq_ni<1>(a, n_groups, smem, st);
    else if (ni <= 2) launch_mvq_ni<2>(a, n_groups, smem, st);
    else if (ni <= 4) launch_mvq_ni<4>(a, n_groups, smem, st);
    else if (ni <= 6) launch_mvq_ni<6>(a, n_groups, smem, st);
    else launch_mvq_ni<8>(a, n_groups, smem, st);
}

#define MM_BM 64 /* rows per tile */
#define MM_BN 64 /* tokens per tile */
#define MM_BK 32 /* values of the shared dimension per step */

/* Tiled product for many tokens: 256 threads, each 4 rows x 4 tokens; weights are dequantized
 * into shared memory once per tile and reused by all 64 tokens. */
template <int TYPE, bool DUAL> __global__ void __launch_bounds__(256) k_mm(mv_args a) {
    const mv_group g = a.groups ? a.groups[blockIdx.z] : a.g;
    const int t_base = blockIdx.y * MM_BN;
    if (t_base >= g.ns) return;
    const int r_base = blockIdx.x * MM_BM;
    __shared__ __align__(16) float Ws[MM_BK][MM_BM + 4];
    __shared__ __align__(16) float W2s[DUAL ? MM_BK : 1][MM_BM + 4];
    __shared__ __align__(16) float Xs[MM_BK][MM_BN + 4];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int nc = a.n_in >> 3;
    const int lrow = tid >> 2, lk = tid & 3;
    const int gr = r_base + lrow;
    const uint8_t *wrow = gr < a.n_out ? g.w + (size_t)gr * a.row_bytes : NULL;
    const uint8_t *w2row = (DUAL && gr < a.n_out) ? g.w2 + (size_t)gr * a.row_bytes : NULL;
    const int gt = t_base + lrow;
    const float *xrow = NULL;
    if (gt < g.ns) {
        const int s = g.s0 + gt;
        xrow = a.x + (size_t)(a.x_idx ? a.x_idx[s] : s) * a.ldx;
    }
    float acc[4][4], acc2[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = acc2[i][j] = 0.0f;
    for (int k0 = 0; k0 < nc; k0 += MM_BK / 8) {
        const int c = k0 + lk;
        float v[8];
        if (wrow && c < nc) dq8<TYPE>(wrow, c, v);
        else
#pragma unroll
            for (int j = 0; j < 8; j++) v[j] = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) Ws[lk * 8 + j][lrow] = v[j];
        if (DUAL) {
            if (w2row && c < nc) dq8<TYPE>(w2row, c, v);
            else
#pragma unroll
                for (int j = 0; j < 8; j++) v[j] = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) W2s[lk * 8 + j][lrow] = v[j];
        }
        float4 x0 = make_float4(0, 0, 0, 0), x1 = x0;
        if (xrow && c < nc) {
            x0 = *(const float4 *)(xrow + 8 * c);
            x1 = *(const float4 *)(xrow + 8 * c + 4);
        }
        Xs[lk * 8 + 0][lrow] = x0.x, Xs[lk * 8 + 1][lrow] = x0.y, Xs[lk * 8 + 2][lrow] = x0.z, Xs[lk * 8 + 3][lrow] = x0.w;
        Xs[lk * 8 + 4][lrow] = x1.x, Xs[lk * 8 + 5][lrow] = x1.y, Xs[lk * 8 + 6][lrow] = x1.z, Xs[lk * 8 + 7][lrow] = x1.w;
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < MM_BK; kk++) {
            const float4 wa = *(const float4 *)&Ws[kk][tx * 4];
            const float4 xb = *(const float4 *)&Xs[kk][ty * 4];
            const float wv[4] = {wa.x, wa.y, wa.z, wa.w}, xv[4] = {xb.x, xb.y, xb.z, xb.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += wv[i] * xv[j];
            if (DUAL) {
                const float4 wb = *(const float4 *)&W2s[kk][tx * 4];
                const float w2v[4] = {wb.x, wb.y, wb.z, wb.w};
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int j = 0; j < 4; j++) acc2[i][j] += w2v[i] * xv[j];
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int r = r_base + tx * 4 + i, t = t_base + ty * 4 + j;
            if (r < a.n_out && t < g.ns) mv_out(a, g.s0 + t, r, acc[i][j], acc2[i][j]);
        }
}

static long long mv_wide_rows = 16384; /* MS_CUDA_WIDE_ROWS: rows at which a warp per row is used */
static int mv_min_items = 128;         /* MS_CUDA_MV_ITEMS: work items a row needs for four warps */

/* Picks the kernel for a launch: max_ns is the most slots any group has, n_groups the groups
 * (grid.y for k_mv, grid.z for k_mm). */
/* Matrix-vector launches with WPR warps per row. */
template <int TYPE, int WPR> static void launch_mv_t(const mv_args &a, int max_ns, int n_groups, cudaStream_t st) {
    const unsigned rows = (unsigned)((a.n_out + MV_WARPS / WPR - 1) / (MV_WARPS / WPR));
    dim3 grid(rows, a.sum_groups ? 1u : (unsigned)n_groups);
    if (a.sum_groups || max_ns <= 1) k_mv<TYPE, 1, WPR><<<grid, MV_WARPS * 32, 0, st>>>(a);
    else if (max_ns <= 2) k_mv<TYPE, 2, WPR><<<grid, MV_WARPS * 32, 0, st>>>(a);
    else if (max_ns <= 4) k_mv<TYPE, 4, WPR><<<grid, MV_WARPS * 32, 0, st>>>(a);
    else k_mv<TYPE, 8, WPR><<<grid, MV_WARPS * 32, 0, st>>>(a);
}

template <int TYPE> static void launch_mat_t(const mv_args &a, int max_ns, int n_groups, cudaStream_t st) {
    const int items = mvq_items(TYPE, a, max_ns, n_groups);
    if (items) {
        launch_mvq(a, items, n_groups, st);
    } else if (a.sum_groups || max_ns <= 8) {
        /* a warp per row when the rows alone fill the GPU several times over, else four */
        const long long warps = (long long)a.n_out * (a.sum_groups ? 1 : n_groups);
        /* work items per row: Q4_K one token takes 32 values at a time, the rest 8 */
        const int items = (TYPE == MS_TYPE_Q4_K && max_ns <= 1 && !(a.n_in & 255)) ? a.n_in / 32 : a.n_in / 8;
        if (!a.tail_done && (warps >= mv_wide_rows || items < mv_min_items)) launch_mv_t<TYPE, 1>(a, max_ns, n_groups, st);
        else launch_mv_t<TYPE, 4>(a, max_ns, n_groups, st);
    } else {
        dim3 grid((unsigned)((a.n_out + MM_BM - 1) / MM_BM), (unsigned)((max_ns + MM_BN - 1) / MM_BN), (unsigned)n_groups);
        if (a.mode == MV_SWIGLU) k_mm<TYPE, true><<<grid, 256, 0, st>>>(a);
        else k_mm<TYPE, false><<<grid, 256, 0, st>>>(a);
    }
}

static int launch_mat(int type, const mv_args &a, int max_ns, int n_groups, cudaStream_t st) {
    if (a.n_out <= 0 || n_groups <= 0 || max_ns <= 0) return 0;
    switch (type) {
#define X(T) \
    case T: launch_mat_t<T>(a, max_ns, n_groups, st); return 0;
        MS_CUDA_TYPES(X)
#undef X
    default: return -1;
    }
}

/* ================================================================== other kernels */

/* x[t] = row ids[t] of a table (ids NULL: row t), dequantized. */
template <int TYPE> __global__ void k_rows(const uint8_t *tab, size_t row_bytes, const int *ids, float *x, int n_in) {
    const int t = blockIdx.x;
    const uint8_t *row = tab + (size_t)(ids ? ids[t] : t) * row_bytes;
    float *out = x + (size_t)t * n_in;
    for (int c = threadIdx.x; c < (n_in >> 3); c += blockDim.x) {
        float v[8];
        dq8<TYPE>(row, c, v);
#pragma unroll
        for (int j = 0; j < 8; j++) out[8 * c + j] = v[j];
    }
}

static int launch_rows(int type, const uint8_t *tab, size_t row_bytes, const int *ids, float *x, int n_in, int n, cudaStream_t st) {
    switch (type) {
#define X(T) \
    case T: k_rows<T><<<n, 128, 0, st>>>(tab, row_bytes, ids, x, n_in); return 0;
        MS_CUDA_TYPES(X)
#undef X
    default: return -1;
    }
}

/* y[t] = x[t] * s * w with s = 1 / sqrt(mean(x^2) + eps), as forward.c's rmsnorm. */
__global__ void k_rmsnorm(const float *x, long long ldx, float *y, long long ldy, const float *w, int n, float eps) {
    const float *xr = x + (size_t)blockIdx.x * ldx;
    float *yr = y + (size_t)blockIdx.x * ldy;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss);
    const float s = (float)(1.0 / sqrt((double)ss / n + eps));
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * s * (w ? w[i] : 1.0f);
}

/* Query/key preparation for a batch: per-head RMS norm (if the model has one) and NeoX RoPE.
 * Block y < n_head takes query head y from the projection a (rows lda apart) into q; the rest take
 * a kv head's key (kv_in, the k part of a) into the cache at *d_pos + t, and copy its value. */
__global__ void k_qk_prep(const float *a, int lda, int gated, float *q, float *kc, float *vc, const float *kv_in, int kvd,
                          const float *qn, const float *kn, int n_head, int hd, int n_rot, const int *d_pos, float base, float eps) {
    __shared__ float v[256];
    const int t = blockIdx.x, hh = blockIdx.y, pos0 = *d_pos;
    const float *src, *w;
    float *dst;
    if (hh < n_head) {
        src = a + (size_t)t * lda + (size_t)hh * hd * (gated ? 2 : 1);
        dst = q + ((size_t)t * n_head + hh) * hd;
        w = qn;
    } else {
        const size_t off = (size_t)(hh - n_head) * hd;
        dst = kc + (size_t)(pos0 + t) * kvd + off;
        src = kv_in + (size_t)t * lda + off;
        float *vd = vc + (size_t)(pos0 + t) * kvd + off;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) vd[d] = src[kvd + d];
        w = kn;
    }
    float ss = 0.0f;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        v[d] = src[d];
        ss += v[d] * v[d];
    }
    if (w) {
        ss = block_sum(ss);
        const float s = (float)(1.0 / sqrt((double)ss / hd + eps));
        for (int d = threadIdx.x; d < hd; d += blockDim.x) v[d] = v[d] * s * w[d];
    }
    __syncthreads();
    const int half = n_rot / 2, pos = pos0 + t;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float inv_freq = 1.0f / powf(base, (float)(2 * i) / (float)n_rot);
        const float theta = (float)pos * inv_freq;
        const float c = cosf(theta), s = sinf(theta);
        const float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * c - x1 * s;
        v[i + half] = x0 * s + x1 * c;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) dst[d] = v[d];
}

#define ATT_WARPS 8

/* Causal attention for (head, token): online softmax over positions 0..pos0+t, a warp per
 * position stride, merged across warps; then the per-head output gate if the model has one. */
template <int MAXJ>
__global__ void __launch_bounds__(ATT_WARPS * 32)
    k_attn(const float *q, const float *kc, const float *vc, float *out, const float *gsrc, int n_head, int n_head_kv, int hd,
           const int *d_pos, int lda, int gated) {
    const int h = blockIdx.x, t = blockIdx.y, lane = threadIdx.x & 31, w = threadIdx.x >> 5, pos0 = *d_pos;
    const int kvd = n_head_kv * hd, kvh = h / (n_head / n_head_kv), npos = pos0 + t + 1;
    const float scale = 1.0f / sqrtf((float)hd);
    const float *qh = q + ((size_t)t * n_head + h) * hd;
    float qv[MAXJ], acc[MAXJ];
#pragma unroll
    for (int j = 0; j < MAXJ; j++) {
        const int d = lane + 32 * j;
        qv[j] = d < hd ? qh[d] : 0.0f;
        acc[j] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int p = w; p < npos; p += ATT_WARPS) {
        const float *kp = kc + (size_t)p * kvd + (size_t)kvh * hd, *vp = vc + (size_t)p * kvd + (size_t)kvh * hd;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < MAXJ; j++) {
            const int d = lane + 32 * j;
            if (d < hd) s += qv[j] * kp[d];
        }
        s = warp_sum(s) * scale;
        const float mn = fmaxf(m, s), cf = expf(m - mn), e = expf(s - mn);
        l = l * cf + e;
#pragma unroll
        for (int j = 0; j < MAXJ; j++) {
            const int d = lane + 32 * j;
            if (d < hd) acc[j] = acc[j] * cf + e * vp[d];
        }
        m = mn;
    }
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS], sacc[ATT_WARPS][MAXJ * 32];
    if (lane == 0) sm[w] = m, sl[w] = l;
#pragma unroll
    for (int j = 0; j < MAXJ; j++) sacc[w][lane + 32 * j] = acc[j];
    __syncthreads();
    if (w != 0) return;
    float M = -INFINITY, L = 0.0f;
    for (int i = 0; i < ATT_WARPS; i++) M = fmaxf(M, sm[i]);
    float f[ATT_WARPS];
    for (int i = 0; i < ATT_WARPS; i++) {
        f[i] = sl[i] > 0.0f ? expf(sm[i] - M) : 0.0f;
        L += sl[i] * f[i];
    }
#pragma unroll
    for (int j = 0; j < MAXJ; j++) {
        const int d = lane + 32 * j;
        if (d >= hd) continue;
        float o = 0.0f;
        for (int i = 0; i < ATT_WARPS; i++) o += sacc[i][d] * f[i];
        o /= L;
        if (gated) o *= d_sigmoid(gsrc[(size_t)t * lda + (size_t)h * 2 * hd + hd + d]);
        out[((size_t)t * n_head + h) * hd + d] = o;
    }
}

/* The prologue of the one-token attention kernels (k_attn1, k_attn1b): q, k and v of this block's
 * head into shared memory, q and k RMS-normed (qn, kn) and rotated (RoPE at pos), and, when
 * `write` (the first block of each kv group), k and v stored into the cache at row offset `at`. */
__device__ __forceinline__ void attn1_prologue(float *qs, float *ks, float *vs, const float *qsrc, const float *ksrc,
                                               const float *vsrc, int hd, const float *qn, const float *kn, float eps,
                                               int n_rot, int pos, float base, bool write, float *kc, float *vc, size_t at) {
    float sq = 0.0f, sk = 0.0f;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        qs[d] = qsrc[d];
        ks[d] = ksrc[d];
        vs[d] = vsrc[d];
        sq += qs[d] * qs[d];
        sk += ks[d] * ks[d];
    }
    if (qn) sq = block_sum(sq);
    if (kn) sk = block_sum(sk);
    __syncthreads();
    const float fq = qn ? (float)(1.0 / sqrt((double)sq / hd + eps)) : 1.0f;
    const float fk = kn ? (float)(1.0 / sqrt((double)sk / hd + eps)) : 1.0f;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        if (qn) qs[d] = qs[d] * fq * qn[d];
        if (kn) ks[d] = ks[d] * fk * kn[d];
    }
    __syncthreads();
    const int half = n_rot / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float inv_freq = 1.0f / powf(base, (float)(2 * i) / (float)n_rot);
        const float theta = (float)pos * inv_freq;
        const float c = cosf(theta), s = sinf(theta);
        float x0 = qs[i], x1 = qs[i + half];
        qs[i] = x0 * c - x1 * s;
        qs[i + half] = x0 * s + x1 * c;
        x0 = ks[i], x1 = ks[i + half];
        ks[i] = x0 * c - x1 * s;
        ks[i + half] = x0 * s + x1 * c;
    }
    __syncthreads();
    if (write)
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            kc[at + d] = ks[d];
            vc[at + d] = vs[d];
        }
}

/* One token's attention in one launch: block h prepares query head h and the key of its kv head
 * (norm, RoPE) in shared memory, the first block of each kv group writes that key and the value
 * into the cache at *d_pos, and every block attends over positions < *d_pos from the cache and
 * the new position from shared memory (so no block reads a row another is writing). */
template <int MAXJ>
__global__ void __launch_bounds__(ATT_WARPS * 32)
    k_attn1(const float *a, int lda, int gated, float *kc, float *vc, const float *kv_in, int kvd, const float *qn, const float *kn,
            int n_head, int n_head_kv, int hd, int n_rot, const int *d_pos, float base, float eps, float *out) {
    __shared__ float qs[MAXJ * 32], ks[MAXJ * 32], vs[MAXJ * 32];
    const int h = blockIdx.x, grp = n_head / n_head_kv, kvh = h / grp, pos = *d_pos;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const float *qsrc = a + (size_t)h * hd * (gated ? 2 : 1);
    const size_t koff = (size_t)kvh * hd;
    const float *ksrc = kv_in + koff, *vsrc = kv_in + kvd + koff;
    (void)lda;
    attn1_prologue(qs, ks, vs, qsrc, ksrc, vsrc, hd, qn, kn, eps, n_rot, pos, base, h % grp == 0, kc, vc, (size_t)pos * kvd + koff);
    const float scale = 1.0f / sqrtf((float)hd);
    float qv[MAXJ], acc[MAXJ];
#pragma unroll
    for (int j = 0; j < MAXJ; j++) {
        const int d = lane + 32 * j;
        qv[j] = d < hd ? qs[d] : 0.0f;
        acc[j] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int p = w; p <= pos; p += ATT_WARPS) {
        const float *kp = p < pos ? kc + (size_t)p * kvd + koff : ks, *vp = p < pos ? vc + (size_t)p * kvd + koff : vs;
        float sc = 0.0f;
#pragma unroll
        for (int j = 0; j < MAXJ; j++) {
            const int d = lane + 32 * j;
            if (d < hd) sc += qv[j] * kp[d];
        }
        sc = warp_sum(sc) * scale;
        const float mn = fmaxf(m, sc), cf = expf(m - mn), e = expf(sc - mn);
        l = l * cf + e;
#pragma unroll
        for (int j = 0; j < MAXJ; j++) {
            const int d = lane + 32 * j;
            if (d < hd) acc[j] = acc[j] * cf + e * vp[d];
        }
        m = mn;
    }
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS], sacc[ATT_WARPS][MAXJ * 32];
    if (lane == 0) sm[w] = m, sl[w] = l;
#pragma unroll
    for (int j = 0; j < MAXJ; j++) sacc[w][lane + 32 * j] = acc[j];
    __syncthreads();
    if (w != 0) return;
    float M = -INFINITY, L = 0.0f;
    for (int i = 0; i < ATT_WARPS; i++) M = fmaxf(M, sm[i]);
    float f[ATT_WARPS];
    for (int i = 0; i < ATT_WARPS; i++) {
        f[i] = sl[i] > 0.0f ? expf(sm[i] - M) : 0.0f;
        L += sl[i] * f[i];
    }
#pragma unroll
    for (int j = 0; j < MAXJ; j++) {
        const int d = lane + 32 * j;
        if (d >= hd) continue;
        float o = 0.0f;
        for (int i = 0; i < ATT_WARPS; i++) o += sacc[i][d] * f[i];
        o /= L;
        if (gated) o *= d_sigmoid(a[(size_t)h * 2 * hd + hd + d]);
        out[(size_t)h * hd + d] = o;
    }
}

/* k_attn1 for head dims of 64, 128, 256, position-parallel: the same prologue, then per chunk
 * of ATT_CHUNK positions the scores (HD / 16 lanes a position, 16 dims each, no dependence from
 * one position to the next) into shared memory, the chunk's maximum over the block, and the
 * weighted values (a float4 column per lane, a warp per value row or two). Running maximum and
 * sums carry over chunks as an online softmax, so any context length works; the warps' partial
 * sums share one maximum and add up at the end. */
#define ATT_CHUNK 1024
template <int HD>
__global__ void __launch_bounds__(ATT_WARPS * 32)
    k_attn1b(const float *a, int gated, float *kc, float *vc, const float *kv_in, int kvd, const float *qn, const float *kn,
             int n_head, int n_head_kv, int n_rot, const int *d_pos, float base, float eps, float *out) {
    /* scores: lanes a position, positions a warp step; values: lanes a row, float4s a lane, rows a warp */
    constexpr int LP = HD / 16, PPW = 32 / LP;
    constexpr int LC = HD / 4 < 32 ? HD / 4 : 32, CW = HD / 4 / LC, RW = 32 / LC;
    __shared__ __align__(16) float qs[HD], ks[HD], vs[HD];
    __shared__ float sc[ATT_CHUNK];
    __shared__ __align__(16) float sacc[ATT_WARPS * RW][HD];
    __shared__ float sl[ATT_WARPS * RW];
    const int h = blockIdx.x, grp = n_head / n_head_kv, kvh = h / grp, pos = *d_pos;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const float *qsrc = a + (size_t)h * HD * (gated ? 2 : 1);
    const size_t koff = (size_t)kvh * HD;
    const float *ksrc = kv_in + koff, *vsrc = kv_in + kvd + koff;
    attn1_prologue(qs, ks, vs, qsrc, ksrc, vsrc, HD, qn, kn, eps, n_rot, pos, base, h % grp == 0, kc, vc, (size_t)pos * kvd + koff);
    const float scale = 1.0f / sqrtf((float)HD);
    const int sub = lane % LP, pw = lane / LP, rl = lane / LC, cl = lane % LC;
    float4 qv[4];
#pragma unroll
    for (int j = 0; j < 4; j++) qv[j] = *(const float4 *)(qs + 16 * sub + 4 * j);
    float M = -INFINITY, l = 0.0f;
    float4 acc[CW];
#pragma unroll
    for (int cc = 0; cc < CW; cc++) acc[cc] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int c0 = 0; c0 <= pos; c0 += ATT_CHUNK) {
        const int n = min(ATT_CHUNK, pos + 1 - c0);
#pragma unroll 2
        for (int i0 = w * PPW; i0 < n; i0 += ATT_WARPS * PPW) {
            const int i = i0 + pw, p = c0 + i;
            const float *kp = p < pos ? kc + (size_t)p * kvd + koff : ks; /* past n: the new key, not stored */
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float4 k4 = *(const float4 *)(kp + 16 * sub + 4 * j);
                s += qv[j].x * k4.x + qv[j].y * k4.y + qv[j].z * k4.z + qv[j].w * k4.w;
            }
#pragma unroll
            for (int o = LP / 2; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (sub == 0 && i < n) sc[i] = s * scale;
        }
        __syncthreads();
        float m = -INFINITY;
        for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, sc[i]);
        m = block_max(m);
        const float mn = fmaxf(M, m), f = expf(M - mn);
        l *= f;
#pragma unroll
        for (int cc = 0; cc < CW; cc++) acc[cc].x *= f, acc[cc].y *= f, acc[cc].z *= f, acc[cc].w *= f;
        M = mn;
#pragma unroll 4
        for (int i = w * RW + rl; i < n; i += ATT_WARPS * RW) {
            const int p = c0 + i;
            const float e = expf(sc[i] - M);
            const float *vp = p < pos ? vc + (size_t)p * kvd + koff : vs;
            l += e;
#pragma unroll
            for (int cc = 0; cc < CW; cc++) {
                const float4 v4 = *(const float4 *)(vp + 4 * (cl + LC * cc));
                acc[cc].x += e * v4.x, acc[cc].y += e * v4.y, acc[cc].z += e * v4.z, acc[cc].w += e * v4.w;
            }
        }
        __syncthreads(); /* sc is rewritten by the next chunk */
    }
#pragma unroll
    for (int cc = 0; cc < CW; cc++) *(float4 *)&sacc[w * RW + rl][4 * (cl + LC * cc)] = acc[cc];
    if (cl == 0) sl[w * RW + rl] = l;
    __syncthreads();
    float L = 0.0f;
    for (int i = 0; i < ATT_WARPS * RW; i++) L += sl[i];
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float o = 0.0f;
        for (int i = 0; i < ATT_WARPS * RW; i++) o += sacc[i][d];
        o /= L;
        if (gated) o *= d_sigmoid(a[(size_t)h * 2 * HD + HD + d]);
        out[(size_t)h * HD + d] = o;
    }
}

/* One token's router (an F32 matrix, as GGUF files store it): the RMS norm of x (ffn_norm) into
 * shared memory, block 0 also writing it to h for the experts, a warp per router row, and the
 * top-k in the last block to finish (threadfence reduction), so norm, router and top-k are one
 * launch. The first RT_PRE float4s of each lane's row are loaded before the norm. */
#define RT_PRE 16
#define RT_X 4

/* Normed x float4 i (x * s * w, as k_rmsnorm) into shared memory, and into hout from block 0. */
__device__ __forceinline__ void rt_put(float4 *xs, float *hout, float *hhost, const float4 *w4, int i, float4 v, float s) {
    const float4 g = w4 ? w4[i] : make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    v.x = v.x * s * g.x, v.y = v.y * s * g.y, v.z = v.z * s * g.z, v.w = v.w * s * g.w;
    xs[i] = v;
    if (blockIdx.x == 0) ((float4 *)hout)[i] = v;
    if (hhost && blockIdx.x == gridDim.x - 1) ((float4 *)hhost)[i] = v; /* every block has the same v */
}
__global__ void __launch_bounds__(128) k_router1(const float *x, const float *nw, float eps, float *hout, float *hhost,
                                                 const float *W, int n_in, int NE, float *logits, int *done, topk_args tk) {
    extern __shared__ float4 rt_xs[];
    const int lane = threadIdx.x & 31, row = blockIdx.x * 4 + (threadIdx.x >> 5), nq = n_in >> 2;
    const float4 *wr = (const float4 *)W + (size_t)min(row, NE - 1) * nq;
    float4 wv[RT_PRE];
#pragma unroll
    for (int j = 0; j < RT_PRE; j++) {
        const int i = lane + 32 * j;
        wv[j] = i < nq ? __ldg(wr + i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    /* x read once into registers when it is at most RT_X float4s a thread */
    const float4 *x4 = (const float4 *)x, *w4 = (const float4 *)nw;
    const bool one = nq <= RT_X * (int)blockDim.x;
    float4 xv[RT_X];
    float ss = 0.0f;
    if (one) {
#pragma unroll
        for (int j = 0; j < RT_X; j++) {
            const int i = threadIdx.x + j * blockDim.x;
            xv[j] = i < nq ? x4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            ss += xv[j].x * xv[j].x + xv[j].y * xv[j].y + xv[j].z * xv[j].z + xv[j].w * xv[j].w;
        }
    } else {
        for (int i = threadIdx.x; i < nq; i += blockDim.x) {
            const float4 v = x4[i];
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    }
    ss = block_sum(ss);
    const float s = (float)(1.0 / sqrt((double)ss / n_in + eps));
    if (one) {
#pragma unroll
        for (int j = 0; j < RT_X; j++) {
            const int i = threadIdx.x + j * blockDim.x;
            if (i < nq) rt_put(rt_xs, hout, hhost, w4, i, xv[j], s);
        }
    } else {
        for (int i = threadIdx.x; i < nq; i += blockDim.x) rt_put(rt_xs, hout, hhost, w4, i, x4[i], s);
    }
    __syncthreads();
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < RT_PRE; j++) {
        const int i = lane + 32 * j;
        if (i < nq) {
            const float4 v = rt_xs[i];
            acc += wv[j].x * v.x + wv[j].y * v.y + wv[j].z * v.z + wv[j].w * v.w;
        }
    }
    for (int i = lane + 32 * RT_PRE; i < nq; i += 32) {
        const float4 v = rt_xs[i], ww = __ldg(wr + i);
        acc += ww.x * v.x + ww.y * v.y + ww.z * v.z + ww.w * v.w;
    }
    acc = warp_sum(acc);
    if (lane == 0 && row < NE) logits[row] = acc;
    __shared__ int last;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        last = atomicAdd(done, 1) == (int)gridDim.x - 1;
    }
    __syncthreads();
    if (last && threadIdx.x < 32) {
        __threadfence();
        topk_warp(logits, NE, tk, 0);
        if (threadIdx.x == 0) *done = 0;
    }
}

/* The Gated DeltaNet inputs in one launch: the causal conv + SiLU of every channel (state kept),
 * the L2 norm of each query and key head (a block per head), and the gates (the last block).
 * Blocks [0, 2 nk) take the q and k heads, then blocks of 256 value channels, then the gates. */
__global__ void __launch_bounds__(256) k_gdn_in(const float *pre, int ldp, float *st, const float *w, float *out, int T, int cd, int K,
                                                int nk, int dk, float eps, const float *ba, const float *braw, const float *araw,
                                                const float *dt_bias, const float *ssm_a, float *beta, float *g, int nv) {
    const int nqk = 2 * nk, nvb = (cd - nqk * dk + 255) / 256, b = blockIdx.x;
    if (b == nqk + nvb) {
        for (int i = threadIdx.x; i < T * nv; i += blockDim.x) {
            const int t = i / nv, h = i % nv;
            float bb, aa;
            if (ba) {
                const int r = nv / nk, grp = h / r, j = h % r;
                bb = ba[(size_t)t * 2 * nv + grp * 2 * r + j];
                aa = ba[(size_t)t * 2 * nv + grp * 2 * r + r + j];
            } else {
                bb = braw[i];
                aa = araw[i];
            }
            beta[i] = d_sigmoid(bb);
            g[i] = d_softplus(aa + dt_bias[h]) * ssm_a[h];
        }
        return;
    }
    const int norm = b < nqk;
    const int c0 = norm ? b * dk : nqk * dk + (b - nqk) * 256, nch = norm ? dk : min(256, cd - c0);
    const int c = c0 + threadIdx.x;
    const bool on = threadIdx.x < nch;
    const float *wc = w + (size_t)c * K;
    for (int t = 0; t < T; t++) {
        float sv = 0.0f;
        if (on) {
            for (int k = 0; k < K; k++) {
                const int src = t + k - (K - 1);
                const float xv = src < 0 ? st[(size_t)(K - 1 + src) * cd + c] : pre[(size_t)src * ldp + c];
                sv += wc[k] * xv;
            }
            sv = d_silu(sv);
        }
        if (norm) {
            const float ss = block_sum(on ? sv * sv : 0.0f);
            sv *= (float)(1.0 / sqrt((double)ss + eps));
        }
        if (on) out[(size_t)t * cd + c] = sv;
    }
    if (on)
        for (int k = 0; k < K - 1; k++) {
            const int src = T - (K - 1) + k;
            st[(size_t)k * cd + c] = src < 0 ? st[(size_t)(K - 1 + src) * cd + c] : pre[(size_t)src * ldp + c];
        }
}


#define GDN_WARPS 4

/* The delta rule: a warp owns row jj (a value dim) of head h's state S[dv][dk], kept in
 * registers across the batch's tokens, which are taken in order. */
template <int MAXJ>
__global__ void __launch_bounds__(GDN_WARPS * 32)
    k_gdn_scan(float *S, const float *qkv, const float *gg, const float *beta, float *o, int T, int nk, int nv, int dk, int dv,
               int cd, int interleave) {
    const int h = blockIdx.x, lane = threadIdx.x & 31, jj = blockIdx.y * GDN_WARPS + (threadIdx.x >> 5);
    if (jj >= dv) return;
    const int kh = interleave ? h / (nv / nk) : h % nk;
    float *row = S + ((size_t)h * dv + jj) * dk;
    float s[MAXJ];
#pragma unroll
    for (int j = 0; j < MAXJ; j++) {
        const int d = lane + 32 * j;
        s[j] = d < dk ? row[d] : 0.0f;
    }
    const float scale = 1.0f / sqrtf((float)dk);
    for (int t = 0; t < T; t++) {
        const float *conv = qkv + (size_t)t * cd;
        const float *qp = conv + (size_t)kh * dk, *kp = conv + (size_t)nk * dk + (size_t)kh * dk;
        const float vv = conv[(size_t)2 * nk * dk + (size_t)h * dv + jj];
        const float decay = expf(gg[(size_t)t * nv + h]), b = beta[(size_t)t * nv + h];
        float kr[MAXJ], kv = 0.0f;
#pragma unroll
        for (int j = 0; j < MAXJ; j++) {
            const int d = lane + 32 * j;
            kr[j] = d < dk ? kp[d] : 0.0f;
            s[j] *= decay;
            kv += s[j] * kr[j];
        }
        kv = warp_sum(kv);
        const float delta = (vv - kv) * b;
        float out = 0.0f;
#pragma unroll
        for (int j = 0; j < MAXJ; j++) {
            const int d = lane + 32 * j;
            s[j] += kr[j] * delta;
            if (d < dk) out += s[j] * qp[d];
        }
        out = warp_sum(out);
        if (lane == 0) o[(size_t)t * nv * dv + (size_t)h * dv + jj] = out * scale;
    }
#pragma unroll
    for (int j = 0; j < MAXJ; j++) {
        const int d = lane + 32 * j;
        if (d < dk) row[d] = s[j];
    }
}

/* Gated RMS norm of each head's output: norm(o) * w * silu(z) (block (t, h)). */
__global__ void k_gated_norm(float *o, const float *z, int ldz, const float *w, int nv, int dv, float eps) {
    const size_t off = ((size_t)blockIdx.x * nv + blockIdx.y) * dv;
    float *x = o + off;
    const float *zz = z + (size_t)blockIdx.x * ldz + (size_t)blockIdx.y * dv;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dv; i += blockDim.x) ss += x[i] * x[i];
    ss = block_sum(ss);
    const float s = (float)(1.0 / sqrt((double)ss / dv + eps));
    for (int i = threadIdx.x; i < dv; i += blockDim.x) x[i] = x[i] * s * w[i] * d_silu(zz[i]);
}

/* Router top-k for a batch: a warp per token. */
__global__ void __launch_bounds__(32) k_topk(float *logits, int NE, topk_args ta) {
    topk_warp(logits + (size_t)blockIdx.x * NE, NE, ta, blockIdx.x);
}

/* x[t][r] += sum_k w[t][k] * y[slot_of[t][k]][r]: the experts' outputs, back in token order. */
__global__ void k_combine(float *x, const float *ybuf, const float *selw, const int *slot_of, int T, int K, int E) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * E) return;
    const int t = (int)(i / E), r = (int)(i % E);
    float acc = 0.0f;
    for (int k = 0; k < K; k++) acc += selw[(size_t)t * K + k] * ybuf[(size_t)slot_of[(size_t)t * K + k] * E + r];
    x[i] += acc;
}

__global__ void k_swiglu(float *g, const float *u, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) g[i] = d_silu(g[i]) * u[i];
}

__global__ void k_add(float *x, const float *y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

/* ================================================================== host side */

#define ALIGN 256
#define LOGIT_ROWS 32 /* rows of logits computed per lm_head launch */
#define MAX_TOPK 64
/* Router lookahead while streaming when neither --lookahead nor MS_CUDA_LOOKAHEAD says: on, since
 * it won at both budgets measured (H100, 80B synthetic Q4_K: 24G 67 -> 90 tok/s, 8G 43 -> 51).
 * ms_backend_params cannot say "off", so MS_CUDA_LOOKAHEAD=0 is the way to turn it off. */
#define GPU_LOOKAHEAD_DEFAULT 1

/* A weight in VRAM. */
typedef struct dmat {
    int type;
    int n_in, n_out;
    size_t row_bytes;
    const uint8_t *d; /* NULL: absent */
} dmat;

typedef struct dlayer {
    ms_layer_kind kind;
    const float *attn_norm, *ffn_norm;
    dmat wq, wk, wv, wo;
    dmat wqkv_a;                     /* wq|wk|wv stacked when they share a type (else d NULL) */
    const float *q_norm, *k_norm;
    int attn_gated;
    dmat wqkv, wz, wbeta, walpha, wba, ssm_out;
    dmat wqkvz;                      /* wqkv|wz stacked when they share a type (else d NULL) */
    const float *conv1d, *dt_bias, *ssm_a, *ssm_norm;
    dmat router, sh_gate, sh_up, sh_down, sh_router;
    float *k_cache, *v_cache;        /* [n_ctx][n_head_kv * head_dim] */
    float *conv_state, *ssm_state;   /* [d_conv - 1][conv_dim], [n_v_heads][d_v][d_k] */
    /* an expert of this layer inside a cache slot: gate at 0, up at off_up, down at off_down */
    size_t sz_gate, sz_up, sz_down, off_up, off_down;
} dlayer;

/* A pending store release: experts whose host bytes a queued copy may still read. */
typedef struct pending {
    int il, n;
    int *ids;
} pending;

/* The host's experts of a layer as a pool job (moe_cpu_start). */
typedef struct cpu_job {
    struct cu_ctx *c;
    const ms_layer *ly;
    int chunks;   /* gate|up: row chunks per expert */
    int64_t rows; /* rows per chunk (down: of the output) */
} cpu_job;

typedef struct cu_ctx {
    const struct ms_model *m;
    ms_store *store;
    int dev;
    int n_ctx, n_batch, pos, n_logits;
    cudaStream_t cs, xs;             /* compute, copy */
    cudaEvent_t ev_route;
    cudaEvent_t *ev_copy;            /* [n_expert]: one per miss of a wave */
    /* VRAM: one arena for weights, state and scratch; the expert slots apart */
    uint8_t *arena;
    size_t arena_size, arena_used;
    dlayer *L;
    dmat tok_embd, output;
    const float *output_norm;
    float *x, *h, *a, *q, *att, *qkv, *z, *beta, *gg, *braw, *araw, *ba, *gdn_o, *router, *selw, *act, *ybuf, *sh_act,
        *sh_tmp, *sh_gate, *dlogits, *states;
    int *sel, *tok, *x_idx;          /* x_idx: the upload block (see moe_host) */
    int *d_pos;                      /* the position of the batch's first token */
    int *d_done;                     /* blocks of the router product done (the top-k tail) */
    mv_group *grp_up;
    const uint8_t **exp_base;        /* [n_layer][n_expert] slot of each expert (resident mode) */
    size_t state_floats;
    /* host, pinned */
    int *h_tok, *h_sel, *h_x_idx;    /* h_x_idx: host side of the upload block */
    int *h_pos;
    float *h_selw, *logits_pin;
    mv_group *h_grp_up;
    /* host */
    int32_t *history;
    float *logits_host;              /* [n_batch][n_vocab] when more rows than LOGIT_ROWS */
    const float *logits_rows;        /* what ms_logits reads */
    int *exp_count, *exp_ids, *exp_first, *exp_index, *fill, *order; /* [n_expert] ([3 n_expert] order) */
    uint8_t **miss_dst;              /* [n_expert] */
    ms_expert_ref *refs;             /* [n_expert] */
    /* the expert cache */
    uint8_t *slots;
    size_t slot_bytes;
    int n_slots, resident, next_free;
    int *slot_owner;                 /* [n_slots]: il * n_expert + e, or -1 */
    uint32_t *slot_wave;             /* [n_slots]: last wave that used it (in use while == wave) */
    int *map_slot;                   /* [n_layer * n_expert]: slot or -1 */
    uint32_t *freq;                  /* [n_layer * n_expert]: recent request counts */
    uint64_t req_since_aging, rng;
    uint32_t wave;
    /* host -> VRAM transfers */
    int n_reg;
    const uint8_t **reg_lo, **reg_hi; /* page-locked host ranges (the file mapping) */
    int no_batch;                     /* the runtime refused a batched copy: three copies an expert */
    uint8_t *staging;
    int n_stage, stage_head;
    cudaEvent_t *stage_ev;
    ms_pool *pool;
    pending pend;
    /* router lookahead (decode while streaming): layer il + 1's router runs on layer il's residual
     * and its predicted top-k is copied in while layer il computes (prefetch_next) */
    int lookahead;
    float *look_h, *look_logits;     /* [n_embd] the normed residual, [n_expert] router logits */
    int *look_sel;                   /* [n_expert_used] the predicted ids (device) */
    float *look_selw;                /* [n_expert_used] their weights (unused) */
    int *h_look;                     /* [n_expert_used] pinned: the predicted ids */
    int *m_look;                     /* h_look as the GPU addresses it (mapped), or NULL */
    cudaEvent_t ev_look;             /* h_look is filled */
    cudaEvent_t *ev_pf;              /* [n_expert]: after prefetch copy i */
    cudaEvent_t ev_pf_done;          /* after the last copy of the prefetch */
    int pf_il;                       /* layer the outstanding prefetch is for, or -1 */
    int n_pf;                        /* its copies */
    int *pf_slots;                   /* [n_expert]: the slots they fill */
    int *slot_pf;                    /* [n_slots]: index of the prefetch copy filling the slot, or -1 */
    pending pf_cur, pf_old;          /* store pins of the outstanding prefetch; of the one consumed last */
    uint64_t prefetches, prefetch_used;
    /* host-computed misses (decode while streaming): a share of each layer's misses is computed
     * by the CPU from host memory instead of crossing the link (see moe_cpu_start) */
    int cpu_on, cpu_auto;            /* --cpu-share (MS_CUDA_CPU_SHARE overrides): 0 off, auto tunes, x fixed */
    float cpu_share, cpu_carry;      /* the share of misses the CPU takes; the rounding carried */
    int bal_n, bal_gpu_late;         /* auto: layers in this window; those whose GPU experts outlasted the host's */
    cudaEvent_t ev_gx;               /* auto: after the GPU's experts of the layer */
    ms_pool *cpu_pool;               /* all cores */
    float *h_hin, *h_cpu_y;          /* pinned [n_embd]: the layer's normed input (in h_r1); the CPU's sum */
    int *r1;                         /* device: one token's top-k ids and weights [2 * K], right before h */
    uint8_t *h_r1;                   /* pinned: r1 and h's first row as one copy (route1_bytes) */
    uint8_t *m_r1;                   /* h_r1 as the GPU addresses it (mapped), or NULL */
    int one_copy;                    /* r1 and h are adjacent: one token's routing comes back in one copy */
    float *d_cpu_y;                  /* [n_embd] VRAM: that sum, added to the residual */
    const float *m_cpu_y;            /* h_cpu_y as the GPU addresses it (mapped pinned memory), or NULL */
    int *cpu_ids, *cpu_mark;         /* [n_expert]: this layer's host-computed experts; marks by index */
    ms_expert_ref *cpu_refs;         /* [K]: their bytes (apart from refs: the copies use those meanwhile) */
    int cpu_busy;                    /* the host's experts of this layer are started (moe_cpu_start) */
    cpu_job cpu_job;                 /* their job */
    uint32_t *cpu_left, cpu_gen;     /* [n_expert]: the prefetch left it to the host at moe_host call cpu_gen */
    float *cpu_w, *cpu_g, *cpu_u, *cpu_y; /* their weights [K]; gate, up [K][n_ff]; outputs [K][n_embd] */
    uint8_t *cpu_xq, *cpu_actq;      /* q16 rows of the input and of each SwiGLU [K] */
    int n_cpu;
    /* recurrent-state checkpoints (host copies) */
    struct {
        int pos;
        float *state;
        uint64_t used;
    } ckpt[MS_N_CHECKPOINTS];
    uint64_t ckpt_clock;
    ms_timing timing;
    int timing_on;                   /* MS_CUDA_TIMING=1: per-phase GPU times from events */
    int use_graph;                   /* decode replays captured graphs (MS_CUDA_GRAPHS=0: never) */
    int capturing;
    cudaGraphExec_t graph;           /* resident decode: a whole token */
    cudaGraphExec_t *lgraph;         /* [n_layer] host-routed decode: each layer's layer_pre */
    cudaEvent_t *tev;                /* [n_layer][4] */
    uint64_t host_bytes;             /* host memory allocated at creation */
} cu_ctx;

static uint64_t env_u64(const char *name, uint64_t def) {
    const char *v = getenv(name);
    if (!v || !*v) return def;
    return strtoull(v, NULL, 10);
}

static int cuda_fail(ms_err *e, cudaError_t rc, const char *what) {
    return ms_fail(e, MS_ERR_IO, "CUDA error %s (%s) in %s", cudaGetErrorName(rc), cudaGetErrorString(rc), what);
}

#define CK(call)                                                        \
    do {                                                                \
        cudaError_t rc_ = (call);                                       \
        if (rc_ != cudaSuccess) return cuda_fail(e, rc_, #call);        \
    } while (0)

static size_t align_up(size_t n) { return (n + ALIGN - 1) & ~(size_t)(ALIGN - 1); }

/* Takes n bytes of the arena; while c->arena is NULL only counts them (the sizing pass). */
static void *take(cu_ctx *c, size_t n) {
    size_t off = c->arena_used;
    c->arena_used += align_up(n ? n : 1);
    return c->arena ? c->arena + off : NULL;
}

static float *take_f(cu_ctx *c, size_t n) { return (float *)take(c, n * sizeof(float)); }

/* One token's routing for the host: top-k ids and weights (r1), then the normed input (h), in
 * one copy instead of three (H100 machine, 8G: 94.5 / 99.5 / 101.6 against 94.1 / 98.2 / 95.8
 * tok/s, the router phase 2.67 against 2.83 ms a token; 24G 120.1 against 112.6). Where the
 * pinned block has a device address, k_router1 writes it directly and no copy is queued; so does
 * the lookahead's top-k into h_look (8G 93.8 / 97.9 / 98.5 against 89.2 / 89.8 / 98.2 tok/s,
 * the router phase 1.97 against 2.72 ms a token; 24G 118.5 against 116.1). */
static size_t route1_head(int K) { return align_up(2 * (size_t)K * sizeof(int)); }
static size_t route1_bytes(int K, int E) { return route1_head(K) + sizeof(float) * (size_t)E; }
/* Whether a batch's routing reaches the host through h_r1 (layer_pre writes it, moe_host reads it). */
static int routes_in_r1(const cu_ctx *c, int T) { return T == 1 && c->one_copy; }

/* The device address of pinned host memory (the host's own under unified addressing), or NULL. */
static void *mapped(void *host) {
    void *dp = NULL;
    if (cudaHostGetDevicePointer(&dp, host, 0) != cudaSuccess) dp = NULL;
    cudaGetLastError();
    return dp;
}

/* The token embedding when it stayed on disk (--io pagecache, direct, ram read every other
 * weight at load): read in pieces into VRAM at dst. */
static int up_embd_from_disk(cu_ctx *c, uint8_t *dst, size_t n, ms_err *e) {
    const size_t piece = (size_t)64 << 20;
    uint8_t *buf = (uint8_t *)ms_malloc(MS_MIN(n, piece));
    if (!buf) return ms_fail(e, MS_ERR_NOMEM, "out of memory reading the token embedding");
    for (size_t off = 0; off < n; off += piece) {
        const size_t len = MS_MIN(n - off, piece);
        const int err = model_read_embd(c->m, off, buf, len);
        if (err) {
            ms_free(buf);
            return ms_fail(e, MS_ERR_IO, "%s: reading the token embedding failed: %s", c->m->gguf->parts[0].path,
                           err < 0 ? "unexpected end of file (was the file truncated?)" : strerror(err));
        }
        cudaError_t rc = cudaMemcpy(dst + off, buf, len, cudaMemcpyHostToDevice);
        if (rc != cudaSuccess) {
            ms_free(buf);
            return cuda_fail(e, rc, "cudaMemcpy");
        }
    }
    ms_free(buf);
    return MS_OK;
}

static int up_mat(cu_ctx *c, const ms_mat *src, dmat *dst, ms_err *e) {
    memset(dst, 0, sizeof *dst);
    const int on_disk = src == &c->m->tok_embd && c->m->embd_on_disk;
    if (!src->data && !on_disk) return MS_OK;
    dst->type = src->type;
    dst->n_in = (int)src->n_in;
    dst->n_out = (int)src->n_out;
    dst->row_bytes = src->row_bytes;
    size_t n = src->row_bytes * (size_t)src->n_out;
    dst->d = (const uint8_t *)take(c, n);
    if (c->arena && on_disk) return up_embd_from_disk(c, (uint8_t *)dst->d, n, e);
    if (c->arena) CK(cudaMemcpy((void *)dst->d, src->data, n, cudaMemcpyHostToDevice));
    return MS_OK;
}

/* Stacks n weights of one type and row length into one (rows of src[0], then src[1], ...), so
 * one launch computes them all; leaves dst->d NULL when their types or rows differ. */
static int up_stack(cu_ctx *c, const ms_mat *const *src, int n, dmat *dst, ms_err *e) {
    memset(dst, 0, sizeof *dst);
    for (int i = 0; i < n; i++)
        if (!src[i]->data || src[i]->type != src[0]->type || src[i]->n_in != src[0]->n_in) return MS_OK;
    if (env_u64("MS_CUDA_STACK", 1) == 0) return MS_OK;
    dst->type = src[0]->type;
    dst->n_in = (int)src[0]->n_in;
    dst->row_bytes = src[0]->row_bytes;
    for (int i = 0; i < n; i++) dst->n_out += (int)src[i]->n_out;
    dst->d = (const uint8_t *)take(c, dst->row_bytes * (size_t)dst->n_out);
    size_t off = 0;
    for (int i = 0; i < n && c->arena; i++) {
        const size_t b = src[i]->row_bytes * (size_t)src[i]->n_out;
        CK(cudaMemcpy((uint8_t *)dst->d + off, src[i]->data, b, cudaMemcpyHostToDevice));
        off += b;
    }
    return MS_OK;
}

static int up_vec(cu_ctx *c, const float *src, size_t n, const float **dst, ms_err *e) {
    *dst = NULL;
    if (!src) return MS_OK;
    float *d = take_f(c, n);
    if (c->arena) CK(cudaMemcpy(d, src, n * sizeof(float), cudaMemcpyHostToDevice));
    *dst = d;
    return MS_OK;
}

#define TRY(x)                  \
    do {                        \
        int rc2_ = (x);         \
        if (rc2_) return rc2_;  \
    } while (0)

/* Lays out (and, once the arena exists, fills) everything but the expert slots. */
static int plan(cu_ctx *c, ms_err *e) {
    const struct ms_model *m = c->m;
    const ms_hparams *hp = &m->hp;
    c->arena_used = 0;
    size_t T = (size_t)c->n_batch, E = (size_t)hp->n_embd, NE = (size_t)hp->n_expert, K = (size_t)hp->n_expert_used;
    size_t kvd = (size_t)hp->n_head_kv * hp->head_dim;
    TRY(up_mat(c, &m->tok_embd, &c->tok_embd, e));
    if (m->output.data == m->tok_embd.data) c->output = c->tok_embd;
    else TRY(up_mat(c, &m->output, &c->output, e));
    TRY(up_vec(c, m->output_norm, E, &c->output_norm, e));
    size_t qw = 0;
    c->state_floats = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        const ms_layer *ly = &m->layers[il];
        dlayer *d = &c->L[il];
        d->kind = ly->kind;
        TRY(up_vec(c, ly->attn_norm, E, &d->attn_norm, e));
        TRY(up_vec(c, ly->ffn_norm, E, &d->ffn_norm, e));
        if (ly->kind == MS_LAYER_ATTN) {
            const ms_mat *qkv[3] = {&ly->wq, &ly->wk, &ly->wv};
            TRY(up_stack(c, qkv, 3, &d->wqkv_a, e));
            if (!d->wqkv_a.d) {
                TRY(up_mat(c, &ly->wq, &d->wq, e));
                TRY(up_mat(c, &ly->wk, &d->wk, e));
                TRY(up_mat(c, &ly->wv, &d->wv, e));
            } else {
                d->wq.n_out = (int)ly->wq.n_out; /* the shapes still say how to split */
            }
            TRY(up_mat(c, &ly->wo, &d->wo, e));
            TRY(up_vec(c, ly->q_norm, (size_t)hp->head_dim, &d->q_norm, e));
            TRY(up_vec(c, ly->k_norm, (size_t)hp->head_dim, &d->k_norm, e));
            d->attn_gated = ly->attn_gated;
            qw = MS_MAX(qw, (size_t)ly->wq.n_out + 2 * kvd);
            d->k_cache = take_f(c, (size_t)c->n_ctx * kvd);
            d->v_cache = take_f(c, (size_t)c->n_ctx * kvd);
        } else {
            const ms_mat *qkvz[2] = {&ly->wqkv, &ly->wz};
            TRY(up_stack(c, qkvz, 2, &d->wqkvz, e));
            if (!d->wqkvz.d) {
                TRY(up_mat(c, &ly->wqkv, &d->wqkv, e));
                TRY(up_mat(c, &ly->wz, &d->wz, e));
            }
            TRY(up_mat(c, &ly->wbeta, &d->wbeta, e));
            TRY(up_mat(c, &ly->walpha, &d->walpha, e));
            TRY(up_mat(c, &ly->wba, &d->wba, e));
            TRY(up_mat(c, &ly->ssm_out, &d->ssm_out, e));
            TRY(up_vec(c, ly->conv1d, (size_t)hp->conv_dim * hp->d_conv, &d->conv1d, e));
            TRY(up_vec(c, ly->dt_bias, (size_t)hp->n_v_heads, &d->dt_bias, e));
            TRY(up_vec(c, ly->ssm_a, (size_t)hp->n_v_heads, &d->ssm_a, e));
            TRY(up_vec(c, ly->ssm_norm, (size_t)hp->d_v, &d->ssm_norm, e));
            c->state_floats += (size_t)(hp->d_conv - 1) * hp->conv_dim + (size_t)hp->n_v_heads * hp->d_v * hp->d_k;
        }
        TRY(up_mat(c, &ly->router, &d->router, e));
        TRY(up_mat(c, &ly->sh_gate, &d->sh_gate, e));
        TRY(up_mat(c, &ly->sh_up, &d->sh_up, e));
        TRY(up_mat(c, &ly->sh_down, &d->sh_down, e));
        TRY(up_mat(c, &ly->sh_router, &d->sh_router, e));
    }
    /* recurrent state: one block, so a checkpoint is one copy */
    c->states = take_f(c, c->state_floats);
    float *st = c->states;
    for (int il = 0; il < hp->n_layer && st; il++) {
        if (c->L[il].kind != MS_LAYER_GDN) continue;
        c->L[il].conv_state = st;
        st += (size_t)(hp->d_conv - 1) * hp->conv_dim;
        c->L[il].ssm_state = st;
        st += (size_t)hp->n_v_heads * hp->d_v * hp->d_k;
    }
    size_t vd = (size_t)hp->n_v_heads * hp->d_v, nv = (size_t)hp->n_v_heads;
    size_t a_w = MS_MAX(E, MS_MAX(qw, (size_t)hp->conv_dim + vd));
    c->x = take_f(c, T * E);
    c->r1 = (int *)take(c, 2 * (size_t)K * sizeof(int)); /* must stay right before h (route1_bytes) */
    c->h = take_f(c, T * E);
    c->a = take_f(c, T * a_w);
    c->q = take_f(c, T * hp->n_head * hp->head_dim);
    c->att = take_f(c, T * hp->n_head * hp->head_dim);
    c->qkv = take_f(c, T * hp->conv_dim);
    c->z = take_f(c, T * vd);
    c->gdn_o = take_f(c, T * vd);
    c->beta = take_f(c, T * nv);
    c->gg = take_f(c, T * nv);
    c->braw = take_f(c, T * nv);
    c->araw = take_f(c, T * nv);
    c->ba = take_f(c, T * 2 * nv);
    c->router = take_f(c, T * NE);
    c->sel = (int *)take(c, T * K * sizeof(int));
    c->selw = take_f(c, T * K);
    c->act = take_f(c, T * K * hp->n_ff_exp);
    c->ybuf = T > 1 ? take_f(c, T * K * E) : NULL;
    c->sh_act = take_f(c, T * hp->n_ff_shexp);
    c->sh_tmp = take_f(c, T * hp->n_ff_shexp);
    c->sh_gate = take_f(c, T);
    c->tok = (int *)take(c, T * sizeof(int));
    c->d_pos = (int *)take(c, sizeof(int));
    c->d_done = (int *)take(c, sizeof(int));
    c->x_idx = (int *)take(c, 3 * T * K * sizeof(int)); /* the upload block, see moe_host */
    c->grp_up = (mv_group *)take(c, 2 * NE * sizeof(mv_group)); /* a wave's up groups, then its down groups */
    c->exp_base = (const uint8_t **)take(c, (size_t)hp->n_layer * NE * sizeof(void *));
    c->dlogits = take_f(c, (size_t)MS_MIN((size_t)LOGIT_ROWS, T) * hp->n_vocab);
    c->look_h = take_f(c, E);
    c->look_logits = take_f(c, NE);
    c->look_sel = (int *)take(c, K * sizeof(int));
    c->look_selw = take_f(c, K);
    return MS_OK;
}

/* ---------------------------------------------------------------- launch helpers */

/* The arguments of run_mat. */
static void mat_args(mv_args *ap, const dmat *w, const dmat *w2, const float *x, long long ldx, float *y, long long ldy, int T,
                     int mode, const float *scale) {
    mv_args &a = *ap;
    memset(&a, 0, sizeof a);
    a.g.w = w->d;
    a.g.w2 = w2 ? w2->d : NULL;
    a.g.s0 = 0;
    a.g.ns = T;
    a.n_groups = 1;
    a.row_bytes = w->row_bytes;
    a.n_in = w->n_in;
    a.n_out = w->n_out;
    a.x = x;
    a.ldx = ldx;
    a.y = y;
    a.ldy = ldy;
    a.mode = mode;
    a.scale = scale;
}

/* A dense weight over the batch: y[t] (mode) W . x[t]. w2: fused gate/up (MV_SWIGLU). */
static int run_mat(cu_ctx *c, const dmat *w, const dmat *w2, const float *x, long long ldx, float *y, long long ldy, int T,
                   int mode, const float *scale) {
    mv_args a;
    mat_args(&a, w, w2, x, ldx, y, ldy, T, mode, scale);
    return launch_mat(w->type, a, T, 1, c->cs);
}

/* One token: y = W . rmsnorm(x, nw) in one launch (k_mvq), or -1 (nothing launched) when the
 * weight's type or shape does not allow it. */
static int run_mat_normed(cu_ctx *c, const dmat *w, const float *x, const float *nw, float *y) {
    mv_args a;
    mat_args(&a, w, NULL, x, 0, y, 0, 1, MV_STORE, NULL);
    a.nw = nw;
    a.eps = c->m->hp.norm_eps;
    const int items = mvq_items(w->type, a, 1, 1);
    if (!items) return -1;
    launch_mvq(a, items, 1, c->cs);
    return 0;
}

/* Launches the products of n groups of one layer's experts: gu/gd are device arrays of the
 * gate|up and down groups; scale (device, by slot) weighs each slot's output for one token. */
static int run_experts(cu_ctx *c, const ms_layer *ly, const mv_group *gu, const mv_group *gd, int n, int max_ns, int T,
                       const float *scale) {
    const ms_hparams *hp = &c->m->hp;
    mv_args a;
    memset(&a, 0, sizeof a);
    /* gate/up: act[s] = silu(gate . h[tok s]) * (up . h[tok s]) */
    a.groups = gu;
    a.n_groups = n;
    a.row_bytes = ly->gate_exps.row_bytes;
    a.n_in = (int)ly->gate_exps.n_in;
    a.n_out = (int)ly->gate_exps.n_out;
    a.x = c->h;
    a.ldx = T == 1 ? 0 : hp->n_embd;
    a.x_idx = T == 1 ? NULL : c->x_idx;
    a.y = c->act;
    a.ldy = hp->n_ff_exp;
    a.mode = MV_SWIGLU;
    if (launch_mat(ly->gate_exps.type, a, max_ns, n, c->cs)) return -1;
    /* down: one token adds straight into the residual; a batch stores per slot for k_combine */
    memset(&a, 0, sizeof a);
    a.groups = gd;
    a.n_groups = n;
    a.row_bytes = ly->down_exps.row_bytes;
    a.n_in = (int)ly->down_exps.n_in;
    a.n_out = (int)ly->down_exps.n_out;
    a.x = c->act;
    a.ldx = hp->n_ff_exp;
    if (T == 1) {
        a.sum_groups = 1;
        a.y = c->x;
        a.mode = MV_ADD;
        a.scale = scale;
    } else {
        a.y = c->ybuf;
        a.ldy = hp->n_embd;
        a.mode = MV_STORE;
    }
    return launch_mat(ly->down_exps.type, a, max_ns, n, c->cs);
}

static void tev_record(cu_ctx *c, int il, int k) {
    if (c->timing_on) cudaEventRecord(c->tev[il * 4 + k], c->cs);
}

/* ---------------------------------------------------------------- attention, Gated DeltaNet */

/* normed: c->x has not been normed into c->h yet (one token); the q|k|v product does it, or
 * a k_rmsnorm first where it cannot. */
static int attention(cu_ctx *c, const dlayer *d, int T, int normed) {
    const ms_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, kvd = hp->n_head_kv * hd, E = hp->n_embd, qw = d->wq.n_out, qd = hp->n_head * hd;
    /* the (gated) query, keys and values side by side in a ([T][qw | kvd | kvd]): one product
     * when the three share a type; the cache is written at the position in d_pos (device memory,
     * so a captured graph replays at any position) */
    const int lda = qw + 2 * kvd;
    const float *kv_in = c->a + qw;
    if (normed && !(d->wqkv_a.d && run_mat_normed(c, &d->wqkv_a, c->x, d->attn_norm, c->a) == 0)) {
        k_rmsnorm<<<T, 512, 0, c->cs>>>(c->x, E, c->h, E, d->attn_norm, E, hp->norm_eps);
        normed = 0;
    }
    if (normed) {
        /* done above */
    } else if (d->wqkv_a.d) {
        if (run_mat(c, &d->wqkv_a, NULL, c->h, E, c->a, lda, T, MV_STORE, NULL)) return -1;
    } else {
        if (run_mat(c, &d->wq, NULL, c->h, E, c->a, lda, T, MV_STORE, NULL)) return -1;
        if (run_mat(c, &d->wk, NULL, c->h, E, c->a + qw, lda, T, MV_STORE, NULL)) return -1;
        if (run_mat(c, &d->wv, NULL, c->h, E, c->a + qw + kvd, lda, T, MV_STORE, NULL)) return -1;
    }
    dim3 grid((unsigned)hp->n_head, (unsigned)T);
    if (T == 1 && (hd == 64 || hd == 128 || hd == 256)) {
#define ATT1B(HD)                                                                                                            \
    k_attn1b<HD><<<grid, ATT_WARPS * 32, 0, c->cs>>>(c->a, d->attn_gated, d->k_cache, d->v_cache, kv_in, kvd, d->q_norm, d->k_norm, \
                                                    hp->n_head, hp->n_head_kv, hp->n_rot, c->d_pos, hp->rope_base, hp->norm_eps, c->att)
        if (hd == 64) ATT1B(64);
        else if (hd == 128) ATT1B(128);
        else ATT1B(256);
#undef ATT1B
        return run_mat(c, &d->wo, NULL, c->att, qd, c->x, E, T, MV_ADD, NULL);
    }
    if (T == 1) {
#define ATT1(J)                                                                                                             \
    k_attn1<J><<<grid, ATT_WARPS * 32, 0, c->cs>>>(c->a, lda, d->attn_gated, d->k_cache, d->v_cache, kv_in, kvd, d->q_norm,   \
                                                   d->k_norm, hp->n_head, hp->n_head_kv, hd, hp->n_rot, c->d_pos, hp->rope_base, \
                                                   hp->norm_eps, c->att)
        if (hd <= 32) ATT1(1);
        else if (hd <= 64) ATT1(2);
        else if (hd <= 128) ATT1(4);
        else ATT1(8);
#undef ATT1
        return run_mat(c, &d->wo, NULL, c->att, qd, c->x, E, T, MV_ADD, NULL);
    }
    k_qk_prep<<<dim3((unsigned)T, (unsigned)(hp->n_head + hp->n_head_kv)), 64, 0, c->cs>>>(
        c->a, lda, d->attn_gated, c->q, d->k_cache, d->v_cache, kv_in, kvd, d->q_norm, d->k_norm, hp->n_head, hd, hp->n_rot,
        c->d_pos, hp->rope_base, hp->norm_eps);
#define ATT(J) \
    k_attn<J><<<grid, ATT_WARPS * 32, 0, c->cs>>>(c->q, d->k_cache, d->v_cache, c->att, c->a, hp->n_head, hp->n_head_kv, hd, c->d_pos, lda, d->attn_gated)
    if (hd <= 32) ATT(1);
    else if (hd <= 64) ATT(2);
    else if (hd <= 128) ATT(4);
    else ATT(8);
#undef ATT
    return run_mat(c, &d->wo, NULL, c->att, qd, c->x, E, T, MV_ADD, NULL);
}

static int gated_deltanet(cu_ctx *c, const dlayer *d, int T) {
    const ms_hparams *hp = &c->m->hp;
    const int E = hp->n_embd, nv = hp->n_v_heads, nk = hp->n_k_heads, dk = hp->d_k, dv = hp->d_v, cd = hp->conv_dim;
    const int vd = nv * dv;
    /* q|k|v (before the conv) and the output gate z: one product when they share a type */
    int lda = cd, ldz = vd;
    const float *zp = c->z;
    if (d->wqkvz.d) {
        lda = ldz = cd + vd;
        zp = c->a + cd;
        if (run_mat(c, &d->wqkvz, NULL, c->h, E, c->a, lda, T, MV_STORE, NULL)) return -1;
    } else {
        if (run_mat(c, &d->wqkv, NULL, c->h, E, c->a, cd, T, MV_STORE, NULL)) return -1;
        if (run_mat(c, &d->wz, NULL, c->h, E, c->z, vd, T, MV_STORE, NULL)) return -1;
    }
    if (d->wba.d) {
        if (run_mat(c, &d->wba, NULL, c->h, E, c->ba, 2 * nv, T, MV_STORE, NULL)) return -1;
    } else {
        if (run_mat(c, &d->wbeta, NULL, c->h, E, c->braw, nv, T, MV_STORE, NULL)) return -1;
        if (run_mat(c, &d->walpha, NULL, c->h, E, c->araw, nv, T, MV_STORE, NULL)) return -1;
    }
    const int nb = 2 * nk + (cd - 2 * nk * dk + 255) / 256 + 1; /* d_k <= 256: check_model */
    k_gdn_in<<<nb, 256, 0, c->cs>>>(c->a, lda, d->conv_state, d->conv1d, c->qkv, T, cd, hp->d_conv, nk, dk, hp->norm_eps,
                                    d->wba.d ? c->ba : NULL, c->braw, c->araw, d->dt_bias, d->ssm_a, c->beta, c->gg, nv);
    dim3 grid((unsigned)nv, (unsigned)((dv + GDN_WARPS - 1) / GDN_WARPS));
#define SCAN(J) \
    k_gdn_scan<J><<<grid, GDN_WARPS * 32, 0, c->cs>>>(d->ssm_state, c->qkv, c->gg, c->beta, c->gdn_o, T, nk, nv, dk, dv, cd, hp->gdn_interleave)
    if (dk <= 32) SCAN(1);
    else if (dk <= 64) SCAN(2);
    else if (dk <= 128) SCAN(4);
    else SCAN(8);
#undef SCAN
    k_gated_norm<<<dim3((unsigned)T, (unsigned)nv), 64, 0, c->cs>>>(c->gdn_o, zp, ldz, d->ssm_norm, nv, dv, hp->norm_eps);
    return run_mat(c, &d->ssm_out, NULL, c->gdn_o, vd, c->x, E, T, MV_ADD, NULL);
}

/* ---------------------------------------------------------------- the expert cache */

static void cache_request(cu_ctx *c, int key) {
    if (c->freq[key] < 0xFFFFFFFFu) c->freq[key]++;
    if (++c->req_since_aging >= 4 * (uint64_t)c->n_slots) {
        /* halve every count now and then, so experts that fell out of use can be evicted */
        size_t n = (size_t)c->m->hp.n_layer * c->m->hp.n_expert;
        for (size_t i = 0; i < n; i++) c->freq[i] >>= 1;
        c->req_since_aging = 0;
    }
}

/* A slot for a new expert: a never-used one, else the least requested owner among a random
 * sample of slots the current wave does not use. -1 if every slot is in use. */
static int cache_victim(cu_ctx *c) {
    if (c->next_free < c->n_slots) return c->next_free++;
    int best = -1;
    uint32_t bf = 0;
    for (int i = 0; i < 16; i++) {
        c->rng = c->rng * 6364136223846793005ull + 1442695040888963407ull;
        const int s = (int)((c->rng >> 33) % (uint64_t)c->n_slots);
        if (c->slot_wave[s] == c->wave) continue;
        const uint32_t f = c->freq[c->slot_owner[s]];
        if (best < 0 || f < bf) best = s, bf = f;
    }
    if (best >= 0) return best;
    for (int s = 0; s < c->n_slots; s++)
        if (c->slot_wave[s] != c->wave) return s;
    return -1;
}

static uint8_t *slot_ptr(const cu_ctx *c, int s) { return c->slots + (size_t)s * c->slot_bytes; }

static void flush_pending(cu_ctx *c) {
    if (c->pend.n) experts_release(c->store, c->pend.il, c->pend.ids, c->pend.n);
    c->pend.n = 0;
}

static int in_registered(const cu_ctx *c, const uint8_t *p, size_t n) {
    for (int i = 0; i < c->n_reg; i++)
        if (p >= c->reg_lo[i] && p + n <= c->reg_hi[i]) return 1;
    return 0;
}

typedef struct stage_job {
    cu_ctx *c;
    const dlayer *d;
    const ms_expert_ref *refs;
    uint8_t *const *dst;
    cudaEvent_t *ev;
    int base; /* first miss of this batch */
} stage_job;

/* One miss through a pinned staging buffer: wait until the buffer's last copy is done, fill it
 * from the store's bytes, queue its copy to VRAM and the miss's event. */
static void stage_task(void *ctx, int i, int thread) {
    (void)thread;
    stage_job *j = (stage_job *)ctx;
    cu_ctx *c = j->c;
    const dlayer *d = j->d;
    const int k = j->base + i, si = (c->stage_head + i) % c->n_stage;
    cudaSetDevice(c->dev);
    cudaEventSynchronize(c->stage_ev[si]);
    uint8_t *st = c->staging + (size_t)si * c->slot_bytes;
    memcpy(st, j->refs[k].gate, d->sz_gate);
    memcpy(st + d->off_up, j->refs[k].up, d->sz_up);
    memcpy(st + d->off_down, j->refs[k].down, d->sz_down);
    cudaMemcpyAsync(j->dst[k], st, d->off_down + d->sz_down, cudaMemcpyHostToDevice, c->xs);
    cudaEventRecord(c->stage_ev[si], c->xs);
    cudaEventRecord(j->ev[k], c->xs);
}

/* Queues the copies of n experts' three matrices each from page-locked host memory into their
 * VRAM slots on the copy stream. One batched call where the runtime has it: the copy engine then
 * pays its fixed cost once, not once a matrix (H100, 3 x 576 KB experts from pinned memory: 43
 * GB/s as three copies each, 50 as one batch an expert; decode with every expert over the link,
 * --gpu-mem 8G --cpu-share 0: 48.4 GB/s a batch an expert, 52.8 with a layer's experts in one). */
enum { BATCH_MAX = 16 }; /* experts in one batched call */
static cudaError_t copy_experts(cu_ctx *c, const dlayer *d, const ms_expert_ref *r, uint8_t *const *dst, int n) {
#if CUDART_VERSION >= 12080
    if (!c->no_batch && n <= BATCH_MAX) {
        void *dsts[3 * BATCH_MAX], *srcs[3 * BATCH_MAX];
        size_t sizes[3 * BATCH_MAX], attr_at = 0;
        for (int i = 0; i < n; i++) {
            dsts[3 * i] = dst[i], dsts[3 * i + 1] = dst[i] + d->off_up, dsts[3 * i + 2] = dst[i] + d->off_down;
            srcs[3 * i] = (void *)r[i].gate, srcs[3 * i + 1] = (void *)r[i].up, srcs[3 * i + 2] = (void *)r[i].down;
            sizes[3 * i] = d->sz_gate, sizes[3 * i + 1] = d->sz_up, sizes[3 * i + 2] = d->sz_down;
        }
        cudaMemcpyAttributes attr;
        memset(&attr, 0, sizeof attr);
        attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
#if CUDART_VERSION >= 13000
        cudaError_t rc = cudaMemcpyBatchAsync(dsts, srcs, sizes, 3 * (size_t)n, &attr, &attr_at, 1, c->xs);
#else
        size_t failed;
        cudaError_t rc = cudaMemcpyBatchAsync(dsts, srcs, sizes, 3 * (size_t)n, &attr, &attr_at, 1, &failed, c->xs);
#endif
        if (rc != cudaErrorNotSupported && rc != cudaErrorInvalidValue) return rc;
        cudaGetLastError();
        c->no_batch = 1;
    }
#endif
    cudaError_t rc = cudaSuccess;
    for (int i = 0; i < n && rc == cudaSuccess; i++) {
        rc = cudaMemcpyAsync(dst[i], r[i].gate, d->sz_gate, cudaMemcpyHostToDevice, c->xs);
        if (rc == cudaSuccess) rc = cudaMemcpyAsync(dst[i] + d->off_up, r[i].up, d->sz_up, cudaMemcpyHostToDevice, c->xs);
        if (rc == cudaSuccess) rc = cudaMemcpyAsync(dst[i] + d->off_down, r[i].down, d->sz_down, cudaMemcpyHostToDevice, c->xs);
    }
    return rc;
}

/* Queues the host-to-VRAM copies of n experts of layer il into slots dst[0..n), recording
 * ev[i] after copy i. The store is asked for a few experts at a time (its cache may hold only
 * so many pinned at once); bytes in page-locked memory are copied in place and stay pinned in
 * pd (empty, or of layer il) until the copies are done, others go through the staging buffers. */
static int issue_copies(cu_ctx *c, const dlayer *d, int il, int *ids, uint8_t **dst, int n, pending *pd, cudaEvent_t *ev,
                        ms_err *e) {
    c->timing.cache_bytes_in += (uint64_t)n * (d->sz_gate + d->sz_up + d->sz_down);
    const int step = MS_MAX(1, MS_MIN(c->n_stage, experts_capacity(c->store) / 2));
    for (int b = 0; b < n; b += step) {
        const int nb = MS_MIN(step, n - b);
        int rc = experts_acquire(c->store, il, ids + b, nb, c->refs + b, e);
        if (rc) return rc;
        int direct = c->n_reg > 0;
        for (int i = b; i < b + nb && direct; i++)
            direct = in_registered(c, c->refs[i].gate, d->sz_gate) && in_registered(c, c->refs[i].up, d->sz_up) &&
                     in_registered(c, c->refs[i].down, d->sz_down);
        if (direct) {
            for (int i = b; i < b + nb; i += BATCH_MAX) {
                const int m = MS_MIN(BATCH_MAX, b + nb - i);
                CK(copy_experts(c, d, &c->refs[i], &dst[i], m));
                for (int k = i; k < i + m; k++) CK(cudaEventRecord(ev[k], c->xs));
            }
            memcpy(pd->ids + pd->n, ids + b, sizeof(int) * (size_t)nb);
            pd->il = il;
            pd->n += nb;
        } else {
            stage_job j = {c, d, c->refs, dst, ev, b};
            pool_run(c->pool, stage_task, &j, nb);
            c->stage_head = (c->stage_head + nb) % c->n_stage;
            experts_release(c->store, il, ids + b, nb);
        }
    }
    CK(cudaGetLastError());
    return MS_OK;
}

/* The host's share of the experts not in VRAM (--cpu-share; see moe_cpu_start): tuned while decoding
 * by balancing the host's experts against the GPU's, one step per window of layers (bal_step). */
#define CPU_SHARE_START 0.5f
#define CPU_SHARE_STEP 0.05f
enum { CPU_ITEMS = 4 }; /* pool items a thread in the host's expert jobs (2: 87.8 against 88.5 tok/s at 8G) */

/* --cpu-share auto: after each decoded layer, whether the GPU's experts were still running when
 * the host had finished its own (or the host had none); a window of layers moves the share
 * toward the host when the GPU was the later in more than half of them, away when in fewer, by
 * up to a step. It settles where each side finishes first about half the time. A hill climb on
 * the time per token, one step per 16 tokens, did worse on the H100 machine (qwen3next-80b, one
 * call, 03:03 UTC): 8G 95.02 / 106.12 tok/s against 105.20 / 104.85, 24G 127.11 against 131.92;
 * its steps followed the noise of the token times, where these signals come from every layer. */
enum { BAL_LAYERS = 96 };
static void bal_step(cu_ctx *c, int gpu_late) {
    c->bal_gpu_late += gpu_late;
    if (++c->bal_n < BAL_LAYERS) return;
    const float f = (float)c->bal_gpu_late / (float)c->bal_n;
    c->cpu_share = MS_MAX(0.0f, MS_MIN(1.0f, c->cpu_share + 2.0f * CPU_SHARE_STEP * (f - 0.5f)));
    c->bal_n = c->bal_gpu_late = 0;
}

/* How many of n misses the CPU takes now (the share, its rounding carried between layers). */
static int cpu_take(cu_ctx *c, int n) {
    const float want = c->cpu_share * (float)n + c->cpu_carry;
    const int take = MS_MIN(n, (int)want);
    c->cpu_carry = want - (float)take;
    return take;
}

/* ---------------------------------------------------------------- router lookahead */


/* Whether layer il's layer_pre runs layer il + 1's router too (and layer_post prefetches). The
 * same answer at capture and at replay: it depends only on the context, il and T. */
static int looks_ahead(const cu_ctx *c, int il, int T) {
    return c->lookahead && T == 1 && il + 1 < c->m->hp.n_layer && c->L[il + 1].router.d;
}

static void pf_release(cu_ctx *c, pending *p) {
    if (p->n) experts_release(c->store, p->il, p->ids, p->n);
    p->n = 0;
}

/* Forgets any prefetch (after a failed batch, at the end): waits for the copy stream, releases
 * the store pins, unmarks the slots. */
static void pf_drop(cu_ctx *c) {
    if (c->pf_il < 0 && !c->pf_cur.n && !c->pf_old.n) return;
    cudaStreamSynchronize(c->xs);
    pf_release(c, &c->pf_old);
    pf_release(c, &c->pf_cur);
    for (int i = 0; i < c->n_pf; i++) c->slot_pf[c->pf_slots[i]] = -1;
    c->n_pf = 0;
    c->pf_il = -1;
}

/* After layer il's experts are queued: the ids layer_pre predicted for layer il + 1 (its router
 * on layer il's residual, as forward.c's lookahead), and copies of those not in VRAM on the copy
 * stream behind layer il's misses. Their slots come from cache_victim, which spares every slot
 * of layer il's wave; the predicted experts already resident join that wave so that this
 * prefetch does not evict them either. moe_host of layer il + 1 finds them with slot_pf set and
 * waits for their copy events. */
static int prefetch_next(cu_ctx *c, int il, ms_err *e) {
    const ms_hparams *hp = &c->m->hp;
    const int NE = hp->n_expert, K = hp->n_expert_used, nx = il + 1;
    /* three layers' experts may be pinned in the store at once (this layer's misses, the last
     * prefetch, this one): skip when its cache is too small for that */
    if (c->pf_il >= 0 || c->pf_cur.n || experts_capacity(c->store) < 4 * K) return MS_OK;
    int *ids = c->order; /* free until the next moe_host */
    uint8_t **dst = c->miss_dst;
    int n = 0;
    for (int k = 0; k < K; k++) {
        const int key = nx * NE + c->h_look[k];
        int s = c->map_slot[key];
        if (s < 0 && c->cpu_on && cpu_take(c, 1)) {
            c->cpu_left[c->h_look[k]] = c->cpu_gen + 1; /* the host computes it at the next layer */
            continue;
        }
        if (s < 0) {
            s = cache_victim(c);
            if (s < 0) break;
            if (c->slot_owner[s] >= 0) c->map_slot[c->slot_owner[s]] = -1;
            c->slot_owner[s] = key;
            c->map_slot[key] = s;
            c->slot_pf[s] = n;
            c->pf_slots[n] = s;
            ids[n] = c->h_look[k];
            dst[n] = slot_ptr(c, s);
            n++;
        }
        c->slot_wave[s] = c->wave;
    }
    c->pf_il = nx;
    c->n_pf = n;
    if (!n) return MS_OK;
    c->prefetches += (uint64_t)n;
    c->timing.cache_prefetches += (uint64_t)n;
    int rc = issue_copies(c, &c->L[nx], nx, ids, dst, n, &c->pf_cur, c->ev_pf, e);
    if (rc) return rc;
    CK(cudaEventRecord(c->ev_pf_done, c->xs));
    return MS_OK;
}

/* ---------------------------------------------------------------- mixture of experts */

/* The upload block (device c->x_idx, host c->h_x_idx), for a batch of T tokens (TK = T * K
 * slots): x_idx[TK] (token of each slot), slot_of[TK] (slot of each (token, k)), slot_w[TK]
 * (router weight of each slot), one copy per layer. The groups go to c->grp_up: a wave's up
 * groups at [0, n), its down groups at [n, 2n). */

/* ---------------------------------------------------------------- host-computed misses */

/* With a VRAM cache much smaller than the experts, decode is bound by the link: nearly every
 * routed expert crosses it (qwen3next-80b at --gpu-mem 8G: 750 MiB a token at 38 GB/s, 48.6
 * tok/s on the H100 machine). The CPU can compute an expert from host memory in about the time
 * the link needs to carry it, so a share of the experts that are not in VRAM is left to the host:
 * the lookahead prefetch skips that share of its predictions (prefetch_next), and moe_host gives
 * the host those and the same share of the other misses. The host computes them from the layer's
 * normed input (copied down with the routing): the worker threads start on them before this
 * thread queues the GPU's experts (moe_cpu_start), and their weighted sum is added to the residual
 * after the GPU's (moe_cpu_finish). The next layer's prefetch is queued while the host's job runs,
 * so the link carries it during this layer's experts and the next layer's first part.
 * --cpu-share x fixes the share;
 * auto (the default) balances the host's finish against the GPU's (bal_step). Host experts
 * use forward.c's kernels (q16 activations), so they agree with the CPU backend, not bit for bit
 * with the GPU's fp32 products.
 *
 * Measured on the H100 machine (16 cores), qwen3next-80b Q4_K with fixed shares: --gpu-mem 8G
 * went from 52.8 tok/s (share 0) to 89.7 (0.6), 24G from 93.4 to 110.3 (0.7); every expert on
 * the host gave 75.5. Of the 11.2 ms a token at 8G the host's 250 experts took 4.8 (92 GB/s
 * from memory), the GPU's attention and routing 3.6 waited for. On the H200 machine, starting
 * the host's experts before the GPU's launches and queuing the prefetch late took 8G at 0.6 from
 * 80.6 to 84.0 tok/s (two runs each) and 24G at 0.7 from 101.3 to 114.3. Queuing the prefetch
 * during the host's job rather than after the next layer's first part (twice the time for its
 * copies) took 8G from 78.9 / 81.3 to 83.0 / 88.5 tok/s on the H100 machine, 30 against 17-23 GB/s
 * on the link, the tuned share from about 0.6 to 0.5; 24G 109.2 -> 110.4. The host's job is then
 * bound by the CPU kernel (Q4_K at 79 GB/s on 16 threads of that Xeon, which reads at 124): this
 * thread reaches moe_cpu_finish before the gate|up chunks are done in 95% of layers, and one job
 * whose down chunks wait for the gate|up ones measured no faster (98 / 100 against 103 / 101).
 * Nor did the link get faster with one kernel reading a layer's prefetch from the registered
 * mapping in place of three copies an expert (then not batched: see copy_experts; alone the
 * kernel moved 48.5 GB/s against 43.2): it holds SMs the layer's kernels need, and 8G fell from
 * 97.1 / 92.2 to 86.5 / 85.8 tok/s. Nor did queuing the add of the host's sum, and the next
 * layer's graph behind it, before the host's job ends (a kernel polling a flag in pinned memory,
 * so that no launch sits between the sum and the next layer): 8G 91.7 / 89.0 / 86.9 against
 * 93.2 / 88.4 / 88.9 tok/s, and one bench in each process stalled until that kernel's timeout,
 * which was not found before the session ended. */


/* Rows [r0, r1) of one expert matrix times x (q16 row xq where the type has kernels). */
static void host_rows(const ms_mat3 *w, const uint8_t *base, const float *x, const uint8_t *xq, float *y, int64_t r0,
                      int64_t r1) {
    if (xq) quant_matvec_q16(w->type, base, w->row_bytes, xq, y, w->n_in, r0, r1);
    else quant_matvec(w->type, base, w->row_bytes, x, y, w->n_in, r0, r1);
}

static void cpu_up_task(void *ctx, int i, int thread) {
    (void)thread;
    const cpu_job *j = (const cpu_job *)ctx;
    cu_ctx *c = j->c;
    const ms_layer *ly = j->ly;
    const int k = i / j->chunks;
    const int64_t ff = ly->gate_exps.n_out, r0 = (i % j->chunks) * j->rows, r1 = MS_MIN(ff, r0 + j->rows);
    const uint8_t *xq = quant_has_q16(ly->gate_exps.type) ? c->cpu_xq : NULL;
    float *g = c->cpu_g + (size_t)k * ff, *u = c->cpu_u + (size_t)k * ff;
    host_rows(&ly->gate_exps, c->cpu_refs[k].gate, c->h_hin, xq, g, r0, r1);
    host_rows(&ly->up_exps, c->cpu_refs[k].up, c->h_hin, quant_has_q16(ly->up_exps.type) ? c->cpu_xq : NULL, u, r0, r1);
    for (int64_t r = r0; r < r1; r++) g[r] = g[r] / (1.0f + expf(-g[r])) * u[r];
}

static void cpu_down_task(void *ctx, int i, int thread) {
    (void)thread;
    const cpu_job *j = (const cpu_job *)ctx;
    cu_ctx *c = j->c;
    const ms_mat3 *w = &j->ly->down_exps;
    const int64_t E = w->n_out, ff = w->n_in, r0 = i * j->rows, r1 = MS_MIN(E, r0 + j->rows);
    const size_t qb = quant_q16_bytes(ff);
    for (int k = 0; k < c->n_cpu; k++)
        host_rows(w, c->cpu_refs[k].down, c->cpu_g + (size_t)k * ff, quant_has_q16(w->type) ? c->cpu_actq + k * qb : NULL,
                  c->cpu_y + (size_t)k * E, r0, r1);
    for (int64_t r = r0; r < r1; r++) {
        float acc = 0.0f;
        for (int k = 0; k < c->n_cpu; k++) acc += c->cpu_w[k] * c->cpu_y[(size_t)k * E + r];
        c->h_cpu_y[r] = acc;
    }
}

/* Starts the host's experts cpu_ids[0..n_cpu) of layer il (weights cpu_w): their gate|up
 * products from h_hin go to the worker threads while this thread queues the GPU's experts. */
static int moe_cpu_start(cu_ctx *c, const ms_layer *ly, int il, ms_err *e) {
    const int E = c->m->hp.n_embd, n = c->n_cpu, nth = pool_size(c->cpu_pool);
    const int64_t ff = ly->gate_exps.n_out;
    int rc = experts_acquire(c->store, il, c->cpu_ids, n, c->cpu_refs, e);
    if (rc) return rc;
    if (quant_has_q16(ly->gate_exps.type) || quant_has_q16(ly->up_exps.type)) quant_q16_quantize(c->h_hin, E, c->cpu_xq);
    /* items of a few rows, CPU_ITEMS a thread: the last round of a job leaves cores idle */
    c->cpu_job = (cpu_job){c, ly, MS_MAX(1, (CPU_ITEMS * nth + n - 1) / n), 0};
    c->cpu_job.rows = (ff + c->cpu_job.chunks - 1) / c->cpu_job.chunks;
    pool_start(c->cpu_pool, cpu_up_task, &c->cpu_job, n * c->cpu_job.chunks);
    c->cpu_busy = 1;
    return MS_OK;
}

/* Ends what moe_cpu_start began: the down products and weighted sum into h_cpu_y, then its
 * upload and add to the residual on the compute stream (after the GPU's experts). With fail
 * set it only waits and lets the experts go. */
static int moe_cpu_finish(cu_ctx *c, int il, int fail, ms_err *e) {
    if (!c->cpu_busy) return MS_OK;
    const ms_layer *ly = c->cpu_job.ly;
    const int E = c->m->hp.n_embd, n = c->n_cpu, nth = pool_size(c->cpu_pool);
    const int64_t ff = ly->gate_exps.n_out;
    pool_wait(c->cpu_pool);
    c->cpu_busy = 0;
    if (!fail) {
        if (quant_has_q16(ly->down_exps.type))
            for (int k = 0; k < n; k++)
                quant_q16_quantize(c->cpu_g + (size_t)k * ff, ff, c->cpu_actq + (size_t)k * quant_q16_bytes(ff));
        c->cpu_job.rows = MS_MAX(16, (E + CPU_ITEMS * nth - 1) / (CPU_ITEMS * nth));
        pool_run(c->cpu_pool, cpu_down_task, &c->cpu_job, (int)((E + c->cpu_job.rows - 1) / c->cpu_job.rows));
        if (c->cpu_auto) bal_step(c, cudaEventQuery(c->ev_gx) == cudaErrorNotReady);
    }
    experts_release(c->store, il, c->cpu_ids, n);
    if (fail) return MS_OK;
    /* where mapped, the add reads the pinned sum over the link: no copy node. The host writes the
     * next layer's sum only after that layer's router event, which follows this add on the stream.
     * (H100 machine: 8G 102.4 / 105.5 / 107.1 against 102.4 / 101.6 / 105.0 tok/s with the copy,
     * share 0.6 108.3 against 102.9, 24G 130.4 against 123.1.) */
    const float *y = c->m_cpu_y;
    if (!y) {
        CK(cudaMemcpyAsync(c->d_cpu_y, c->h_cpu_y, sizeof(float) * (size_t)E, cudaMemcpyHostToDevice, c->cs));
        y = c->d_cpu_y;
    }
    k_add<<<(unsigned)((E + 255) / 256), 256, 0, c->cs>>>(c->x, y, E);
    return MS_OK;
}


/* The experts of one layer with host routing: group the batch's slots by expert (ascending
 * ids, as forward.c), then waves of experts that fit in the cache at once. */
static int moe_host(cu_ctx *c, const ms_layer *ly, const dlayer *d, int il, int T, ms_err *e) {
    const ms_hparams *hp = &c->m->hp;
    const int NE = hp->n_expert, K = hp->n_expert_used, TK = T * K;
    memset(c->exp_count, 0, sizeof(int) * (size_t)NE);
    const int one = routes_in_r1(c, T);
    const int *h_sel = one ? (const int *)c->h_r1 : c->h_sel;
    const float *h_selw = one ? (const float *)c->h_r1 + K : c->h_selw;
    for (int i = 0; i < TK; i++) c->exp_count[h_sel[i]]++;
    int n_exp = 0, slots = 0;
    for (int x = 0; x < NE; x++) {
        if (!c->exp_count[x]) continue;
        c->exp_ids[n_exp] = x;
        c->exp_first[n_exp] = slots;
        c->exp_index[x] = n_exp;
        slots += c->exp_count[x];
        n_exp++;
    }
    int *h_slot_of = c->h_x_idx + TK, *d_slot_of = c->x_idx + TK;
    float *h_slot_w = (float *)(c->h_x_idx + 2 * TK), *d_slot_w = (float *)(c->x_idx + 2 * TK);
    for (int i = 0; i < n_exp; i++) c->fill[i] = c->exp_first[i];
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) {
            const int s = c->fill[c->exp_index[h_sel[t * K + k]]]++;
            c->h_x_idx[s] = t;
            h_slot_w[s] = h_selw[t * K + k];
            h_slot_of[t * K + k] = s;
        }
    for (int i = 0; i < n_exp; i++) c->exp_count[i] = c->fill[i] - c->exp_first[i];
    CK(cudaMemcpyAsync(c->x_idx, c->h_x_idx, sizeof(int) * (size_t)TK * 3, cudaMemcpyHostToDevice, c->cs));

    if (c->pend.n && c->pend.il != il) flush_pending(c);
    const int pf = c->pf_il == il; /* the prefetch made while the previous layer computed is for this one */
    c->n_cpu = 0;
    /* cleared for every batch: a failed one may have left marks of experts it never reached */
    if (c->cpu_on) memset(c->cpu_mark, 0, sizeof(int) * (size_t)n_exp);
    if (T == 1 && c->cpu_on) {
        /* the misses the prefetch left to the host, then a share of the others (those least often
         * asked for: they would be evicted first) */
        int n_m = 0, *cand = c->fill, left = 0;
        c->cpu_gen++;
        for (int i = 0; i < n_exp; i++) {
            if (c->map_slot[il * NE + c->exp_ids[i]] >= 0) continue;
            if (c->cpu_left[c->exp_ids[i]] == c->cpu_gen) cand[n_m++] = cand[left], cand[left++] = i;
            else cand[n_m++] = i;
        }
        for (int take = left + cpu_take(c, n_m - left); c->n_cpu < take; c->n_cpu++) {
            int best = c->n_cpu;
            for (int j = c->n_cpu + 1; j < n_m && c->n_cpu >= left; j++)
                if (c->freq[il * NE + c->exp_ids[cand[j]]] < c->freq[il * NE + c->exp_ids[cand[best]]]) best = j;
            const int i = cand[best];
            cand[best] = cand[c->n_cpu];
            c->cpu_mark[i] = 1;
            c->cpu_ids[c->n_cpu] = c->exp_ids[i];
            c->cpu_w[c->n_cpu] = h_slot_w[c->exp_first[i]];
        }
        /* the workers start on them while this thread queues the GPU's experts */
        if (c->n_cpu) {
            int rc = moe_cpu_start(c, ly, il, e);
            if (rc) return rc;
        }
    }
    int done = 0;
    int *hit = c->order, *got = c->order + NE, *miss = c->order + 2 * NE;
    while (done < n_exp) {
        c->wave++;
        int n_hit = 0, n_got = 0, n_miss = 0, last_pf = -1;
        /* hits first, so their kernels start while the misses are still on the way; then the
         * prefetched experts (their copies were queued first), then the misses */
        for (; done < n_exp; done++) {
            const int key = il * NE + c->exp_ids[done];
            if (c->cpu_on && c->cpu_mark[done]) { /* computed on the host (moe_cpu_start) */
                c->timing.cache_requests++;
                c->timing.cache_cpu++;
                cache_request(c, key);
                continue;
            }
            int s = c->map_slot[key];
            if (s < 0) {
                s = cache_victim(c);
                if (s < 0) break; /* every slot holds an expert of this wave: next wave */
                if (c->slot_owner[s] >= 0) c->map_slot[c->slot_owner[s]] = -1;
                c->slot_owner[s] = key;
                c->map_slot[key] = s;
                if (c->slot_pf) c->slot_pf[s] = -1;
                miss[n_miss++] = done;
            } else if (pf && c->slot_pf[s] >= 0) {
                /* a prefetch hit counts apart from the hits, as the CPU's prefetch_used */
                got[n_got++] = done;
                last_pf = MS_MAX(last_pf, c->slot_pf[s]);
                c->prefetch_used++;
                c->timing.cache_prefetch_used++;
            } else {
                hit[n_hit++] = done;
                c->timing.cache_hits++;
            }
            c->slot_wave[s] = c->wave;
            c->timing.cache_requests++;
            cache_request(c, key);
        }
        const int n = n_hit + n_got + n_miss;
        mv_group *gu = c->h_grp_up, *gd = c->h_grp_up + n;
        int max_hit = 0, max_got = 0;
        for (int j = 0; j < n; j++) {
            const int i = j < n_hit ? hit[j] : j < n_hit + n_got ? got[j - n_hit] : miss[j - n_hit - n_got];
            const uint8_t *b = slot_ptr(c, c->map_slot[il * NE + c->exp_ids[i]]);
            gu[j].w = b, gu[j].w2 = b + d->off_up, gu[j].s0 = c->exp_first[i], gu[j].ns = c->exp_count[i];
            gd[j].w = b + d->off_down, gd[j].w2 = NULL, gd[j].s0 = c->exp_first[i], gd[j].ns = c->exp_count[i];
            if (j < n_hit) max_hit = MS_MAX(max_hit, c->exp_count[i]);
            else if (j < n_hit + n_got) max_got = MS_MAX(max_got, c->exp_count[i]);
        }
        CK(cudaMemcpyAsync(c->grp_up, c->h_grp_up, sizeof(mv_group) * (size_t)2 * n, cudaMemcpyHostToDevice, c->cs));
        /* the misses' copies, on the copy stream */
        int *mids = c->exp_index; /* free again after the grouping above */
        uint8_t **mdst = c->miss_dst;
        for (int j = 0; j < n_miss; j++) {
            mids[j] = c->exp_ids[miss[j]];
            mdst[j] = (uint8_t *)slot_ptr(c, c->map_slot[il * NE + mids[j]]);
        }
        int rc = issue_copies(c, d, il, mids, mdst, n_miss, &c->pend, c->ev_copy, e);
        if (rc) return rc;
        const mv_group *dgu = c->grp_up, *dgd = c->grp_up + n;
        if (n_hit && run_experts(c, ly, dgu, dgd, n_hit, max_hit, T, d_slot_w)) return ms_fail(e, MS_ERR_UNSUPPORTED, "expert kernel launch failed");
        if (n_got) {
            /* one launch behind the last of their copies: they were queued a layer ago, so the
             * copy engine is usually done with all of them */
            CK(cudaStreamWaitEvent(c->cs, c->ev_pf[last_pf], 0));
            if (run_experts(c, ly, dgu + n_hit, dgd + n_hit, n_got, max_got, T, d_slot_w))
                return ms_fail(e, MS_ERR_UNSUPPORTED, "expert kernel launch failed");
        }
        for (int j = 0; j < n_miss; j++) {
            const int i = miss[j], g = n_hit + n_got + j;
            CK(cudaStreamWaitEvent(c->cs, c->ev_copy[j], 0));
            if (run_experts(c, ly, dgu + g, dgd + g, 1, c->exp_count[i], T, d_slot_w))
                return ms_fail(e, MS_ERR_UNSUPPORTED, "expert kernel launch failed");
        }
        if (done < n_exp) {
            /* the next wave reuses slots and the host-side group arrays */
            CK(cudaStreamSynchronize(c->cs));
            flush_pending(c);
        }
    }
    if (pf) {
        /* The prefetch is used up. The compute stream waits for its last copy, so no later
         * kernel can read a slot a mispredicted copy is still filling, and its store pins can go
         * once the host has seen the next router (layer_post). */
        if (c->n_pf) CK(cudaStreamWaitEvent(c->cs, c->ev_pf_done, 0));
        for (int i = 0; i < c->n_pf; i++) c->slot_pf[c->pf_slots[i]] = -1;
        c->n_pf = 0;
        c->pf_il = -1;
        pending t = c->pf_old; /* empty: layer_post released it */
        c->pf_old = c->pf_cur;
        c->pf_cur = t;
    }
    if (c->cpu_auto && T == 1) {
        if (c->n_cpu) CK(cudaEventRecord(c->ev_gx, c->cs));
        else bal_step(c, 1); /* the host had nothing: it waits for the GPU */
    }
    if (T > 1) {
        const size_t n = (size_t)T * hp->n_embd;
        k_combine<<<(unsigned)((n + 255) / 256), 256, 0, c->cs>>>(c->x, c->ybuf, c->selw, d_slot_of, T, K, hp->n_embd);
    }
    return MS_OK;
}

/* The part of a layer that needs no routing decision: norms, attention or Gated DeltaNet,
 * router, top-k (copied to the host when it routes), shared expert. Nothing here waits on the
 * host, so decode can replay it as a per-layer graph. */
static int layer_pre(cu_ctx *c, const dlayer *d, int il, int T, ms_err *e) {
    const ms_hparams *hp = &c->m->hp;
    const int E = hp->n_embd, NE = hp->n_expert, K = hp->n_expert_used;
    tev_record(c, il, 0);
    /* one token of an attention layer: the q|k|v product norms x itself */
    const int att_norms = T == 1 && d->kind == MS_LAYER_ATTN;
    if (!att_norms) k_rmsnorm<<<T, 512, 0, c->cs>>>(c->x, E, c->h, E, d->attn_norm, E, hp->norm_eps);
    int bad = d->kind == MS_LAYER_ATTN ? attention(c, d, T, att_norms) : gated_deltanet(c, d, T);
    if (bad) return ms_fail(e, MS_ERR_UNSUPPORTED, "layer %d: kernel launch failed", il);
    tev_record(c, il, 1);
    /* one token with an F32 router: norm, router and top-k in one launch (k_router1) */
    const int fused_router = T == 1 && d->router.type == MS_TYPE_F32 && d->router.n_in == E && d->router.n_out == NE &&
                             E % 128 == 0 && (size_t)E * sizeof(float) <= 48 * 1024;
    if (!fused_router) k_rmsnorm<<<T, 512, 0, c->cs>>>(c->x, E, c->h, E, d->ffn_norm, E, hp->norm_eps);
    const int host = !(c->resident && T == 1);
    topk_args tk;
    memset(&tk, 0, sizeof tk);
    tk.K = K;
    tk.norm = hp->norm_topk;
    tk.scale = hp->expert_weights_scale;
    const int one = host && routes_in_r1(c, T);
    /* the fused router can write one token's routing straight into mapped pinned memory */
    const int zero = one && fused_router && c->m_r1;
    int *r1 = zero ? (int *)c->m_r1 : c->r1;
    tk.sel = one ? r1 : c->sel;
    tk.selw = one ? (float *)(r1 + K) : c->selw;
    if (!host) {
        tk.base = c->exp_base + (size_t)il * NE;
        tk.off_up = d->off_up;
        tk.off_down = d->off_down;
        tk.up = c->grp_up;
        tk.down = c->grp_up + K;
    }
    if (fused_router) {
        k_router1<<<(unsigned)((NE + 3) / 4), 128, (size_t)E * sizeof(float), c->cs>>>(
            c->x, d->ffn_norm, hp->norm_eps, c->h, zero ? (float *)(c->m_r1 + route1_head(K)) : NULL, (const float *)d->router.d, E,
            NE, c->router, c->d_done, tk);
    } else if (T == 1) {
        /* one token: the router product's last block runs the top-k */
        mv_args a;
        memset(&a, 0, sizeof a);
        a.g.w = d->router.d;
        a.g.ns = 1;
        a.n_groups = 1;
        a.row_bytes = d->router.row_bytes;
        a.n_in = d->router.n_in;
        a.n_out = d->router.n_out;
        a.x = c->h;
        a.ldx = E;
        a.y = c->router;
        a.ldy = NE;
        a.mode = MV_STORE;
        a.tail_done = c->d_done;
        a.tk = tk;
        if (launch_mat(d->router.type, a, 1, 1, c->cs)) return ms_fail(e, MS_ERR_UNSUPPORTED, "router launch failed");
    } else {
        if (run_mat(c, &d->router, NULL, c->h, E, c->router, NE, T, MV_STORE, NULL)) return ms_fail(e, MS_ERR_UNSUPPORTED, "router launch failed");
        k_topk<<<T, 32, 0, c->cs>>>(c->router, NE, tk);
    }
    if (host) {
        if (zero) {
            /* written by k_router1 */
        } else if (one) {
            CK(cudaMemcpyAsync(c->h_r1, c->r1, route1_bytes(K, E), cudaMemcpyDeviceToHost, c->cs));
        } else {
            if (T == 1 && c->cpu_on) CK(cudaMemcpyAsync(c->h_hin, c->h, sizeof(float) * (size_t)E, cudaMemcpyDeviceToHost, c->cs));
            CK(cudaMemcpyAsync(c->h_sel, c->sel, sizeof(int) * (size_t)T * K, cudaMemcpyDeviceToHost, c->cs));
            CK(cudaMemcpyAsync(c->h_selw, c->selw, sizeof(float) * (size_t)T * K, cudaMemcpyDeviceToHost, c->cs));
        }
        /* inside a graph capture only an external record makes a node the host can wait on */
        CK(c->capturing ? cudaEventRecordWithFlags(c->ev_route, c->cs, cudaEventRecordExternal) : cudaEventRecord(c->ev_route, c->cs));
    }
    if (looks_ahead(c, il, T)) {
        /* the next layer's router on this residual, before this layer's experts add to it (as
         * forward.c's lookahead); its top-k goes to the host for prefetch_next */
        const dlayer *dn = &c->L[il + 1];
        k_rmsnorm<<<1, 512, 0, c->cs>>>(c->x, E, c->look_h, E, dn->ffn_norm, E, hp->norm_eps);
        mv_args a;
        memset(&a, 0, sizeof a);
        a.g.w = dn->router.d;
        a.g.ns = 1;
        a.n_groups = 1;
        a.row_bytes = dn->router.row_bytes;
        a.n_in = dn->router.n_in;
        a.n_out = dn->router.n_out;
        a.x = c->look_h;
        a.ldx = E;
        a.y = c->look_logits;
        a.ldy = NE;
        a.mode = MV_STORE;
        a.tail_done = c->d_done;
        a.tk.K = K;
        a.tk.sel = c->m_look ? c->m_look : c->look_sel; /* the ids straight to the host where mapped */
        a.tk.selw = c->look_selw;
        if (launch_mat(dn->router.type, a, 1, 1, c->cs)) return ms_fail(e, MS_ERR_UNSUPPORTED, "lookahead router launch failed");
        if (a.tk.sel == c->look_sel)
            CK(cudaMemcpyAsync(c->h_look, c->look_sel, sizeof(int) * (size_t)K, cudaMemcpyDeviceToHost, c->cs));
        CK(c->capturing ? cudaEventRecordWithFlags(c->ev_look, c->cs, cudaEventRecordExternal) : cudaEventRecord(c->ev_look, c->cs));
    }
    tev_record(c, il, 2);
    /* the shared expert needs no routing: queued now, it runs while the host looks experts up */
    if (d->sh_up.d) {
        const int sf = hp->n_ff_shexp;
        int bad = 0;
        if (d->sh_gate.type == d->sh_up.type) {
            bad |= run_mat(c, &d->sh_gate, &d->sh_up, c->h, E, c->sh_act, sf, T, MV_SWIGLU, NULL);
        } else {
            bad |= run_mat(c, &d->sh_gate, NULL, c->h, E, c->sh_act, sf, T, MV_STORE, NULL);
            bad |= run_mat(c, &d->sh_up, NULL, c->h, E, c->sh_tmp, sf, T, MV_STORE, NULL);
            const size_t n = (size_t)T * sf;
            k_swiglu<<<(unsigned)((n + 255) / 256), 256, 0, c->cs>>>(c->sh_act, c->sh_tmp, n);
        }
        if (d->sh_router.d) bad |= run_mat(c, &d->sh_router, NULL, c->h, E, c->sh_gate, 1, T, MV_STORE, NULL);
        bad |= run_mat(c, &d->sh_down, NULL, c->sh_act, sf, c->x, E, T, d->sh_router.d ? MV_GATED : MV_ADD,
                       d->sh_router.d ? c->sh_gate : NULL);
        if (bad) return ms_fail(e, MS_ERR_UNSUPPORTED, "shared expert launch failed");
    }
    return MS_OK;
}

/* The routed experts of a layer, after layer_pre. */
static int layer_post(cu_ctx *c, const ms_layer *ly, const dlayer *d, int il, int T, ms_err *e) {
    const ms_hparams *hp = &c->m->hp;
    const int NE = hp->n_expert, K = hp->n_expert_used;
    if (c->resident && T == 1) {
        /* every expert resident: the top-k wrote the groups */
        mv_group *gu = c->grp_up, *gd = c->grp_up + K;
        (void)NE;
        c->timing.cache_requests += (uint64_t)K;
        c->timing.cache_hits += (uint64_t)K;
        if (run_experts(c, ly, gu, gd, K, 1, 1, c->selw)) return ms_fail(e, MS_ERR_UNSUPPORTED, "expert kernel launch failed");
        tev_record(c, il, 3);
        return MS_OK;
    }
    CK(cudaEventSynchronize(c->ev_route));
    flush_pending(c); /* the previous layer's copies are done: its kernels ran before the router */
    pf_release(c, &c->pf_old); /* so are those of the prefetch it used (moe_host waited for them) */
    /* the host computes its experts while the GPU runs the others; the next layer's prefetch is
     * queued meanwhile, behind this layer's misses, so its copies overlap this layer's experts
     * and the next layer's first part */
    int rc = moe_host(c, ly, d, il, T, e);
    if (!rc && looks_ahead(c, il, T)) {
        /* not CK: a failure must still wait for the host's job */
        const cudaError_t r = cudaEventSynchronize(c->ev_look);
        rc = r != cudaSuccess ? cuda_fail(e, r, "cudaEventSynchronize") : prefetch_next(c, il, e);
    }
    const int rc2 = moe_cpu_finish(c, il, rc != 0, e);
    if (!rc) rc = rc2;
    c->n_cpu = 0;
    tev_record(c, il, 3);
    return rc;
}

/* ---------------------------------------------------------------- driver */

/* Queues a batch's forward pass on the compute stream, through the copy of the first
 * LOGIT_ROWS rows of logits (rows first..T-1) into logits_pin. The host waits only inside
 * host-routed MoE layers, so with every expert resident one token queues without a wait and can
 * be captured as a graph. */
static int enqueue_batch(cu_ctx *c, int T, int first, ms_err *e) {
    const struct ms_model *m = c->m;
    const ms_hparams *hp = &m->hp;
    const int E = hp->n_embd, nv = hp->n_vocab;
    CK(cudaMemcpyAsync(c->tok, c->h_tok, sizeof(int) * (size_t)T, cudaMemcpyHostToDevice, c->cs));
    CK(cudaMemcpyAsync(c->d_pos, c->h_pos, sizeof(int), cudaMemcpyHostToDevice, c->cs));
    launch_rows(c->tok_embd.type, c->tok_embd.d, c->tok_embd.row_bytes, c->tok, c->x, E, T, c->cs);
    /* decode with host routing: each layer's first part is one captured graph, replayed */
    const int layer_graphs = c->use_graph && T == 1 && !c->resident && !c->timing_on;
    for (int il = 0; il < hp->n_layer; il++) {
        const ms_layer *ly = &m->layers[il];
        const dlayer *d = &c->L[il];
        int rc;
        if (layer_graphs && !c->lgraph[il]) {
            cudaGraph_t g = NULL;
            CK(cudaStreamBeginCapture(c->cs, cudaStreamCaptureModeThreadLocal));
            c->capturing = 1;
            rc = layer_pre(c, d, il, T, e);
            c->capturing = 0;
            cudaError_t r2 = cudaStreamEndCapture(c->cs, &g);
            if (rc || r2 != cudaSuccess) {
                if (g) cudaGraphDestroy(g);
                cudaGetLastError();
                return rc ? rc : cuda_fail(e, r2, "cudaStreamEndCapture");
            }
            r2 = cudaGraphInstantiate(&c->lgraph[il], g, 0);
            cudaGraphDestroy(g);
            if (r2 != cudaSuccess) {
                c->lgraph[il] = NULL;
                return cuda_fail(e, r2, "cudaGraphInstantiate");
            }
        }
        if (layer_graphs) CK(cudaGraphLaunch(c->lgraph[il], c->cs));
        else if ((rc = layer_pre(c, d, il, T, e))) return rc;
        if ((rc = layer_post(c, ly, d, il, T, e))) return rc;
    }
    CK(cudaGetLastError());
    const int rows = T - first, n = MS_MIN(LOGIT_ROWS, rows);
    k_rmsnorm<<<rows, 512, 0, c->cs>>>(c->x + (size_t)first * E, E, c->h, E, c->output_norm, E, hp->norm_eps);
    if (run_mat(c, &c->output, NULL, c->h, E, c->dlogits, nv, n, MV_STORE, NULL))
        return ms_fail(e, MS_ERR_UNSUPPORTED, "lm_head launch failed");
    CK(cudaMemcpyAsync(c->logits_pin, c->dlogits, sizeof(float) * (size_t)n * nv, cudaMemcpyDeviceToHost, c->cs));
    return MS_OK;
}

static int eval_batch(cu_ctx *c, const int32_t *tokens, int T, int all_logits, ms_err *e) {
    const ms_hparams *hp = &c->m->hp;
    const int E = hp->n_embd, nv = hp->n_vocab;
    const double t0 = ms_time();
    memcpy(c->h_tok, tokens, sizeof(int) * (size_t)T);
    *c->h_pos = c->pos;
    const int first = all_logits ? 0 : T - 1, rows = T - first;
    const int graphable = c->use_graph && c->resident && T == 1 && !c->timing_on;
    if (graphable && c->graph) {
        /* the same kernels as the captured token; the position and token come from h_pos/h_tok */
        CK(cudaGraphLaunch(c->graph, c->cs));
        c->timing.cache_requests += (uint64_t)hp->n_layer * hp->n_expert_used;
        c->timing.cache_hits += (uint64_t)hp->n_layer * hp->n_expert_used;
    } else if (graphable) {
        cudaGraph_t g = NULL;
        CK(cudaStreamBeginCapture(c->cs, cudaStreamCaptureModeThreadLocal));
        int rc = enqueue_batch(c, T, first, e);
        cudaError_t r2 = cudaStreamEndCapture(c->cs, &g);
        if (rc || r2 != cudaSuccess) {
            if (g) cudaGraphDestroy(g);
            cudaGetLastError();
            return rc ? rc : cuda_fail(e, r2, "cudaStreamEndCapture");
        }
        r2 = cudaGraphInstantiate(&c->graph, g, 0);
        cudaGraphDestroy(g);
        if (r2 != cudaSuccess) {
            c->graph = NULL;
            return cuda_fail(e, r2, "cudaGraphInstantiate");
        }
        CK(cudaGraphLaunch(c->graph, c->cs));
    } else {
        int rc = enqueue_batch(c, T, first, e);
        if (rc) return rc;
    }
    CK(cudaStreamSynchronize(c->cs));
    if (rows > LOGIT_ROWS) {
        memcpy(c->logits_host, c->logits_pin, sizeof(float) * (size_t)LOGIT_ROWS * nv);
        for (int r0 = LOGIT_ROWS; r0 < rows; r0 += LOGIT_ROWS) {
            const int n = MS_MIN(LOGIT_ROWS, rows - r0);
            if (run_mat(c, &c->output, NULL, c->h + (size_t)r0 * E, E, c->dlogits, nv, n, MV_STORE, NULL))
                return ms_fail(e, MS_ERR_UNSUPPORTED, "lm_head launch failed");
            CK(cudaMemcpyAsync(c->logits_pin, c->dlogits, sizeof(float) * (size_t)n * nv, cudaMemcpyDeviceToHost, c->cs));
            CK(cudaStreamSynchronize(c->cs));
            memcpy(c->logits_host + (size_t)r0 * nv, c->logits_pin, sizeof(float) * (size_t)n * nv);
        }
    }
    flush_pending(c);
    pf_release(c, &c->pf_old); /* the last layer's compute waited for its copies */
    c->logits_rows = rows > LOGIT_ROWS ? c->logits_host : c->logits_pin;
    c->n_logits = rows;
    c->pos += T;
    const double wall = ms_time() - t0;
    double gpu = 0;
    if (c->timing_on) {
        for (int il = 0; il < hp->n_layer; il++) {
            float a = 0, r = 0, x = 0;
            cudaEventElapsedTime(&a, c->tev[il * 4 + 0], c->tev[il * 4 + 1]);
            cudaEventElapsedTime(&r, c->tev[il * 4 + 1], c->tev[il * 4 + 2]);
            cudaEventElapsedTime(&x, c->tev[il * 4 + 2], c->tev[il * 4 + 3]);
            c->timing.attn += a * 1e-3;
            c->timing.route += r * 1e-3;
            c->timing.expert_compute += x * 1e-3;
            gpu += (a + r + x) * 1e-3;
        }
    }
    c->timing.other += wall > gpu ? wall - gpu : 0;
    c->timing.tokens += (uint64_t)T;
    return MS_OK;
}

static int cu_eval(void *ctx, const int32_t *tokens, int n, int all_logits, ms_err *e) {
    cu_ctx *c = (cu_ctx *)ctx;
    const ms_hparams *hp = &c->m->hp;
    if (n <= 0) return ms_fail(e, MS_ERR_ARG, "nothing to evaluate");
    if (c->pos + n > c->n_ctx)
        return ms_fail(e, MS_ERR_CONTEXT, "context full: %d positions used + %d new tokens > context size %d (use -c to enlarge)",
                       c->pos, n, c->n_ctx);
    if (all_logits && n > c->n_batch)
        return ms_fail(e, MS_ERR_ARG, "all-position logits need n <= batch size (%d > %d)", n, c->n_batch);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= hp->n_vocab)
            return ms_fail(e, MS_ERR_ARG, "token id %d out of range [0, %d)", tokens[i], hp->n_vocab);
    CK(cudaSetDevice(c->dev));
    memcpy(c->history + c->pos, tokens, sizeof(int32_t) * (size_t)n);
    c->n_logits = 0;
    for (int done = 0; done < n;) {
        const int T = MS_MIN(c->n_batch, n - done);
        int rc = eval_batch(c, tokens + done, T, all_logits, e);
        if (rc) {
            cudaStreamSynchronize(c->cs);
            cudaStreamSynchronize(c->xs);
            flush_pending(c);
            pf_drop(c);
            return rc;
        }
        done += T;
    }
    return MS_OK;
}

static const float *cu_logits(const void *ctx, int i) {
    const cu_ctx *c = (const cu_ctx *)ctx;
    if (i < 0 || i >= c->n_logits) return NULL;
    return c->logits_rows + (size_t)i * c->m->hp.n_vocab;
}
static int cu_n_logits(const void *ctx) { return ((const cu_ctx *)ctx)->n_logits; }
static int cu_pos(const void *ctx) { return ((const cu_ctx *)ctx)->pos; }
static int cu_n_ctx(const void *ctx) { return ((const cu_ctx *)ctx)->n_ctx; }
static const int32_t *cu_history(const void *ctx) { return ((const cu_ctx *)ctx)->history; }
static const ms_timing *cu_timing(const void *ctx) { return &((const cu_ctx *)ctx)->timing; }

/* ---------------------------------------------------------------- prefix reuse (as forward.c) */

static int cu_checkpoint(void *ctx, ms_err *e) {
    cu_ctx *c = (cu_ctx *)ctx;
    if (!c->state_floats || c->pos == 0) return MS_OK;
    int slot = 0;
    for (int i = 0; i < MS_N_CHECKPOINTS; i++) {
        if (c->ckpt[i].pos == c->pos) {
            slot = i;
            break;
        }
        if (c->ckpt[i].used < c->ckpt[slot].used) slot = i;
    }
    if (!c->ckpt[slot].state) {
        c->ckpt[slot].state = (float *)ms_malloc_aligned(sizeof(float) * c->state_floats);
        if (!c->ckpt[slot].state) return ms_fail(e, MS_ERR_NOMEM, "out of memory saving a state checkpoint");
    }
    CK(cudaSetDevice(c->dev));
    CK(cudaMemcpy(c->ckpt[slot].state, c->states, sizeof(float) * c->state_floats, cudaMemcpyDeviceToHost));
    c->ckpt[slot].pos = c->pos;
    c->ckpt[slot].used = ++c->ckpt_clock;
    return MS_OK;
}

static int cu_resume_point(const void *ctx, int pos) {
    const cu_ctx *c = (const cu_ctx *)ctx;
    if (pos >= c->pos) return c->pos;
    if (!c->state_floats) return pos;
    int best = 0;
    for (int i = 0; i < MS_N_CHECKPOINTS; i++)
        if (c->ckpt[i].pos <= pos && c->ckpt[i].pos > best) best = c->ckpt[i].pos;
    return best;
}

static void cu_reset(void *ctx) {
    cu_ctx *c = (cu_ctx *)ctx;
    c->pos = 0;
    c->n_logits = 0;
    for (int i = 0; i < MS_N_CHECKPOINTS; i++) c->ckpt[i].pos = -1;
    if (c->state_floats) {
        cudaSetDevice(c->dev);
        cudaMemset(c->states, 0, sizeof(float) * c->state_floats);
    }
}

static int cu_truncate(void *ctx, int pos, ms_err *e) {
    cu_ctx *c = (cu_ctx *)ctx;
    if (pos < 0 || pos > c->pos) return ms_fail(e, MS_ERR_ARG, "cannot move to position %d (at %d)", pos, c->pos);
    if (pos == c->pos) return MS_OK;
    if (pos == 0) {
        cu_reset(c);
        return MS_OK;
    }
    if (c->state_floats) {
        int i;
        for (i = 0; i < MS_N_CHECKPOINTS; i++)
            if (c->ckpt[i].pos == pos) break;
        if (i == MS_N_CHECKPOINTS) return ms_fail(e, MS_ERR_ARG, "no recurrent-state checkpoint at position %d", pos);
        CK(cudaSetDevice(c->dev));
        CK(cudaMemcpy(c->states, c->ckpt[i].state, sizeof(float) * c->state_floats, cudaMemcpyHostToDevice));
        c->ckpt[i].used = ++c->ckpt_clock;
    }
    for (int i = 0; i < MS_N_CHECKPOINTS; i++)
        if (c->ckpt[i].pos > pos) c->ckpt[i].pos = -1;
    c->pos = pos;
    c->n_logits = 0;
    return MS_OK;
}

/* ---------------------------------------------------------------- lifetime */

static void cu_destroy(void *ctx) {
    cu_ctx *c = (cu_ctx *)ctx;
    if (!c) return;
    cudaSetDevice(c->dev);
    if (c->cs) cudaStreamSynchronize(c->cs);
    if (c->xs) cudaStreamSynchronize(c->xs);
    flush_pending(c);
    if (c->slot_pf) pf_drop(c);
    pool_free(c->pool);
    for (int i = 0; i < c->n_reg; i++) cudaHostUnregister((void *)c->reg_lo[i]);
    ms_free(c->reg_lo);
    ms_free(c->reg_hi);
    const int NE = c->m->hp.n_expert;
    if (c->ev_copy)
        for (int i = 0; i < NE; i++)
            if (c->ev_copy[i]) cudaEventDestroy(c->ev_copy[i]);
    ms_free(c->ev_copy);
    if (c->ev_pf)
        for (int i = 0; i < NE; i++)
            if (c->ev_pf[i]) cudaEventDestroy(c->ev_pf[i]);
    ms_free(c->ev_pf);
    if (c->ev_pf_done) cudaEventDestroy(c->ev_pf_done);
    if (c->ev_gx) cudaEventDestroy(c->ev_gx);
    if (c->ev_look) cudaEventDestroy(c->ev_look);
    if (c->stage_ev)
        for (int i = 0; i < c->n_stage; i++)
            if (c->stage_ev[i]) cudaEventDestroy(c->stage_ev[i]);
    ms_free(c->stage_ev);
    if (c->tev)
        for (int i = 0; i < 4 * c->m->hp.n_layer; i++)
            if (c->tev[i]) cudaEventDestroy(c->tev[i]);
    ms_free(c->tev);
    if (c->ev_route) cudaEventDestroy(c->ev_route);
    if (c->cs) cudaStreamDestroy(c->cs);
    if (c->xs) cudaStreamDestroy(c->xs);
    cudaFree(c->arena);
    cudaFree(c->slots);
    cudaFreeHost(c->staging);
    cudaFreeHost(c->h_tok);
    cudaFreeHost(c->h_pos);
    if (c->graph) cudaGraphExecDestroy(c->graph);
    if (c->lgraph)
        for (int i = 0; i < c->m->hp.n_layer; i++)
            if (c->lgraph[i]) cudaGraphExecDestroy(c->lgraph[i]);
    ms_free(c->lgraph);
    cudaFreeHost(c->h_sel);
    cudaFreeHost(c->h_selw);
    pool_free(c->cpu_pool);
    cudaFreeHost(c->h_r1);
    cudaFreeHost(c->h_cpu_y);
    cudaFree(c->d_cpu_y);
    ms_free(c->cpu_ids);
    ms_free(c->cpu_mark);
    ms_free(c->cpu_left);
    ms_free(c->cpu_w);
    ms_free_aligned(c->cpu_g);
    ms_free_aligned(c->cpu_u);
    ms_free_aligned(c->cpu_y);
    ms_free_aligned(c->cpu_xq);
    ms_free_aligned(c->cpu_actq);
    cudaFreeHost(c->h_look);
    ms_free(c->cpu_refs);
    cudaFreeHost(c->h_x_idx);
    cudaFreeHost(c->h_grp_up);
    cudaFreeHost(c->logits_pin);
    ms_free(c->history);
    ms_free_aligned(c->logits_host);
    ms_free(c->exp_count);
    ms_free(c->exp_ids);
    ms_free(c->exp_first);
    ms_free(c->exp_index);
    ms_free(c->fill);
    ms_free(c->order);
    ms_free(c->miss_dst);
    ms_free(c->refs);
    ms_free(c->pend.ids);
    ms_free(c->pf_cur.ids);
    ms_free(c->pf_old.ids);
    ms_free(c->pf_slots);
    ms_free(c->slot_pf);
    ms_free(c->slot_owner);
    ms_free(c->slot_wave);
    ms_free(c->map_slot);
    ms_free(c->freq);
    for (int i = 0; i < MS_N_CHECKPOINTS; i++) ms_free_aligned(c->ckpt[i].state);
    ms_free(c->L);
    ms_free(c);
}

/* Checks what the kernels assume; MS_OK or MS_ERR_UNSUPPORTED naming the first problem. */
static int check_mat(const ms_mat *w, const char *what, int il, ms_err *e) {
    if (!w->data) return MS_OK;
    if (!type_supported(w->type))
        return ms_fail(e, MS_ERR_UNSUPPORTED, "the CUDA backend has no kernel for %s weights (%s, layer %d)", quant_name(w->type), what, il);
    if (w->n_in % 8)
        return ms_fail(e, MS_ERR_UNSUPPORTED, "the CUDA backend needs rows of a multiple of 8 values (%s, layer %d: %lld)", what, il,
                       (long long)w->n_in);
    if (w->n_out > 0x7fffffff) return ms_fail(e, MS_ERR_UNSUPPORTED, "%s is too large for the CUDA backend", what);
    return MS_OK;
}

static int check_model(const struct ms_model *m, ms_err *e) {
    const ms_hparams *hp = &m->hp;
    TRY(check_mat(&m->tok_embd, "token_embd", -1, e));
    TRY(check_mat(&m->output, "output", -1, e));
    if (hp->head_dim > 256 || hp->d_k > 256 || hp->d_v > 4096)
        return ms_fail(e, MS_ERR_UNSUPPORTED, "the CUDA backend supports head sizes up to 256 (head_dim %d, state %d)", hp->head_dim, hp->d_k);
    if (hp->n_expert_used > MAX_TOPK)
        return ms_fail(e, MS_ERR_UNSUPPORTED, "the CUDA backend routes to at most %d experts per token (%d asked)", MAX_TOPK, hp->n_expert_used);
    if (hp->n_expert > 8192) return ms_fail(e, MS_ERR_UNSUPPORTED, "too many experts for the CUDA backend (%d)", hp->n_expert);
    for (int il = 0; il < hp->n_layer; il++) {
        const ms_layer *ly = &m->layers[il];
        const ms_mat *mats[] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->wqkv, &ly->wz, &ly->wbeta, &ly->walpha, &ly->wba,
                                &ly->ssm_out, &ly->router, &ly->sh_gate, &ly->sh_up, &ly->sh_down, &ly->sh_router};
        const char *names[] = {"attn_q", "attn_k", "attn_v", "attn_output", "attn_qkv", "attn_gate", "ssm_beta", "ssm_alpha", "ssm_ba",
                               "ssm_out", "ffn_gate_inp", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp", "ffn_gate_inp_shexp"};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) TRY(check_mat(mats[i], names[i], il, e));
        const ms_mat3 *ex[] = {&ly->gate_exps, &ly->up_exps, &ly->down_exps};
        for (int i = 0; i < 3; i++) {
            ms_mat w = {ex[i]->type, ex[i]->n_in, ex[i]->n_out, ex[i]->row_bytes, ex[i]->data};
            TRY(check_mat(&w, i == 0 ? "ffn_gate_exps" : i == 1 ? "ffn_up_exps" : "ffn_down_exps", il, e));
        }
    }
    return MS_OK;
}


/* Loads every expert into its slot (the cache holds them all). */
static int preload(cu_ctx *c, ms_err *e) {
    const ms_hparams *hp = &c->m->hp;
    const int NE = hp->n_expert;
    const uint8_t **base = (const uint8_t **)ms_malloc(sizeof(void *) * (size_t)hp->n_layer * NE);
    if (!base) return ms_fail(e, MS_ERR_NOMEM, "out of memory");
    int ids[32];
    const int step = MS_MAX(1, MS_MIN(32, experts_capacity(c->store) / 2));
    for (int il = 0; il < hp->n_layer; il++) {
        const dlayer *d = &c->L[il];
        for (int x0 = 0; x0 < NE; x0 += step) {
            const int n = MS_MIN(step, NE - x0);
            for (int i = 0; i < n; i++) ids[i] = x0 + i;
            int rc = experts_acquire(c->store, il, ids, n, c->refs, e);
            if (rc) {
                ms_free(base);
                return rc;
            }
            for (int i = 0; i < n; i++) {
                const int key = il * NE + x0 + i, s = key;
                uint8_t *p = slot_ptr(c, s);
                cudaError_t r1 = cudaMemcpy(p, c->refs[i].gate, d->sz_gate, cudaMemcpyHostToDevice);
                cudaError_t r2 = cudaMemcpy(p + d->off_up, c->refs[i].up, d->sz_up, cudaMemcpyHostToDevice);
                cudaError_t r3 = cudaMemcpy(p + d->off_down, c->refs[i].down, d->sz_down, cudaMemcpyHostToDevice);
                if (r1 || r2 || r3) {
                    experts_release(c->store, il, ids, n);
                    ms_free(base);
                    return cuda_fail(e, r1 ? r1 : r2 ? r2 : r3, "loading experts");
                }
                c->map_slot[key] = s;
                c->slot_owner[s] = key;
                base[key] = p;
            }
            experts_release(c->store, il, ids, n);
        }
    }
    c->next_free = c->n_slots;
    cudaError_t rc = cudaMemcpy(c->exp_base, base, sizeof(void *) * (size_t)hp->n_layer * NE, cudaMemcpyHostToDevice);
    ms_free(base);
    if (rc) return cuda_fail(e, rc, "cudaMemcpy");
    return MS_OK;
}

/* Page-locks the host ranges expert copies read, so they copy in place: the model file's
 * mappings, or with --io ram the copy of the weights made at load (it is in memory anyway).
 * Skipped (copies go through staging) when the files would not fit in RAM, or
 * MS_CUDA_REGISTER=0. */
static void try_register(cu_ctx *c) {
    const gguf_file *f = c->m->gguf;
    const int arena = c->m->arena && c->m->arena_bytes > c->m->dense_arena_bytes; /* experts in it */
    const int n = arena ? 1 : f->n_parts;
    uint64_t total = 0;
    for (int i = 0; i < f->n_parts; i++) total += f->parts[i].size;
    const uint64_t ram = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    const uint64_t want = env_u64("MS_CUDA_REGISTER", 2); /* 0 never, 1 always, 2 when it fits */
    int ro = 0;
    cudaDeviceGetAttribute(&ro, cudaDevAttrHostRegisterReadOnlySupported, c->dev);
    if (!ro || want == 0 || (want == 2 && !arena && total > ram / 10 * 8)) return;
    c->reg_lo = (const uint8_t **)ms_calloc((size_t)n, sizeof(void *));
    c->reg_hi = (const uint8_t **)ms_calloc((size_t)n, sizeof(void *));
    if (!c->reg_lo || !c->reg_hi) return;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < n; i++) {
        const uint8_t *lo = arena ? c->m->arena : f->parts[i].map;
        const uint64_t size = arena ? c->m->arena_bytes : f->parts[i].size;
        const size_t len = (size + page - 1) / page * page;
        if (cudaHostRegister((void *)lo, len, cudaHostRegisterReadOnly) != cudaSuccess) {
            cudaGetLastError();
            for (int j = 0; j < c->n_reg; j++) cudaHostUnregister((void *)c->reg_lo[j]);
            c->n_reg = 0;
            return;
        }
        c->reg_lo[c->n_reg] = lo;
        c->reg_hi[c->n_reg] = lo + size;
        c->n_reg++;
    }
}

#define FAIL_NOMEM(what)                                                     \
    do {                                                                     \
        ms_fail(e, MS_ERR_NOMEM, "out of memory allocating %s", what);       \
        cu_destroy(c);                                                       \
        return NULL;                                                         \
    } while (0)

#define CKC(call)                                                            \
    do {                                                                     \
        cudaError_t rc_ = (call);                                            \
        if (rc_ != cudaSuccess) {                                            \
            cuda_fail(e, rc_, #call);                                        \
            cu_destroy(c);                                                   \
            return NULL;                                                     \
        }                                                                    \
    } while (0)

static void *cu_create(const struct ms_model *m, ms_store *store, const ms_backend_params *p, ms_err *e) {
    const ms_hparams *hp = &m->hp;
    int n_dev = 0;
    cudaError_t rc = cudaGetDeviceCount(&n_dev);
    if (rc != cudaSuccess || n_dev == 0) {
        cudaGetLastError();
        ms_fail(e, MS_ERR_UNSUPPORTED, "no usable CUDA device (%s)", rc != cudaSuccess ? cudaGetErrorString(rc) : "none found");
        return NULL;
    }
    if (p->gpu_device < 0 || p->gpu_device >= n_dev) {
        ms_fail(e, MS_ERR_ARG, "GPU device %d does not exist (%d found)", p->gpu_device, n_dev);
        return NULL;
    }
    if (p->n_ctx <= 0 || p->n_batch <= 0) {
        ms_fail(e, MS_ERR_ARG, "context size and batch size must be positive");
        return NULL;
    }
    if (check_model(m, e)) return NULL;
    cu_ctx *c = (cu_ctx *)ms_calloc(1, sizeof *c);
    if (!c) {
        ms_fail(e, MS_ERR_NOMEM, "out of memory");
        return NULL;
    }
    c->m = m;
    c->store = store;
    c->dev = p->gpu_device;
    c->n_ctx = p->n_ctx;
    c->n_batch = MS_MIN(p->n_batch, p->n_ctx);
    c->rng = 0x9E3779B97F4A7C15ull;
    c->pf_il = -1;
    for (int i = 0; i < MS_N_CHECKPOINTS; i++) c->ckpt[i].pos = -1;
    CKC(cudaSetDevice(c->dev));
    const int NE = hp->n_expert, K = hp->n_expert_used;
    const size_t T = (size_t)c->n_batch, nkeys = (size_t)hp->n_layer * NE;
    c->L = (dlayer *)ms_calloc((size_t)hp->n_layer, sizeof(dlayer));
    if (!c->L) FAIL_NOMEM("layers");
    if (plan(c, e)) {
        cu_destroy(c);
        return NULL;
    }
    /* an expert in a slot: gate | up | down, each 256-aligned; slots sized for the largest layer */
    for (int il = 0; il < hp->n_layer; il++) {
        const ms_layer *ly = &m->layers[il];
        dlayer *d = &c->L[il];
        d->sz_gate = ly->gate_exps.stride;
        d->sz_up = ly->up_exps.stride;
        d->sz_down = ly->down_exps.stride;
        d->off_up = align_up(d->sz_gate);
        d->off_down = d->off_up + align_up(d->sz_up);
        c->slot_bytes = MS_MAX(c->slot_bytes, d->off_down + align_up(d->sz_down));
    }
    /* the budget: dense weights, state and scratch first, the expert cache gets the rest */
    size_t free_b = 0, total_b = 0;
    CKC(cudaMemGetInfo(&free_b, &total_b));
    const size_t reserve = (size_t)256 << 20;
    const size_t avail = free_b > reserve ? free_b - reserve : 0;
    size_t budget = p->gpu_mem ? (size_t)p->gpu_mem : avail;
    if (budget > avail) budget = avail;
    const size_t fixed = c->arena_used;
    const size_t min_slots = (size_t)MS_MAX(2 * K, 4);
    if (budget < fixed + min_slots * c->slot_bytes) {
        ms_fail(e, MS_ERR_BUDGET,
                "the GPU budget of %.2f GiB cannot hold the dense weights, KV cache and scratch (%.2f GiB) plus %zu experts "
                "(%.2f MiB each; %.2f GiB free on the device). HINT: raise --gpu-mem or lower -c / -b",
                budget / 1073741824.0, fixed / 1073741824.0, min_slots, c->slot_bytes / 1048576.0, free_b / 1073741824.0);
        cu_destroy(c);
        return NULL;
    }
    size_t n_slots = (budget - fixed) / c->slot_bytes;
    const uint64_t forced = env_u64("MS_CUDA_CACHE_SLOTS", 0); /* tests: force a small cache */
    if (forced) n_slots = MS_MIN(n_slots, (size_t)MS_MAX(forced, (uint64_t)min_slots));
    if (n_slots >= nkeys) {
        n_slots = nkeys;
        c->resident = 1;
    }
    c->n_slots = (int)n_slots;
    c->arena_size = fixed;
    CKC(cudaMalloc((void **)&c->arena, c->arena_size));
    if (plan(c, e)) {
        cu_destroy(c);
        return NULL;
    }
    CKC(cudaMalloc((void **)&c->slots, n_slots * c->slot_bytes));
    CKC(cudaMemset(c->states, 0, sizeof(float) * (c->state_floats ? c->state_floats : 1)));
    CKC(cudaMemset(c->d_done, 0, sizeof(int)));
    CKC(cudaStreamCreateWithFlags(&c->cs, cudaStreamNonBlocking));
    CKC(cudaStreamCreateWithFlags(&c->xs, cudaStreamNonBlocking));
    CKC(cudaEventCreateWithFlags(&c->ev_route, cudaEventDisableTiming));
    c->ev_copy = (cudaEvent_t *)ms_calloc((size_t)NE, sizeof(cudaEvent_t));
    if (!c->ev_copy) FAIL_NOMEM("events");
    for (int i = 0; i < NE; i++) CKC(cudaEventCreateWithFlags(&c->ev_copy[i], cudaEventDisableTiming));
    c->timing_on = env_u64("MS_CUDA_TIMING", 0) != 0;
    c->use_graph = env_u64("MS_CUDA_GRAPHS", 1) != 0;
    mv_wide_rows = (long long)env_u64("MS_CUDA_WIDE_ROWS", 16384);
    mv_min_items = (int)env_u64("MS_CUDA_MV_ITEMS", 128);
    mvq_on = env_u64("MS_CUDA_MVQ", 1) != 0;
    {
        const char *r = getenv("MS_CUDA_MVQ_R");
        int r0, r1, r2;
        if (r && sscanf(r, "%d,%d,%d", &r0, &r1, &r2) == 3) mvq_r[0] = r0, mvq_r[1] = r1, mvq_r[2] = r2;
    }
    {
        int n_sm = 0;
        if (cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, c->dev) == cudaSuccess && n_sm > 0) mvq_max_blocks = 8 * n_sm;
    }
    c->lgraph = (cudaGraphExec_t *)ms_calloc((size_t)hp->n_layer, sizeof(cudaGraphExec_t));
    if (!c->lgraph) FAIL_NOMEM("graphs");
    if (c->timing_on) {
        c->tev = (cudaEvent_t *)ms_calloc((size_t)4 * hp->n_layer, sizeof(cudaEvent_t));
        if (!c->tev) FAIL_NOMEM("events");
        for (int i = 0; i < 4 * hp->n_layer; i++) CKC(cudaEventCreate(&c->tev[i]));
    }
    /* host buffers: pinned where the GPU copies to or from them */
    const size_t lrows = MS_MIN((size_t)LOGIT_ROWS, T);
    CKC(cudaMallocHost((void **)&c->h_tok, sizeof(int) * T));
    CKC(cudaMallocHost((void **)&c->h_pos, sizeof(int)));
    CKC(cudaMallocHost((void **)&c->h_sel, sizeof(int) * T * K));
    CKC(cudaMallocHost((void **)&c->h_selw, sizeof(float) * T * K));
    CKC(cudaMallocHost((void **)&c->h_r1, route1_bytes(K, hp->n_embd)));
    c->one_copy = c->arena && (uint8_t *)c->h == (uint8_t *)c->r1 + route1_head(K);
    c->m_r1 = (uint8_t *)mapped(c->h_r1);
    CKC(cudaMallocHost((void **)&c->h_x_idx, sizeof(int) * 3 * T * K));
    CKC(cudaMallocHost((void **)&c->h_grp_up, sizeof(mv_group) * 2 * (size_t)NE));
    CKC(cudaMallocHost((void **)&c->logits_pin, sizeof(float) * lrows * hp->n_vocab));
    c->history = (int32_t *)ms_calloc((size_t)c->n_ctx, sizeof(int32_t));
    if (T > LOGIT_ROWS) c->logits_host = (float *)ms_malloc_aligned(sizeof(float) * T * hp->n_vocab);
    c->exp_count = (int *)ms_calloc((size_t)NE, sizeof(int));
    c->exp_ids = (int *)ms_calloc((size_t)NE, sizeof(int));
    c->exp_first = (int *)ms_calloc((size_t)NE, sizeof(int));
    c->exp_index = (int *)ms_calloc((size_t)NE, sizeof(int));
    c->fill = (int *)ms_calloc((size_t)NE, sizeof(int));
    c->order = (int *)ms_calloc((size_t)3 * NE, sizeof(int));
    c->miss_dst = (uint8_t **)ms_calloc((size_t)NE, sizeof(void *));
    c->refs = (ms_expert_ref *)ms_calloc((size_t)NE, sizeof(ms_expert_ref));
    c->pend.ids = (int *)ms_calloc((size_t)NE, sizeof(int));
    c->slot_owner = (int *)ms_malloc(sizeof(int) * n_slots);
    c->slot_wave = (uint32_t *)ms_calloc(n_slots, sizeof(uint32_t));
    c->map_slot = (int *)ms_malloc(sizeof(int) * nkeys);
    c->freq = (uint32_t *)ms_calloc(nkeys, sizeof(uint32_t));
    if (!c->history || (T > LOGIT_ROWS && !c->logits_host) || !c->exp_count || !c->exp_ids || !c->exp_first || !c->exp_index ||
        !c->fill || !c->order || !c->miss_dst || !c->refs || !c->pend.ids || !c->slot_owner || !c->slot_wave || !c->map_slot ||
        !c->freq)
        FAIL_NOMEM("host buffers");
    c->host_bytes = sizeof *c + sizeof(int) * (T * (2 + 3 * K) + 1) + sizeof(float) * (T * K + lrows * hp->n_vocab) +
                    sizeof(mv_group) * 2 * NE + sizeof(int32_t) * c->n_ctx + (T > LOGIT_ROWS ? sizeof(float) * T * hp->n_vocab : 0) +
                    (sizeof(int) * 8 + sizeof(void *) + sizeof(ms_expert_ref)) * NE + (sizeof(int) + sizeof(uint32_t)) * n_slots +
                    (sizeof(int) + sizeof(uint32_t)) * nkeys;
    for (size_t i = 0; i < n_slots; i++) c->slot_owner[i] = -1;
    for (size_t i = 0; i < nkeys; i++) c->map_slot[i] = -1;
    if (c->resident) {
        if (preload(c, e)) {
            cu_destroy(c);
            return NULL;
        }
    } else {
        if (!env_u64("MS_CUDA_STAGING", 0)) try_register(c);
        c->n_stage = MS_MAX(2 * K, 16);
        CKC(cudaMallocHost((void **)&c->staging, (size_t)c->n_stage * c->slot_bytes));
        c->host_bytes += (uint64_t)c->n_stage * c->slot_bytes;
        c->stage_ev = (cudaEvent_t *)ms_calloc((size_t)c->n_stage, sizeof(cudaEvent_t));
        if (!c->stage_ev) FAIL_NOMEM("events");
        for (int i = 0; i < c->n_stage; i++) CKC(cudaEventCreateWithFlags(&c->stage_ev[i], cudaEventDisableTiming));
        int nth = p->n_threads > 0 ? p->n_threads : ms_cpu_count();
        c->pool = pool_new(MS_MAX(1, MS_MIN(8, nth)));
        if (!c->pool) FAIL_NOMEM("copy threads");
        const int E = hp->n_embd;
        /* host-computed experts (see moe_cpu_start): --cpu-share x fixes the share, auto (-1) tunes it;
         * MS_CUDA_CPU_SHARE=x|auto overrides */
        const char *cs = getenv("MS_CUDA_CPU_SHARE");
        const float share = cs && *cs ? (strcmp(cs, "auto") ? (float)atof(cs) : -1.0f) : p->gpu_cpu_share;
        c->cpu_auto = share < 0.0f;
        c->cpu_share = c->cpu_auto ? CPU_SHARE_START : MS_MIN(1.0f, share);
        if (c->cpu_auto) CKC(cudaEventCreateWithFlags(&c->ev_gx, cudaEventDisableTiming));
        c->cpu_on = c->cpu_share > 0.0f;
        if (c->cpu_on) {
            int64_t ff = 0;
            for (int il = 0; il < hp->n_layer; il++) ff = MS_MAX(ff, m->layers[il].gate_exps.n_out);
            const size_t qx = quant_q16_bytes((E + 31) / 32 * 32), qa = quant_q16_bytes((ff + 31) / 32 * 32);
            c->cpu_pool = pool_new(MS_MAX(1, nth));
            c->h_hin = (float *)(c->h_r1 + route1_head(K));
            CKC(cudaMallocHost((void **)&c->h_cpu_y, sizeof(float) * (size_t)E));
            CKC(cudaMalloc((void **)&c->d_cpu_y, sizeof(float) * (size_t)E));
            c->m_cpu_y = (const float *)mapped(c->h_cpu_y);
            c->cpu_ids = (int *)ms_calloc((size_t)NE, sizeof(int));
            c->cpu_refs = (ms_expert_ref *)ms_calloc((size_t)K, sizeof(ms_expert_ref));
            c->cpu_mark = (int *)ms_calloc((size_t)NE, sizeof(int));
            c->cpu_left = (uint32_t *)ms_calloc((size_t)NE, sizeof(uint32_t));
            c->cpu_w = (float *)ms_calloc((size_t)K, sizeof(float));
            c->cpu_g = (float *)ms_malloc_aligned(sizeof(float) * (size_t)K * ff);
            c->cpu_u = (float *)ms_malloc_aligned(sizeof(float) * (size_t)K * ff);
            c->cpu_y = (float *)ms_malloc_aligned(sizeof(float) * (size_t)K * E);
            c->cpu_xq = (uint8_t *)ms_malloc_aligned(qx);
            c->cpu_actq = (uint8_t *)ms_malloc_aligned((size_t)K * qa);
            if (!c->cpu_pool || !c->cpu_ids || !c->cpu_refs || !c->cpu_mark || !c->cpu_left || !c->cpu_w || !c->cpu_g || !c->cpu_u || !c->cpu_y || !c->cpu_xq ||
                !c->cpu_actq)
                FAIL_NOMEM("host expert buffers");
            c->host_bytes += sizeof(int) * 3 * (size_t)NE + sizeof(ms_expert_ref) * (size_t)K +
                             sizeof(float) * ((size_t)K * (2 * ff + E + 1) + 2 * (size_t)E) + qx + (size_t)K * qa;
        }
        /* router lookahead: --lookahead (ms_backend_params.lookahead) or the default; MS_CUDA_LOOKAHEAD=0|1 overrides */
        const char *la = getenv("MS_CUDA_LOOKAHEAD");
        c->lookahead = la && *la ? atoi(la) != 0 : (p->lookahead || GPU_LOOKAHEAD_DEFAULT);
    }
    if (c->lookahead) {
        CKC(cudaMallocHost((void **)&c->h_look, sizeof(int) * (size_t)K));
        c->m_look = (int *)mapped(c->h_look);
        CKC(cudaEventCreateWithFlags(&c->ev_look, cudaEventDisableTiming));
        CKC(cudaEventCreateWithFlags(&c->ev_pf_done, cudaEventDisableTiming));
        c->ev_pf = (cudaEvent_t *)ms_calloc((size_t)NE, sizeof(cudaEvent_t));
        c->pf_cur.ids = (int *)ms_calloc((size_t)NE, sizeof(int));
        c->pf_old.ids = (int *)ms_calloc((size_t)NE, sizeof(int));
        c->pf_slots = (int *)ms_calloc((size_t)NE, sizeof(int));
        c->slot_pf = (int *)ms_malloc(sizeof(int) * n_slots);
        if (!c->ev_pf || !c->pf_cur.ids || !c->pf_old.ids || !c->pf_slots || !c->slot_pf) FAIL_NOMEM("lookahead buffers");
        for (size_t i = 0; i < n_slots; i++) c->slot_pf[i] = -1;
        for (int i = 0; i < NE; i++) CKC(cudaEventCreateWithFlags(&c->ev_pf[i], cudaEventDisableTiming));
        c->host_bytes += sizeof(int) * ((size_t)K + 3 * (size_t)NE + n_slots);
    }
    CKC(cudaDeviceSynchronize());
    return c;
}

/* Host memory of the context: pinned and plain buffers, staging, checkpoints (VRAM not counted). */
static uint64_t cu_host_bytes(const void *ctx) {
    const cu_ctx *c = (const cu_ctx *)ctx;
    uint64_t n = c->host_bytes;
    for (int i = 0; i < MS_N_CHECKPOINTS; i++)
        if (c->ckpt[i].state) n += sizeof(float) * c->state_floats;
    return n;
}

static const ms_backend cuda_backend = {
    "cuda", cu_create, cu_destroy, cu_eval, cu_logits, cu_n_logits, cu_pos, cu_n_ctx, cu_history,
    cu_checkpoint, cu_resume_point, cu_truncate, cu_reset, cu_timing, cu_host_bytes, NULL,
};

extern "C" const ms_backend *ms_backend_cuda(void) { return &cuda_backend; }

/* ================================================================== test hooks (cuda.h) */


extern "C" int cuda_device_count(char *msg, size_t cap) {
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess || n == 0) {
        cudaGetLastError();
        if (msg) snprintf(msg, cap, "%s", rc != cudaSuccess ? cudaGetErrorString(rc) : "no CUDA device");
        return 0;
    }
    if (msg) {
        cudaDeviceProp pr;
        if (cudaGetDeviceProperties(&pr, 0) == cudaSuccess)
            snprintf(msg, cap, "%s, %d SMs, %.1f GiB, compute %d.%d", pr.name, pr.multiProcessorCount,
                     pr.totalGlobalMem / 1073741824.0, pr.major, pr.minor);
        else snprintf(msg, cap, "device 0");
    }
    return n;
}

extern "C" int cuda_test_dequant(int type, const void *rows, size_t row_bytes, int n_rows, int64_t n_in, float *out) {
    if (!type_supported(type) || n_in % 8 || cuda_device_count(NULL, 0) <= 0) return -1;
    uint8_t *dw = NULL;
    float *dx = NULL;
    int ok = cudaMalloc((void **)&dw, row_bytes * n_rows) == cudaSuccess &&
             cudaMalloc((void **)&dx, sizeof(float) * n_rows * n_in) == cudaSuccess &&
             cudaMemcpy(dw, rows, row_bytes * n_rows, cudaMemcpyHostToDevice) == cudaSuccess &&
             launch_rows(type, dw, row_bytes, NULL, dx, (int)n_in, n_rows, 0) == 0 &&
             cudaMemcpy(out, dx, sizeof(float) * n_rows * n_in, cudaMemcpyDeviceToHost) == cudaSuccess;
    cudaFree(dw);
    cudaFree(dx);
    return ok ? 0 : -1;
}

extern "C" int cuda_test_matmul(int type, const void *w, size_t row_bytes, int64_t n_in, int64_t n_out, const float *x, int n_tok,
                                float *y) {
    if (!type_supported(type) || n_in % 8 || cuda_device_count(NULL, 0) <= 0) return -1;
    uint8_t *dw = NULL;
    float *dx = NULL, *dy = NULL;
    int ok = cudaMalloc((void **)&dw, row_bytes * n_out) == cudaSuccess &&
             cudaMalloc((void **)&dx, sizeof(float) * n_tok * n_in) == cudaSuccess &&
             cudaMalloc((void **)&dy, sizeof(float) * n_tok * n_out) == cudaSuccess &&
             cudaMemcpy(dw, w, row_bytes * n_out, cudaMemcpyHostToDevice) == cudaSuccess &&
             cudaMemcpy(dx, x, sizeof(float) * n_tok * n_in, cudaMemcpyHostToDevice) == cudaSuccess;
    if (ok) {
        mv_args a;
        memset(&a, 0, sizeof a);
        a.g.w = dw;
        a.g.ns = n_tok;
        a.n_groups = 1;
        a.row_bytes = row_bytes;
        a.n_in = (int)n_in;
        a.n_out = (int)n_out;
        a.x = dx;
        a.ldx = n_in;
        a.y = dy;
        a.ldy = n_out;
        a.mode = MV_STORE;
        ok = launch_mat(type, a, n_tok, 1, 0) == 0 && cudaDeviceSynchronize() == cudaSuccess &&
             cudaMemcpy(y, dy, sizeof(float) * n_tok * n_out, cudaMemcpyDeviceToHost) == cudaSuccess;
    }
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dy);
    return ok ? 0 : -1;
}
