"""A counting stand-in for CuPy: runs the GPU code path on the CPU and counts what a GPU would pay.

``device=`` of :func:`eelsgpu.engine.apply_kernel` (and so of every public analysis) accepts an
array-API namespace module in place of ``"gpu"``: the engine then runs exactly its GPU path with
that namespace as the device (no CPU tiling, blocks staged in reusable host buffers and copied to
the device once, the kernel there, the results packed on the device and copied back once; see
:mod:`eelsgpu.engine.transfer`). :data:`xp` is such a namespace built on ``array_api_strict``
that counts, for every block:

* **array operations** -- each is at least one kernel launch on CuPy (about 10 us of launch and
  driver cost each): every function of the namespace and every operator that makes or writes an
  array. Views (basic slicing, reshapes and transposes that share memory with their input) and
  ``empty`` allocations are not launches and are not counted;
* **host synchronisations** -- ``bool()``, ``float()``, ``int()``, ``complex()``, ``__index__``,
  ``__array__``/``__dlpack__`` to the host, ``repr`` of a device array: each waits for every
  kernel queued before it (a stream synchronisation on CuPy);
* **float64 promotions** -- a float64/complex128 array made from a float32/complex64 input (twice
  the bytes, and 1/64 of the FP32 rate on consumer GPUs);
* **bytes read and written** -- per operation, the sizes of its array operands and results (an
  estimate of the memory traffic: a fused or cached operation moves less, a strided one more);
* **host-to-device copies** -- arrays made from host (NumPy) data, with their bytes;
* **peak device memory** -- the largest sum of live device arrays during the block.

Each count is kept per block (the engine opens a record per block through
:meth:`CountingNamespace.eelsgpu_block`) and per call site (file, line, function: the first frame
outside this module and the namespace libraries), so the places that launch, sync or promote can
be found.

Examples
--------
>>> import numpy as np
>>> from eelsgpu.engine import counting
>>> xs = counting.xp
>>> with counting.count() as c:
...     a = xs.asarray(np.ones((4, 8), np.float32))   # 1 op (a host-to-device copy)
...     s = xs.sum(a * 2.0, axis=-1)                   # 2 ops
...     total = float(xs.sum(s))                       # 1 op, 1 sync
>>> c.ops, c.syncs, c.h2d_copies, total
(4, 1, 1, 64.0)

Running an analysis through it (``device=counting.xp`` runs the GPU path):

>>> from eelsgpu import synthetic
>>> from eelsgpu.engine import BlockKernel, Output, apply_kernel
>>> si = synthetic.low_loss_image(synthetic.Drude(15.0, 1.0), t_over_lambda=0.5, shape=(2, 4),
...                               n_channels=64, dispersion_eV=0.5)["signal"]
>>> def total(block, energy_eV):
...     xp = block.__array_namespace__()
...     return {"total": xp.sum(block, axis=-1)}
>>> decl = BlockKernel(total, outputs=(Output("total"),))
>>> with counting.count() as c:
...     ds = apply_kernel(decl, si, device=counting.xp).compute(scheduler="synchronous")
>>> len(c.blocks), c.blocks[0].n_pixels, c.blocks[0].syncs   # one block; one copy back
(1, 8, 1)
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import types
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BlockCounts",
    "CountingArray",
    "CountingNamespace",
    "Counts",
    "Site",
    "count",
    "xp",
]

_HERE = os.path.abspath(__file__)
_SKIP_DIRS: tuple[str, ...] = ()  # the namespace libraries' folders (filled on first use)
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))

#: Dtype names that count as double precision, and the single-precision ones they promote from.
_DOUBLE = ("float64", "complex128")
_SINGLE = ("float32", "complex64")

#: Functions that allocate without a kernel (``cupy.empty`` is a pool allocation, no launch).
_ALLOCATE_ONLY = frozenset({"empty", "empty_like"})


@dataclass(frozen=True)
class Site:
    """Where an operation was called from: file (relative to the repository), line, function."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.function})"


@dataclass
class BlockCounts:
    """The counts of one block (one pass of the GPU path over ``n_pixels`` spectra)."""

    n_pixels: int = 0
    ops: int = 0
    syncs: int = 0
    promotions: int = 0
    promoted_bytes: int = 0
    largest_promotion: int = 0  # elements of the largest float64 array made from float32 input
    bytes: int = 0
    h2d_copies: int = 0
    h2d_bytes: int = 0
    peak_bytes: int = 0  # the most device memory live at once during the block, above its start
    start_live: int = 0

    def per_spectrum(self, what: str) -> float:
        """``what`` (an attribute) divided by the block's pixel count."""
        return getattr(self, what) / max(1, self.n_pixels)


