// Runs kernels/tails.cu on a CPU: every CUDA thread of the grid is one iteration of a host loop
// (the kernel has no shared memory and no __syncthreads: each row is independent). Used by
// tests/engine/test_cuda_tails.py (compiled with g++) to hold the CUDA source to its twin where
// no GPU is at hand; it checks the kernel's logic (indices, the Newton steps, the decisions),
// not the GPU's arithmetic (its logf / expm1f may differ from the host's by an ulp or two).
#include <cmath>
#include <math.h>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
static dim3 threadIdx;
static dim3 blockIdx;
static dim3 blockDim;
static dim3 gridDim;

#define __global__
#define __device__
#define __forceinline__ inline

#include TL_CU_SOURCE

extern "C" int tl_emu_launch(const float* parts, const float* edges, const float* var,
                             const float* l_end, float* tail, bool* trusted, float* sd, int n,
                             int threads, int blocks) {
    if (threads <= 0 || blocks <= 0) return 1;
    blockDim.x = (unsigned)threads;
    gridDim.x = (unsigned)blocks;
    for (int b = 0; b < blocks; ++b) {
        blockIdx.x = (unsigned)b;
        for (int t = 0; t < threads; ++t) {
            threadIdx.x = (unsigned)t;
            tails_solve(parts, edges, var, l_end, tail, trusted, sd, n);
        }
    }
    return 0;
}
