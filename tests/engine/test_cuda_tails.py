"""The fused CUDA tails kernel (kernels/tails.cu, eelsgpu.engine.cuda): its twin against exact
power laws, its first-use check, its fallback, its registry and its counting as one launch, and
the CUDA source run on a CPU (cuda_emulation_tails.cpp) against the twin.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from eelsgpu.kernels import tails

_ROOT = Path(__file__).resolve().parents[2]


def _twin(*args):
    return tuple(np.asarray(a) for a in tails.tails_twin(np, *args))


def _power_laws(r, a, width, l_end, scale=1e6):
    """The sums of tails.TailSums for exact power laws scale (L / a)^-r over [a, a + width] in
    three equal parts, no noise (variance 1e-8 of a part), and the exact counts beyond l_end."""
    edges = a[:, None] + width[:, None] * np.arange(4) / 3.0
    s = 1.0 - r[:, None]
    x = edges / a[:, None]
    parts = scale * a[:, None] * (x[:, 1:] ** s - x[:, :-1] ** s) / s
    beyond = scale * a * (l_end / a) ** (1.0 - r) / (r - 1.0)
    f32 = np.float32
    args = (
        parts.astype(f32),
        edges.astype(f32),
        (parts.mean(axis=-1) * 1e-8).astype(f32),
        l_end.astype(f32),
    )
    return args, beyond


def test_twin_recovers_exact_power_laws():
    """tails_twin (the array-API twin the fused kernel is held to) on exact power laws L^-r,
    r 2.2-14, fit ranges 0.5-400 eV of 10-100 % of their start, in float32: every row trusted
    and the counts beyond the window within 2e-3 of the exact integral (float32: the exponent
    from a ratio of sums). Truth: the closed-form integral of the power law."""
    rng = np.random.default_rng(3)
    n = 400
    r = rng.uniform(2.2, 14.0, n)
    a = np.exp(rng.uniform(np.log(0.5), np.log(400.0), n))
    width = a * rng.uniform(0.1, 1.0, n)
    args, beyond = _power_laws(r, a, width, (a + width) * 1.0001)
    tail, trusted, sd = _twin(*args)
    assert trusted.all()
    np.testing.assert_allclose(tail, beyond, rtol=2e-3)
    assert np.all(sd < 1e-2 * tail)


def test_twin_is_what_solve_tails_returns_on_each_namespace():
    """solve_tails of two fits stacked is the twin of the stacked sums, on NumPy and on
    array-api-strict (where no fused kernel is registered): the same values, bitwise. Truth:
    the twin, which the fused kernel is checked against."""
    import array_api_strict as xs

    args = tails.tails_probe(np, 64)
    want = _twin(*args)
    fits = [tails.TailSums(*(a[:40] for a in args)), tails.TailSums(*(a[40:] for a in args))]
    got = tails.solve_tails(np, fits)
    for k in range(3):
        np.testing.assert_array_equal(np.concatenate([got[0][k], got[1][k]]), want[k])
    xfits = [tails.TailSums(*(xs.asarray(a) for a in f)) for f in fits]
    got = tails.solve_tails(xs, xfits)
    for k in range(3):
        np.testing.assert_array_equal(
            np.concatenate([np.asarray(got[0][k]), np.asarray(got[1][k])]), want[k]
        )


def test_probe_holds_trusted_and_refused_rows():
    """The probe the first-use check runs has both decisions in quantity (a check that only
    sees refused rows would pass a kernel that refuses everything): pure power laws mostly
    trusted, humps and steps refused, rows without a fit (a part zero or negative, a range
    starting below zero loss) zero. Truth: how the probe is made."""
    args = tails.tails_probe(np)
    tail, trusted, sd = _twin(*args)
    kind = np.arange(trusted.shape[0]) % 8
    assert trusted[kind == 0].mean() > 0.8 and trusted[kind >= 4].mean() > 0.4
    assert not trusted[(kind == 1) | (kind == 2) | (kind == 3)].any()
    assert np.all(tail[~trusted] == 0) and np.all(tail[trusted] > 0)


def test_tails_check_accepts_twin_and_rejects_wrong_kernels():
    """The first-use check (cuda.verified_tails) passes a kernel equal to the twin and refuses
    kernels that are off: one Newton step short, a trust decision without the noise term, the
    standard deviation of the counts halved. Truth: the twin on the probe."""
    from eelsgpu.engine import cuda

    args = tails.tails_probe(np)

    def fewer_steps(*a):
        old = tails._NEWTON_STEPS
        tails._NEWTON_STEPS = 1
        try:
            return _twin(*a)
        finally:
            tails._NEWTON_STEPS = old

    def no_noise_term(*a):
        # the same sums with no noise: the decision loses its 4-standard-error allowance
        return _twin(a[0], a[1], a[2] * 0, *a[3:])

    def half_sd(*a):
        t, tr, sd = _twin(*a)
        return t, tr, sd * 0.5

    assert cuda.verified_tails(_twin, _twin, args)
    assert not cuda.verified_tails(fewer_steps, _twin, args)
    assert not cuda.verified_tails(no_noise_term, _twin, args)
    assert not cuda.verified_tails(half_sd, _twin, args)
    assert "tails_solve" in cuda.cuda_source("tails.cu")


def test_tails_kernel_falls_back_with_a_warning_without_gpu(monkeypatch):
    """Without a usable GPU tails.cu cannot be built: a RuntimeWarning naming the kernel, then
    the twin (decided once)."""
    import array_api_compat.numpy as xnp

    from eelsgpu.engine import cuda
    from eelsgpu.engine import device as backend

    if backend.gpu_status().usable:
        pytest.skip("a GPU is usable here")
    monkeypatch.setattr(cuda, "_TAILS", {})
    with pytest.warns(RuntimeWarning, match="tails_solve is not used"):
        assert cuda._tails_cuda_provider(xnp) is None
    assert cuda._tails_cuda_provider(xnp) is None


def test_registry_serves_the_tails_kernel_to_its_namespaces_only(monkeypatch):
    """tails_solve is served where the engine registered it: CuPy's namespace (the compiled
    kernel) and the counting stand-in (the twin as one counted launch), never NumPy nor
    array-api-strict; EELSGPU_NO_FUSED=1 or =tails_solve turns it off, the roll-off stays on
    with the latter. Truth: what the registry returns."""
    import array_api_strict as xs

    from eelsgpu.engine import counting, cuda
    from eelsgpu.kernels import _fused
    from eelsgpu.kernels import fourier_log as fl

    monkeypatch.setattr(_fused, "_PROVIDERS", {})
    monkeypatch.setattr(cuda, "_tails_cuda_provider", lambda xp: "compiled")
    cuda.register_fused_kernels()

    class FakeCupy:
        __name__ = "array_api_compat.cupy"

    assert _fused.lookup(tails.FUSED_NAME, np) is None
    assert _fused.lookup(tails.FUSED_NAME, xs) is None
    assert _fused.lookup(tails.FUSED_NAME, FakeCupy()) == "compiled"
    assert callable(_fused.lookup(tails.FUSED_NAME, counting.xp))
    monkeypatch.setenv("EELSGPU_NO_FUSED", "tails_solve")
    assert _fused.lookup(tails.FUSED_NAME, counting.xp) is None
    assert callable(_fused.lookup(fl.FUSED_NAME, counting.xp))
    monkeypatch.setenv("EELSGPU_NO_FUSED", "1")
    assert _fused.lookup(fl.FUSED_NAME, counting.xp) is None


def test_counted_fused_tails_is_one_launch_with_the_twins_values(monkeypatch):
    """On the counting stand-in the fused tails are ONE operation that reads the four inputs and
    writes the three outputs once (what tails.cu costs on a GPU) and give the twin's values
    bitwise (the twin runs underneath, uncounted); the twin's own path counts its ~130
    operations. Truth: the twin run counted, and the arrays' sizes."""
    from eelsgpu.engine import counting, cuda

    cuda.register_fused_kernels()
    xs = counting.xp
    host = tails.tails_probe(np, 512)
    args = tuple(xs.asarray(a) for a in host)
    fits = [tails.TailSums(*args)]
    with counting.count() as fused:
        got = tails.solve_tails(xs, fits)[0]
    monkeypatch.setenv("EELSGPU_NO_FUSED", "tails_solve")
    with counting.count() as twin:
        want = tails.solve_tails(xs, fits)[0]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    n = 512
    assert fused.ops == 1
    assert fused.bytes == n * (4 * 3 + 4 * 4 + 4 + 4) + n * (4 + 1 + 4)
    assert twin.ops > 100


