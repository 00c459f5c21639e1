"""The Kramers-Kronig block kernel's issue-11 side (eelsgpu.kernels.blocks_kk): the per-pixel
cut-off, the ZLP-centred input, the sign constraint and the quality bits, on NumPy and
array-api-strict. Truth: analytic (eelsgpu.synthetic; the models of tests/kk_cases.py) and the
one-equation kernels already tested against it (eq. 26 of eelsgpu.kernels.sum_rule)."""

from __future__ import annotations

import numpy as np
from conftest import asarray, to_numpy
from kk_cases import BETA, E0, LORENTZ_5
from kk_cases import image as _image

from eelsgpu import synthetic
from eelsgpu.kernels import quality as q
from eelsgpu.kernels.blocks_kk import ALL_VARIABLES, kk_kernel
from eelsgpu.kernels.sum_rule import sum_rule_thickness_nm
from eelsgpu.kernels.zlp import shift_kernel

DRUDE = synthetic.Drude(15.0, 1.0)


def _run(xp, ssd, energy, n0, **kw):
    kw.setdefault("beam_energy_keV", E0)
    kw.setdefault("collection_angle_mrad", BETA)
    if "refractive_index" not in kw and "thickness_nm" not in kw:
        kw.setdefault("metal", True)
    for name in ("cutoff_eV", "zlp_centre_eV", "log_ratio_thickness_nm", "upstream_quality"):
        if name in kw:
            kw[name] = asarray(xp, kw[name])
    out = kk_kernel(
        asarray(xp, ssd), asarray(xp, energy), zlp_intensity=asarray(xp, n0), **kw
    )  # fmt: skip
    return {k: to_numpy(v) for k, v in out.items()}


def test_per_pixel_cutoff_is_eq26_with_each_pixels_cutoff(xp):
    """Truth: eq. 26 (sum_rule_thickness_nm, one cut-off for all rows, tested against the
    synthetic thickness) run once per cut-off. Four copies of a Drude SSD (200 kV, 10 mrad) with
    cut-offs 0.3, 1.0, 2.2 eV and none (NaN: the kernel's scalar 1.5 eV) give each the thickness
    of their own cut-off to 1e-9, and the cut-off map back."""
    sim = _image(DRUDE, [60.0] * 4)
    e, ssd = sim["energy"].values, sim["true_ssd"].values
    n0 = sim["true_zlp_intensity"].values
    cuts = np.array([0.3, 1.0, 2.2, np.nan])
    out = _run(xp, ssd, e, n0, cutoff_eV=cuts, low_energy_cutoff_eV=1.5)
    for i, c in enumerate([0.3, 1.0, 2.2, 1.5]):
        t = sum_rule_thickness_nm(
            ssd[i : i + 1], e, n0[i : i + 1], beam_energy_keV=E0, collection_angle_mrad=BETA,
            metal=True, low_energy_cutoff_eV=c,
        )  # fmt: skip
        assert abs(out["thickness_nm"][i] / t[0] - 1) < 1e-9
        assert abs(out["low_energy_cutoff_eV"][i] - c) < 0.05 / 2 + 1e-9
    assert np.all(np.abs(out["thickness_nm"] / sim["true_t_nm"].values - 1) < 0.01)


def test_ssd_where_the_zlp_sat_is_moved_to_zero_loss(xp):
    """Truth: synthetic thickness and plasmon (Drude Ep 15, width 1). The exact SSD moved to
    where drifting ZLPs would put it (-2.3, 0.04, 1.7 eV on the stored axis, as deconvolve's
    reconvolved-zlp output sits) and analysed with those centres gives the thickness within
    0.5 % and eps1 = 0 within 0.05 eV of the aligned SSD's."""
    sim = _image(DRUDE, [40.0, 80.0, 120.0])
    e, ssd = sim["energy"].values, sim["true_ssd"].values
    n0 = sim["true_zlp_intensity"].values
    drift = np.array([-2.3, 0.04, 1.7])
    moved = shift_kernel(ssd, -drift, "linear", dispersion_eV=0.05, fill_value=0.0)
    ref = _run(xp, ssd, e, n0)
    out = _run(xp, moved, e, n0, zlp_centre_eV=drift)
    assert np.all(np.abs(out["thickness_nm"] / ref["thickness_nm"] - 1) < 0.005)
    assert np.all(np.abs(out["plasmon_energy_eV"] - ref["plasmon_energy_eV"]) < 0.05)
    assert np.all(np.abs(out["thickness_nm"] / sim["true_t_nm"].values - 1) < 0.01)
    bad = _run(xp, moved, e, n0, zlp_centre_eV=np.array([np.nan, 0.04, 1.7]))
    assert not bad["valid"][0] and np.isnan(bad["thickness_nm"][0]) and bad["valid"][1]


