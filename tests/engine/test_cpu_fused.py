"""The compiled CPU kernels (eelsgpu/engine/cpu_fused.py, numba): each equals its NumPy twin,
the deconvolution with them equals the deconvolution without them on synthetic and real
spectra, and without numba the NumPy path runs after one warning."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest

from eelsgpu.engine import cpu_fused as cf
from eelsgpu.kernels import _fused
from eelsgpu.kernels import fourier_log as fl

pytestmark = pytest.mark.skipif(not cf.available(), reason="numba is not installed")


def _consts(k: int, disp: float = 0.05, dtype=np.float32) -> fl.RolloffConsts:
    p = 2 * (k - 1)
    nu = (np.arange(k) / (p * disp)).astype(dtype)
    return fl.RolloffConsts(p, disp, fl.MAX_RESOLUTION_FWHM, True, max(8, k // 64), nu)


def _equal(want: dict, got: dict) -> None:
    assert set(got) == set(want)
    for key in want:
        a, b = np.asarray(want[key]), np.asarray(got[key])
        assert a.dtype == b.dtype, key
        np.testing.assert_array_equal(b, a, err_msg=key)


@pytest.mark.parametrize("k", [2049, 1025, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rolloff_cpu_equals_numpy_twin(k, dtype):
    """The compiled roll-off gives rolloff_numpy's arrays to the bit (its logs and atan2 are
    NumPy's; every other operation is the twin's in the twin's order). Truth: rolloff_numpy
    (itself bitwise the array-API twin, test_fourier_log), on the probe spectra (vacuum, thin
    and thick ones whose phase passes pi many times, counting noise, a misfit; short cut-offs)
    and noise-free ones with an exact model (cut-offs near half the frequencies), in both
    precisions, with and without unwrapping."""
    consts = _consts(k, dtype=dtype)
    jf, zf, rf, share, _, fw, _ = fl.rolloff_probe(np, k, consts)
    cdt = np.complex64 if dtype == np.float32 else np.complex128
    jf, zf, rf = (a.astype(cdt) for a in (jf, zf, rf))
    share, fw = share.astype(dtype), fw.astype(dtype)
    clean = (zf * np.exp(0.3 * np.linspace(1.0, 0.0, k))[None, :]).astype(cdt)
    alive = np.full(share.shape, 3.0, dtype=dtype)  # a measured channel noise
    cases = [(jf, zf, rf, share, None), (clean, zf, None, np.ones_like(share), alive)]
    for unwrap in (True, False):
        c = fl.RolloffConsts(
            consts.p, consts.disp, consts.max_res, unwrap, consts.half, consts.nu_table
        )
        for jf_, zf_, rf_, share_, alive_ in cases:
            want = fl.rolloff_numpy_passes(jf_, zf_, rf_, share_, alive_, fw, c)
            _equal(want, cf.rolloff_cpu(jf_, zf_, rf_, share_, alive_, fw, c))
    # (the two cases differ where it matters: cut-offs short and long)
    assert int(cf.rolloff_cpu(*cases[0][:4], None, fw, consts)["first"].max()) < k // 2
    if k > 1000:
        assert int(cf.rolloff_cpu(clean, zf, None, share, None, fw, consts)["first"].min()) > k // 3


def test_rolloff_cpu_equals_twin_on_phase_turns():
    """Rows whose phase turns many times below the cut-off (a thick spectrum, t/lambda 6, no
    damping): the unwrapped phase, the cut-off and the weight equal
    rolloff_numpy's (truth: rolloff_numpy); the probe has whole turns there (could be false)."""
    k = 1025
    consts = _consts(k)
    p = consts.p
    e = (np.arange(p) - 50) * consts.disp
    z = np.exp(-0.5 * (e / 0.3) ** 2)
    s = np.where(e > 0, np.exp(-0.5 * ((e - 15.0) / 2.0) ** 2), 0.0)
    s /= s.sum()
    rows = [np.fft.irfft(np.fft.rfft(z) * np.exp(t * np.fft.rfft(s)), n=p) for t in (2.0, 4.0, 6.0)]
    jf = np.fft.rfft(np.array(rows), axis=-1).astype(np.complex64)
    zf = np.broadcast_to(np.fft.rfft(z), jf.shape).astype(np.complex64)
    share = np.ones(3, np.float32)
    fw = np.full(3, 0.7, np.float32)
    want = fl.rolloff_numpy_passes(jf, zf, None, share, None, fw, consts)
    got = cf.rolloff_cpu(jf, zf, None, share, None, fw, consts)
    _equal(want, got)
    turns = np.abs(np.diff(np.unwrap(np.angle(jf[1, : want["first"][1]])))) > 0
    assert np.abs(np.asarray(got["ell"]).imag[1]).max() > math.pi and turns.any()


