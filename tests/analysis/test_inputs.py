"""What every public analysis (thickness, deconvolve, kramers_kronig, bandgap, align_zlp) does
with input it cannot use (issue 12 items 7-9, the requests H12 left for the analyses): one clear
error naming the problem, before anything runs, and the caller's data untouched.

Truth: the definitions of the cases (a NumPy array is not a spectrum image; complex counts,
an empty image, no energy axis, an axis in meV labelled eV, a negative baseline, numbers out of
range are mistakes); for the energy axis moved or rounded, the same analysis of the plain
input (the answer may not depend on the order of dims or on rounding at 1e-6 eV); the
synthetic image's own t/lambda.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import eelsgpu
from eelsgpu import synthetic
from eelsgpu._xp import axis_step
from eelsgpu.errors import EnergyAxisError, InputError
from eelsgpu.model import spectrum_image


@pytest.fixture(scope="module")
def sim():
    """A 2 x 3 Drude image (Ep 15 eV, t/lambda 0.5, 0.05 eV channels from -5 eV, 1024)."""
    return synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0), t_over_lambda=0.5, shape=(2, 3), n_channels=1024,
        dispersion_eV=0.05, offset_eV=-5.0, dtype=np.float64,
    )  # fmt: skip


def _runs(si):
    """Each public analysis on a raw spectrum image, by name (lazy where it can be)."""
    return {
        "thickness": lambda: eelsgpu.thickness(si, device="cpu"),
        "deconvolve": lambda: eelsgpu.deconvolve(si, device="cpu"),
        "kramers_kronig": lambda: eelsgpu.kramers_kronig(si, metal=True, device="cpu"),
        "bandgap": lambda: eelsgpu.bandgap(si, zlp="threshold", window_eV=(2, 8), device="cpu"),
        "align_zlp": lambda: eelsgpu.align_zlp(si, device="cpu"),
    }


@pytest.mark.parametrize("name", list(_runs(None)))
def test_not_a_spectrum_image(sim, name):
    """A NumPy array, complex counts, an empty image, dims without 'energy': one InputError
    naming the problem and the fix, the caller's array unchanged."""
    si = sim["signal"].compute()
    arr = si.values.copy()
    with pytest.raises(InputError, match="xarray"):
        _runs(arr)[name]()
    assert np.array_equal(arr, si.values)
    cases = [
        (si.astype(np.complex128), "complex"),
        (si.isel(x=slice(0, 0)), "empty"),
        (si.rename(energy="channel"), "'energy'"),
    ]
    for bad, match in cases:
        with pytest.raises(InputError, match=match):
            _runs(bad)[name]()


def test_energy_axis_anywhere(sim):
    """The energy dim first instead of last: every analysis gives what it gives with energy
    last (t/lambda to 1e-12, the SSD, the KK thickness and the band gap the same)."""
    si = sim["signal"].compute()
    moved = si.transpose("energy", "y", "x")
    a = eelsgpu.thickness(si, device="cpu").compute()
    b = eelsgpu.thickness(moved, device="cpu").compute()
    np.testing.assert_allclose(b["t_over_lambda"], a["t_over_lambda"], rtol=1e-12)
    np.testing.assert_allclose(b["t_over_lambda"], sim["true_t_over_lambda"], rtol=0.01)
    da = eelsgpu.deconvolve(si, output="band-limited", device="cpu")
    db = eelsgpu.deconvolve(moved, output="band-limited", device="cpu")
    np.testing.assert_allclose(db["ssd"].values, da["ssd"].values, rtol=1e-12, atol=1e-9)
    ka = eelsgpu.kramers_kronig(da, metal=True, variables=("thickness_nm",), device="cpu")
    kb = eelsgpu.kramers_kronig(
        db.assign(ssd=db["ssd"].transpose("energy", ...)), metal=True,
        variables=("thickness_nm",), device="cpu",
    )  # fmt: skip
    np.testing.assert_allclose(kb["thickness_nm"].values, ka["thickness_nm"].values, rtol=1e-12)
    aa = eelsgpu.align_zlp(si, device="cpu").compute()
    ab = eelsgpu.align_zlp(moved, device="cpu").compute()
    np.testing.assert_allclose(ab["signal"].values, aa["signal"].values, rtol=1e-12)