@dataclass
class Counts:
    """What :func:`count` recorded: totals, one :class:`BlockCounts` per block, and per call site
    the operations, syncs, promotions and bytes (``Counter`` objects keyed by :class:`Site`)."""

    ops: int = 0
    syncs: int = 0
    promotions: int = 0
    promoted_bytes: int = 0
    bytes: int = 0
    h2d_copies: int = 0
    h2d_bytes: int = 0
    blocks: list[BlockCounts] = field(default_factory=list)
    site_ops: Counter = field(default_factory=Counter)
    site_syncs: Counter = field(default_factory=Counter)
    site_promotions: Counter = field(default_factory=Counter)
    site_bytes: Counter = field(default_factory=Counter)

    def top(self, what: str = "ops", n: int = 10) -> list[tuple[Site, int]]:
        """The ``n`` call sites with the most ``what`` (``ops``, ``syncs``, ``promotions``,
        ``bytes``)."""
        return getattr(self, f"site_{what}").most_common(n)

    def by_function(self, what: str = "ops", n: int = 10) -> list[tuple[str, int]]:
        """Like :meth:`top`, summed per function (file and function name)."""
        agg: Counter = Counter()
        for site, k in getattr(self, f"site_{what}").items():
            agg[f"{site.file} ({site.function})"] += k
        return agg.most_common(n)


class _Recorder:
    """The active record (global: operations may run on the engine's device threads) and each
    thread's current block."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: list[Counts] = []
        self.local = threading.local()
        self.live = 0  # bytes of device arrays alive now

    def block(self) -> BlockCounts | None:
        return getattr(self.local, "block", None)

    def site(self) -> Site:
        f = sys._getframe(1)
        while f is not None:
            name = os.path.abspath(f.f_code.co_filename)
            if name != _HERE and not name.startswith(_skip_dirs()):
                break
            f = f.f_back
        if f is None:  # pragma: no cover - always some caller
            return Site("?", 0, "?")
        file = os.path.relpath(os.path.abspath(f.f_code.co_filename), _PACKAGE_ROOT)
        return Site(file, f.f_lineno, f.f_code.co_name)

    def add(self, *, ops=0, syncs=0, nbytes=0, promoted=0, h2d=0) -> None:
        if not self.active:
            return
        site = self.site()
        blk = self.block()
        with self.lock:
            for c in self.active:
                c.ops += ops
                c.syncs += syncs
                c.bytes += nbytes
                if ops:
                    c.site_ops[site] += ops
                if syncs:
                    c.site_syncs[site] += syncs
                if nbytes:
                    c.site_bytes[site] += nbytes
                if promoted:
                    c.promotions += 1
                    c.promoted_bytes += promoted
                    c.site_promotions[site] += 1
                if h2d:
                    c.h2d_copies += 1
                    c.h2d_bytes += h2d
            if blk is not None:
                blk.ops += ops
                blk.syncs += syncs
                blk.bytes += nbytes
                if promoted:
                    blk.promotions += 1
                    blk.promoted_bytes += promoted
                if h2d:
                    blk.h2d_copies += 1
                    blk.h2d_bytes += h2d

    def promoted_elements(self, n: int) -> None:
        blk = self.block()
        if blk is not None:
            blk.largest_promotion = max(blk.largest_promotion, n)

    def alloc(self, raw: Any, nbytes: int) -> None:
        with self.lock:
            self.live += nbytes
            blk = self.block()
            if blk is not None:
                blk.peak_bytes = max(blk.peak_bytes, self.live - blk.start_live)
        try:
            weakref.finalize(raw, self._free, nbytes)
        except TypeError:  # pragma: no cover - a raw array type without weak references
            pass

    def _free(self, nbytes: int) -> None:
        with self.lock:
            self.live -= nbytes


_REC = _Recorder()


def _skip_dirs() -> tuple[str, ...]:
    global _SKIP_DIRS
    if not _SKIP_DIRS:
        dirs = []
        for mod in ("array_api_strict", "array_api_compat", "numpy"):
            m = sys.modules.get(mod)
            if m is not None and getattr(m, "__file__", None):
                dirs.append(os.path.dirname(os.path.abspath(m.__file__)))
        _SKIP_DIRS = tuple(dirs)
    return _SKIP_DIRS


@contextlib.contextmanager
def count() -> Iterator[Counts]:
    """Record every operation of :data:`xp` (any thread) until the block exits.

    Blocks are recorded where the engine opens them (the GPU path with ``device=xp``); an
    operation outside any block still counts in the totals and per call site.
    """
    counts = Counts()
    with _REC.lock:
        _REC.active.append(counts)
    try:
        yield counts
    finally:
        with _REC.lock:
            _REC.active.remove(counts)


# --------------------------------------------------------------------------- the arrays
def _raw(a: Any) -> Any:
    """The base namespace's array inside a :class:`CountingArray` (others unchanged)."""
    return a._a if isinstance(a, CountingArray) else a


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, CountingArray):
        return obj._a
    if isinstance(obj, list):
        return [_unwrap(o) for o in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_unwrap(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _numpy_of(raw: Any) -> np.ndarray | None:
    """The NumPy array holding a base array's data (array-api-strict keeps it in ``_array``)."""
    inner = getattr(raw, "_array", raw)
    return inner if isinstance(inner, np.ndarray) else None


def _nbytes(raw: Any) -> int:
    inner = _numpy_of(raw)
    if inner is not None:
        return int(inner.nbytes)
    return int(np.prod(raw.shape)) * np.dtype(str(raw.dtype)).itemsize


def _dtype_name(raw: Any) -> str:
    return str(getattr(raw, "dtype", "")).split(".")[-1]


def _inputs(args: Any, out: list[Any]) -> list[Any]:
    if isinstance(args, CountingArray):
        out.append(args._a)
    elif isinstance(args, (list, tuple)):
        for a in args:
            _inputs(a, out)
    elif isinstance(args, dict):
        for a in args.values():
            _inputs(a, out)
    return out


def _basic(key: Any) -> bool:
    """True for a basic index (ints, slices, None, Ellipsis): a view, never a gather."""
    keys = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (int, slice)) for k in keys)


