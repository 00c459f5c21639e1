"""Kramers-Kronig and band gap on every measured low-loss spectrum of ../shared/data (issue 11).

Every file of the shared README's section 1 with a ZLP (every line-scan pixel), with every ZLP
model (threshold, mirror, fit), goes through the documented chain ``deconvolve(output=
"band-limited")`` -> ``kramers_kronig`` (tests/real_files.py: the files, their normalisation,
density and README check values). These are measurements with no exact answer: each test asserts
physical properties and says which truth it uses. The WS2 band gaps use EELSfitter's spectra
(Roest et al., Ultramicroscopy 222, 113202 (2021): about 1.6 eV).

The deconvolution checks its ZLP model per pixel (its ``quality`` map): a model that does not
fit (mirror or fit on h-BN, the Al film) is flagged upstream and not valid, so every test runs
on every ZLP model.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from real_files import FILES, ZLP_MODELS, RealFile, band_limited, kk_chain, open_real, ws2_spectra

import eelsgpu
from eelsgpu.kernels import quality as q
from eelsgpu.kernels.blocks_kk import THICKNESS_FACTOR
from eelsgpu.model import spectrum_image

NAMES = [f.name for f in FILES]


@pytest.fixture(scope="module")
def results(shared_data):
    """(file, ZLP model) -> (deconvolution, KK result), computed once (about 5 s)."""
    out = {}
    for f in FILES:
        si = open_real(shared_data, f)
        for m in ZLP_MODELS:
            out[f.name, m] = kk_chain(si, f, m)
    return out


def _file(name: str) -> RealFile:
    return next(f for f in FILES if f.name == name)


def _flat(kk: xr.Dataset, name: str) -> np.ndarray:
    v = np.asarray(kk[name].values)
    return v.reshape(-1, v.shape[-1]) if kk[name].dims[-1:] == ("energy",) else v.reshape(-1)


@pytest.mark.parametrize("name", NAMES)
def test_eps2_and_loss_function_not_negative_where_valid(results, name):
    """Truth: physics, a passive medium absorbs: Im[-1/eps] >= 0 and eps2 >= 0 at every energy
    (Egerton 2011, 3.3). Every model, every pixel: where valid, no channel of eps2 or the loss
    function is negative, and valid is exactly 'analysed and no fatal quality bit'; where the
    SSD had to be changed by more than 10 % of the sum rule to get there, EPS2_NEGATIVE is set
    and the pixel is not valid."""
    for m in ZLP_MODELS:
        _, kk = results[name, m]
        valid = _flat(kk, "valid")
        qual = _flat(kk, "quality").astype(np.int64)
        assert np.all(_flat(kk, "eps2")[valid] >= 0), m
        assert np.all(_flat(kk, "loss_function")[valid] >= 0), m
        assert not np.any(valid & ((qual & q.FATAL) > 0)), m
        weight = _flat(kk, "eps2_negative_weight")
        big = np.isfinite(weight) & (weight > 0.1)
        assert np.all((qual[big] & q.EPS2_NEGATIVE) > 0) and not valid[big].any(), m


@pytest.mark.parametrize("name", NAMES)
def test_kk_and_log_ratio_thickness_agree(results, name):
    """Truth: agreement between methods, the KK sum-rule thickness (eq. 26) against the
    log-ratio thickness t/lambda x the Iakoubovskii mean free path of the density, with the
    t/lambda of truncation (zlp="threshold", equal to exspy's estimate_thickness to 0.002 and
    the shared README's check values). Where valid and the film is thick enough for its surface
    losses not to matter (no SURFACE_NOT_CORRECTED), every ZLP model's KK thickness agrees with
    it within the stated factor (1.5). KK_THICKNESS_DISAGREES is set exactly where the ratio to
    the log-ratio thickness of the same ZLP model (``thickness_ratio``) is beyond it. Measured
    (threshold): 0.60 (LSMO 80 kV) to 1.55 (h-BN, 3 nm thick, whose surface losses the flag
    names); against truncation, mirror and fit give 0.69 (SiC fit) to 1.13 (SrTiO3 mirror).

    Why truncation's t/lambda for the agreement: this test was written when deconvolve's
    ``t_over_lambda`` came from truncation whatever ``zlp=`` said. Since deconvolve takes N0
    from the ZLP model (as thickness does; issue 11 item 4), the same-model log-ratio moves by
    -10 % to +7 % with the model (SiC fit: t/lambda 0.803 against 0.774), and SiC's fit ratio
    (0.660, at 100 kV, an E0 its README calls unresolved against 60 kV) falls 1 % past 1/1.5:
    correctly flagged KK_THICKNESS_DISAGREES, a warning (not fatal) because the mean free path
    itself is uncertain by 10-20 %."""
    tl_thr = _flat(results[name, "threshold"][0], "t_over_lambda")
    for m in ZLP_MODELS:
        dec, kk = results[name, m]
        ratio = _flat(kk, "thickness_ratio")
        qual = _flat(kk, "quality").astype(np.int64)
        valid = _flat(kk, "valid")
        both = np.isfinite(ratio)
        outside = both & ((ratio > THICKNESS_FACTOR) | (ratio < 1 / THICKNESS_FACTOR))
        assert np.array_equal(outside, (qual & q.KK_THICKNESS_DISAGREES) > 0), m
        to_thr = ratio * _flat(dec, "t_over_lambda") / tl_thr
        thick = valid & both & ((qual & q.SURFACE_NOT_CORRECTED) == 0)
        assert np.all(np.isfinite(to_thr[thick])), m
        far = (to_thr > THICKNESS_FACTOR) | (to_thr < 1 / THICKNESS_FACTOR)
        assert not np.any(far[thick]), (m, to_thr[thick])


@pytest.mark.parametrize("name", NAMES)
def test_loss_peaks_at_the_readme_energies(results, name):
    """Truth: the main loss peak of each file in the shared README's checks (Al 15.04 eV and
    its off-axis dispersion 15.07-15.24, SiO2 22.0, SiC 22.5, h-BN 6.75, SrTiO3 30.9, MnOx
    31.2, Cr 24.1, the line scans 30-31 and 27.5-30.5 eV). The loss-function maximum of every
    valid pixel lies within 0.5 eV of it (of the range, for the median of a line scan)."""
    f = _file(name)
    lo, hi = f.peak_eV
    for m in ZLP_MODELS:
        _, kk = results[name, m]
        peak = _flat(kk, "loss_peak_eV")[_flat(kk, "valid")]
        if not peak.size:
            continue
        if lo == hi:
            assert np.all(np.abs(peak - lo) <= 0.5), (m, peak)
        else:
            assert lo - 0.5 <= np.median(peak) <= hi + 0.5, (m, peak)


@pytest.mark.parametrize("name", ["Al film 0.00", "Al 0.16[1] on-axis"])
def test_al_plasmon_and_the_surface_flag(results, shared_data, name):
    """Truth: the optical constants of Al (Rakic 1995, shared/data/reference): eps1 crosses 0
    upwards at 15.0 eV (the table's 14.93, its ELF peak 15.0). On the on-axis Al film the
    crossing is at 15.0 +- 0.1 eV for every ZLP model whose result is valid. The film is 25 nm
    thin: its surface losses (eq. 36) exceed 5 % below the plasmon and the surface correction
    fails there (status 3, as issue 11 measured), so SURFACE_NOT_CORRECTED is set and eps is
    trusted only from the plasmon up (eps1 below it is positive where the optical one is -1 to
    -8)."""
    f = _file(name)
    for m in ZLP_MODELS:
        _, kk = results[name, m]
        if bool(kk["valid"]):
            assert abs(float(kk["plasmon_energy_eV"]) - 15.0) <= 0.1, m
    dec, kk = results[name, "threshold"]
    assert bool(kk["valid"])
    assert int(kk["quality"]) & q.SURFACE_NOT_CORRECTED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        iterated = eelsgpu.kramers_kronig(
            dec, metal=True, iterations=20, variables=("quality", "surface_status",
            "eps_trusted_from_eV"), device="cpu"
        ).compute()  # fmt: skip
    assert int(iterated["surface_status"]) == 3
    assert int(iterated["quality"]) & q.SURFACE_NOT_CORRECTED
    assert 14.8 <= float(iterated["eps_trusted_from_eV"]) <= 15.2
    assert f.norm == {"metal": True}


def test_spectra_that_break_the_model_are_not_valid(results):
    """Truth: the off-axis (q-resolved) Al series gduscher AL-DFoffset0.22-0.30 breaks the
    Fourier-log model: its SSD has negative lobes of -35 / -59 / -93 % of the peak at the
    double plasmon (issue 11, item 7). No ZLP model gives a valid KK result there, while the
    on-axis spectrum of the same film is valid. Two independent checks say so: the
    deconvolution's NEGATIVE_LOBE (the raw SSD's lobe beyond 0.1 of its peak; fatal, carried
    into the KK quality map, and KK then analyses no such pixel), and KK's own EPS2_NEGATIVE
    when it is given the same band-limited SSD without the deconvolution's verdict (the lobes
    take 25-74 % of the sum rule). (Before the merge the test's input was a stand-in without
    the deconvolution's quality map, so it asked for EPS2_NEGATIVE in the KK result itself.)"""
    for name in ("Al 0.22[0]", "Al 0.25[0]", "Al 0.30[0]"):
        for m in ZLP_MODELS:
            dec, kk = results[name, m]
            assert not bool(kk["valid"]), (name, m)
            assert int(dec["quality"]) & q.NEGATIVE_LOBE, (name, m)
            assert int(kk["quality"]) & q.NEGATIVE_LOBE, (name, m)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                alone = eelsgpu.kramers_kronig(
                    dec.drop_vars(["valid", "quality"]), metal=True,
                    variables=("eps2_negative_weight",), device="cpu",
                ).compute()  # fmt: skip
            assert int(alone["quality"]) & q.EPS2_NEGATIVE, (name, m)
            assert not bool(alone["valid"]), (name, m)
    assert bool(results["Al film 0.00", "threshold"][1]["valid"])


@pytest.mark.parametrize(
    "name", ["Al film 0.00", "SiO2", "h-BN", "SrTiO3", "MnOx", "LSMO/STO", "LSMO 80kV"]
)
def test_kk_thickness_does_not_depend_on_the_axis_offset(shared_data, name):
    """Truth: invariance, energy loss is measured from the ZLP, wherever the stored axis puts
    it. Each file is re-zeroed (its ZLP moved to 0, -3, +2.7 eV, +0.37 eV, and +20 eV where the
    window then no longer holds 0 eV; 2.7 and 0.37 eV are not whole channels) and run through
    deconvolve with the default output (reconvolved-zlp, on the data's axis) and band-limited:
    the KK thickness of every pixel stays within 1 % of the same output's at the stored axis
    (issue 11's figure), the loss peak within 0.1 eV and ``valid`` the same. Issue 11 measured
    x5.2 for h-BN, -44 % for LSMO 80 kV, a SrTiO3 peak at 26.7 instead of 31.0 eV; after the
    merge an offset that was not a whole number of channels resampled the raw SSD by a
    fraction of a channel and turned h-BN's borderline NEGATIVE_LOBE (0.097-0.104 of the peak
    against 0.1) on and off, so its KK thickness went NaN at +2.7 eV."""
    f = _file(name)
    si = open_real(shared_data, f)
    c0 = float(np.nanmedian(band_limited(si, "threshold")["zlp_centre_eV"].values))
    fwhm = band_limited(si, "threshold")["zlp_fwhm_eV"]
    for kind in ("reconvolved-zlp", "band-limited"):
        base = None
        for off in (0.0, -c0, -3.0, 2.7, 0.37, 20.0):
            moved = si.assign_coords(energy=si["energy"].values + off)
            search = (c0 + off - 5.0, c0 + off + 5.0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if kind == "band-limited":
                    dec = band_limited(moved, "threshold", search)
                else:
                    dec = eelsgpu.deconvolve(moved, zlp="threshold", search_eV=search, device="cpu")
                kk = eelsgpu.kramers_kronig(
                    dec, zlp_fwhm_eV=fwhm, variables=("thickness_nm", "loss_peak_eV"),
                    device="cpu", **f.norm,
                ).compute()  # fmt: skip
            t, peak, valid = (_flat(kk, v) for v in ("thickness_nm", "loss_peak_eV", "valid"))
            if base is None:
                base = (t, peak, valid)
                assert np.isfinite(t).any(), kind
            assert np.array_equal(valid, base[2]), (kind, off)
            ok = np.isfinite(base[0])
            assert np.array_equal(np.isfinite(t), ok), (kind, off)
            assert np.all(np.abs(t[ok] / base[0][ok] - 1) < 0.01), (kind, off, t / base[0])
            assert np.all(np.abs(peak[ok] - base[1][ok]) <= 0.1), (kind, off)


# --------------------------------------------------------------------------- WS2 band gap
@pytest.fixture(scope="module")
def ws2(shared_data):
    d = ws2_spectra(shared_data, "Specimen_3")
    if not d:
        pytest.skip("no EELSfitter Specimen_3 spectra")
    e = d["energy"]
    d["si"] = spectrum_image(d["specimen"], e, dtype=np.float64, source="EELSfitter Specimen 3")
    d["vacuum_mean"] = xr.DataArray(d["vacuum"].mean(axis=0), dims="energy", coords={"energy": e})
    return d


def test_ws2_gap_by_the_reference_zlp_recipe(ws2):
    """Truth: EELSfitter's WS2 band gap, about 1.6 eV (Roest et al. 2021), on its 10 Specimen 3
    spectra. The documented recipe (the three vacuum spectra averaged and given as zlp=, window
    0.8-3.5 eV above the residue, constant background, b free) gives 1.55-1.70 eV on at least 8
    of the 10 (9 measured; the free model's (Eg, b) minimum found off the b grid since issue 14
    moved them by up to 0.03 eV, against their quoted sigmas of 0.10-0.44 eV), every fit valid
    within 1.5-2.1 eV and the median within 1.55-1.70 eV; no window start is in the
    residue."""
    ds = eelsgpu.bandgap(
        ws2["si"], zlp=ws2["vacuum_mean"], window_eV=(0.8, 3.5), background="constant",
        search_eV=(-0.5, 0.5), device="cpu",
    ).compute()  # fmt: skip
    eg, valid = ds["bandgap_eV"].values, ds["valid"].values
    assert np.sum(valid & (eg >= 1.55) & (eg <= 1.70)) >= 8, eg
    assert np.all((eg[valid] > 1.5) & (eg[valid] < 2.15))
    assert 1.55 <= np.median(eg[valid]) <= 1.70
    assert not np.any(ds["quality"].values & q.WINDOW_IN_ZLP_RESIDUE)
    assert np.all(np.abs(ds["zlp_centre_eV"].values) < 0.05)


def test_ws2_fits_in_the_zlp_residue_are_not_valid(ws2):
    """Truth: the same spectra and EELSfitter's ~1.6 eV; a gap at 0.7 eV is the foot of the
    vacuum-ZLP subtraction's residue (which decays to its floor by ~0.65 eV), not WS2. Issue
    11's route (the vacuum ZLP subtracted by hand, the old window heuristic from 0.44 eV, a
    power-law background, direct gap) gives 0.69 and 0.71 eV for 2 of the 10 spectra; said to
    be ZLP-removed, every fit from that window is flagged WINDOW_IN_ZLP_RESIDUE. Through
    zlp= with the window found after the residue, no fit below 1 eV stays valid."""
    from eelsgpu.kernels.zlp import zlp_kernel

    e, y, vac = ws2["energy"], ws2["specimen"], ws2["vacuum_mean"].values
    z = zlp_kernel(y, e, method="reference", reference=vac, search_eV=(-0.5, 0.5))
    sub = spectrum_image(y - np.nan_to_num(z["zlp"]), e, dtype=np.float64)
    kw = dict(window_eV=(0.44, 2.69), background="power-law", model="direct", device="cpu")
    plain = eelsgpu.bandgap(sub, **kw).compute()
    low = plain["valid"].values & (plain["bandgap_eV"].values < 1.0)
    assert low.sum() == 2 and np.all(np.abs(plain["bandgap_eV"].values[low] - 0.70) < 0.03)
    checked = eelsgpu.bandgap(sub, zlp_removed=True, **kw).compute()
    assert not checked["valid"].values.any()
    assert np.all(checked["quality"].values & q.WINDOW_IN_ZLP_RESIDUE)
    auto = eelsgpu.bandgap(
        ws2["si"], zlp=ws2["vacuum_mean"], background="power-law", model="direct",
        search_eV=(-0.5, 0.5), device="cpu",
    ).compute()  # fmt: skip
    eg = auto["bandgap_eV"].values
    assert not np.any(auto["valid"].values & (eg < 1.0))
    assert auto.attrs["bandgap_window_eV"][0] >= 0.6


def test_ws2_recipe_from_the_command_line(ws2, tmp_path):
    """Truth: the API's answer on the same spectra (the recipe above). The README's command line
    (the spectra and the vacuum mean as .npy, the axis from the file names) writes the same
    band gaps and the quality map."""
    from eelsgpu import io
    from eelsgpu.cli import main

    e = ws2["energy"]
    np.save(tmp_path / "specimen.npy", ws2["specimen"])
    np.save(tmp_path / "vacuum.npy", ws2["vacuum_mean"].values)
    args = ["bandgap", str(tmp_path / "specimen.npy"), "-o", str(tmp_path / "gap.zarr")]
    args += ["--offset", f"{e[0]:.6f}", "--dispersion", f"{e[1] - e[0]:.6f}"]
    args += ["--zlp", str(tmp_path / "vacuum.npy"), "--search=-0.5:0.5", "--window", "0.8:3.5"]
    args += ["--background", "constant", "-q", "--device", "cpu"]
    assert main(args) == 0
    cli = io.open_store(tmp_path / "gap.zarr")
    api = eelsgpu.bandgap(
        ws2["si"], zlp=ws2["vacuum_mean"], window_eV=(0.8, 3.5), background="constant",
        search_eV=(-0.5, 0.5), device="cpu",
    ).compute()  # fmt: skip
    assert np.array_equal(cli["valid"].values, api["valid"].values)
    ok = api["valid"].values
    assert np.allclose(cli["bandgap_eV"].values[ok], api["bandgap_eV"].values[ok], atol=0.01)
    assert "quality" in cli and cli["quality"].dtype == np.uint32


def test_ws2_specimen_4_residue_reaches_past_the_window_start(shared_data):
    """Truth: Specimen 4's ZLP is 0.45 eV wide (not monochromated): 2 FWHM reach 0.9 eV, and
    the vacuum subtraction's residue still stands at its highest at 0.8 eV. A window from 0.8
    eV is flagged WINDOW_IN_ZLP_RESIDUE in every spectrum (the recipe is for monochromated
    spectra; the window found after the residue starts above 1 eV)."""
    d = ws2_spectra(shared_data, "Specimen_4")
    if not d:
        pytest.skip("no EELSfitter Specimen_4 spectra")
    e = d["energy"]
    si = spectrum_image(d["specimen"], e, dtype=np.float64)
    vac = xr.DataArray(d["vacuum"].mean(axis=0), dims="energy", coords={"energy": e})
    kw = dict(zlp=vac, background="constant", search_eV=(-0.5, 0.5), device="cpu")
    ds = eelsgpu.bandgap(si, window_eV=(0.8, 3.5), **kw).compute()
    assert np.all(ds["quality"].values & q.WINDOW_IN_ZLP_RESIDUE)
    assert not ds["valid"].values.any()
    assert eelsgpu.bandgap(si, **kw).attrs["bandgap_window_eV"][0] > 1.0