# --- the CUDA source on a CPU: every thread of the grid a host loop (cuda_emulation_tails.cpp)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """kernels/tails.cu compiled with g++ and the emulation of CUDA's threads, as a callable
    with the twin's arguments (``threads`` per block, ``blocks`` in the grid)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ (to run the CUDA source on the CPU) is not installed")
    lib_path = tmp_path_factory.mktemp("emu") / "tl_emu.so"
    proc = subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-O2",
            "-ffp-contract=off",  # as the kernel is compiled (--fmad=false)
            "-shared",
            "-fPIC",
            f'-DTL_CU_SOURCE="{_ROOT / "kernels" / "tails.cu"}"',
            str(Path(__file__).with_name("cuda_emulation_tails.cpp")),
            "-o",
            str(lib_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    lib = ctypes.CDLL(str(lib_path))
    lib.tl_emu_launch.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 3
    lib.tl_emu_launch.restype = ctypes.c_int

    def run(parts, edges, var, l_end, threads=256, blocks=None):
        def c(a, dt):
            return np.ascontiguousarray(np.asarray(a), dtype=dt)

        f32 = np.float32
        ins = (c(parts, f32), c(edges, f32), c(var, f32), c(l_end, f32))
        n = ins[0].shape[0]
        out = (np.full(n, np.nan, f32), np.zeros(n, np.bool_), np.full(n, np.nan, f32))
        blocks = (n + threads - 1) // threads if blocks is None else blocks
        rc = lib.tl_emu_launch(*(a.ctypes.data for a in ins + out), n, threads, blocks)
        assert rc == 0
        return out

    return run


def _close(want, got) -> None:
    """The emulated kernel equals the twin to float32 rounding (the host's logf/expm1f against
    NumPy's): the first-use check's criterion, and no trust decision flipped."""
    from eelsgpu.engine.cuda import tails_agree

    assert tails_agree(want, got)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5)


