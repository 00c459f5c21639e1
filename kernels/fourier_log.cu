// Fused measured-error roll-off of the Fourier-log deconvolution (kk-theory.md eq. 22), float32.
//
// Twin: eelsgpu.kernels.fourier_log.rolloff_twin (array API; NumPy fast path rolloff_numpy).
// Loaded, checked and registered by eelsgpu.engine.cuda: on its first use at a block size it is
// compared with the twin on the block's own first spectra and on a probe of the same length,
// and the twin runs instead (with a warning) when they differ.
//
// One thread block per spectrum (row of the (n_rows, K) complex64 transforms); every loop over
// the frequencies is strided by the block's threads (k = t, t + nt, ...: neighbouring threads
// read neighbouring words of global memory, coalesced). J~, Z~ (and the misfit's transform R~)
// are read from global memory ONCE; everything else lives in shared memory (four arrays of K
// floats: shared_bytes in eelsgpu/engine/cuda.py). Per spectrum:
//   noise powers: medians of |J~|^2, |Z~|^2 over the top quarter of frequencies (exact ranks),
//     f = median / ln 2; dead = median_Z < 1e-6 |Z~(0)|^2; n_j = f_j share (or the channels'
//     variance n_j_alive where the ZLP's transform is not dead); n_z = f_z where dead, else 0;
//   sigma^2 = n_j / |J~|^2 + n_z / |Z~|^2 (+ 2 |R~|^2 / |Z~|^2), both floored at 1e-24 of k = 0;
//   stop = first k with sigma^2 > 1 (an error of 1 rad);
//   ln(J~/Z~) = ln|J~/Z~| + i phase, the phase unwrapped over the steps below stop (block scan);
//   power, err = moving averages (half-width `half`) of |ln(J~/Z~)|^2 and sigma^2;
//   first = min(first k >= 1 with power <= 2 err, argmin_{k >= 1} power (K if within half + 1
//     of the end), stop); limit = KAPPA / max(nu_first, nu_1); floored (see the twin);
//   w = running minimum of max(power - err, 0) / (max(power - err, 0) + err) (1 at k = 0), 0 from
//     first on, moving average, divided by its value at k = 0.
// Outputs: ell (n, K) complex64, w (n, K) float32, and per spectrum n_j, dead, first (int64),
// limit (eV), floored.

#define FL_TINY 1.880791e-37f  // 16 x FLT_MIN, as the twin's tiny("float32")
#define FL_LN2 0.6931472f
#define FL_INV_TWO_PI 0.15915494f
#define FL_TWO_PI 6.2831855f
#define FL_KAPPA 0.8042678f  // fourier_log.KAPPA
#define FL_BIG_INDEX 2147483647
// (FLT_MAX spelled out: NVRTC, which CuPy compiles with, has no <math.h> macros such as INFINITY)
#define FL_HUGE 3.402823466e+38f

__device__ __forceinline__ float fl_abs2(const float2 a) { return a.x * a.x + a.y * a.y; }

// block-wide minimum of an int (blockDim.x a power of two; red: blockDim.x ints)
__device__ int fl_min_int(const int v, int* red) {
    const int t = threadIdx.x;
    red[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) red[t] = min(red[t], red[t + s]);
        __syncthreads();
    }
    const int r = red[0];
    __syncthreads();
    return r;
}

// block-wide first minimum: the index of the smallest value, the smaller index on ties
__device__ int fl_argmin(const float v, const int i, float* rv, int* ri) {
    const int t = threadIdx.x;
    rv[t] = v;
    ri[t] = i;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) {
            const float b = rv[t + s];
            const int ib = ri[t + s];
            if (b < rv[t] || (b == rv[t] && ib < ri[t])) {
                rv[t] = b;
                ri[t] = ib;
            }
        }
        __syncthreads();
    }
    const int r = ri[0];
    __syncthreads();
    return r;
}

// exclusive prefix sum of one int per thread (Hillis-Steele over blockDim.x)
__device__ int fl_exclusive_sum(const int v, int* red) {
    const int t = threadIdx.x;
    red[t] = v;
    __syncthreads();
    for (int off = 1; off < (int)blockDim.x; off <<= 1) {
        const int a = (t >= off) ? red[t - off] : 0;
        __syncthreads();
        red[t] += a;
        __syncthreads();
    }
    const int r = red[t] - v;
    __syncthreads();
    return r;
}

