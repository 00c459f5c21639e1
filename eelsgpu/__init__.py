"""eelsgpu: exact, GPU-ready analysis of EELS low-loss and soft X-ray emission spectrum images.

A spectrum image is an ``xarray.DataArray`` (dims ``y, x, energy``): lazy over a chunked zarr store
(every analysis then maps an array-API kernel over its pixel blocks with dask and returns a lazy
result), or in memory (the blocks run at once on a thread per core and the result is in memory:
the engine's eager path, :mod:`eelsgpu.engine.blocks`); on NumPy or CuPy either way.

>>> import eelsgpu
>>> sim = eelsgpu.synthetic.low_loss_image(eelsgpu.synthetic.Drude(15.0, 1.0), shape=(4, 4),
...                                        t_over_lambda=0.5, n_channels=256, dispersion_eV=0.2)
>>> sim["signal"].shape
(4, 4, 256)
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__ as __version__

# Public names and the module that defines each; imported on first use so that `import eelsgpu`
# and the command line start fast (dask, zarr and matplotlib load only when needed).
_LAZY: dict[str, str] = {
    # data model and files
    "open": "eelsgpu.io",
    "write_store": "eelsgpu.io",
    "spectrum_image": "eelsgpu.model",
    # low loss
    "align_zlp": "eelsgpu.analysis.zlp",
    "deconvolve": "eelsgpu.analysis.deconvolution",
    "thickness": "eelsgpu.analysis.thickness",
    "kramers_kronig": "eelsgpu.analysis.kramers_kronig",
    "fit_dielectric": "eelsgpu.analysis.film",
    # maps
    "window_maps": "eelsgpu.analysis.maps",
    "bandgap": "eelsgpu.analysis.bandgap",
    "cluster": "eelsgpu.analysis.clustering",
    "decompose": "eelsgpu.analysis.decomposition",
    # interoperability
    "to_hyperspy": "eelsgpu.interop",
    "from_hyperspy": "eelsgpu.interop",
}
_SUBMODULES = {
    "analysis",
    "batch",
    "engine",
    "errors",
    "interop",
    "io",
    "kernels",
    "model",
    "physics",
    "plotting",
    "report",
    "synthetic",
}

__all__ = sorted([*_LAZY, *_SUBMODULES, "__version__"])


#: The analyses: their first argument may be a HyperSpy signal, taken as it is.
_ANALYSES = {
    "align_zlp",
    "deconvolve",
    "thickness",
    "kramers_kronig",
    "window_maps",
    "bandgap",
    "cluster",
    "decompose",
}


def _takes_signals(fn: Any) -> Any:
    """``fn`` with a HyperSpy signal as its data argument converted first
    (:func:`eelsgpu.interop.as_input`, the one place that converts signals)."""
    import functools
    import inspect

    first = next(iter(inspect.signature(fn).parameters))

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .interop import as_input

        if args:
            args = (as_input(args[0]), *args[1:])
        elif first in kwargs:
            kwargs[first] = as_input(kwargs[first])
        return fn(*args, **kwargs)

    return wrapper


def __getattr__(name: str) -> Any:
    # where a name is both a submodule and a public function, the submodule wins
    if name in _SUBMODULES:
        return importlib.import_module(f"eelsgpu.{name}")
    if name in _LAZY:
        obj = getattr(importlib.import_module(_LAZY[name]), name)
        if name in _ANALYSES:
            obj = _takes_signals(obj)
        globals()[name] = obj  # once
        return obj
    raise AttributeError(f"module 'eelsgpu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