@pytest.mark.parametrize("name", ["thickness", "deconvolve", "bandgap", "align_zlp"])
def test_axis_in_mev_labelled_ev_is_refused(sim, name):
    """An axis in meV labelled eV (the ZLP 'hundreds of eV' wide), in memory: EnergyAxisError
    with the fix (divide by 1000), for every analysis of raw spectra."""
    si = sim["signal"].compute()
    mev = si.assign_coords(energy=si["energy"].values * 1000.0)
    with pytest.raises(EnergyAxisError, match="meV labelled eV.*divide it by 1000"):
        _runs(mev)[name]()


def test_negative_baseline_is_refused(sim):
    """Counts 100 below zero under every channel (a dark reference subtracted twice): each
    analysis of raw spectra says 'negative counts' and the baseline, before anything runs; the
    data are unchanged."""
    si = (sim["signal"].compute() - 100.0).assign_attrs(source="dark.dm4")
    before = si.values.copy()
    for name in ("thickness", "deconvolve", "bandgap"):
        with pytest.raises(InputError, match=r"dark.dm4: the spectra have negative counts.*-\d"):
            _runs(si)[name]()
    assert np.array_equal(before, si.values)
    # the same image with its counts right runs (the check is not a false alarm)
    ok = eelsgpu.thickness(si + 100.0, device="cpu").compute()
    np.testing.assert_allclose(ok["t_over_lambda"], sim["true_t_over_lambda"], rtol=0.01)


def test_rounded_axis_is_uniform_everywhere(sim):
    """An axis read from a text file with 6 decimals (channel widths 0.049999 to 0.050001 eV) is
    uniform for every analysis and for the kernels' own check (_xp.axis_step): thickness,
    deconvolve, KK and the band gap give what the exact axis gives (t/lambda to 1e-5, the KK
    thickness to 1e-4); a grating-like axis (widths changing by 2 %) is still refused."""
    si = sim["signal"].compute()
    e = si["energy"].values
    rounded = np.round(e, 6)
    rounded[1::3] += 1e-6
    widths = np.diff(rounded)
    assert widths.min() < 0.04999905 and widths.max() > 0.05000095
    first, step = axis_step(rounded, uniform=True)
    assert abs(step - 0.05) < 1e-8
    r = si.assign_coords(energy=rounded)
    t0 = eelsgpu.thickness(si, device="cpu").compute()["t_over_lambda"].values
    t1 = eelsgpu.thickness(r, device="cpu").compute()["t_over_lambda"].values
    np.testing.assert_allclose(t1, t0, rtol=1e-5)
    k0, k1 = (
        eelsgpu.kramers_kronig(
            eelsgpu.deconvolve(x, output="band-limited", device="cpu"), metal=True,
            variables=("thickness_nm",), device="cpu",
        ).compute()["thickness_nm"].values
        for x in (si, r)
    )  # fmt: skip
    np.testing.assert_allclose(k1, k0, rtol=1e-4)
    g = eelsgpu.bandgap(r, zlp="threshold", window_eV=(2, 8), device="cpu").compute()
    assert g.sizes == {"y": 2, "x": 3}
    grating = e[0] + np.cumsum(np.r_[0, np.linspace(0.049, 0.051, e.size - 1)])
    with pytest.raises(EnergyAxisError, match="uniform"):
        axis_step(grating, uniform=True)
    with pytest.raises(EnergyAxisError, match="uniform"):
        eelsgpu.thickness(si.assign_coords(energy=grating), device="cpu")


