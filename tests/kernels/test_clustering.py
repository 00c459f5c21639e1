"""The k-means assignment kernel against points at known offsets from known centres."""

from __future__ import annotations

import numpy as np
from conftest import asarray, to_numpy

from eelsgpu.kernels.clustering import assign_kernel, cluster_block_sums


def test_assign_kernel_nearest_centre(xp):
    """Truth: points built at known offsets from known centres; a NaN pixel gets -1."""
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = np.array([0, 1, 2, 1, 0, 2])
    pts = centres[truth] + np.array([[1, -1], [-2, 1], [0.5, 2], [1, 1], [-1, 0], [2, -2.0]])
    pts = np.vstack([pts, [np.nan, 1.0]])
    out = assign_kernel(
        asarray(xp, pts),
        asarray(xp, np.arange(2.0)),
        centres=asarray(xp, centres),
        mean=asarray(xp, np.zeros(2)),
        scale=asarray(xp, np.ones(2)),
    )
    assert to_numpy(out["cluster"]).tolist() == truth.tolist() + [-1]
    d = to_numpy(out["cluster_distance"])
    assert np.allclose(d[:6], np.hypot(*(pts[:6] - centres[truth]).T))
    assert np.isnan(d[6])


def test_cluster_block_sums_leave_out_flagged_pixels():
    """Truth: sums by hand. Each cluster's row is the sum of its pixels' spectra; a pixel
    labelled -1 is left out and a NaN channel counts as 0."""
    block = np.arange(24.0).reshape(2, 3, 4)
    block[1, 2, 3] = np.nan
    labels = np.array([[0, 1, 0], [-1, 1, 1]])
    sums = cluster_block_sums(block, labels, 2)
    flat = np.nan_to_num(block.reshape(6, 4))
    assert sums.shape == (2, 4)
    np.testing.assert_array_equal(sums[0], flat[0] + flat[2])
    np.testing.assert_array_equal(sums[1], flat[1] + flat[4] + flat[5])
