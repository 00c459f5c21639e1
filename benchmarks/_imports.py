"""What the benchmarks share: eelsgpu's lazy imports done before a job's clock starts."""

from __future__ import annotations

import importlib

#: eelsgpu's public analyses the jobs run; each is resolved through ``eelsgpu``'s lazy names, so
#: the module that defines it is imported wherever it lives.
ANALYSES = ("align_zlp", "deconvolve", "thickness", "kramers_kronig")


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
        "eelsgpu.engine",
        "eelsgpu.io",
    ):
        importlib.import_module(name)
    import eelsgpu

    for name in ANALYSES:
        getattr(eelsgpu, name)