def _shares(a: Any, b: Any) -> bool:
    na, nb = _numpy_of(a), _numpy_of(b)
    if na is None or nb is None:
        return a is b
    return bool(np.may_share_memory(na, nb))


class CountingArray:
    """A device array of :class:`CountingNamespace`: the base namespace's array, with every
    operation counted (see the module docstring)."""

    __slots__ = ("__weakref__", "_a", "_ns")

    def __init__(self, raw: Any, ns: CountingNamespace) -> None:
        self._a = raw
        self._ns = ns

    # -- attributes (no kernel)
    @property
    def dtype(self) -> Any:
        return self._a.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self._a.shape

    @property
    def ndim(self) -> int:
        return self._a.ndim

    @property
    def size(self) -> int:
        return self._a.size

    @property
    def device(self) -> Any:
        return self._a.device

    @property
    def T(self) -> CountingArray:  # noqa: N802 - the array API's name
        return self._ns._call("T", lambda: self._a.T, (self,))

    @property
    def mT(self) -> CountingArray:  # noqa: N802 - the array API's name
        return self._ns._call("mT", lambda: self._a.mT, (self,))

    def __array_namespace__(self, api_version: str | None = None) -> CountingNamespace:
        return self._ns

    def to_device(self, device: Any, /, stream: Any = None) -> Any:
        return self._ns._call("to_device", lambda: self._a.to_device(device), (self,))

    # -- host synchronisations
    def _sync(self, what: str) -> None:
        _REC.add(syncs=1, nbytes=_nbytes(self._a) if what == "to-host" else 0)

    def __bool__(self) -> bool:
        self._sync("bool")
        return bool(self._a)

    def __float__(self) -> float:
        self._sync("float")
        return float(self._a)

    def __int__(self) -> int:
        self._sync("int")
        return int(self._a)

    def __index__(self) -> int:
        self._sync("index")
        return self._a.__index__()

    def __complex__(self) -> complex:
        self._sync("complex")
        return complex(self._a)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        self._sync("to-host")
        inner = _numpy_of(self._a)
        arr = np.asarray(inner if inner is not None else np.from_dlpack(self._a))
        return arr if dtype is None else arr.astype(dtype)

    def __dlpack__(self, **kw: Any) -> Any:
        self._sync("to-host")
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self) -> Any:
        return self._a.__dlpack_device__()

    def __repr__(self) -> str:
        self._sync("repr")
        return f"CountingArray({self._a!r})"

    def __len__(self) -> int:
        return self.shape[0]

    # -- indexing
    def __getitem__(self, key: Any) -> Any:
        if _basic(key):  # ints, slices, None, ...: a view on CuPy (0-d too), no launch
            return CountingArray(self._a[key], self._ns)
        return self._ns._call("getitem", lambda: self._a[_unwrap(key)], (self, key))

    def __setitem__(self, key: Any, value: Any) -> None:
        raw_key, raw_value = _unwrap(key), _unwrap(value)
        self._a[raw_key] = raw_value
        region = self._a[raw_key]
        nbytes = _nbytes(region) + (_nbytes(raw_value) if hasattr(raw_value, "shape") else 0)
        _REC.add(ops=1, nbytes=nbytes)


