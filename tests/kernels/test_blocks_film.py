"""The film fit's block kernel (eelsgpu.kernels.blocks_film) through the engine.

Truths: fit_dielectric on the same SSDs held in memory (the result must not depend on how the
engine cuts or streams the pixels), eelsgpu.synthetic's film thicknesses, and the array-API
standard (array-api-strict runs the kernel as a GPU would, and must give NumPy's numbers).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import eelsgpu
from eelsgpu import synthetic
from eelsgpu.kernels import film_fit as FF
from eelsgpu.kernels.blocks_film import film_kernel

KW = dict(n_channels=400, dispersion_eV=0.1, offset_eV=-5.0, beam_energy_keV=200.0,
          collection_angle_mrad=100.0, zlp_counts=1e6, dtype=np.float64)  # fmt: skip
FIT = dict(beam_energy_keV=200.0, collection_angle_mrad=100.0, retardation=False,
           window_eV=(4.0, 30.0), jitter=0.0, iterations=8, check_quadrature=False)  # fmt: skip


@pytest.fixture(scope="module")
def films():
    """A 2 x 3 image of coupled Drude films (15/1 eV, 10-35 nm, exact SSD) and its t truth."""
    model = synthetic.Drude(15.0, 1.0)
    lam = float(synthetic.low_loss_spectrum(model, t_over_lambda=0.1, **KW).true_mean_free_path_nm)
    t = np.linspace(10.0, 35.0, 6).reshape(2, 3)
    sim = synthetic.low_loss_image(
        model, t_over_lambda=t / lam, shape=(2, 3), surface="coupled", **KW
    )
    return sim, t


def test_store_input_streams_and_equals_the_in_memory_fit(films, tmp_path):
    """An SSD store (dask-backed, chunks of 1 x 2 pixels) gives a lazy result that write_store
    streams; its numbers equal the in-memory fit's (1e-7: batched LAPACK rounding) and t is the synthetic truth (1 %)."""
    from eelsgpu import io

    sim, t = films
    ds_in = xr.Dataset({"ssd": sim["true_ssd"], "zlp_intensity": sim["true_zlp_intensity"]})
    io.write_store(ds_in, tmp_path / "ssd.zarr")
    lazy_in = io.open_store(tmp_path / "ssd.zarr").chunk({"y": 1, "x": 2})
    lazy = eelsgpu.fit_dielectric(lazy_in, device="cpu", **FIT)
    assert lazy["eps1"].chunks is not None  # not computed yet
    io.write_store(lazy, tmp_path / "fit.zarr")
    got = io.open_store(tmp_path / "fit.zarr")
    ref = eelsgpu.fit_dielectric(ds_in, device="cpu", **FIT)
    np.testing.assert_allclose(ref["thickness_nm"].values, t, rtol=1e-2)
    for name in ("eps1", "eps2", "thickness_nm", "plasmon_energy_eV", "model", "deviance_reduced"):
        # 1e-7 and 1e-12 absolute: LAPACK's batched solves round by batch (the noise-free
        # deviance is 1e-8, so its rounding is relatively large)
        np.testing.assert_allclose(
            got[name].values, ref[name].values, rtol=1e-7, atol=1e-12, err_msg=name
        )
    np.testing.assert_array_equal(got["quality"].values, ref["quality"].values)
    np.testing.assert_array_equal(got["valid"].values, ref["valid"].values)


def test_kernel_on_array_api_strict_equals_numpy(films, xp):
    """film_kernel on the ``xp`` namespace (NumPy, array-api-strict) gives NumPy's parameters,
    eps and flags (1e-7), with no call outside the array API standard."""
    sim, _ = films
    e = sim["true_ssd"].energy.values
    block = sim["true_ssd"].values.reshape(6, -1)
    sel = np.nonzero((e - 0.05 >= 4.0 - 1e-9) & (e + 0.05 <= 30.0 + 1e-9))[0]
    fm = FF.fit_model(e[sel] - 0.05, e[sel] + 0.05, 200.0, 100.0, kind="coupled")
    e_out = np.linspace(1.0, 30.0, 30)
    n0 = np.asarray(sim["true_zlp_intensity"].values, dtype=np.float64).reshape(6)

    def run(ns):
        out = film_kernel(ns.asarray(block), ns.asarray(e), zlp_intensity=ns.asarray(n0), fm=fm,
                          fine=None, channels=ns.asarray(sel), bin_width=1,
                          energy_out_eV=ns.asarray(e_out), iterations=6, jitter=0.0)  # fmt: skip
        return {k: np.asarray(v) for k, v in out.items()}

    ref = run(np)
    got = run(xp)
    for name in ("thickness_nm", "plasmon_energy_eV", "eps1", "eps2", "model", "fit_flags"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-7, atol=1e-12, err_msg=name)