NUMBERS = [
    ("thickness", {"refractive_index": -2.0}, "refractive_index.*positive"),
    ("thickness", {"refractive_index": 1.0}, "refractive_index must be above 1"),
    ("thickness", {"beam_energy_keV": 0.0}, "beam_energy_keV.*keV"),
    ("thickness", {"convergence_angle_mrad": -1.0}, "convergence_angle_mrad.*mrad"),
    ("thickness", {"kk_constant_nm_eV": float("nan")}, "kk_constant_nm_eV"),
    ("deconvolve", {"collection_angle_mrad": -10.0}, "collection_angle_mrad.*mrad"),
    ("deconvolve", {"zeff": 0.0}, "zeff"),
    ("deconvolve", {"search_eV": (1.0, 1.0)}, "search_eV"),
    ("kramers_kronig", {"thickness_nm": -5.0}, "thickness_nm must be a positive number in nm"),
    ("kramers_kronig", {"thickness_nm": float("nan")}, "thickness_nm"),
    ("kramers_kronig", {"zlp_intensity": 0.0}, "zlp_intensity.*counts"),
    ("kramers_kronig", {"zlp_fwhm_eV": -0.3}, "zlp_fwhm_eV.*eV"),
    ("kramers_kronig", {"mean_free_path_nm": -100.0}, "mean_free_path_nm.*nm"),
    ("bandgap", {"eg_range_eV": (3.0, 1.0)}, "eg_range_eV"),
    ("bandgap", {"search_eV": (float("nan"), 1.0)}, "search_eV"),
    ("bandgap", {"window_eV": (2.0,)}, "window_eV"),
    ("align_zlp", {"fill_value": "zero"}, "fill_value"),
    ("align_zlp", {"search_eV": "near"}, "search_eV"),
]


@pytest.mark.parametrize(
    "name, kwargs, match", NUMBERS, ids=[f"{n}-{next(iter(k))}" for n, k, _ in NUMBERS]
)
def test_numbers_out_of_range(sim, name, kwargs, match):
    """Every numeric argument is range-checked, whether or not the run uses it: InputError
    naming it (and its unit)."""
    si = sim["signal"].compute()
    if name == "kramers_kronig":
        ssd = eelsgpu.deconvolve(si, output="band-limited", device="cpu")
        kw = {"metal": True} if "thickness_nm" not in kwargs else {}
        run = lambda: eelsgpu.kramers_kronig(ssd, device="cpu", **kw, **kwargs)  # noqa: E731
    else:
        run = {
            "thickness": lambda: eelsgpu.thickness(si, device="cpu", **kwargs),
            "deconvolve": lambda: eelsgpu.deconvolve(si, device="cpu", **kwargs),
            "bandgap": lambda: eelsgpu.bandgap(
                si, zlp="threshold", device="cpu", **{"window_eV": (2, 8), **kwargs}
            ),
            "align_zlp": lambda: eelsgpu.align_zlp(si, device="cpu", **kwargs),
        }[name]
    with pytest.raises(InputError, match=match):
        run()


def test_kk_thickness_map_with_a_negative_pixel(sim):
    """A thickness map may hold 0 and NaN (vacuum, left out: those pixels are flagged) but not a
    negative thickness: InputError counting the pixels; the map is unchanged."""
    ssd = eelsgpu.deconvolve(sim["signal"], output="band-limited", device="cpu")
    t = np.full((2, 3), 50.0)
    t[0, 1] = 0.0
    t[1, 2] = np.nan
    ds = eelsgpu.kramers_kronig(ssd, thickness_nm=t, variables=("thickness_nm",), device="cpu")
    valid = ds["valid"].values
    assert valid.sum() == 4 and not valid[0, 1] and not valid[1, 2]
    t[1, 0] = -5.0
    before = t.copy()
    with pytest.raises(InputError, match="1 pixel"):
        eelsgpu.kramers_kronig(ssd, thickness_nm=xr.DataArray(t, dims=("y", "x")), device="cpu")
    assert np.array_equal(t, before, equal_nan=True)


def test_spectrum_image_of_a_text_file_axis_keeps_its_dispersion():
    """The model's rule and the kernels' are one rule: spectrum_image records the dispersion of a
    rounded axis (it calls it uniform) exactly where axis_step(uniform=True) accepts it."""
    e = np.round(np.arange(200) * 0.05 - 2.0 + 1e-7, 6)
    e[1::3] += 1e-6
    si = spectrum_image(np.ones((2, 200)), e)
    assert si.attrs["dispersion_eV"] == pytest.approx(0.05, abs=1e-8)
    assert axis_step(e, uniform=True)[1] == pytest.approx(si.attrs["dispersion_eV"], abs=1e-12)