def _binary(name: str) -> Callable[..., Any]:
    def op(self: CountingArray, other: Any) -> Any:
        return self._ns._call(name, lambda: getattr(self._a, name)(_unwrap(other)), (self, other))

    op.__name__ = name
    return op


def _inplace(name: str) -> Callable[..., Any]:
    def op(self: CountingArray, other: Any) -> Any:
        raw_other = _unwrap(other)
        getattr(self._a, name)(raw_other)
        nbytes = 2 * _nbytes(self._a) + (_nbytes(raw_other) if hasattr(raw_other, "shape") else 0)
        _REC.add(ops=1, nbytes=nbytes)
        return self

    op.__name__ = name
    return op


def _unary(name: str) -> Callable[..., Any]:
    def op(self: CountingArray) -> Any:
        return self._ns._call(name, lambda: getattr(self._a, name)(), (self,))

    op.__name__ = name
    return op


_OPS = "add sub mul truediv floordiv mod pow matmul and or xor lshift rshift".split()
for _n in _OPS:
    setattr(CountingArray, f"__{_n}__", _binary(f"__{_n}__"))
    setattr(CountingArray, f"__r{_n}__", _binary(f"__r{_n}__"))
    setattr(CountingArray, f"__i{_n}__", _inplace(f"__i{_n}__"))
for _n in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(CountingArray, f"__{_n}__", _binary(f"__{_n}__"))
for _n in ("neg", "pos", "abs", "invert"):
    setattr(CountingArray, f"__{_n}__", _unary(f"__{_n}__"))
CountingArray.__hash__ = None  # type: ignore[assignment]  # arrays compare elementwise


# --------------------------------------------------------------------------- the namespace
class _Sub(types.SimpleNamespace):
    """A counted sub-namespace (``fft``, ``linalg``)."""


