"""Every real low-loss spectrum of shared/data, every pixel, every ZLP model, through thickness and
deconvolve (issue 11).

Truth: these are measured spectra with no exact answer, so the tests assert what must hold
whatever the answer is:

* physics: t/lambda is never negative where valid, a tail beyond the window never lowers it
  below the window alone, ``valid`` is exactly "no fatal quality bit";
* consistency between methods: ``deconvolve`` and ``thickness`` with the same ``zlp=`` give the
  same t/lambda;
* the raw SSD rings at no more than 0.1 of its peak (the metric of /work/proto/issue11/REPORT.md,
  computed here independently of the package) wherever the ZLP model passes its checks;
* a peer where it is right: exspy 0.3.2's ``estimate_thickness`` with the same threshold,
  against ``thickness(zlp="threshold", tail="none")``, to 0.002;
* known loss-peak energies (shared/data/README.md, section 1) to 0.5 eV;
* the results issue 11 lists as wrong are flagged (ZLP_MISMATCH, NEGATIVE_LOBE, NEGATIVE_TAIL,
  UNPHYSICAL_BACKGROUND), and the good files are not;
* the ZLP is found on an axis that was never calibrated (the same file offset by +20, +30 and
  +100 eV gives the same results and says so), a window that starts above the ZLP and the
  noise-only spectrum are refused.

All results are computed once per module (about 15 s on 2 cores).
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import eelsgpu
from eelsgpu.analysis._lowloss import AxisOffsetWarning
from eelsgpu.errors import NoZeroLossPeakError
from eelsgpu.kernels import quality
from eelsgpu.model import spectrum_image

MODELS = ("threshold", "mirror", "fit")

#: (name, path under shared/data, signal index) of every real low-loss spectrum with a ZLP.
FILES = [
    ("Al film 0.00", "pytemlib/AL-DFoffset0.00.dm3", None),
    *[
        (f"Al {o}[{i}]", f"gduscher/AL-DFoffset{o}.dm3", i)
        for o in ("0.16", "0.19", "0.22", "0.25", "0.30")
        for i in (0, 1)
    ],
    ("SiO2", "gduscher/6-SiO2.dm3", None),
    ("SiC", "gduscher/6-SiC.dm3", None),
    ("h-BN", "gduscher/1EELS Acquire (low-loss).dm3", None),
    ("SrTiO3", "pyeelsmodel/ll.msa", None),
    ("MnOx", "exspy/lowloss_spectrum.msa", None),
    ("Cr", "exspy/Cr_L_ll.hspy", None),
    ("LSMO/STO", "exspy_demos/LSMO_STO_linescan_low_loss.hspy", None),
    ("LSMO 80kV", "exspy_demos/LSMO_linescan_low_loss.hspy", None),
]

#: Main loss peak (eV from zero loss) per README section 1: a value, or a range (line scans).
#: The Al off-axis spectra follow the plasmon's dispersion (15.07 to 15.24 eV); h-BN's value is
#: its pi plasmon, looked for below 10 eV.
PEAKS = {
    "Al film 0.00": 15.04,
    "Al 0.16[1]": 15.04,
    "Al 0.16[0]": 15.07,
    "Al 0.19[0]": 15.12,
    "Al 0.22[0]": 15.15,
    "Al 0.25[0]": 15.17,
    "Al 0.30[0]": 15.24,
    "SiO2": 22.0,
    "SiC": 22.5,
    "h-BN": 6.75,
    "SrTiO3": 30.9,
    "MnOx": 31.2,
    "Cr": 24.1,
    "LSMO/STO": (30.0, 31.0),
    "LSMO 80kV": (27.5, 30.5),
}


def _ws2(path: Path):
    """An EELSfitter WS2 text file: one row of counts, the axis from the file name (bin centres,
    as EELSfitter's load_data.py builds it; README section 1)."""
    m = re.search(r"m(\d+)d(\d+)eV[-_to]*?(\d+)d(\d+)eV", path.name)
    emin = -float(f"{m.group(1)}.{m.group(2)}")
    emax = float(f"{m.group(3)}.{m.group(4)}")
    y = np.loadtxt(path).astype(np.float64).reshape(1, -1)
    n = y.shape[-1]
    e = emin + (emax - emin) * (np.arange(n) + 0.5) / n
    sp = "Sp3" if "Specimen_3" in str(path) else "Sp4"
    num = re.search(r"Position-(\d+)|\((\d+)\)", path.name)
    vac = " vac" if "Vacuum" in path.name else ""
    name = f"WS2 {sp} #{num.group(1) or num.group(2)}{vac}"
    return name, spectrum_image(y, e, source=path.name)


def _images(shared_data: Path) -> list:
    logging.getLogger("rsciio").setLevel(logging.ERROR)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, path, idx in FILES:
            kw = {} if idx is None else {"signal_index": idx}
            out.append((name, eelsgpu.open(shared_data / path, **kw)))
    for sub in ("Specimen_3", "Specimen_4"):
        for f in sorted((shared_data / "eelsfitter" / sub).glob("*.txt")):
            out.append(_ws2(f))
    return out


@pytest.fixture(scope="module")
def results(shared_data):
    """Per (name, model): thickness (tail "auto" and "none") and the raw-SSD deconvolution, as
    NumPy arrays over the pixels, and the data."""
    out = {}
    for name, si in _images(shared_data):
        e = np.asarray(si["energy"].values, np.float64)
        y = np.asarray(si.values, np.float64).reshape(-1, e.size)
        for model in MODELS:
            th = eelsgpu.thickness(si, zlp=model, device="cpu").compute()
            none = eelsgpu.thickness(si, zlp=model, tail="none", device="cpu").compute()
            dec = eelsgpu.deconvolve(si, zlp=model, output="ssd", device="cpu").compute()

            def flat(ds, key, n=y.shape[0], nav=si.ndim - 1):
                return np.asarray(ds[key].values).reshape(n, *ds[key].shape[nav:])

            out[name, model] = {
                "y": y,
                "e": e,
                "t": flat(th, "t_over_lambda"),
                "t_none": flat(none, "t_over_lambda"),
                "valid": flat(th, "valid"),
                "q": flat(th, "quality").astype(np.int64),
                "tail_fraction": flat(th, "tail_fraction"),
                "t_dec": flat(dec, "t_over_lambda"),
                "valid_dec": flat(dec, "valid"),
                "q_dec": flat(dec, "quality").astype(np.int64),
                "ssd": flat(dec, "ssd").astype(np.float64),
                "ssd_e": np.asarray(dec["energy"].values, np.float64),
                "w": flat(dec, "zlp_fwhm_eV"),
                "c": flat(dec, "zlp_centre_eV"),
                "resolution": flat(dec, "resolution_eV"),
                "n0": flat(dec, "zlp_intensity"),
            }
    return out


def _has(q, bit):
    return (np.asarray(q) & bit) != 0


def _names(results):
    return sorted({name for name, _ in results})


def _gauss_smooth(s, fwhm_ch):
    """Each row convolved with a unit-area Gaussian of FWHM ``fwhm_ch`` channels (zero outside
    the window): REPORT.md's smoothing."""
    n, m = s.shape
    k = np.fft.rfftfreq(2 * m)
    sig = np.asarray(fwhm_ch).reshape(-1, 1) / (2 * math.sqrt(2 * math.log(2)))
    g = np.exp(-2 * math.pi**2 * sig**2 * k[None, :] ** 2)
    return np.fft.irfft(np.fft.rfft(s, n=2 * m, axis=-1) * g, n=2 * m, axis=-1)[:, :m]


def _ringing(ssd, e, w):
    """REPORT.md section 1.1: rms over 0 eV..end of (SSD - SSD smoothed to the ZLP FWHM W), over
    the smoothed SSD's peak beyond 3 W."""
    sm = _gauss_smooth(ssd, w / (e[1] - e[0]))
    loss = e[None, :] >= 0
    beyond = loss & (e[None, :] >= 3 * w[:, None])
    peak = np.max(np.where(beyond, sm, -np.inf), axis=1)
    r = np.where(loss, ssd - sm, 0.0)
    return np.sqrt((r * r).sum(1) / loss.sum(1)) / peak


def test_thickness_physics(results):
    """Physics, every file, pixel and model: where valid, t/lambda >= 0; everywhere, the tail
    never lowers t/lambda below the window alone (tail="none") and is never negative; ``valid``
    is exactly "no fatal quality bit" (and a ZLP)."""
    for (name, model), r in results.items():
        has_zlp = np.isfinite(r["t"])
        assert (r["t"][r["valid"]] >= 0).all(), (name, model)
        assert (r["t"][has_zlp] >= r["t_none"][has_zlp] - 1e-9).all(), (name, model)
        frac = r["tail_fraction"]
        assert (frac[np.isfinite(frac)] >= 0).all(), (name, model)
        for valid, q in ((r["valid"], r["q"]), (r["valid_dec"], r["q_dec"])):
            np.testing.assert_array_equal(valid, (q & quality.FATAL) == 0, err_msg=name)


def test_deconvolve_and_thickness_agree(results):
    """Consistency: the same ``zlp=`` gives the same t/lambda in deconvolve and thickness (both
    take N0 from the model and the tail by the same rules; before issue 11 deconvolve took N0 by
    truncation: 0.31 against 0.11 on one file)."""
    for (name, model), r in results.items():
        np.testing.assert_allclose(r["t_dec"], r["t"], rtol=1e-6, err_msg=f"{name} {model}")


def test_raw_ssd_rings_below_a_tenth_where_the_model_fits(results):
    """The raw SSD of every pixel whose ZLP model passes the checks (no ZLP_MISMATCH) and that
    is not vacuum (window t/lambda >= 0.01) rings at no more than 0.1 of its peak, by the
    research's metric computed here (before issue 11: up to 12.5 with "threshold", 2.9 with a
    passing mirror or fit). Its resolution is the ZLP's measured FWHM (1.5 times where the finer
    one rang) wherever the spectrum's error reaches the signal inside the ZLP's band (more than
    90 % of the cases; the others, the off-axis Al spectra with the truncation, are finer)."""
    worst = 0.0
    floored_share = []
    for (name, model), r in results.items():
        ok = ~_has(r["q_dec"], quality.ZLP_MISMATCH) & (np.log(r["y"].sum(1) / r["n0"]) >= 0.01)
        ring = _ringing(r["ssd"], r["ssd_e"], r["w"])
        assert (ring[ok] <= 0.1).all(), (name, model, ring[ok].max())
        assert not _has(r["q_dec"][ok], quality.RINGING).any(), (name, model)
        worst = max(worst, float(ring[ok].max(initial=0.0)))
        ratio = r["resolution"] / r["w"]
        floored = np.isclose(ratio, 1.0) | np.isclose(ratio, 1.5)
        assert np.all(floored | (ratio < 1.0)), (name, model, ratio)
        floored_share.append(floored.mean())
    assert worst > 0.05  # the bound is not met by a metric that reads zero
    assert np.mean(floored_share) > 0.9


def test_flags_where_the_issue_says_wrong(results):
    """Issue 11's list: mirror and fit do not fit the WS2 (vacuum t/lambda 0.2 against 0.002),
    h-BN and Al film ZLPs: ZLP_MISMATCH (fatal) on every such pixel; the off-axis Al spectra
    0.22/0.25/0.30 break the Fourier-log model: their SSD has a negative lobe (NEGATIVE_LOBE,
    deconvolve not valid) and their Fourier-log tail is negative, or no larger than its own
    uncertainty (NEGATIVE_TAIL or TAIL_UNTRUSTED: dropped, so thickness gives the window alone,
    1.31/1.66/2.03, where it gave 0.97/0.31/-1.56); the LSMO
    80 kV scan sits on an unphysical background (UNPHYSICAL_BACKGROUND). The truncation model is
    never flagged ZLP_MISMATCH, and no model on the files whose ZLP is symmetric enough (SiO2,
    SiC, SrTiO3, MnOx, Cr, both LSMO scans)."""
    for (name, model), r in results.items():
        mism = _has(r["q"], quality.ZLP_MISMATCH)
        bad_zlp = name.startswith("WS2") or name in ("h-BN", "Al film 0.00", "Al 0.16[1]")
        if model == "threshold":
            assert not mism.any(), name
        elif bad_zlp:
            assert mism.all() and not r["valid"].any(), (name, model)
        if name in ("SiO2", "SiC", "SrTiO3", "MnOx", "Cr", "LSMO/STO", "LSMO 80kV"):
            assert not mism.any(), (name, model)
    for name, window in (("Al 0.22[0]", 1.31), ("Al 0.25[0]", 1.66), ("Al 0.30[0]", 2.03)):
        r = results[name, "threshold"]
        assert _has(r["q_dec"], quality.NEGATIVE_LOBE).all() and not r["valid_dec"].any()
        assert _has(r["q"], quality.NEGATIVE_TAIL | quality.TAIL_UNTRUSTED).all()
        np.testing.assert_allclose(r["t"], r["t_none"], rtol=1e-9)
        assert abs(float(r["t"][0]) - window) < 0.01
    lsmo = results["LSMO 80kV", "threshold"]
    assert _has(lsmo["q"], quality.UNPHYSICAL_BACKGROUND).all()


def test_agrees_with_exspy_where_exspy_is_right(results):
    """Peer: exspy 0.3.2's estimate_thickness(threshold=...) with the threshold our truncation
    found per pixel (the first channel above the ZLP's cut), against thickness(zlp="threshold",
    tail="none"): the same definition (window only), to 0.002 on every file and pixel."""
    pytest.importorskip("exspy")
    from exspy.signals import EELSSpectrum

    from eelsgpu.kernels.zlp import zlp_kernel

    logging.getLogger("exspy").setLevel(logging.ERROR)
    for name in _names(results):
        r = results[name, "threshold"]
        y, e = r["y"], r["e"]
        z = zlp_kernel(y, e, method="threshold")
        last = e.size - 1 - np.argmax((np.nan_to_num(z["zlp"]) > 0)[:, ::-1], axis=-1)
        thr = e[np.minimum(last + 1, e.size - 1)]
        ex = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(y.shape[0]):
                s = EELSSpectrum(y[i])
                ax = s.axes_manager.signal_axes[0]
                ax.offset, ax.scale = float(e[0]), float(e[1] - e[0])
                ex.append(float(np.ravel(s.estimate_thickness(threshold=float(thr[i])).data)[0]))
        np.testing.assert_allclose(r["t_none"], ex, atol=0.002, err_msg=name)


def _peak(ssd, e, lo, hi):
    """Sub-channel position of the SSD's maximum between lo and hi eV (parabola through the
    highest channel and its neighbours)."""
    sel = (e >= lo) & (e <= hi)
    idx = np.flatnonzero(sel)
    i = idx[np.argmax(ssd[sel])]
    a, b, c = ssd[i - 1], ssd[i], ssd[i + 1]
    den = a - 2 * b + c
    return e[i] + (0.5 * (a - c) / den if den < 0 else 0.0) * (e[1] - e[0])


def test_loss_peak_energies(results):
    """Known values (README section 1): the main loss peak of every valid pixel's raw SSD
    (truncation model) lies within 0.5 eV of the README's value (within the range, +-0.5 eV,
    for the line scans): Al 15.04 (and its dispersion to 15.24 off axis), SiO2 22.0, SiC 22.5,
    h-BN's pi plasmon 6.75, SrTiO3 30.9, MnOx 31.2, Cr 24.1, LSMO/STO 30-31, LSMO 80 kV
    27.5-30.5."""
    for name, want in PEAKS.items():
        r = results[name, "threshold"]
        lo, hi = (4.0, 10.0) if name == "h-BN" else (10.0, 45.0)
        for i in range(r["ssd"].shape[0]):
            # README: "measured from the ZLP maximum" (its channel): the loss from the ZLP's
            # centre plus the centre's offset from its maximum channel (half a channel, 0.5 eV,
            # on the 1 eV LSMO/STO scan)
            y = r["y"][i]
            near = np.abs(r["e"] - r["c"][i]) <= 2 * r["w"][i]
            top = r["e"][np.flatnonzero(near)[np.argmax(y[near])]]
            got = _peak(r["ssd"][i], r["ssd_e"], lo, hi) + (r["c"][i] - top)
            w_lo, w_hi = want if isinstance(want, tuple) else (want, want)
            assert w_lo - 0.5 <= got <= w_hi + 0.5, (name, i, got)


@pytest.mark.parametrize("shift", [20.0, 30.0, 100.0])
def test_uncalibrated_axis(results, shift):
    """Issue 12 items 5 and 6 on a real file (SrTiO3, ll.msa, whose ZLP already sits at -4.3 eV):
    its axis offset by +20, +30 and +100 eV gives the same thickness and deconvolution (t/lambda
    to 1e-4, the SSD's peak to a hundredth of an eV), with an AxisOffsetWarning and the
    AXIS_OFFSET bit; cut 1 eV above its ZLP it is refused."""
    r = results["SrTiO3", "threshold"]
    e, y = r["e"], r["y"]
    si = spectrum_image(y, e + shift, source="ll-offset.msa")
    with pytest.warns(AxisOffsetWarning, match="ll-offset.msa"):
        th = eelsgpu.thickness(si, device="cpu").compute()
    with pytest.warns(AxisOffsetWarning):
        dec = eelsgpu.deconvolve(si, zlp="threshold", output="ssd", device="cpu").compute()
    # (the offsets are not whole channels of 0.3 eV; the kernels' axis is the same anyway)
    np.testing.assert_allclose(th["t_over_lambda"].values.ravel(), r["t"], rtol=1e-4)
    np.testing.assert_allclose(dec["t_over_lambda"].values.ravel(), r["t"], rtol=1e-4)
    assert _has(th["quality"].values, quality.AXIS_OFFSET).all()
    ssd = np.asarray(dec["ssd"].values, np.float64).reshape(1, -1)
    got = _peak(ssd[0], np.asarray(dec["energy"].values), 10.0, 45.0)
    assert abs(got - _peak(r["ssd"][0], r["ssd_e"], 10.0, 45.0)) < 0.01
    cut = e + shift >= -4.3 + shift + 1.0
    above = spectrum_image(y[:, cut], e[cut] + shift, source="ll-cut.msa")
    with pytest.raises(NoZeroLossPeakError, match="ll-cut.msa"):
        eelsgpu.thickness(above, device="cpu")


def test_noise_only_spectrum_refused(shared_data):
    """rosettasciio's test-EELS_spectrum.dm3 holds noise only (README section 1: no beam):
    thickness and deconvolve refuse it (before issue 11 thickness found a "ZLP" at -4.05 eV and
    reported t/lambda 0.716, valid)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        si = eelsgpu.open(shared_data / "rsciio/test-EELS_spectrum.dm3")
    for run in (eelsgpu.thickness, eelsgpu.deconvolve):
        with pytest.raises(NoZeroLossPeakError):
            run(si, device="cpu")
