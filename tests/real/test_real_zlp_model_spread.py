"""The ZLP model's systematic part (issue 14) on a real line scan: shared/data's
exspy_demos/LSMO_linescan_low_loss.hspy (40 pixels of 1024 channels, 80 kV, ZLP at +3 eV).

Truth: a measured spectrum has no known t/lambda, so the test asserts what must hold: each
model's own run (the spread is half the range of the models that pass, the count is theirs),
the models differ on this data (the README's t/lambda 0.36-0.69; threshold, mirror and fit
disagree by several counting sigmas), so the spread is positive where two or more pass, and it
enters the systematic sigma in quadrature.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import eelsgpu
from eelsgpu.kernels.quality import ZLP_MISMATCH
from eelsgpu.model import spectrum_image

MODELS = ("threshold", "mirror", "fit")


@pytest.fixture(scope="module")
def lsmo(shared_data):
    path = shared_data / "exspy_demos" / "LSMO_linescan_low_loss.hspy"
    if not path.exists():
        pytest.skip(f"{path} not found")
    hs = pytest.importorskip("hyperspy.api")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = hs.load(str(path))
    data = np.asarray(s.data, dtype=np.float64)
    return spectrum_image(data, s.axes_manager.signal_axes[0].axis, source=str(path))


def _run(si, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the axis offset warning (ZLP at +3 eV)
        return eelsgpu.thickness(si, tail="none", device="cpu", **kw).compute()


def test_real_zlp_model_spread(lsmo):
    """The spread is half the range of the passing models' own t/lambda, pixel by pixel; it is
    positive and above the counting sigma where the models differ (every pixel here: mirror
    below threshold, fit above); the systematic sigma is exactly it (tail="none", no mean free
    path) and NaN only where fewer than two models pass."""
    ds = _run(lsmo, zlp="threshold", zlp_models="all", uncertainty="analytic")
    runs = {m: _run(lsmo, zlp=m) for m in MODELS}
    ok = np.array(
        [r["valid"].values & ((r["quality"].values & ZLP_MISMATCH) == 0) for r in runs.values()]
    )
    n = ds["zlp_models_passed"].values
    np.testing.assert_array_equal(n, ok.sum(axis=0))
    assert (n >= 2).mean() > 0.9  # the models' checks pass on this clean line scan
    vals = np.array([r["t_over_lambda"].values for r in runs.values()])
    vals = np.where(ok, vals, np.nan)
    two = n >= 2
    expect = (np.nanmax(vals[:, two], axis=0) - np.nanmin(vals[:, two], axis=0)) / 2
    spread = ds["t_over_lambda_sigma_zlp_model"].values
    np.testing.assert_allclose(spread[two], expect, rtol=1e-12)
    assert np.isnan(spread[~two]).all()
    assert (spread[two] > ds["t_over_lambda_sigma"].values[two]).all()
    np.testing.assert_allclose(
        ds["t_over_lambda_sigma_systematic"].values[two], spread[two], rtol=1e-12
    )