class CountingNamespace(types.ModuleType):
    """An array-API namespace that runs ``base`` (default ``array_api_strict``) and counts.

    Use the module-level :data:`xp`; ``device=xp`` in any analysis runs the engine's GPU path on
    it. Everything the base namespace has is here: functions are counted, dtypes and constants
    pass through.
    """

    #: How the engine names this namespace when it ships a block function to another process
    #: (a module attribute it re-imports there).
    __eelsgpu_ref__ = "eelsgpu.engine.counting:xp"

    def __init__(self, base: Any = None, name: str = "eelsgpu.engine.counting.xp") -> None:
        super().__init__(name)
        if base is None:
            import array_api_strict as base
        self._base = base
        self.__array_api_version__ = getattr(base, "__array_api_version__", "2023.12")
        self.fft = self._sub(base.fft, "fft")
        if hasattr(base, "linalg"):
            self.linalg = self._sub(base.linalg, "linalg")

    def _sub(self, mod: Any, prefix: str) -> _Sub:
        sub = _Sub()
        for name in dir(mod):
            if not name.startswith("_"):
                obj = getattr(mod, name)
                setattr(sub, name, self._wrap_fn(f"{prefix}.{name}", obj) if callable(obj) else obj)
        return sub

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name not in ("__array_namespace_info__",):
            raise AttributeError(name)
        obj = getattr(self._base, name)
        if callable(obj) and not isinstance(obj, type) and not _is_dtype(obj):
            obj = self._wrap_fn(name, obj)
        setattr(self, name, obj)  # once per name
        return obj

    def _wrap_fn(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, lambda: fn(*_unwrap(args), **_unwrap(kwargs)), (args, kwargs))

        counted.__name__ = name
        counted.__doc__ = getattr(fn, "__doc__", None)
        return counted

    def _call(self, name: str, run: Callable[[], Any], args: Any) -> Any:
        raw_out = run()
        inputs = _inputs(args, [])
        outs: list[Any] = []
        wrapped = self._wrap(raw_out, outs)
        if not outs:
            return wrapped  # no array made: not a kernel (finfo, isdtype, result_type...)
        new = [o for o in outs if not any(_shares(o, i) for i in inputs)]
        if not new or name in _ALLOCATE_ONLY:  # a view or a bare allocation: no launch
            for o in new:
                _REC.alloc(_numpy_of(o) if _numpy_of(o) is not None else o, _nbytes(o))
            return wrapped
        out_bytes = sum(_nbytes(o) for o in new)
        in_bytes = sum(_nbytes(i) for i in inputs)
        h2d = 0
        if name == "asarray" and not inputs:
            h2d = out_bytes  # made from host data: a host-to-device copy
        promoted = 0
        in_dtypes = {_dtype_name(i) for i in inputs}
        if in_dtypes & set(_SINGLE):
            for o in new:
                if _dtype_name(o) in _DOUBLE:
                    promoted += _nbytes(o)
                    _REC.promoted_elements(int(np.prod(o.shape)))
        _REC.add(ops=1, nbytes=in_bytes + out_bytes, promoted=promoted, h2d=h2d)
        for o in new:
            inner = _numpy_of(o)
            _REC.alloc(inner if inner is not None else o, _nbytes(o))
        return wrapped

    def _wrap(self, out: Any, arrays: list[Any]) -> Any:
        if _is_array(out, self._base):
            arrays.append(out)
            return CountingArray(out, self)
        if isinstance(out, tuple) and hasattr(out, "_fields"):
            return type(out)(*(self._wrap(o, arrays) for o in out))
        if isinstance(out, (list, tuple)):
            return type(out)(self._wrap(o, arrays) for o in out)
        return out

    # -- the engine's hooks
    @contextlib.contextmanager
    def eelsgpu_block(self, n_pixels: int) -> Iterator[BlockCounts]:
        """Open a record for one block of ``n_pixels`` spectra on the calling thread (the engine
        calls it around each block's pass on the device)."""
        blk = BlockCounts(n_pixels=int(n_pixels), start_live=_REC.live)
        prev = _REC.block()
        _REC.local.block = blk
        try:
            yield blk
        finally:
            _REC.local.block = prev
            with _REC.lock:
                for c in _REC.active:
                    c.blocks.append(blk)

    def eelsgpu_fused(self, name: str, twin: Callable[..., Any], arrays: tuple[Any, ...]) -> Any:
        """A step that has a fused device kernel, counted as that kernel costs on a GPU.

        ``twin(base, *raw)`` (the step's array-API twin on the base namespace, with ``arrays``
        unwrapped; ``None`` entries pass through) runs UNCOUNTED -- its temporaries stay in the
        fused kernel's registers and shared memory -- and the call is charged as ONE operation
        (one launch) that reads the arrays of ``arrays`` once and writes the arrays it returns
        once (a tuple or a dict of arrays, or one array; returned wrapped the same way). What
        the GPU path costs where the fused kernel runs; where it is not used (another device,
        a failed first-use check, ``EELSGPU_NO_FUSED=1``) the twin runs counted instead.

        Examples
        --------
        >>> import numpy as np
        >>> from eelsgpu.engine import counting
        >>> xs = counting.xp
        >>> a = xs.asarray(np.arange(8, dtype=np.float32))
        >>> with counting.count() as c:
        ...     lo, hi = xs.eelsgpu_fused("demo", lambda x, v: (x.sqrt(v) + 1, v * v), (a,))
        >>> c.ops, c.bytes   # one launch reading 32 bytes and writing 2 x 32
        (1, 96)
        """
        keys: list[Any] = []

        def run() -> Any:
            out = twin(self._base, *(None if a is None else _raw(a) for a in arrays))
            if isinstance(out, dict):
                keys.extend(out)
                return tuple(out.values())
            return out

        got = self._call(name, run, tuple(a for a in arrays if a is not None))
        return dict(zip(keys, got, strict=True)) if keys else got

    def eelsgpu_asarray(self, host: np.ndarray) -> CountingArray:
        """The host-to-device copy of a staged block (counted as one operation and a copy)."""
        return self.asarray(host)


def _is_dtype(obj: Any) -> bool:
    return type(obj).__name__ == "DType"


def _is_array(obj: Any, base: Any) -> bool:
    cls = getattr(base, "_array_object", None)
    if cls is not None and isinstance(obj, cls.Array):
        return True
    return hasattr(obj, "__array_namespace__") and hasattr(obj, "shape") and hasattr(obj, "dtype")


#: The counting stand-in for CuPy: ``device=xp`` in any analysis runs the GPU path on it.
xp = CountingNamespace()