def _spy(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = cf.rolloff_cpu

    def counted(*args):
        calls.append(args[0].shape[0])
        return real(*args)

    monkeypatch.setattr(cf, "rolloff_cpu", counted)
    return calls


def _deconvolved(si, zlp, monkeypatch, fused: bool, **kw):
    import eelsgpu

    monkeypatch.setenv("EELSGPU_NO_FUSED", "" if fused else "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return eelsgpu.deconvolve(si, zlp=zlp, device="cpu", **kw).compute()


def _same_dataset(a, b) -> None:
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_array_equal(b[name].values, a[name].values, err_msg=name)


def test_deconvolve_with_compiled_kernels_equals_numpy_path_synthetic(monkeypatch):
    """deconvolve on a noisy synthetic image (t/lambda 0.2-3, the ZLP cube given and the mirror
    model, float32): every output, quality and valid map the same to the bit with the compiled
    kernels as without them (truth: the NumPy path), and the compiled kernels did run."""
    from eelsgpu import synthetic

    tl = np.linspace(0.2, 3.0, 8)[None, :] * np.ones((6, 1))
    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0), t_over_lambda=tl, shape=(6, 8), n_channels=1024,
        dispersion_eV=0.05, offset_eV=-5.0, dtype=np.float32, noise=True, seed=5,
    )  # fmt: skip
    si = sim["signal"].compute()
    si = si.copy(data=np.ascontiguousarray(si.values))
    cube = sim["true_zlp_shape"].values[None, None, :] * sim["true_zlp_intensity"].values[..., None]
    zlp = si.copy(data=np.ascontiguousarray(cube, dtype=np.float32))
    for model, output in ((zlp, "ssd"), ("mirror", "band-limited")):
        want = _deconvolved(si, model, monkeypatch, False, output=output)
        calls = _spy(monkeypatch)
        got = _deconvolved(si, model, monkeypatch, True, output=output)
        assert sum(calls) >= si.shape[0] * si.shape[1]  # (and its first-use check)
        _same_dataset(want, got)
        monkeypatch.undo()


