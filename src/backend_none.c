/* backend_none.c - the CUDA backend's stand-in for builds without CUDA (make CUDA=1 replaces
 * this file with cuda.cu's definitions): no backend, no devices, hooks that fail. */
#include <stdio.h>

#include "backend.h"
#include "cuda.h"

const ms_backend *ms_backend_cuda(void) { return NULL; }

int cuda_device_count(char *msg, size_t cap) {
    if (msg && cap) snprintf(msg, cap, "built without CUDA");
    return 0;
}

int cuda_test_dequant(int type, const void *rows, size_t row_bytes, int n_rows, int64_t n_in, float *out) {
    (void)type, (void)rows, (void)row_bytes, (void)n_rows, (void)n_in, (void)out;
    return -1;
}

int cuda_test_matmul(int type, const void *w, size_t row_bytes, int64_t n_in, int64_t n_out, const float *x, int n_tok,
                     float *y) {
    (void)type, (void)w, (void)row_bytes, (void)n_in, (void)n_out, (void)x, (void)n_tok, (void)y;
    return -1;
}
