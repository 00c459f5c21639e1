// Runs kernels/fourier_log.cu on a CPU: each thread block's threads are host threads that meet
// at a barrier for __syncthreads(), blocks run one after the other (so their shared memory can
// be one host buffer). Used by tests/engine/test_cuda.py (compiled with g++ -std=c++20) to hold
// the CUDA source to its twin where no GPU is at hand; it checks the kernel's logic (indices,
// scans, reductions, barriers), not the GPU's arithmetic (nvcc may contract a * b + c to an FMA).
#include <algorithm>
#include <barrier>
#include <climits>
#include <cmath>
#include <math.h>
#include <thread>
#include <vector>

struct float2 {
    float x, y;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
static thread_local dim3 threadIdx;
static thread_local dim3 blockIdx;
static dim3 blockDim;
static std::barrier<>* fl_emu_barrier = nullptr;
static inline void __syncthreads() { fl_emu_barrier->arrive_and_wait(); }
using std::max;
using std::min;

// the dynamic shared memory of the running block
alignas(16) float fl_shared[1 << 20];

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__

#include FL_CU_SOURCE

extern "C" int fl_emu_launch(
    const float2* jf, const float2* zf, const float2* rf, const float* share,
    const float* n_j_alive, const float* fwhm, float2* ell, float* w_out, float* n_j_out,
    long long* first_out, float* limit_out, bool* floored_out, bool* dead_out, int n_rows,
    int n_freq, int half, double p_disp, float max_res, int unwrap, int has_rf, int has_alive,
    int threads, long long shared_words)
{
    if (shared_words > (long long)(sizeof(fl_shared) / sizeof(float))) return 1;
    blockDim.x = (unsigned)threads;
    for (int b = 0; b < n_rows; ++b) {
        std::barrier<> bar(threads);
        fl_emu_barrier = &bar;
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (int i = 0; i < threads; ++i) {
            pool.emplace_back([=] {
                threadIdx.x = (unsigned)i;
                blockIdx.x = (unsigned)b;
                fourier_log_rolloff(jf, zf, rf, share, n_j_alive, fwhm, ell, w_out, n_j_out,
                                    first_out, limit_out, floored_out, dead_out, n_rows, n_freq,
                                    half, p_disp, max_res, unwrap, has_rf, has_alive);
            });
        }
        for (auto& th : pool) th.join();
    }
    return 0;
}
