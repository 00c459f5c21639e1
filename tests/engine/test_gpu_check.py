"""benchmarks/gpu_check.py's parts that run without a GPU: it imports, and its check of the
fused CUDA kernels runs on the counting stand-in (where each fused kernel is served as its twin
counted as one launch) and on a namespace with no fused kernel (the twins alone)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]


def _gpu_check():
    spec = importlib.util.spec_from_file_location(
        "gpu_check", _ROOT / "benchmarks" / "gpu_check.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fused_kernel_check_reports_every_kernel_on_the_standin():
    """The check covers every kernel of kernels/*.cu (by the names eelsgpu.engine.cuda registers)
    at two sizes each; on the stand-in each is served, agrees with its twin and is reported as
    NOT the CUDA kernel (none ran); on array-api-strict none is served and only the twin is
    timed. Truth: the registry's names, and that no GPU is here."""
    from eelsgpu.engine import counting, cuda
    from eelsgpu.kernels import _fused

    check = _gpu_check()
    cuda.register_fused_kernels()
    report = check.fused_kernels(counting.xp, repeats=1)
    assert set(report) == set(_fused.registered()) >= {"fourier_log_rolloff", "tails_solve"}
    for name, cases in report.items():
        assert len(cases) == 2, name
        for case, row in cases.items():
            assert "error" not in row, (name, case, row.get("traceback"))
            assert row["served"] and row["agrees_with_twin"], (name, case)
            assert row["fused_kernel_used"] is False
            assert row["fused_s"] > 0 and row["twin_s"] > 0
    import array_api_strict as xs

    report = check.fused_kernels(xs, repeats=1)
    for cases in report.values():
        for row in cases.values():
            assert "error" not in row and not row["served"] and "fused_s" not in row
