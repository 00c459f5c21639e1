"""Constants kept on the device: arrays a kernel makes the same way on every call.

The Hilbert kernels of eq. 32 (:func:`eelsgpu.kernels.dielectric._hilbert_spectra`) depend only
on the grid length; their host spectra are cached, but copying them to the device (and casting
them) every block costs two host-to-device copies and launches per Hilbert transform. A kernel
asks :func:`cached` for such an array instead: it is made once per namespace, device and key,
and kept (the 32 most recent).

The device is told apart by a *token* the engine registers per namespace (the CUDA device id
for CuPy, :func:`eelsgpu.engine.transfer.cuda_device`), with a *settle* step run once after a
constant is made (CuPy: the stream is synchronised, so that another stream never reads it
before its copy has landed). Other namespaces (NumPy, array-api-strict, the counting stand-in)
have one device and need no settling.

Examples
--------
>>> import numpy as np
>>> calls = []
>>> def make():
...     calls.append(1)
...     return np.arange(3.0)
>>> a = cached(np, ("demo", 3), make)
>>> b = cached(np, ("demo", 3), make)
>>> a is b, len(calls)
(True, 1)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["cached", "clear", "register_device"]

_CACHE: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_LOCK = threading.Lock()
_SIZE = 32
#: namespace name suffix (e.g. "cupy") -> (token(), settle())
_DEVICES: dict[str, tuple[Callable[[], Hashable], Callable[[], None]]] = {}


def register_device(suffix: str, token: Callable[[], Hashable], settle: Callable[[], None]) -> None:
    """Tell the cache how to name the current device of namespaces whose name ends in
    ``suffix``, and what to run once after making a constant there (the engine calls it)."""
    _DEVICES[suffix] = (token, settle)


def clear() -> None:
    """Forget every cached constant."""
    with _LOCK:
        _CACHE.clear()


def cached(xp: Any, key: Hashable, make: Callable[[], Any]) -> Any:
    """``make()`` for namespace ``xp`` on its current device, made once per ``key`` and kept."""
    name = str(getattr(xp, "__name__", type(xp).__name__))
    device = _DEVICES.get(name.split(".")[-1])
    k = (name, device[0]() if device else None, key)
    with _LOCK:
        if k in _CACHE:
            _CACHE.move_to_end(k)
            return _CACHE[k]
    value = make()
    if device:
        device[1]()
    with _LOCK:
        _CACHE[k] = value
        while len(_CACHE) > _SIZE:
            _CACHE.popitem(last=False)
    return value