// exclusive prefix minimum of one float per thread (FL_HUGE for thread 0)
__device__ float fl_exclusive_min(const float v, float* red) {
    const int t = threadIdx.x;
    red[t] = v;
    __syncthreads();
    for (int off = 1; off < (int)blockDim.x; off <<= 1) {
        const float a = (t >= off) ? red[t - off] : FL_HUGE;
        __syncthreads();
        red[t] = fminf(red[t], a);
        __syncthreads();
    }
    const float r = (t > 0) ? red[t - 1] : FL_HUGE;
    __syncthreads();
    return r;
}

// out[k] = mean of in[k - half .. k + half] (fewer at the ends); summed directly (no running
// sums, so no cancellation where the values fall by orders of magnitude)
__device__ void fl_moving_average(const float* in, float* out, const int n_freq, const int half) {
    for (int k = threadIdx.x; k < n_freq; k += blockDim.x) {
        const int lo = max(k - half, 0);
        const int hi = min(k + half + 1, n_freq);
        float s = 0.0f;
        for (int m = lo; m < hi; ++m) s += in[m];
        out[k] = s / (float)(hi - lo);
    }
}

extern "C" __global__ void fourier_log_rolloff(
    const float2* __restrict__ jf, const float2* __restrict__ zf, const float2* __restrict__ rf,
    const float* __restrict__ share, const float* __restrict__ n_j_alive,
    const float* __restrict__ fwhm, float2* __restrict__ ell, float* __restrict__ w_out,
    float* __restrict__ n_j_out, long long* __restrict__ first_out,
    float* __restrict__ limit_out, bool* __restrict__ floored_out, bool* __restrict__ dead_out,
    const int n_rows, const int n_freq, const int half, const double p_disp, const float max_res,
    const int unwrap, const int has_rf, const int has_alive)
{
    extern __shared__ float fl_shared[];  // 4 (K + 1) + 2 nt + 8 words: shared_bytes()
    const int row = blockIdx.x;
    if (row >= n_rows) return;  // the whole block leaves together: no __syncthreads() mismatch
    const int t = threadIdx.x;
    const int nt = blockDim.x;
    const int kk = n_freq;
    float* A = fl_shared;
    float* B = A + (kk + 1);
    float* C = B + (kk + 1);
    float* D = C + (kk + 1);
    float* red_f = D + (kk + 1);
    int* red_i = (int*)(red_f + nt);
    float* misc = (float*)(red_i + nt);
    const size_t off = (size_t)row * (size_t)kk;
    const float2* J = jf + off;
    const float2* Z = zf + off;
    const float2* R = rf + off;
    const float jj0 = fl_abs2(J[0]);
    const float zz0 = fl_abs2(Z[0]);

    // 1. the noise powers: medians of the top quarter of |J~|^2 and |Z~|^2 (before the floors),
    //    by exact ranks (the element whose rank range holds (q - 1) / 2, resp. q / 2)
    const int q = max(1, kk / 4);
    const int top = kk - q;
    for (int k = top + t; k < kk; k += nt) {
        A[k - top] = fl_abs2(J[k]);
        B[k - top] = fl_abs2(Z[k]);
    }
    __syncthreads();
    const int r0 = (q - 1) / 2;
    const int r1 = q / 2;
    for (int i = t; i < 2 * q; i += nt) {
        const float* a = (i < q) ? A : B;
        const float v = a[(i < q) ? i : i - q];
        int less = 0;
        int same = 0;
        for (int m = 0; m < q; ++m) {
            less += a[m] < v;
            same += a[m] == v;
        }
        const int slot = (i < q) ? 0 : 2;
        if (less <= r0 && r0 < less + same) misc[slot] = v;
        if (less <= r1 && r1 < less + same) misc[slot + 1] = v;
    }
    __syncthreads();
    const float med_j = 0.5f * (misc[0] + misc[1]);
    const float med_z = 0.5f * (misc[2] + misc[3]);
    const bool dead = med_z < 1e-6f * zz0;
    float n_j = (med_j / FL_LN2) * share[row];
    if (has_alive && !dead) n_j = n_j_alive[row];
    const float n_z = dead ? med_z / FL_LN2 : 0.0f;
    __syncthreads();  // (A, B are overwritten below)

    // 2. the error power, the split log and the first frequency where the error reaches 1 rad
    const float jfloor = 1e-24f * jj0 + FL_TINY;
    const float zfloor = 1e-24f * zz0 + FL_TINY;
    int stop_mine = kk;
    for (int k = t; k < kk; k += nt) {
        const float2 j = J[k];
        const float2 z = Z[k];
        const float jj = fmaxf(fl_abs2(j), jfloor);
        const float zz = fmaxf(fl_abs2(z), zfloor);
        float s2 = n_j / jj + n_z / zz;
        if (has_rf) s2 = s2 + (2.0f * fl_abs2(R[k])) / zz;
        A[k] = s2;
        B[k] = 0.5f * logf(jj / zz);
        C[k] = atan2f(j.y * z.x - j.x * z.y, j.x * z.x + j.y * z.y);
        if (stop_mine == kk && s2 > 1.0f) stop_mine = k;  // (k grows: the thread's first)
    }
    __syncthreads();
    const int stop = fl_min_int(stop_mine, red_i);

    // 3. the phase unwrapped over the trusted steps (k < stop): whole turns, block scan
    const int chunk = (kk + nt - 1) / nt;
    const int k0 = min(t * chunk, kk);
    const int k1 = min(k0 + chunk, kk);
    if (unwrap) {
        int* turns = (int*)D;
        for (int k = t; k < kk; k += nt) {
            turns[k] = (k >= 1 && k < stop) ? (int)rintf((C[k] - C[k - 1]) * FL_INV_TWO_PI) : 0;
        }
        __syncthreads();
        int mine = 0;
        for (int k = k0; k < k1; ++k) mine += turns[k];
        int acc = fl_exclusive_sum(mine, red_i);
        float* out_c = C;
        for (int k = k0; k < k1; ++k) {
            acc += turns[k];
            out_c[k] = out_c[k] - FL_TWO_PI * (float)acc;
        }
        __syncthreads();
    }

    // 4. ln(J~/Z~) out; |ln(J~/Z~)|^2
    float2* L = ell + off;
    for (int k = t; k < kk; k += nt) {
        const float lm = B[k];
        const float ph = C[k];
        float2 v;  // (no make_float2: NVRTC has no vector helpers without headers)
        v.x = lm;
        v.y = ph;
        L[k] = v;
        D[k] = lm * lm + ph * ph;
    }
    __syncthreads();
    const float ell0 = D[0];
    // power -> B, err -> C
    fl_moving_average(D, B, kk, half);
    fl_moving_average(A, C, kk, half);
    __syncthreads();

    // 5. the cut-off
    int est_mine = kk;
    float min_v = FL_HUGE;
    int min_k = FL_BIG_INDEX;
    for (int k = t; k < kk; k += nt) {
        if (k < 1) continue;
        const float pw = B[k];
        if (est_mine == kk && pw <= 2.0f * C[k]) est_mine = k;
        if (pw < min_v) {
            min_v = pw;
            min_k = k;
        }
    }
    const int k_est = fl_min_int(est_mine, red_i);
    int k_min = fl_argmin(min_v, min_k, red_f, red_i);
    if (k_min >= kk - half - 1) k_min = kk;  // no minimum: the error never rose
    const int first = min(min(k_est, k_min), stop);
    const int at = min(first, kk - 1);
    const float nu_c = (float)((double)at / p_disp);
    const float nu_1 = (float)(1.0 / p_disp);
    const float limit = FL_KAPPA / fmaxf(nu_c, nu_1);
    const float nu_floor = FL_KAPPA / (max_res * fwhm[row]);
    const bool floored = (first < kk) && (nu_c < nu_floor) && (B[at] > 1e-6f * ell0);

    // 6. the monotone Wiener weight below the cut-off, smoothed, 1 at zero frequency
    for (int k = t; k < kk; k += nt) {
        const float s2 = fmaxf(B[k] - C[k], 0.0f);
        D[k] = (k == 0) ? 1.0f : s2 / fmaxf(s2 + C[k], FL_TINY);
    }
    __syncthreads();
    float run = FL_HUGE;
    for (int k = k0; k < k1; ++k) run = fminf(run, D[k]);
    run = fl_exclusive_min(run, red_f);  // the minimum of the threads before this one
    for (int k = k0; k < k1; ++k) {
        run = fminf(run, D[k]);
        D[k] = (k < first) ? run : 0.0f;
    }
    __syncthreads();
    fl_moving_average(D, A, kk, half);
    __syncthreads();
    const float w0 = A[0];
    const float norm = (w0 > 0.0f) ? w0 : 1.0f;
    float* W = w_out + off;
    for (int k = t; k < kk; k += nt) W[k] = A[k] / norm;
    if (t == 0) {
        n_j_out[row] = n_j;
        dead_out[row] = dead;
        first_out[row] = (long long)first;
        limit_out[row] = limit;
        floored_out[row] = floored;
    }
}
