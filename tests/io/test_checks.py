"""Value checks when opening: NaN/inf pixels refused (or masked and flagged in ``valid``), an
all-zero image refused.

Truths used: the pixels given NaN / inf / zero values in the test.
"""

from __future__ import annotations

import numpy as np
import pytest

from eelsgpu.errors import InputError
from eelsgpu.io import open as eopen


def _cube(shape=(4, 5, 64), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 100 + 1).astype(np.float32)


def test_nan_refused_or_masked(tmp_path, write_hspy):
    """Truth: three pixels given NaN / inf values in the test."""
    data = _cube((5, 6, 40))
    data[1, 2, 5] = np.nan
    data[3, 0, :] = np.inf
    data[4, 5, 39] = -np.inf
    p = write_hspy(tmp_path / "holes.hspy", data)
    with pytest.raises(
        InputError, match=r"holes\.hspy: 3 of 30 pixel\(s\) have NaN or infinite"
    ) as err:
        eopen(p)
    assert "mask_invalid=True" in str(err.value) and "{'y': 1, 'x': 2}" in str(err.value)
    si = eopen(p, mask_invalid=True)
    valid = si["valid"].values
    assert si["valid"].dims == ("y", "x") and valid.sum() == 27
    assert not valid[1, 2] and not valid[3, 0] and not valid[4, 5]
    values = si.values
    assert np.isnan(values[~valid]).all()
    np.testing.assert_array_equal(values[valid], data[valid])


def test_all_zero_refused(tmp_path):
    """Truth: an array of zeros."""
    p = tmp_path / "zeros.npy"
    np.save(p, np.zeros((3, 3, 20), np.float32))
    with pytest.raises(InputError, match=r"zeros\.npy: every value .* is zero"):
        eopen(p, offset_eV=0.0, dispersion_eV=1.0)
