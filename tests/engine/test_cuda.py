"""The fused CUDA Fourier-log kernel (eelsgpu.engine.cuda): its first-use check, its fallback, and
on a GPU the result against the CPU's.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from fourier_log_cases import case as _case
from fourier_log_cases import err as _err

from eelsgpu.kernels.fourier_log import fourier_log_kernel


def test_fused_kernel_check_accepts_twin_and_rejects_a_wrong_kernel():
    """The first-use check of the CUDA kernel (kernels/README.md) passes a kernel equal to the
    twin and refuses one that is off (run here with NumPy stand-ins for the compiled kernel)."""
    import array_api_compat.numpy as xnp

    from eelsgpu.engine import cuda
    from eelsgpu.kernels.fourier_log import log_spectrum_ratio_twin, probe_spectra

    jf, zf = probe_spectra(xnp)

    def twin(jf, zf, noise2, mode, gate, rolloff, unwrap):
        return log_spectrum_ratio_twin(xnp, jf, zf, noise2, mode, gate, rolloff, unwrap)

    def principal_only(jf, zf, noise2, mode, gate, rolloff, unwrap):
        return log_spectrum_ratio_twin(xnp, jf, zf, noise2, mode, gate, rolloff, False)

    assert cuda.verified(xnp, twin, jf, zf)
    assert not cuda.verified(xnp, principal_only, jf, zf)
    assert "fourier_log_ratio" in cuda.cuda_source()


def test_fused_kernel_falls_back_with_a_warning_without_gpu(monkeypatch):
    """Without a usable GPU the fused kernel cannot be built: a RuntimeWarning, then the twin."""
    from eelsgpu.engine import cuda
    from eelsgpu.engine import device as backend

    if backend.gpu_status().usable:
        pytest.skip("a GPU is usable here")
    monkeypatch.setattr(cuda, "_FUSED", {})
    import array_api_compat.numpy as xnp

    with pytest.warns(RuntimeWarning, match="array-API path"):
        assert cuda._fused_kernel(xnp) is None
    assert cuda._fused_kernel(xnp) is None  # decided once


def test_registry_serves_the_fused_kernel_to_its_namespace_only(monkeypatch):
    """The kernels find the fused kernel through eelsgpu.kernels._fused only where the engine
    registered it, and only for CuPy's namespace: NumPy arrays keep the NumPy fast path, other
    namespaces (here array-api-strict, complex64) the twin unless a provider serves them. Truth:
    which function ran (stand-ins record their calls) and that the result is the twin's."""
    import array_api_strict as xs

    from eelsgpu.engine import cuda
    from eelsgpu.kernels import _fused
    from eelsgpu.kernels import fourier_log as fl

    monkeypatch.setattr(_fused, "_PROVIDERS", {})
    monkeypatch.setattr(cuda, "_FUSED", {"state": "compiled"})
    assert _fused.lookup(fl.FUSED_NAME, np) is None  # nothing registered yet
    cuda.register_fused_kernels()
    assert fl.FUSED_NAME in _fused.registered()
    assert _fused.lookup(fl.FUSED_NAME, np) is None
    assert _fused.lookup(fl.FUSED_NAME, xs) is None

    class FakeCupy:
        __name__ = "array_api_compat.cupy"

    assert _fused.lookup(fl.FUSED_NAME, FakeCupy()) == "compiled"

    # a stand-in device namespace: NumPy's functions under another name (so not the NumPy path)
    import array_api_compat.numpy as xnp

    device_xp = types.SimpleNamespace(**vars(xnp))
    device_xp.__name__ = "stand_in.device"
    jf, zf = fl.probe_spectra(np)  # complex64, what the fused kernel takes
    calls = []

    def fused(jf, zf, noise2, mode, gate, rolloff, unwrap):
        calls.append(mode)
        return fl.log_spectrum_ratio_twin(xnp, jf, zf, noise2, mode, gate, rolloff, unwrap)

    args = ("rolloff", fl.PHASE_FLOOR[4] ** 2, fl.ROLLOFF**2, True)
    want = fl.log_spectrum_ratio_twin(xnp, jf, zf, None, *args)
    got = fl._log_ratio(device_xp, jf, zf, *args)  # no provider serves it: the twin
    assert calls == []
    np.testing.assert_array_equal(got, want)
    _fused.register(fl.FUSED_NAME, lambda xp: fused if xp is device_xp else None)
    got = fl._log_ratio(device_xp, jf, zf, *args)
    assert calls == ["rolloff"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    fl.log_spectrum_ratio(jf, zf)  # NumPy: the fast path, never the registry
    fl.log_spectrum_ratio(xs.asarray(jf), xs.asarray(zf))  # array-api-strict: the twin
    assert calls == ["rolloff"]


@pytest.mark.gpu
def test_gpu_deconvolve_equals_cpu():
    """On a GPU (CuPy, fused kernel when it passed its check): the SSD equals the CPU's to 1e-4
    of its peak in float32, and the fused kernel equals its twin on the probe."""
    import cupy
    from array_api_compat import array_namespace

    from eelsgpu.engine import cuda
    from eelsgpu.kernels.fourier_log import probe_spectra

    cuda.register_fused_kernels()  # what the engine does when it sets up a CUDA device
    e, j, zlp, true = _case("drude", 3.0)
    gpu = fourier_log_kernel(
        cupy.asarray(j[None], cupy.float32), cupy.asarray(e), cupy.asarray(zlp[None], cupy.float32)
    )
    cpu = fourier_log_kernel(j[None].astype(np.float32), e, zlp[None].astype(np.float32))
    assert _err(cupy.asnumpy(gpu["ssd"])[0], cpu["ssd"][0]) < 1e-4
    fused = cuda._fused_kernel(array_namespace(cupy.empty(0)))
    if fused is not None:
        xc = array_namespace(cupy.empty(0))
        assert cuda.verified(xc, fused, *probe_spectra(xc))


@pytest.mark.skipif(
    __import__("shutil").which("nvcc") is None, reason="nvcc (the CUDA compiler) is not installed"
)
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_sources_compile_for_the_data_centre_gpus(tmp_path, arch):
    """Every kernels/*.cu compiles with nvcc for the A100 (sm_80) and H100/H200 (sm_90) with
    every warning an error, and the object holds the kernel the engine launches by name."""
    import subprocess
    from pathlib import Path

    sources = sorted((Path(__file__).resolve().parents[2] / "kernels").glob("*.cu"))
    assert sources
    for src in sources:
        obj = tmp_path / f"{src.stem}-{arch}.o"
        proc = subprocess.run(
            ["nvcc", f"-arch={arch}", "-c", str(src), "-o", str(obj), "-Werror", "all-warnings"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert b"fourier_log_ratio" in obj.read_bytes() or src.stem != "fourier_log"
