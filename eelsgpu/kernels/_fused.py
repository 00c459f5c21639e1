"""A registry slot for device-fused kernels: the kernels look them up, the engine fills it.

A kernel module that has a faster, fused form of one of its steps on some device (the CUDA
``fourier_log_ratio`` of :mod:`eelsgpu.kernels.fourier_log`, compiled from
``kernels/fourier_log.cu``) does not import the device code: it asks this registry for
``lookup(name, xp)``, and uses what it gets, or its own array-API twin when it gets ``None``.

**Not used by any analysis today.** Its one entry, ``fourier_log_ratio``, fuses the Fourier-log
core as it was *before* issue 11 (``ln(J~/Z~)`` with the fixed roll-off at 1e-3 of ``Z~(0)``,
:func:`~eelsgpu.kernels.fourier_log.log_spectrum_ratio`). Since issue 11 the deconvolution
(:func:`~eelsgpu.kernels.fourier_log.fourier_log_kernel`) weights each pixel's log by its own
measured misfit and noise, which the fused kernel does not compute, and it no longer calls
``log_spectrum_ratio``: only that function (kept with its twins, the tests and the benchmark)
looks the fused kernel up, so on a GPU every analysis runs the array-API path. The slot and
the loader stay until issue 13 ports the kernel to the new roll-off.
The engine registers the providers (:func:`eelsgpu.engine.cuda.register_fused_kernels`, called
when a CUDA device is set up), so the import points from the engine down to the kernels and
never back (dependency inversion).

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


def register(name: str, provider: Provider) -> None:
    """Register (or replace) the provider of the fused kernel ``name``."""
    _PROVIDERS[name] = provider


def unregister(name: str) -> None:
    """Remove the provider of ``name`` (nothing happens when there is none)."""
    _PROVIDERS.pop(name, None)


def registered() -> tuple[str, ...]:
    """The names that have a provider."""
    return tuple(_PROVIDERS)


def lookup(name: str, xp: Any) -> Callable[..., Any] | None:
    """The fused kernel ``name`` for arrays of namespace ``xp``, or ``None`` (use the twin)."""
    provider = _PROVIDERS.get(name)
    return None if provider is None else provider(xp)
