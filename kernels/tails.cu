// Fused power-law tails beyond the window (Egerton 2011, section 4.2.1), float32.
//
// Twin: eelsgpu.kernels.tails.tails_twin (array API; ~130 array operations there, ONE launch
// here). Loaded, checked and registered by eelsgpu.engine.cuda: on its first use at a block
// size it is compared with the twin on the block's own first rows and on a probe
// (eelsgpu.kernels.tails.tails_probe), and the twin runs instead (with a warning) when they
// differ. Compiled with --fmad=false so that a * b + c rounds twice, as the twin's does.
//
// One thread per row (grid-stride loop; every row is independent). Per row, from the counts
// s1, s2, s3 in the three equal parts of the fit range, their edges a < m1 < m2 < b (loss
// energy, eV), the variance v of one part's sum and the window's end l_end:
//   r12, r23, r13: the exponents r of A L^-r from the ratios s1/s2, s2/s3, s1/s3 (tl_solve: a
//     log-space start and 3 clamped Newton steps on ln(ratio), as tails._solve), and the slopes
//     d ln(ratio) / dr (forward difference, step 0.01);
//   var_r of each ratio = v (1/si^2 + 1/sj^2) / max(slope^2, 1e-12);
//   ok = s1, s2, s3 > 0 & a > 0 (else the stand-in sums 1, 1, 1 over edges 1, 2, 3, 4);
//   trusted = ok & all r > 1.1 & r12, r23 < 19.9 & 2 <= r13 <= 15
//             & |r12 - r23| <= 0.1 r13 + 4 sqrt(var_12 + var_23);
//   counts beyond the window for r3 = r13 (3 where not trusted) and r3 -+ sd_r:
//     -(s1 + s2 + s3) (l_end / a)^(1 - r) / expm1((1 - r) ln(b / a));
//   tail = counts(r3), sd = |counts(max(r3 - sd_r, 1.05)) - counts(r3 + sd_r)| / 2, both 0
//     where not trusted.
// Inputs: parts (n, 3), edges (n, 4), var (n,), l_end (n,), float32 row-major.
// Outputs: tail (n,), trusted (n,) bool, sd (n,).

#define TL_R_LO 1.05f
#define TL_R_HI 20.0f
#define TL_NEWTON_STEPS 3
#define TL_SLOPE_STEP 0.01f
#define TL_SLOPE_S 0.99f  // 1 - TL_SLOPE_STEP, rounded once (the twin's (1.0 - 0.01) - r)

// clip(x, lo, hi) that keeps a NaN (as the array API's clip; fminf/fmaxf would drop it)
__device__ __forceinline__ float tl_clip(const float x, const float lo, const float hi) {
    return x != x ? x : fminf(fmaxf(x, lo), hi);
}

// maximum(x, lo) that keeps a NaN (as the array API's maximum)
__device__ __forceinline__ float tl_max(const float x, const float lo) {
    return x != x ? x : fmaxf(x, lo);
}

// r with int_a1^b1 L^-r / int_a2^b2 L^-r = ratio, and the slope d ln(ratio) / dr there
// (eelsgpu.kernels.tails._solve, the same operations in the same order)
__device__ void tl_solve(const float ratio, const float a1, const float b1, const float a2,
                         const float b2, float* r_out, float* slope_out) {
    const float u1 = logf(b1 / a1);
    const float u2 = logf(b2 / a2);
    const float lp = logf(a2 / a1);
    const float target = logf(ratio);
    const float s0 = (target - logf(u1 / u2)) / (0.5f * (u1 - u2) - lp);
    float r = tl_clip(1.0f - s0, TL_R_LO, TL_R_HI);
    for (int step = 0; step < TL_NEWTON_STEPS; ++step) {
        const float s = 1.0f - r;
        const float e1 = expm1f(s * u1);
        const float e2 = expm1f(s * u2);
        const float f1 = expm1f(s * -u1);
        const float f2 = expm1f(s * -u2);
        const float g = (logf(e1 / e2) - s * lp) - target;
        const float q1 = u1 / f1;
        const float q2 = u2 / f2;
        r = tl_clip(r - g / ((q1 - q2) + lp), TL_R_LO, TL_R_HI);
    }
    const float s_a = 1.0f - r;
    const float s_b = TL_SLOPE_S - r;
    const float f_a = logf(expm1f(s_a * u1) / expm1f(s_a * u2)) - s_a * lp;
    const float f_b = logf(expm1f(s_b * u1) / expm1f(s_b * u2)) - s_b * lp;
    *r_out = r;
    *slope_out = (f_b - f_a) / TL_SLOPE_STEP;
}

// the counts of the matched power law beyond the window for exponent r
__device__ __forceinline__ float tl_counts(const float total, const float r, const float log_end,
                                           const float log_b) {
    const float s = 1.0f - r;
    return -total * expf(s * log_end) / expm1f(s * log_b);
}

extern "C" __global__ void tails_solve(const float* parts, const float* edges, const float* var,
                                       const float* l_end, float* tail_out, bool* trusted_out,
                                       float* sd_out, const int n) {
    const int stride = blockDim.x * gridDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float p1 = parts[3 * i], p2 = parts[3 * i + 1], p3 = parts[3 * i + 2];
        const float e0 = edges[4 * i];
        const bool ok = p1 > 0.0f && p2 > 0.0f && p3 > 0.0f && e0 > 0.0f;
        const float s1 = ok ? p1 : 1.0f, s2 = ok ? p2 : 1.0f, s3 = ok ? p3 : 1.0f;
        const float a = ok ? e0 : 1.0f, m1 = ok ? edges[4 * i + 1] : 2.0f;
        const float m2 = ok ? edges[4 * i + 2] : 3.0f, b = ok ? edges[4 * i + 3] : 4.0f;
        float r12, r23, r, k12, k23, k13;
        tl_solve(s1 / s2, a, m1, m1, m2, &r12, &k12);
        tl_solve(s2 / s3, m1, m2, m2, b, &r23, &k23);
        tl_solve(s1 / s3, a, m1, m2, b, &r, &k13);
        const float v = var[i];
        const float rel1 = v / (s1 * s1), rel2 = v / (s2 * s2), rel3 = v / (s3 * s3);
        const float var12 = (rel1 + rel2) / tl_max(k12 * k12, 1e-12f);
        const float var23 = (rel2 + rel3) / tl_max(k23 * k23, 1e-12f);
        const float sd_r = sqrtf((rel1 + rel3) / tl_max(k13 * k13, 1e-12f));
        const float noise = 4.0f * sqrtf(var12 + var23);
        const bool inside = r12 > 1.1f && r23 > 1.1f && r > 1.1f && r12 < 19.9f && r23 < 19.9f;
        const bool trusted = ok && inside && r >= 2.0f && r <= 15.0f &&
                             fabsf(r12 - r23) <= 0.1f * r + noise;
        const float total = (s1 + s2) + s3;
        const float r3 = trusted ? r : 3.0f;
        const float log_end = logf(l_end[i] / a);
        const float log_b = logf(b / a);
        const float c0 = tl_counts(total, r3, log_end, log_b);
        const float c1 = tl_counts(total, tl_max(r3 - sd_r, TL_R_LO), log_end, log_b);
        const float c2 = tl_counts(total, r3 + sd_r, log_end, log_b);
        tail_out[i] = trusted ? c0 : 0.0f;
        sd_out[i] = trusted ? 0.5f * fabsf(c1 - c2) : 0.0f;
        trusted_out[i] = trusted;
    }
}
