"""The low-loss kernels the GPU runs, on array-api-strict in float32/complex64 (issue 13): what a
device namespace gets (one Fourier-log pass per block, no host decisions), against the NumPy
path (row passes, host decisions) and synthetic truth.

Truth: the synthetic t/lambda and ZLP positions (eelsgpu.synthetic); where a result has no
closed form (the KK thickness in nm, the SSD), the NumPy path, itself held to truth by
tests/kernels/test_fourier_log.py and tests/analysis/test_thickness.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import asarray, to_numpy

from eelsgpu import synthetic
from eelsgpu.kernels import fourier_log as fl
from eelsgpu.kernels.blocks_lowloss import align_block, deconvolve_block, kk_thickness_kernel
from eelsgpu.kernels.sum_rule import sum_rule_prefactor_nm_eV

xs = pytest.importorskip("array_api_strict")

TL = np.linspace(0.3, 2.5, 6)


def _image(noise: bool = False, n_channels: int = 1024, seed: int = 3):
    return synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=TL[None, :],
        shape=(1, TL.size),
        n_channels=n_channels,
        dispersion_eV=0.1,
        noise=noise,
        seed=seed,
        beam_energy_keV=200.0,
    )


def _block(xp, sim, dtype=np.float32):
    y = asarray(xp, sim["signal"].values.reshape(TL.size, -1), dtype)
    e = asarray(xp, sim["energy"].values, dtype)
    return y, e


def test_kk_thickness_kernel_on_strict_float32():
    """The KK thickness block (eq. 29 after the ZLP model and the band-limited Fourier-log) on
    array-api-strict in float32: t/lambda within 0.5 % of the synthetic truth, and the KK
    thickness (nm) and sum-rule integral within 0.1 % of the NumPy path's."""
    sim = _image()
    kw = {
        "beam_energy_keV": 200.0,
        "collection_angle_mrad": 10.0,
        "kk_constant_nm_eV": sum_rule_prefactor_nm_eV(200.0),  # a metal: 1 - Re[1/eps(0)] = 1
        "method": "mirror",
    }
    got = kk_thickness_kernel(*_block(xs, sim), **kw)
    want = kk_thickness_kernel(*_block(np, sim), **kw)
    assert got["thickness_nm"].dtype == xs.float32
    assert bool(np.all(to_numpy(got["valid"])))
    np.testing.assert_allclose(to_numpy(got["t_over_lambda"]), TL, rtol=5e-3)
    for name in ("thickness_nm", "kk_integral"):
        np.testing.assert_allclose(to_numpy(got[name]), want[name], rtol=1e-3)


@pytest.mark.parametrize("output", ["ssd", "band-limited", "reconvolved-zlp"])
def test_deconvolve_block_on_strict_float32(output):
    """deconvolve's block on array-api-strict in float32 (complex64 transforms), noisy: its
    outputs stay float32, t/lambda within 1 % of the synthetic truth (counting noise), and the
    SSD equals the NumPy path's (row passes, host decisions) to 2e-3 of its peak."""
    sim = _image(noise=True)
    got = deconvolve_block(*_block(xs, sim), method="mirror", output=output)
    want = deconvolve_block(*_block(np, sim), method="mirror", output=output)
    assert got["ssd"].dtype == xs.float32
    np.testing.assert_array_equal(to_numpy(got["valid"]), want["valid"])
    np.testing.assert_allclose(to_numpy(got["t_over_lambda"]), TL, rtol=1e-2)
    g, w = to_numpy(got["ssd"]), want["ssd"]
    assert np.nanmax(np.abs(g - w)) <= 2e-3 * np.nanmax(np.abs(w))