@pytest.mark.parametrize(("threads", "blocks"), [(256, None), (64, 3)])
def test_cuda_source_equals_twin_on_probes(emulated, threads, blocks):
    """kernels/tails.cu run on the CPU equals tails_twin on probes of 256 and 4096 rows (exact
    and noisy power laws, humps, steps, rows without a fit), with one thread per row and with a
    grid smaller than the rows (the grid-stride loop). Truth: the twin."""
    for n, seed in ((256, 11), (4096, 1), (4096, 2)):
        args = tails.tails_probe(np, n, seed)
        _close(_twin(*args), emulated(*args, threads=threads, blocks=blocks))


def _block_args():
    """The twin's arguments in a CPU thickness (log-ratio, auto tail) and deconvolve of noisy
    synthetic spectra: captured at the call."""
    import eelsgpu
    from eelsgpu import synthetic

    si = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=synthetic.thickness_map((4, 16), "gradient", (0.2, 3.0)),
        shape=(4, 16),
        n_channels=1024,
        dispersion_eV=0.05,
        noise=True,
        dtype=np.float32,
        chunks=(4, 16),
    )["signal"]
    captured = []
    real = tails.tails_twin

    def record(xp, *a):
        captured.append(tuple(np.asarray(x) for x in a))
        return real(xp, *a)

    tails.tails_twin = record
    try:
        eelsgpu.thickness(si, zlp="threshold", tail="auto", device="cpu").compute(
            scheduler="synchronous"
        )
        eelsgpu.deconvolve(si, zlp="mirror", device="cpu").compute(scheduler="synchronous")
    finally:
        tails.tails_twin = real
    return captured


