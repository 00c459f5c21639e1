"""A registry slot for device-fused kernels: the kernels look them up, the engine fills it.

A kernel module that has a faster, fused form of one of its steps on some device does not
import the device code: it asks this registry for ``lookup(name, xp)``, and uses what it gets,
or its own array-API twin when it gets ``None``.

Its entries: ``fourier_log_rolloff``, the measured-error roll-off of the Fourier-log
deconvolution after the transforms (:func:`~eelsgpu.kernels.fourier_log.rolloff_twin`; the
CUDA kernel of ``kernels/fourier_log.cu``), which
:func:`~eelsgpu.kernels.fourier_log.fourier_log_kernel` looks up for complex64 arrays of any
namespace but NumPy's (NumPy has its own fast path); ``tails_solve``, the power-law tails
beyond the window from their fits' sums (:func:`~eelsgpu.kernels.tails.tails_twin`; the CUDA
kernel of ``kernels/tails.cu``), which :func:`~eelsgpu.kernels.tails.solve_tails` looks up for
float32 arrays of any namespace but NumPy's. For NumPy arrays, compiled CPU forms (numba) of
the roll-off (``cpu_fourier_log_rolloff``, the same arguments) and of the ZLP's statistics away
from its core (``cpu_zlp_away_stats``, :func:`~eelsgpu.kernels.zlp._away_stats`), each giving
its NumPy twin's bits.
The engine registers the providers (:func:`eelsgpu.engine.cuda.register_fused_kernels`, called
when a CUDA device is set up; :func:`eelsgpu.engine.cpu_fused.register_cpu_kernels`, called by
the low-loss analyses), so the import points from the engine down to the kernels and never back
(dependency inversion).

A *provider* is ``provider(xp) -> callable or None``: it returns the fused kernel for arrays of
namespace ``xp`` (building and checking it on first use) or ``None`` where it has none (another
array library, a failed compilation, ``EELSGPU_NO_FUSED=1``).

Examples
--------
>>> import numpy as np
>>> lookup("no-such-kernel", np) is None
True
>>> register("demo", lambda xp: (lambda a: a + 1) if xp is np else None)
>>> lookup("demo", np)(1)
2
>>> unregister("demo")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Provider", "lookup", "register", "registered", "unregister"]

Provider = Callable[[Any], Callable[..., Any] | None]

_PROVIDERS: dict[str, Provider] = {}
_CPU: set[str] = set()  # the names of compiled CPU kernels (no device form)


def register(name: str, provider: Provider, *, cpu: bool = False) -> None:
    """Register (or replace) the provider of the fused kernel ``name``; ``cpu``: a compiled CPU
    kernel for NumPy arrays (:mod:`eelsgpu.engine.cpu_fused`), not a device kernel."""
    _PROVIDERS[name] = provider
    if cpu:
        _CPU.add(name)
    else:
        _CPU.discard(name)


def unregister(name: str) -> None:
    """Remove the provider of ``name`` (nothing happens when there is none)."""
    _PROVIDERS.pop(name, None)
    _CPU.discard(name)


def registered(cpu: bool = False) -> tuple[str, ...]:
    """The names of the device kernels that have a provider (what a GPU check covers); with
    ``cpu``, those of the compiled CPU kernels."""
    return tuple(n for n in _PROVIDERS if (n in _CPU) == cpu)


def lookup(name: str, xp: Any) -> Callable[..., Any] | None:
    """The fused kernel ``name`` for arrays of namespace ``xp``, or ``None`` (use the twin)."""
    provider = _PROVIDERS.get(name)
    return None if provider is None else provider(xp)
