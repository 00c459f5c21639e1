"""PCA projection, NNLS loadings and reconstruction kernels on an exact low-rank matrix."""

from __future__ import annotations

import numpy as np
from conftest import asarray, to_numpy

from eelsgpu.kernels.decomposition import nnls_loadings_kernel, project_kernel, reconstruct_kernel


def test_kernels_exact_on_a_rank_two_matrix(xp):
    """Truth: an exact rank-2 non-negative matrix D = W H. Projection on its orthonormal basis
    and reconstruction give D back; the NNLS loadings recover W (noise-free)."""
    rng = np.random.default_rng(1)
    w = rng.random((30, 2)) + 0.1
    h = np.stack(
        [
            np.exp(-0.5 * ((np.arange(40) - 12) / 4.0) ** 2),
            np.exp(-0.5 * ((np.arange(40) - 27) / 5.0) ** 2),
        ]
    )
    d = w @ h
    e = asarray(xp, np.arange(40.0))
    _, _, vt = np.linalg.svd(d, full_matrices=False)
    for poisson in (False, True):
        sqrt_h = np.sqrt(d.mean(axis=0)) if poisson else np.ones(40)
        g = np.sqrt(d.mean(axis=1)) if poisson else np.ones(30)
        _, _, vt = np.linalg.svd(d / g[:, None] / sqrt_h, full_matrices=False)
        out = project_kernel(
            asarray(xp, d),
            e,
            components=asarray(xp, vt[:2]),
            energy_weight=asarray(xp, sqrt_h),
            poisson=poisson,
        )
        load = to_numpy(out["loadings"])
        rec = reconstruct_kernel(
            asarray(xp, d), e, loadings=asarray(xp, load), factors=asarray(xp, vt[:2] * sqrt_h)
        )
        np.testing.assert_allclose(to_numpy(rec["denoised"]), d, atol=1e-10)
    for kl in (False, True):
        out = nnls_loadings_kernel(asarray(xp, d), e, factors=asarray(xp, h), n_iter=300, kl=kl)
        np.testing.assert_allclose(to_numpy(out["loadings"]), w, rtol=1e-3)
        assert to_numpy(out["residual_rms"]).max() < 1e-3
