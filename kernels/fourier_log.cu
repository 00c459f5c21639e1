// Fused core of the Fourier-log deconvolution (kk-theory.md eq. 22), float32.
//
// NumPy twin: eelsgpu.kernels.fourier_log.log_spectrum_ratio (log_spectrum_ratio_twin; the array-API
// path, tested everywhere). Loaded, checked and registered by eelsgpu.engine.cuda: on first use on a
// GPU it compares this kernel with the twin on a probe block and falls back to the twin (with a
// warning) when they differ.
//
// For each spectrum (one thread block per row of the (n_rows, n_freq) complex64 arrays):
//   q = J~ conj(Z~);  ln|J~/Z~| = (ln|J~|^2 - ln|Z~|^2) / 2;  phase = atan2(Im q, Re q)
//   trusted: frequencies below the first one where |Z~|^2 <= gate |Z~(0)|^2 (rounding level),
//     |J~|^2 <= snr2 * noise2[row, 0] (counting noise of J~) or |Z~|^2 <= snr2 * noise2[row, 1]
//     (the noise floor of the ZLP model's transform; noise2 is (n_rows, 2), see the twin);
//   unwrapped phase = phase - 2 pi * (whole turns between trusted neighbours, summed from 0),
//     0 where not trusted;
//   w = |J~|^2 / (|J~|^2 + noise2[row, 0])
//   mode_zlp = 0: out = (ln|.| + i phase) * w * |Z~|^2
//                       / (|Z~|^2 + rolloff |Z~(0)|^2 + snr2 noise2[row, 1])
//   mode_zlp = 1: out = (ln|.| + i phase) * w * Z~
// The first untrusted frequency is a block-wide min reduction; the running sum of turns a
// block-wide scan (each thread owns a contiguous run of frequencies). One read of J~ and Z~ and
// one write of the result instead of ~25 array passes.

__device__ __forceinline__ float fl_phase(const float2 j, const float2 z) {
    return atan2f(j.y * z.x - j.x * z.y, j.x * z.x + j.y * z.y);
}

extern "C" __global__ void fourier_log_ratio(
    const float2* __restrict__ jf, const float2* __restrict__ zf,
    const float* __restrict__ noise2, float2* __restrict__ out,
    const int n_rows, const int n_freq, const float gate, const float rolloff,
    const float snr2, const int mode_zlp, const int unwrap)
{
    extern __shared__ int scan[];  // blockDim.x ints
    const int row = blockIdx.x;
    if (row >= n_rows) return;  // whole block leaves together: no __syncthreads() mismatch
    const float2* J = jf + (size_t)row * n_freq;
    const float2* Z = zf + (size_t)row * n_freq;
    float2* L = out + (size_t)row * n_freq;
    const float sig2 = noise2[2 * (size_t)row];
    const float zsig2 = noise2[2 * (size_t)row + 1];
    const int t = threadIdx.x;
    const int nt = blockDim.x;
    const int chunk = (n_freq + nt - 1) / nt;
    const int k0 = min(t * chunk, n_freq);
    const int k1 = min(k0 + chunk, n_freq);
    const float2 z0 = Z[0];
    const float zz0 = z0.x * z0.x + z0.y * z0.y;
    const float inv_two_pi = 0.15915494309189535f;
    const float two_pi = 6.283185307179586f;
    const float tiny = 1.8807909e-37f;  // 16 * FLT_MIN, as the twin

    // pass 0: the first untrusted frequency of the row (min over threads)
    int first_bad = n_freq;
    if (unwrap) {
        for (int k = k0; k < k1; ++k) {
            const float2 j = J[k];
            const float2 z = Z[k];
            const float zz = z.x * z.x + z.y * z.y;
            const float jj = j.x * j.x + j.y * j.y;
            if (zz <= gate * zz0 || jj <= snr2 * sig2 || zz <= snr2 * zsig2) {
                first_bad = k;
                break;
            }
        }
        scan[t] = first_bad;
        __syncthreads();
        for (int s = nt / 2; s > 0; s >>= 1) {
            if (t < s) scan[t] = min(scan[t], scan[t + s]);
            __syncthreads();
        }
        first_bad = scan[0];
        __syncthreads();
    }

    // pass 1: whole turns in this thread's run (trusted frequencies only)
    int mine = 0;
    if (unwrap && k0 < k1) {
        float prev = (k0 > 0) ? fl_phase(J[k0 - 1], Z[k0 - 1]) : 0.0f;
        for (int k = k0; k < k1; ++k) {
            const float ph = fl_phase(J[k], Z[k]);
            if (k > 0 && k < first_bad) mine += (int)rintf((ph - prev) * inv_two_pi);
            prev = ph;
        }
    }
    // inclusive Hillis-Steele scan of the per-thread counts, then exclusive for this thread
    scan[t] = mine;
    __syncthreads();
    for (int off = 1; off < nt; off <<= 1) {
        const int v = (t >= off) ? scan[t - off] : 0;
        __syncthreads();
        scan[t] += v;
        __syncthreads();
    }
    int turns = scan[t] - mine;

    // pass 2: the result
    float prev = (k0 > 0 && k0 < k1) ? fl_phase(J[k0 - 1], Z[k0 - 1]) : 0.0f;
    for (int k = k0; k < k1; ++k) {
        const float2 j = J[k];
        const float2 z = Z[k];
        const float zz = z.x * z.x + z.y * z.y;
        const float jj = j.x * j.x + j.y * j.y;
        const float ph = fl_phase(j, z);
        float phu = ph;
        if (unwrap) {
            const bool trusted = k < first_bad;
            if (k > 0 && trusted) turns += (int)rintf((ph - prev) * inv_two_pi);
            phu = trusted ? ph - two_pi * (float)turns : 0.0f;
        }
        prev = ph;
        // two logs, not the log of a ratio, which overflows where noise meets a vanishing Z~;
        // |Z~|^2 floored at 1e-24 |Z~(0)|^2 as in the twin (the weights vanish there anyway)
        const float lm = 0.5f * (logf(fmaxf(jj, tiny)) - logf(fmaxf(zz, 1e-24f * zz0 + tiny)));
        const float w = jj / (jj + sig2);
        float2 r;
        if (mode_zlp) {
            r.x = (z.x * lm - z.y * phu) * w;
            r.y = (z.x * phu + z.y * lm) * w;
        } else {
            const float wz = w * (zz / (zz + (rolloff * zz0 + snr2 * zsig2)));
            r.x = lm * wz;
            r.y = phu * wz;
        }
        L[k] = r;
    }
}
