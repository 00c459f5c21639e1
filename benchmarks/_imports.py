"""What the benchmarks share: eelsgpu's lazy imports done before a job's clock starts."""

from __future__ import annotations

import importlib


def import_ours() -> None:
    """Import what eelsgpu's jobs import lazily, before the clock starts (exspy is imported before
    its clock starts too): a job's time is the analysis, not Python's start-up."""
    for name in (
        "dask.array",
        "dask.threaded",
        "numcodecs",
        "scipy.fft",
        "xarray",
        "zarr",
        "zarr.codecs",
        "eelsgpu.deconvolution",
        "eelsgpu.engine",
        "eelsgpu.io",
        "eelsgpu.kramers_kronig",
        "eelsgpu.thickness",
        "eelsgpu.zlp",
    ):
        importlib.import_module(name)