def test_fourier_log_one_pass_equals_row_passes(monkeypatch):
    """The Fourier-log of a block in one pass (array-api-strict, as on a device) against the
    same block cut into row passes (NumPy with a small row budget: 2 rows a pass), complex64
    inside: the NumPy passes equal NumPy's single pass exactly (rows are independent), the
    strict single pass equals them to 1e-3 of the peak (float32 rounding of two arithmetic
    paths: measured 2.9e-4), and its raw SSD integrates to N0 t/lambda (eq. 22) within 0.5 %."""
    sim = _image(noise=False)
    e = sim["energy"].values.astype(np.float32)
    y = sim["signal"].values.reshape(TL.size, -1).astype(np.float32)
    z = sim["true_zlp_shape"].values[None, :] * sim["true_zlp_intensity"].values.reshape(-1, 1)
    z = z.astype(np.float32)
    kw = {"misfit": False, "metrics": True}
    one = fl.fourier_log_kernel(xs.asarray(y), xs.asarray(e), xs.asarray(z), **kw)["ssd"]
    whole = fl.fourier_log_kernel(y, e, z, **kw)["ssd"]
    monkeypatch.setattr(fl, "_ROW_BYTES", 2 * fl.fast_length(2 * e.size) * 4)  # two rows a pass
    passes = fl.fourier_log_kernel(y, e, z, **kw)["ssd"]
    np.testing.assert_array_equal(passes, whole)
    one = to_numpy(one)
    assert one.dtype == np.float32
    assert np.max(np.abs(one - passes)) <= 1e-3 * np.max(np.abs(passes))
    np.testing.assert_allclose(one.sum(axis=-1) / z.sum(axis=-1), TL, rtol=5e-3)


def test_align_block_on_strict_float32():
    """align_block on array-api-strict in float32: spectra whose ZLP sits at known offsets
    (whole and half channels) come back with their centres found to 0.02 channel and their
    ZLP moved to 0 eV (the peak channel at the axis' 0 eV)."""
    sim = _image()
    e = sim["energy"].values
    d = float(e[1] - e[0])
    base = sim["signal"].values.reshape(TL.size, -1)
    shifts_ch = np.array([0.0, 3.0, -2.0, 0.5, 7.5, -4.5])
    k = np.fft.rfftfreq(e.size)
    moved = np.fft.irfft(
        np.fft.rfft(base, axis=-1) * np.exp(-2j * math.pi * k * shifts_ch[:, None]), n=e.size
    )
    y = xs.asarray(moved.astype(np.float32))
    out = align_block(
        y,
        xs.asarray(e.astype(np.float32)),
        method="fourier",
        search_eV=None,
        lo=0,
        hi=e.size,
        fill_value=0.0,
    )
    assert bool(np.all(to_numpy(out["valid"])))
    c0 = align_block(
        xs.asarray(base.astype(np.float32)),
        xs.asarray(e.astype(np.float32)),
        method="fourier",
        search_eV=None,
        lo=0,
        hi=e.size,
        fill_value=0.0,
    )["zlp_centre_eV"]
    found = (to_numpy(out["zlp_centre_eV"]) - to_numpy(c0)) / d
    np.testing.assert_allclose(found, shifts_ch, atol=0.02)
    zero = int(np.argmin(np.abs(e)))
    peaks = np.argmax(to_numpy(out["signal"]), axis=-1)
    assert np.all(np.abs(peaks - zero) <= 1)


def test_noise_powers_on_strict_equal_numpy():
    """The noise powers and roll-off of the measured-error Fourier-log (rolloff_twin: medians of
    the top quarter of |J~|^2 and |Z~|^2) on array-api-strict in complex64 equal the NumPy
    fast path's on the probe spectra (counting noise 1e4-1e6, a misfit). Truth: the NumPy path
    (itself held to the twin and to synthetic truth in test_fourier_log.py)."""
    k = 2049
    nu = (np.arange(k) / (2 * (k - 1) * 0.05)).astype(np.float32)
    consts = fl.RolloffConsts(2 * (k - 1), 0.05, fl.MAX_RESOLUTION_FWHM, True, k // 64, nu)
    args = fl.rolloff_probe(np, k, consts)
    want = fl.rolloff_numpy(*args)
    strict_args = tuple(None if a is None else xs.asarray(a) for a in args[:-1])
    strict_consts = fl.RolloffConsts(
        *[getattr(consts, f) for f in ("p", "disp", "max_res")],
        consts.unwrap,
        consts.half,
        xs.asarray(nu),
    )
    got = fl.rolloff_twin(xs, *strict_args, strict_consts)
    assert got["ell"].dtype == xs.complex64
    np.testing.assert_allclose(to_numpy(got["n_j"]), want["n_j"], rtol=1e-5)
    np.testing.assert_array_equal(to_numpy(got["dead"]), want["dead"])
    np.testing.assert_array_equal(to_numpy(got["first"]), want["first"])
