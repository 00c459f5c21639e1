"""The fused CUDA roll-off kernel (eelsgpu.engine.cuda, kernels/fourier_log.cu): its first-use
check, its fallback, its registry, the CUDA source run on a CPU by an emulation of the CUDA
threads against its twin, and on a GPU the result against the CPU's.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest
from fourier_log_cases import case as _case
from fourier_log_cases import err as _err

from eelsgpu.kernels import fourier_log as fl
from eelsgpu.kernels.fourier_log import fourier_log_kernel

_ROOT = Path(__file__).resolve().parents[2]


def _consts(k: int = 2049, disp: float = 0.05, unwrap: bool = True) -> fl.RolloffConsts:
    p = 2 * (k - 1)
    nu = (np.arange(k) / (p * disp)).astype(np.float32)
    return fl.RolloffConsts(p, disp, fl.MAX_RESOLUTION_FWHM, unwrap, max(8, k // 64), nu)


def _host(out: dict) -> dict:
    return {k: np.asarray(v) for k, v in out.items()}


def _twin(*args):
    import array_api_compat.numpy as xnp

    return _host(fl.rolloff_twin(xnp, *args))


def test_fused_kernel_check_accepts_twin_and_rejects_a_wrong_kernel():
    """The first-use check of the CUDA kernel (kernels/README.md) passes a kernel equal to the
    twin and refuses kernels that are off: one that does not unwrap the phase, one whose weight
    skips the running minimum (run here with NumPy stand-ins for the compiled kernel). Truth:
    the twin, and the probe's thick spectra, whose phase passes pi many times."""
    import array_api_compat.numpy as xnp

    from eelsgpu.engine import cuda

    args = fl.rolloff_probe(xnp, 2049, _consts())

    def principal_only(*a):
        return _twin(*a[:-1], _consts(unwrap=False))

    def no_running_minimum(*a):
        out = _twin(*a)
        w = out["w"].copy()
        w[:, 1::2] *= 0.9  # a weight that is not monotone
        return {**out, "w": w}

    assert cuda.verified(_twin, _twin, args)
    assert not cuda.verified(principal_only, _twin, args)
    assert not cuda.verified(no_running_minimum, _twin, args)
    assert "fourier_log_rolloff" in cuda.cuda_source()


def test_fused_kernel_falls_back_with_a_warning_without_gpu(monkeypatch):
    """Without a usable GPU the fused kernel cannot be built: a RuntimeWarning, then the twin
    (the provider serves nothing, decided once)."""
    from eelsgpu.engine import cuda
    from eelsgpu.engine import device as backend

    if backend.gpu_status().usable:
        pytest.skip("a GPU is usable here")
    monkeypatch.setattr(cuda, "_FUSED", {})
    import array_api_compat.numpy as xnp

    with pytest.warns(RuntimeWarning, match="array-API path"):
        assert cuda._cuda_provider(xnp) is None
    assert cuda._cuda_provider(xnp) is None  # decided once


def test_registry_serves_the_fused_kernel_to_its_namespace_only(monkeypatch):
    """The kernels find the fused roll-off through eelsgpu.kernels._fused only where the engine
    registered it: CuPy's namespace (the compiled kernel) and the counting stand-in (the twin
    counted as one operation), never NumPy (its fast path) nor array-api-strict (the twin).
    Truth: which function ran (stand-ins record their calls) and that the result is the
    twin's."""
    import array_api_compat.numpy as xnp
    import array_api_strict as xs

    from eelsgpu.engine import counting, cuda
    from eelsgpu.kernels import _fused

    monkeypatch.setattr(_fused, "_PROVIDERS", {})
    monkeypatch.setattr(cuda, "_cuda_provider", lambda xp: "compiled")
    assert _fused.lookup(fl.FUSED_NAME, np) is None  # nothing registered yet
    cuda.register_fused_kernels()
    assert fl.FUSED_NAME in _fused.registered()
    assert _fused.lookup(fl.FUSED_NAME, np) is None
    assert _fused.lookup(fl.FUSED_NAME, xs) is None

    class FakeCupy:
        __name__ = "array_api_compat.cupy"

    assert _fused.lookup(fl.FUSED_NAME, FakeCupy()) == "compiled"
    assert callable(_fused.lookup(fl.FUSED_NAME, counting.xp))

    # a stand-in device namespace: NumPy's functions under another name (so not the NumPy path)
    device_xp = types.SimpleNamespace(**vars(xnp))
    device_xp.__name__ = "stand_in.device"
    args = fl.rolloff_probe(np, 2049, _consts())
    calls = []

    def fused(*a):
        calls.append(a[0].shape)
        return fl.rolloff_twin(xnp, *a)

    want = _twin(*args)
    got = _host(fl._rolloff(device_xp, *args))  # no provider serves it: the twin
    assert calls == []
    _fused.register(fl.FUSED_NAME, lambda xp: fused if xp is device_xp else None)
    got = _host(fl._rolloff(device_xp, *args))
    assert calls == [(6, 2049)]
    np.testing.assert_array_equal(got["first"], want["first"])
    np.testing.assert_array_equal(got["ell"], want["ell"])
    fl._rolloff(np, *args)  # NumPy: the fast path, never the registry
    assert len(calls) == 1