def test_cuda_source_equals_twin_on_a_block(emulated):
    """The same on the sums thickness and deconvolve hand the tails on noisy synthetic
    spectra (t/lambda 0.2-3: the spectrum's own tail and the SSD's two fits). Truth: the
    twin."""
    captured = _block_args()
    assert captured
    for args in captured:
        _close(_twin(*args), emulated(*args))


@pytest.mark.gpu
def test_gpu_tails_kernel_equals_twin():
    """On a GPU (CuPy): kernels/tails.cu compiles, passes its first-use check at each probe size
    and equals the NumPy twin on the probes of 256 and 65,536 rows (the grid-stride loop over
    many thread blocks). Truth: the twin."""
    import cupy
    from array_api_compat import array_namespace

    from eelsgpu.engine import cuda

    xc = array_namespace(cupy.empty(0))
    provider = cuda._tails_cuda_provider(xc)
    assert provider is not None, "tails.cu did not compile"
    for n in (256, 65536):
        args = tails.tails_probe(xc, n, seed=n % 97)
        got = tuple(cupy.asnumpy(a) for a in provider(*args))
        assert cuda._TAILS[("checked", n)] is True, "the first-use check failed"
        _close(_twin(*(cupy.asnumpy(a) for a in args)), got)


def test_gpu_path_with_the_emulated_kernel_equals_the_twin_path(emulated, monkeypatch):
    """thickness (log-ratio, auto tail) and deconvolve of a noisy synthetic image (t/lambda
    0.2-3) on the counting stand-in -- the GPU path -- with tails_solve served by the CUDA source
    itself (run on the CPU by the emulation, where a GPU would launch the compiled kernel) give
    the twin path's results: t/lambda and the tail's share to 1e-5, the SSD to 1e-5 of its peak,
    the same pixels with a trusted power-law tail and the same quality maps.
    Truth: the same GPU path with the array-API twin (EELSGPU_NO_FUSED=tails_solve)."""
    import eelsgpu
    from eelsgpu import synthetic
    from eelsgpu.engine import counting, cuda
    from eelsgpu.kernels import _fused

    monkeypatch.setattr(_fused, "_PROVIDERS", dict(_fused._PROVIDERS))  # restored after
    calls = []

    def provider(xp):
        if xp is not counting.xp:
            return None

        def run(*args):
            calls.append(args[0].shape[0])
            return tuple(xp.asarray(o) for o in emulated(*(np.asarray(a) for a in args)))

        return run

    si = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=synthetic.thickness_map((4, 16), "gradient", (0.2, 3.0)),
        shape=(4, 16),
        n_channels=1024,
        dispersion_eV=0.05,
        noise=True,
        dtype=np.float32,
        chunks=(4, 16),
    )["signal"]

    def run_both():
        return (
            eelsgpu.thickness(si, zlp="threshold", tail="auto", device=counting.xp).compute(),
            eelsgpu.deconvolve(si, zlp="mirror", device=counting.xp).compute(),
        )

    monkeypatch.setenv("EELSGPU_NO_FUSED", "tails_solve")
    want = run_both()
    monkeypatch.delenv("EELSGPU_NO_FUSED")
    monkeypatch.setattr(cuda, "fused_tails_solve", provider)  # (the analyses register it)
    got = run_both()
    assert len(calls) >= 2  # both analyses ran the emulated kernel
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g["quality"].values, w["quality"].values)
        np.testing.assert_allclose(g["t_over_lambda"].values, w["t_over_lambda"].values, rtol=1e-5)
    np.testing.assert_array_equal(got[0]["tail_trusted"].values, want[0]["tail_trusted"].values)
    assert want[0]["tail_trusted"].values.any()  # the power-law tail is used somewhere
    np.testing.assert_allclose(
        got[0]["tail_fraction"].values, want[0]["tail_fraction"].values, rtol=1e-5, atol=1e-9
    )
    peak = np.nanmax(np.abs(want[1]["ssd"].values))
    np.testing.assert_allclose(got[1]["ssd"].values, want[1]["ssd"].values, atol=1e-5 * peak)