def test_sign_constraint_keeps_eps2_positive_on_noisy_ssds(xp):
    """Truth: synthetic thickness of a noisy Lorentz film (Ep 16.6, gap 5.07 eV; Poisson noise of
    a 1e5-count spectrum added to the exact SSD). Unconstrained, noise makes eps2 < 0 in some
    channels; constrained (the default) no channel of eps2 or Im[-1/eps] is negative, the
    thickness stays within 3 % of the truth (the clipped noise adds < 1 %: the measured bias of
    benchmarks/real_data.py), the negative weight is below the 10 % limit and no bit is set but
    the surface one (a 60 nm film)."""
    sim = _image(LORENTZ_5, [60.0] * 6)
    e, ssd = sim["energy"].values, sim["true_ssd"].values
    rng = np.random.default_rng(3)
    noisy = ssd + rng.normal(0.0, 1.0, ssd.shape) * np.sqrt(np.abs(ssd) + 30.0)
    n0 = sim["true_zlp_intensity"].values
    kw = dict(refractive_index=LORENTZ_5.refractive_index)
    free = _run(xp, noisy, e, n0, nonnegative=False, **kw)
    con = _run(xp, noisy, e, n0, variables=ALL_VARIABLES, **kw)
    assert np.any(free["eps2"] < 0)
    assert np.all(con["eps2"] >= 0) and np.all(con["loss_function"] >= 0)
    assert np.all(np.abs(con["thickness_nm"] / sim["true_t_nm"].values - 1) < 0.03)
    assert np.all(con["eps2_negative_weight"] < 0.1) and np.all(con["valid"])
    assert np.all((con["quality"] & ~np.uint32(q.SURFACE_NOT_CORRECTED)) == 0)


def test_a_negative_lobe_is_eps2_negative_and_not_valid(xp):
    """Truth: a deliberately broken SSD: the Drude plasmon (14-16 eV) of one pixel turned
    negative, as a failed deconvolution of an off-axis spectrum does. Its negative channels
    carry more than 10 % of the sum rule: EPS2_NEGATIVE, not valid, eps2 still >= 0; the intact
    pixel is valid."""
    sim = _image(DRUDE, [80.0, 80.0])
    e, ssd = sim["energy"].values, sim["true_ssd"].values.copy()
    ssd[1, (e > 14) & (e < 16)] *= -1
    out = _run(xp, ssd, e, sim["true_zlp_intensity"].values)
    assert out["valid"][0] and not out["valid"][1]
    assert out["quality"][1] & q.EPS2_NEGATIVE and not out["quality"][0] & q.EPS2_NEGATIVE
    assert out["eps2_negative_weight"][1] > 0.1 and np.all(out["eps2"] >= 0)


def test_thickness_disagreement_and_carried_bits(xp):
    """Truth: synthetic thickness. Given the true thickness as the log-ratio one, the ratio is
    1 (to 1 %) and no KK_THICKNESS_DISAGREES; given twice or half of it, the bit is set and the
    pixel stays valid (a warning); an upstream fatal bit (ZLP_MISMATCH) is carried and makes the
    pixel not valid, a warning bit (AXIS_OFFSET) is carried and does not."""
    sim = _image(DRUDE, [150.0] * 5)
    e, ssd = sim["energy"].values, sim["true_ssd"].values
    t = sim["true_t_nm"].values
    upstream = np.array([0, 0, 0, q.ZLP_MISMATCH, q.AXIS_OFFSET], dtype=float)
    out = _run(
        xp, ssd, e, sim["true_zlp_intensity"].values,
        log_ratio_thickness_nm=t * np.array([1.0, 2.0, 0.5, 1.0, 1.0]), upstream_quality=upstream,
    )  # fmt: skip
    assert abs(out["thickness_ratio"][0] - 1) < 0.01
    flagged = (out["quality"] & q.KK_THICKNESS_DISAGREES) > 0
    assert list(flagged) == [False, True, True, False, False]
    assert list(out["valid"]) == [True, True, True, False, True]
    assert out["quality"][3] & q.ZLP_MISMATCH and out["quality"][4] & q.AXIS_OFFSET