def test_deconvolve_with_compiled_kernels_equals_numpy_path_real(shared_data, monkeypatch):
    """deconvolve on measured spectra (the LSMO 80 kV line scan, SiO2, Cr; float64 as opened and
    float32; threshold and mirror models, raw SSD and band-limited): every output and the
    quality map the same to the bit with the compiled kernels as without them (truth: the NumPy
    path on the real files)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from real_files import FILES, open_real

    for name in ("LSMO 80kV", "SiO2", "Cr"):
        si = open_real(shared_data, next(f for f in FILES if f.name == name))
        for dt, model, output in (
            (np.float64, "threshold", "ssd"),
            (np.float32, "mirror", "band-limited"),
        ):
            x = si.astype(dt)
            x = x.copy(data=np.ascontiguousarray(x.values))
            kw = dict(output=output, search_eV=(-5.0, 5.0))
            want = _deconvolved(x, model, monkeypatch, False, **kw)
            calls = _spy(monkeypatch)
            got = _deconvolved(x, model, monkeypatch, True, **kw)
            assert calls, name
            _same_dataset(want, got)
            monkeypatch.undo()


def test_without_numba_the_numpy_path_runs_after_one_warning(monkeypatch):
    """numba missing (its module made unimportable): the warm-up fails with ONE RuntimeWarning
    naming numba, the providers answer None, the roll-off runs on NumPy (truth: the NumPy
    path's result, bitwise), and a namespace other than NumPy is never answered."""
    import array_api_strict

    monkeypatch.setattr(cf, "_STATE", {})
    monkeypatch.setitem(sys.modules, "eelsgpu.engine._cpu_numba", None)
    monkeypatch.delenv("EELSGPU_NO_FUSED", raising=False)
    with pytest.warns(RuntimeWarning, match="numba") as rec:
        cf.register_cpu_kernels()
        assert not cf.warm_up(wait=True)
        assert _fused.lookup(cf.ROLLOFF_NAME, np) is None
        assert _fused.lookup(cf.AWAY_STATS_NAME, np) is None
    assert len(rec) == 1
    assert _fused.lookup(cf.ROLLOFF_NAME, array_api_strict) is None
    # (listed as CPU kernels, not among the device kernels a GPU check covers)
    assert {cf.ROLLOFF_NAME, cf.AWAY_STATS_NAME} <= set(_fused.registered(cpu=True))
    assert not {cf.ROLLOFF_NAME, cf.AWAY_STATS_NAME} & set(_fused.registered())
    consts = _consts(257)
    args = fl.rolloff_probe(np, 257, consts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = fl._rolloff(np, *args)
    _equal(fl.rolloff_numpy_passes(*args), got)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_away_stats_cpu_equals_numpy_path(shared_data, dtype):
    """The compiled statistics away from the ZLP (channel noise, mean count, level) equal
    zlp._away_stats' NumPy branch to the bit (sums in NumPy's pairwise order, the median from
    the same order statistics). Truth: the NumPy branch, on measured spectra (the LSMO 80 kV
    line scan, 40 rows; Cr) with their measured centres and FWHM, with and without the level,
    on the block's slab and on the whole row, and on a noisy synthetic block of odd length; a
    block it does not apply to (not C-contiguous) is refused (None)."""
    from eelsgpu.kernels import zlp

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from real_files import FILES, open_real

    blocks = []
    for name in ("LSMO 80kV", "Cr"):
        si = open_real(shared_data, next(f for f in FILES if f.name == name))
        y = np.ascontiguousarray(si.values.reshape(-1, si.shape[-1]), dtype=dtype)
        e = si["energy"].values.astype(dtype)
        cen = zlp.centre_kernel(y, e)
        c = np.where(cen["valid"], cen["zlp_centre_eV"], 0.0).astype(dtype)
        w = np.where(cen["valid"], cen["fwhm_eV"], 1.0).astype(dtype)
        blocks.append((y, e, c, w))
    rng = np.random.default_rng(3)
    e = (np.arange(1001) * 0.05 - 5.0).astype(dtype)
    y = rng.poisson(50.0 + 1e4 * np.exp(-0.5 * (e / 0.2) ** 2), (16, 1001)).astype(dtype)
    blocks.append((y, e, np.zeros(16, dtype), np.full(16, 0.47, dtype)))
    for y, e, c, w in blocks:
        for slab in (zlp._core_slab(np, e, c, w), (0, y.shape[-1])):
            for level in (True, False):
                want = zlp._away_stats(np, y, None, e, c, w, level=level, slab=slab, compiled=False)
                got = cf.away_stats_cpu(y, e, c, w, level, slab)
                assert cf._same(want, got), (slab, level)
                assert got["noise"][0].dtype == dtype
    assert cf.away_stats_cpu(np.asfortranarray(y), e, c[:16], w[:16], True, (0, 10)) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_background_check_with_compiled_sums_equals_numpy_path(shared_data, monkeypatch, dtype):
    """zlp.background_check with its five sums compiled gives the NumPy path's offset, share and
    UNPHYSICAL_BACKGROUND flags to the bit (truth: the NumPy path with the kernel turned off),
    on measured spectra (the LSMO 80 kV line scan; SiO2, whose gain side is below zero: flagged)
    with their measured centres and FWHM, and on a synthetic pair with and without an offset;
    the sums themselves equal the NumPy twin's."""
    from eelsgpu.kernels import zlp

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from real_files import FILES, open_real

    cases = []
    for name in ("LSMO 80kV", "SiO2"):
        si = open_real(shared_data, next(f for f in FILES if f.name == name))
        y = np.ascontiguousarray(si.values.reshape(-1, si.shape[-1]), dtype=dtype)
        e = si["energy"].values.astype(dtype)
        cen = zlp.centre_kernel(y, e)
        cases.append((y, e, cen["zlp_centre_eV"], cen["fwhm_eV"]))
    e = (np.arange(-400, 1600) * 0.05).astype(dtype)
    y = 1e5 * np.exp(-0.5 * (e / 0.2) ** 2) + np.where(e > 1, 3e3 / np.maximum(e, 1), 0)
    cases.append(
        (np.stack([y, y + 30.0]).astype(dtype), e, np.zeros(2, dtype), np.full(2, 0.47, dtype))
    )
    flagged = 0
    for y, e, c, w in cases:
        monkeypatch.setenv("EELSGPU_NO_FUSED", cf.BACKGROUND_NAME)
        want = zlp.background_check(y, e, c, w)
        monkeypatch.setenv("EELSGPU_NO_FUSED", "")
        calls: list[int] = []
        real = cf.background_sums_cpu
        monkeypatch.setattr(
            cf, "background_sums_cpu", lambda *a, _c=calls, _r=real: _c.append(1) or _r(*a)
        )
        cf.register_cpu_kernels()
        got = zlp.background_check(y, e, c, w)
        assert calls
        assert cf._same(want, got)
        flagged += int(np.sum(got["unphysical"]))
        thr = np.minimum(-10.0 * w.astype(dtype), -3.0).astype(dtype)
        cc = np.where(np.isfinite(c), c, 0.0).astype(dtype)
        assert cf._same(cf._background_twin(y, e, cc, thr), real(y, e, cc, thr))
        monkeypatch.undo()
    assert flagged >= 1  # (the offset pair's second spectrum at least: the check can be false)


def test_only_a_large_job_starts_loading_the_kernels(monkeypatch):
    """In a process where the kernels are not loaded, a job of fewer than WARM_UP_SPECTRA spectra
    does not start numba's start-up (the NumPy path serves it: lookups answer None), a larger
    one does, and once they are loaded every job gets them (truth: the registry's answers)."""
    monkeypatch.setattr(cf, "_STATE", {"numba": cf._STATE.get("numba")})
    monkeypatch.delenv("EELSGPU_NO_FUSED", raising=False)
    cf.register_cpu_kernels(n_spectra=cf.WARM_UP_SPECTRA - 1)
    assert "warming" not in cf._STATE
    assert _fused.lookup(cf.ROLLOFF_NAME, np) is None
    cf.register_cpu_kernels(n_spectra=cf.WARM_UP_SPECTRA)
    assert "warming" in cf._STATE
    assert cf.warm_up(wait=True)
    cf.register_cpu_kernels(n_spectra=1)
    assert _fused.lookup(cf.ROLLOFF_NAME, np) is not None
