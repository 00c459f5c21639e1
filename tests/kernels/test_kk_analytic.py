"""The analytic KK sigmas' block kernel (eelsgpu.kernels.blocks_replicas.kk_with_analytic) on
NumPy and array-api-strict. Truth: the same kernel's block-wide path (one cut-off for all rows,
whose linearisation tests/analysis/test_kk_analytic_uncertainty.py checks against a
finite-difference Jacobian) and the analytic synthetic SSD (Drude Ep 15 eV, width 1 eV)."""

from __future__ import annotations

import numpy as np
from conftest import asarray, to_numpy
from kk_cases import BETA, E0
from kk_cases import image as _image

from eelsgpu import synthetic
from eelsgpu.kernels.blocks_kk import kk_declaration
from eelsgpu.kernels.blocks_replicas import KK_ANALYTIC_TARGETS, kk_with_analytic
from eelsgpu.kernels.loss_grid import loss_grid


def test_per_pixel_cutoff_gives_the_block_cutoff_sigmas(xp):
    """Three copies of a Drude SSD at 1e6 electrons: the sigmas of every analytic target with a
    per-pixel cut-off map of 1.5 eV equal those with the block-wide 1.5 eV to 1e-9 (relative),
    on either namespace, and are finite and positive above the cut-off."""
    sim = _image(synthetic.Drude(15.0, 1.0), [60.0] * 3)
    e, ssd = sim["energy"].values, sim["true_ssd"].values
    ssd = ssd * (1e6 / ssd.sum(axis=-1, keepdims=True))
    n0 = sim["true_zlp_intensity"].values
    grid = loss_grid(e)
    decl = kk_with_analytic(kk_declaration(grid.energy_eV[1:]), KK_ANALYTIC_TARGETS)
    kw = {
        "beam_energy_keV": E0,
        "collection_angle_mrad": BETA,
        "metal": True,
        "low_energy_cutoff_eV": 1.5,
        "variables": ("eps1", "thickness_nm"),
        "gain": 1.0,
        "grid": grid,
    }
    run = {}
    for name, extra in (("block", {}), ("pixel", {"cutoff_eV": asarray(xp, np.full(3, 1.5))})):
        out = decl.kernel(
            asarray(xp, ssd), asarray(xp, e), zlp_intensity=asarray(xp, n0), **kw, **extra
        )
        run[name] = {k: to_numpy(v) for k, v in out.items()}
    assert set(run["block"]) == {"eps1", "thickness_nm"} | {
        f"{t}_sigma" for t in KK_ANALYTIC_TARGETS
    }
    for name, value in run["block"].items():
        np.testing.assert_allclose(run["pixel"][name], value, rtol=1e-9, err_msg=name)
    above = grid.energy_eV[1:] > 1.6
    s1 = run["block"]["eps1_sigma"][:, above]
    assert np.all(np.isfinite(s1[:, 100:300])) and np.all(s1[:, 100:300] > 0)
    assert np.all(run["block"]["thickness_nm_sigma"] > 0)


def test_plasmon_sigma_fft_rows_equal_the_table_rows(xp, monkeypatch):
    """The plasmon energy's sigma with the transposed Hilbert rows from one FFT pair (the path of
    grids above PLASMON_ROW_TABLE_MAX_CHANNELS) equals the one with the rows gathered from the
    exact (K, K) kernel table, to 1e-9 (relative; float64), on a Drude SSD at 1e6 electrons.
    Truth: the exact kernel values g(j - m) + g(j + m) of eq. 32."""
    from eelsgpu.kernels import blocks_replicas

    sim = _image(synthetic.Drude(15.0, 1.0), [60.0, 90.0])
    e, ssd = sim["energy"].values, sim["true_ssd"].values
    ssd = ssd * (1e6 / ssd.sum(axis=-1, keepdims=True))
    grid = loss_grid(e)
    decl = kk_with_analytic(kk_declaration(grid.energy_eV[1:]), ("plasmon_energy_eV",))
    kw = {
        "beam_energy_keV": E0,
        "collection_angle_mrad": BETA,
        "metal": True,
        "low_energy_cutoff_eV": 1.5,
        "variables": ("plasmon_energy_eV",),
        "gain": 1.0,
        "grid": grid,
        "zlp_intensity": asarray(xp, sim["true_zlp_intensity"].values),
    }
    run = {}
    for name, limit in (("table", 10**9), ("fft", 0)):
        monkeypatch.setattr(blocks_replicas, "PLASMON_ROW_TABLE_MAX_CHANNELS", limit)
        out = decl.kernel(asarray(xp, ssd), asarray(xp, e), **kw)
        run[name] = to_numpy(out["plasmon_energy_eV_sigma"])
    assert np.all(np.isfinite(run["table"])) and np.all(run["table"] > 0)
    np.testing.assert_allclose(run["fft"], run["table"], rtol=1e-9)