def test_surface_flag_where_eq36_matters_and_not_after_the_correction(xp):
    """Truth: synthetic Si-like Lorentz films with the surface losses of eq. 36 in their SSD
    (eelsgpu.synthetic, surface=True). A 30 nm film's surface losses are 15 % of its SSD below
    the plasmon (measured here, eq. 36 on the uncorrected eps): without the correction it gets
    SURFACE_NOT_CORRECTED and eps is trusted only from the loss peak up; corrected (it
    converges, status 1) the bit is gone and eps is trusted from the cut-off. A 400 nm film's
    share is under 5 %: no bit."""
    sim = _image(LORENTZ_5, [30.0, 400.0], surface=True)
    e, ssd = sim["energy"].values, sim["true_ssd"].values
    n0 = sim["true_zlp_intensity"].values
    kw = dict(refractive_index=LORENTZ_5.refractive_index, cutoff_eV=np.array([1.5, 1.5]))
    raw = _run(xp, ssd, e, n0, **kw)
    cor = _run(xp, ssd, e, n0, iterations=20, **kw)
    assert raw["surface_share"][0] > 0.1 and raw["surface_share"][1] < 0.05
    assert raw["quality"][0] & q.SURFACE_NOT_CORRECTED and not raw["quality"][1]
    assert abs(raw["eps_trusted_from_eV"][0] - raw["loss_peak_eV"][0]) < 1e-9
    assert raw["valid"][0]  # a warning: eps above the plasmon and t are kept
    assert cor["surface_status"][0] == 1 and not cor["quality"][0] & q.SURFACE_NOT_CORRECTED
    assert abs(cor["eps_trusted_from_eV"][0] - 1.5) < 0.05


def test_known_thickness_and_valid_mask_in_float32(xp):
    """Truth: the analytic eps of a Drude metal (Ep 15, width 1) and the synthetic thickness
    (exact SSD, t = 20, 60, 200, 100 nm, 2048 channels of 0.05 eV), on NumPy and
    array-api-strict (the GPU path's namespace) in float32. Normalised by the known thickness
    map (eq. 33 read the other way): eps within 2 % of max |eps| over 3-50 eV, Re[1/eps(0)] that
    of a metal (0, to 0.01), the thickness returned as given; a pixel the ``valid`` mask leaves
    out and one whose thickness is 0 (vacuum) are NaN and not valid. The outputs stay float32
    and agree with the float64 run in 1/eps to float32 rounding of the FFT pair (u log2(m) max
    Im[-1/eps], m = 4000; see tests/analysis/test_kramers_kronig.py)."""
    from kk_cases import eps_error

    sim = _image(DRUDE, [20.0, 60.0, 200.0, 100.0], n_channels=2048, dispersion_eV=0.05)
    ssd, e = sim["true_ssd"].values, sim["energy"].values
    n0, t_true = sim["true_zlp_intensity"].values, sim["true_t_nm"].values
    t_map = t_true.copy()
    t_map[3] = 0.0
    valid = np.array([True, True, False, True])
    f32 = np.float32
    kw = dict(beam_energy_keV=E0, collection_angle_mrad=BETA, variables=ALL_VARIABLES)
    out = kk_kernel(
        asarray(xp, ssd, f32), asarray(xp, e), zlp_intensity=asarray(xp, n0, f32),
        thickness_nm=asarray(xp, t_map, f32), valid=asarray(xp, valid), **kw,
    )  # fmt: skip
    assert out["eps1"].dtype == out["eps2"].dtype == out["thickness_nm"].dtype == xp.float32
    out = {k: to_numpy(v) for k, v in out.items()}
    ref = kk_kernel(ssd, e, zlp_intensity=n0, thickness_nm=t_map, valid=valid, **kw)
    good = np.array([True, True, False, False])
    np.testing.assert_array_equal(out["valid"], good)
    np.testing.assert_array_equal(ref["valid"], good)
    assert np.all(np.isnan(out["eps1"][~good])) and np.all(np.isnan(out["thickness_nm"][~good]))
    energy = np.arange(1, out["eps1"].shape[-1] + 1) * 0.05
    assert np.all(eps_error(out["eps1"][good], out["eps2"][good], energy, DRUDE) < 0.02)
    assert np.all(np.abs(out["re_inverse_eps0"][good]) < 0.01)
    np.testing.assert_allclose(out["thickness_nm"][good], t_true[good], rtol=1e-6)

    def inverse(o):
        e1, e2 = o["eps1"][good].astype(np.float64), o["eps2"][good].astype(np.float64)
        m2 = e1**2 + e2**2
        return e1 / m2, e2 / m2

    (re32, im32), (re64, im64) = inverse(out), inverse(ref)
    tol = 2.0**-24 * np.log2(4000) * im64.max()
    assert np.abs(re32 - re64).max() < tol and np.abs(im32 - im64).max() < tol