# --- the CUDA source on a CPU: each thread block's threads as host threads (cuda_emulation.cpp)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """kernels/fourier_log.cu compiled with g++ and the emulation of CUDA's threads, as a
    callable with the launcher's arguments (``threads`` per block)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ (to run the CUDA source on the CPU) is not installed")
    lib_path = tmp_path_factory.mktemp("emu") / "fl_emu.so"
    proc = subprocess.run(
        [
            "g++",
            "-std=c++20",
            "-O2",
            "-shared",
            "-fPIC",
            "-pthread",
            f'-DFL_CU_SOURCE="{_ROOT / "kernels" / "fourier_log.cu"}"',
            str(Path(__file__).with_name("cuda_emulation.cpp")),
            "-o",
            str(lib_path),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 and "barrier" in proc.stderr:
        pytest.skip("this g++ has no C++20 <barrier>")
    assert proc.returncode == 0, proc.stderr
    lib = ctypes.CDLL(str(lib_path))
    ptr = ctypes.c_void_p
    lib.fl_emu_launch.argtypes = (
        [ptr] * 13
        + [ctypes.c_int] * 3
        + [ctypes.c_double, ctypes.c_float]
        + [ctypes.c_int] * 4
        + [ctypes.c_longlong]
    )
    lib.fl_emu_launch.restype = ctypes.c_int

    def run(jf, zf, rf, share, alive, fw, consts, threads=256):
        from eelsgpu.engine.cuda import shared_bytes

        n, k = jf.shape

        def c(a, dt):
            return np.ascontiguousarray(np.asarray(a), dtype=dt)

        jf, zf = c(jf, np.complex64), c(zf, np.complex64)
        rf_ = jf if rf is None else c(rf, np.complex64)
        share_ = c(share, np.float32)
        alive_ = share_ if alive is None else c(alive, np.float32)
        fw_ = c(fw, np.float32)
        out = {
            "ell": np.empty((n, k), np.complex64),
            "w": np.empty((n, k), np.float32),
            "n_j": np.empty(n, np.float32),
            "dead": np.empty(n, np.bool_),
            "first": np.empty(n, np.int64),
            "limit": np.empty(n, np.float32),
            "floored": np.empty(n, np.bool_),
        }
        order = (jf, zf, rf_, share_, alive_, fw_) + tuple(
            out[name] for name in ("ell", "w", "n_j", "first", "limit", "floored", "dead")
        )
        rc = lib.fl_emu_launch(
            *(a.ctypes.data for a in order),
            n,
            k,
            consts.half,
            consts.p * consts.disp,
            consts.max_res,
            int(bool(consts.unwrap)),
            int(rf is not None),
            int(alive is not None),
            threads,
            shared_bytes(k, threads) // 4,
        )
        assert rc == 0
        return out

    return run


def _block_args():
    """The roll-off's arguments from a Fourier-log of noisy synthetic spectra (t/lambda 0.3-4,
    Drude and Lorentz, counting noise, the model's misfit measured): captured at the call."""
    rng = np.random.default_rng(7)
    rows, models = [], []
    for material, t in (("drude", 0.3), ("drude", 1.5), ("lorentz", 2.5), ("drude", 4.0)):
        e, j, zlp, _ = _case(material, t)
        scale = 2e5 / j.sum()
        rows.append(rng.poisson(j * scale).astype(np.float32))
        models.append((zlp * scale).astype(np.float32))
    captured = []
    real = fl.rolloff_numpy

    def record(*a):
        captured.append(a)
        return real(*a)

    fl.rolloff_numpy = record
    try:
        fourier_log_kernel(
            np.stack(rows),
            e,
            np.stack(models),
            zlp_centre_eV=np.zeros(4, np.float32),
            zlp_fwhm_eV=np.full(4, 0.4, np.float32),
            misfit=True,
        )
    finally:
        fl.rolloff_numpy = real
    return captured[-1]


def _close(want: dict, got: dict) -> None:
    """The emulated kernel equals the twin to float32 rounding of the orders of summation."""
    from eelsgpu.engine.cuda import _agree

    assert _agree(want, got)
    np.testing.assert_array_equal(got["first"], want["first"])
    np.testing.assert_array_equal(got["dead"], want["dead"])
    np.testing.assert_array_equal(got["floored"], want["floored"])
    np.testing.assert_allclose(got["n_j"], want["n_j"], rtol=1e-6)
    np.testing.assert_allclose(got["limit"], want["limit"], rtol=1e-6)
    np.testing.assert_allclose(
        got["ell"], want["ell"], rtol=0, atol=1e-5 * np.abs(want["ell"]).max()
    )
    np.testing.assert_allclose(got["w"], want["w"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("threads", [64, 256])
def test_cuda_source_equals_twin_on_the_probe(emulated, threads):
    """kernels/fourier_log.cu run on the CPU (cuda_emulation.cpp: every thread of a block a
    host thread, __syncthreads a barrier) equals rolloff_twin on the probe spectra (vacuum,
    thin, thick with many phase turns, no noise), with and without unwrapping and with the
    channels' noise given. Truth: the twin."""
    args = fl.rolloff_probe(np, 2049, _consts())
    _close(_twin(*args), emulated(*args, threads=threads))
    flat = (*args[:-1], _consts(unwrap=False))
    _close(_twin(*flat), emulated(*flat, threads=threads))
    alive = np.asarray(args[3]) * np.float32(3e4)
    given = (*args[:4], alive, *args[5:])
    _close(_twin(*given), emulated(*given, threads=threads))


def test_cuda_source_equals_twin_on_a_block(emulated):
    """The same on the arguments a Fourier-log of noisy synthetic spectra hands the roll-off
    (the model's misfit transform included), at another length (1025 frequencies: a block of
    1024 channels) too. Truth: the twin."""
    args = _block_args()
    _close(_twin(*args), emulated(*args))
    short = fl.rolloff_probe(np, 1025, _consts(1025))
    _close(_twin(*short), emulated(*short))


@pytest.mark.gpu
def test_gpu_deconvolve_equals_cpu():
    """On a GPU (CuPy, fused kernel when it passed its check): the SSD equals the CPU's to 1e-4
    of its peak in float32, and the fused kernel equals its twin on the probe."""
    import cupy
    from array_api_compat import array_namespace

    from eelsgpu.engine import cuda

    cuda.register_fused_kernels()  # what the engine does when it sets up a CUDA device
    e, j, zlp, true = _case("drude", 3.0)
    gpu = fourier_log_kernel(
        cupy.asarray(j[None], cupy.float32), cupy.asarray(e), cupy.asarray(zlp[None], cupy.float32)
    )
    cpu = fourier_log_kernel(j[None].astype(np.float32), e, zlp[None].astype(np.float32))
    assert _err(cupy.asnumpy(gpu["ssd"])[0], cpu["ssd"][0]) < 1e-4
    xc = array_namespace(cupy.empty(0))
    provider = cuda._cuda_provider(xc)
    assert provider is not None, "the fused kernel did not compile or pass its check"
    args = fl.rolloff_probe(xc, 2049, _consts())
    assert cuda.verified(
        cuda._launcher(cuda._FUSED["kernel"]), lambda *a: fl.rolloff_twin(xc, *a), args
    )


#: The kernel each kernels/*.cu defines, by the name eelsgpu.engine.cuda launches it by.
_KERNEL_OF = {"fourier_log.cu": "fourier_log_rolloff", "tails.cu": "tails_solve"}


@pytest.mark.skipif(
    shutil.which("nvcc") is None, reason="nvcc (the CUDA compiler) is not installed"
)
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_sources_compile_for_the_data_centre_gpus(tmp_path, arch):
    """Every kernels/*.cu compiles with nvcc for the A100 (sm_80) and H100/H200 (sm_90) with
    every warning an error, and the object holds the kernel the engine launches by name."""
    sources = sorted((_ROOT / "kernels").glob("*.cu"))
    assert sorted(s.name for s in sources) == sorted(_KERNEL_OF)
    for src in sources:
        obj = tmp_path / f"{src.stem}-{arch}.o"
        proc = subprocess.run(
            ["nvcc", f"-arch={arch}", "-c", str(src), "-o", str(obj), "-Werror", "all-warnings"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert _KERNEL_OF[src.name].encode() in obj.read_bytes()


def test_counted_fused_rolloff_gives_the_cpu_results(monkeypatch):
    """deconvolve in float32 on the counting stand-in (the GPU path, where the fused roll-off is
    served as one counted operation, as the budgets count it) runs the fused provider and gives
    the CPU path's results: SSD to 2e-3 of its peak, t/lambda to 1e-3, the same quality map.
    Truth: the CPU path (NumPy fast path of the same roll-off)."""
    import eelsgpu
    from eelsgpu import synthetic
    from eelsgpu.engine import counting, cuda

    calls = []
    real = cuda._counted_provider

    def spy(xp):
        run = real(xp)

        def wrapped(*a):
            calls.append(a[0].shape)
            return run(*a)

        return wrapped

    monkeypatch.setattr(cuda, "_counted_provider", spy)
    si = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=synthetic.thickness_map((2, 8), "gradient", (0.3, 2.0)),
        shape=(2, 8),
        n_channels=1024,
        dispersion_eV=0.05,
        noise=True,
        dtype=np.float32,
        chunks=(2, 8),
    )["signal"]
    with counting.count() as c:
        got = eelsgpu.deconvolve(si, zlp="mirror", output="ssd", device=counting.xp).compute()
    ref = eelsgpu.deconvolve(si, zlp="mirror", output="ssd", device="cpu").compute()
    assert calls and all(s[0] == 16 for s in calls)  # the whole block in one fused call
    assert c.site_ops  # counted
    peak = float(np.nanmax(np.abs(ref["ssd"].values)))
    assert np.nanmax(np.abs(got["ssd"].values - ref["ssd"].values)) < 2e-3 * peak
    np.testing.assert_allclose(got["t_over_lambda"].values, ref["t_over_lambda"].values, rtol=1e-3)
    np.testing.assert_array_equal(got["quality"].values, ref["quality"].values)


def test_gpu_path_with_the_emulated_rolloff_equals_the_twin_path(emulated, monkeypatch):
    """deconvolve (mirror ZLP, the misfit on) of a noisy synthetic image (t/lambda 0.3-2.5) on
    the counting stand-in -- the GPU path -- with fourier_log_rolloff served by the CUDA source
    itself (run on the CPU by the emulation, where a GPU would launch the compiled kernel) gives
    the twin path's results: the SSD to 1e-4 of its peak, t/lambda to 1e-5, the same quality
    maps. Truth: the same GPU path with the array-API twin (EELSGPU_NO_FUSED=fourier_log_rolloff)."""
    import eelsgpu
    from eelsgpu import synthetic
    from eelsgpu.engine import counting, cuda
    from eelsgpu.kernels import _fused

    monkeypatch.setattr(_fused, "_PROVIDERS", dict(_fused._PROVIDERS))  # restored after
    calls = []

    def provider(xp):
        if xp is not counting.xp:
            return None

        def run(jf, zf, rf, share, alive, fw, consts):
            calls.append(jf.shape)
            host = [None if a is None else np.asarray(a) for a in (jf, zf, rf, share, alive, fw)]
            out = emulated(*host, consts, threads=64)
            return {k: xp.asarray(v) for k, v in out.items()}

        return run

    si = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=synthetic.thickness_map((2, 8), "gradient", (0.3, 2.5)),
        shape=(2, 8),
        n_channels=1024,
        dispersion_eV=0.05,
        noise=True,
        dtype=np.float32,
        chunks=(2, 8),
    )["signal"]

    def run():
        return eelsgpu.deconvolve(si, zlp="mirror", device=counting.xp).compute()

    monkeypatch.setenv("EELSGPU_NO_FUSED", "fourier_log_rolloff")
    want = run()
    monkeypatch.delenv("EELSGPU_NO_FUSED")
    monkeypatch.setattr(cuda, "fused_fourier_log_rolloff", provider)  # (registered by the run)
    got = run()
    assert calls and all(s[0] == 16 for s in calls)
    np.testing.assert_array_equal(got["quality"].values, want["quality"].values)
    np.testing.assert_allclose(got["t_over_lambda"].values, want["t_over_lambda"].values, rtol=1e-5)
    peak = np.nanmax(np.abs(want["ssd"].values))
    np.testing.assert_allclose(got["ssd"].values, want["ssd"].values, atol=1e-4 * peak)
