/* backend_none.c - the CUDA backend's stand-in for builds without CUDA (make CUDA=1 replaces
 * this file with cuda.cu's definition). */
#include "backend.h"

const ms_backend *ms_backend_cuda(void) { return NULL; }
