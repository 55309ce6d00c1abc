/* cuda.h - what the CUDA backend (cuda.cu) exports besides ms_backend_cuda() (backend.h): a few
 * hooks that run one GPU kernel on host data, so tests can check the kernels against the scalar
 * CPU reference one at a time before whole models are compared, and the router lookahead's
 * counters for tests and benchmarks.
 *
 * Not here: the backend itself (backend.h's table). In builds without CUDA (backend_none.c) every
 * hook returns -1 and cuda_device_count() returns 0.
 */
#ifndef MS_CUDA_H
#define MS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 without a GPU or a CUDA build. If msg is non-NULL it gets a
 * one-line description (device 0's name, or why there is none). */
int cuda_device_count(char *msg, size_t cap);

/* Dequantizes n_rows rows of n_in values (rows row_bytes apart, GGML type `type`) on the GPU into
 * out[n_rows][n_in]. Returns 0, or -1 (no GPU, unsupported type, CUDA error). */
int cuda_test_dequant(int type, const void *rows, size_t row_bytes, int n_rows, int64_t n_in, float *out);

/* y[t][r] = W_r . x[t] for t < n_tok, r < n_out on the GPU, with the kernel the backend picks for
 * n_tok tokens (matrix-vector for a few, tiled matrix product for more). Returns 0 or -1. */
int cuda_test_matmul(int type, const void *w, size_t row_bytes, int64_t n_in, int64_t n_out, const float *x,
                     int n_tok, float *y);

#ifdef __cplusplus
}
#endif

#endif
