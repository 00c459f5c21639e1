"""What differs on a GPU: moving blocks to the device and back, pinned staging, device memory.

Everything else (the kernels) is the same array-API code on every device. A :class:`Device` is a
bundle of plain functions (host-to-device copy, the copy back into a host buffer, pinned
allocation, streams, events, free memory); three makers fill it:

* :func:`host_device`: the CPU (NumPy, no copies; ``copies=True`` for tests of the staging path);
* :func:`cuda_device`: CuPy on the current CUDA device (pinned staging, non-blocking streams);
* :func:`namespace_device`: any array-API namespace standing in for CuPy (``array_api_strict``,
  the counting stand-in :data:`eelsgpu.engine.counting.xp`), so that the whole GPU path runs and
  is tested on a CPU.

The GPU path (:class:`DevicePool`, one per device per process) is the same for CuPy and the
stand-ins:

* **Blocks in flight and their size come from device memory.** The pool reads the device's free
  memory once (``budget = 0.8 x free``); each kernel declares its peak device bytes per spectrum
  (:attr:`~eelsgpu.kernels.declare.BlockKernel.peak_bytes_per_spectrum`, measured with the
  counting stand-in). A block is cut into passes of at most ``budget / (2 x peak)`` spectra (two
  passes fit at once) and a per-device memory semaphore (:class:`MemoryGate`) holds every pass
  until its peak fits beside those in flight; at most :data:`MAX_STREAMS` device threads run
  passes, each with its own stream. So 64 dask threads never put 64 blocks on one GPU, and
  CuPy's per-stream memory pools stay bounded by the number of streams.
* **One copy in, one copy out, overlapped.** Each device thread owns a :class:`Slot`: its stream,
  two staging buffers per input (pinned), two pinned result buffers, and the constants it has
  uploaded (the energy axis, parameter arrays), all reused from block to block. A pass stages its
  rows (cast to the kernel's dtype on the host, so float64 never crosses the bus) into buffer
  ``i % 2``, copies them to the device on the slot's stream, runs the kernel, packs every output
  into ONE device array, and copies it back asynchronously into the pinned result buffer
  ``i % 2``; the next pass is staged and launched before the previous one is waited for, and two
  slots on two streams overlap one's copies with the other's kernels.
* **Stream order.** Everything a pass uses (the block, the energy axis, parameter arrays, extras)
  is copied on the slot's stream, so nothing is read before it has arrived.
* **Per-device caches.** Device threads live as long as the process, so CuPy's per-thread cuFFT
  plan caches (made larger here) and the constants survive from block to block.

Why pinned staging: a copy from pageable host memory goes through a driver bounce buffer at about
half the PCIe bandwidth; from page-locked memory it runs at the link's speed (PCIe Gen5 x16: about
50-57 GB/s) and can overlap with kernels on another stream.

Examples
--------
>>> import numpy as np
>>> mover = BlockMover(host_device(copies=True))
>>> out = mover.run(np.ones((4, 8)), lambda b: {"s": b.sum(axis=-1)}, dtype=np.float32)
>>> out["s"].tolist(), mover.h2d_copies
([8.0, 8.0, 8.0, 8.0], 1)

The GPU path with array-api-strict standing in for CuPy:

>>> import array_api_strict as xs
>>> pool = DevicePool(namespace_device(xs, free_bytes=2**30))
>>> def kernel(block, energy_eV):
...     return {"s": xs.sum(block, axis=-1), "e": block * 0 + energy_eV}
>>> packed = pool.run(np.ones((6, 4)), kernel, energy=np.arange(4.0), widths=(1, 4),
...                   names=("s", "e"), dtype=np.float32, peak_per_spectrum=1024)
>>> packed[0].tolist(), pool.stats()["d2h_copies"]
([4.0, 0.0, 1.0, 2.0, 3.0], 1)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "MAX_STREAMS",
    "BlockMover",
    "Device",
    "DevicePool",
    "MemoryGate",
    "Slot",
    "cuda_device",
    "device_for",
    "host_device",
    "mover_for",
    "namespace_device",
    "pool_for",
]

#: Device threads (each with its own stream and slot) per device and process: two passes in flight
#: overlap one's copies with the other's kernels; more only multiply CuPy's per-stream pools.
MAX_STREAMS = int(os.environ.get("EELSGPU_GPU_STREAMS", "2"))

#: Share of the device's free memory (when the pool is made) that passes may hold at once; the
#: rest is for cuFFT work areas, CuPy's pool fragmentation and the other processes on the GPU.
BUDGET_FRACTION = 0.8

#: cuFFT plans kept per device thread (CuPy's default is 16): a block's passes, its last partial
#: pass and every FFT length the kernels use (rfft/irfft at 2 or 3 lengths) fit many times over.
FFT_PLAN_CACHE = 64


def _no_sync() -> None:
    return None


class _Done:
    """An event that has always happened (devices without streams)."""

    def synchronize(self) -> None:
        return None


_DONE = _Done()


@dataclass(frozen=True)
class Device:
    """The operations the engine needs from a device.

    ``asarray(host) -> device array`` (the host-to-device copy, on the current stream),
    ``asnumpy(device array) -> host``, ``empty_pinned(shape, dtype) -> host array`` (page-locked
    where the device has it), ``stream() -> context manager`` (a new stream to queue work on; a
    :class:`Slot` makes one and keeps it). The GPU path also uses ``xp`` (the namespace of the
    device arrays: outputs are packed there), ``key`` (one :class:`DevicePool` per key and
    process), ``free_bytes()``, ``copy_to_host(device array, host buffer)`` (asynchronous where
    the device can), ``event()`` (marks the work queued on the current stream; ``synchronize()``
    waits for it), ``block(n_pixels)`` (a context around each pass: the counting stand-in opens
    its per-block record there) and ``setup_thread()`` (once per device thread).
    """

    name: str
    asarray: Callable[[np.ndarray], Any]
    asnumpy: Callable[[Any], np.ndarray]
    empty_pinned: Callable[..., np.ndarray]
    stream: Callable[[], contextlib.AbstractContextManager]
    synchronize: Callable[[], None] = _no_sync
    copies: bool = True
    xp: Any = None
    key: str = ""
    free_bytes: Callable[[], int] | None = None
    copy_to_host: Callable[[Any, np.ndarray], None] | None = None
    event: Callable[[], Any] = lambda: _DONE
    block: Callable[[int], contextlib.AbstractContextManager] | None = None
    setup_thread: Callable[[], None] = _no_sync


def host_device(copies: bool = False) -> Device:
    """The CPU as a device: NumPy and no streams.

    With ``copies=False`` (what the engine uses) a block is handed to the kernel as it is; with
    ``copies=True`` the mover goes through staging and real copies exactly as on a GPU, so tests
    can check the transfer path with NumPy arrays.
    """
    return Device(
        name="cpu" if not copies else "numpy-staged",
        asarray=np.array if copies else np.asarray,
        asnumpy=np.array if copies else np.asarray,
        empty_pinned=np.empty,
        stream=contextlib.nullcontext,
        synchronize=_no_sync,
        copies=copies,
        xp=np,
        key="cpu",
        free_bytes=lambda: 2**34,
        copy_to_host=lambda dev, out: np.copyto(out, dev),
    )


def cuda_device() -> Device:
    """The current CUDA device through CuPy: pinned staging, non-blocking streams, asynchronous
    copies into pinned buffers, the device's free memory from the driver (plus what CuPy's pool
    holds free), larger per-thread cuFFT plan caches, and the fused kernels registered."""
    import cupy
    import cupyx
    from array_api_compat import array_namespace

    from ..kernels import _device_cache
    from .cuda import register_fused_kernels  # the fused kernels' providers (compiled on use)

    register_fused_kernels()
    dev_id = cupy.cuda.Device().id
    # the kernels' device constants (the Hilbert kernels) are kept per CUDA device, and made
    # visible to every stream before first use
    _device_cache.register_device(
        "cupy",
        lambda: cupy.cuda.Device().id,
        lambda: cupy.cuda.get_current_stream().synchronize(),
    )

    def stream() -> Any:
        return cupy.cuda.Stream(non_blocking=True)

    def asarray(host: np.ndarray) -> Any:
        # an allocation and an asynchronous copy on the current stream (from pinned memory it
        # does not wait for the host; cupy.asarray would stage through its own buffer)
        dev = cupy.empty(host.shape, dtype=host.dtype)
        dev.set(host, stream=cupy.cuda.get_current_stream())
        return dev

    def copy_to_host(dev: Any, out: np.ndarray) -> None:
        stream = cupy.cuda.get_current_stream()
        try:
            dev.get(stream=stream, out=out, blocking=False)
        except TypeError:  # CuPy before 13: no `blocking`; the copy is still on the stream
            dev.get(stream=stream, out=out)

    def event() -> Any:
        ev = cupy.cuda.Event(disable_timing=True)
        ev.record(cupy.cuda.get_current_stream())
        return ev

    def free_bytes() -> int:
        free, _total = cupy.cuda.runtime.memGetInfo()
        return int(free) + int(cupy.get_default_memory_pool().free_bytes())

    def setup_thread() -> None:
        cache = cupy.fft.config.get_plan_cache()
        cache.set_size(max(FFT_PLAN_CACHE, cache.get_size()))

    def synchronize() -> None:
        cupy.cuda.get_current_stream().synchronize()

    return Device(
        name="gpu",
        asarray=asarray,
        asnumpy=cupy.asnumpy,
        empty_pinned=cupyx.empty_pinned,
        stream=stream,
        synchronize=synchronize,
        copies=True,
        xp=array_namespace(cupy.empty(0)),
        key=f"cuda:{dev_id}",
        free_bytes=free_bytes,
        copy_to_host=copy_to_host,
        event=event,
        setup_thread=setup_thread,
    )


#: Device memory a stand-in namespace reports as free (bytes), unless told otherwise: an H100's.
STANDIN_FREE_BYTES = int(os.environ.get("EELSGPU_STANDIN_FREE_BYTES", str(78 * 2**30)))


def namespace_device(xp: Any, *, free_bytes: int | None = None) -> Device:
    """Any array-API namespace standing in for CuPy: the GPU path, run on the CPU.

    Its arrays are the "device" arrays; the copy in is ``xp.asarray`` of the staged host buffer,
    the copy back ``numpy.asarray`` (through ``__array__`` or DLPack) -- both counted by the
    counting stand-in (:mod:`eelsgpu.engine.counting`), which also opens its per-block records
    through ``block``. ``free_bytes`` is the device memory it reports as free (default
    :data:`STANDIN_FREE_BYTES`, or ``$EELSGPU_STANDIN_FREE_BYTES``).
    """
    from .device import to_host

    free = STANDIN_FREE_BYTES if free_bytes is None else int(free_bytes)
    asarray = getattr(xp, "eelsgpu_asarray", None) or xp.asarray

    def copy_to_host(dev: Any, out: np.ndarray) -> None:
        np.copyto(out, to_host(dev), casting="same_kind")

    return Device(
        name=f"stand-in {xp.__name__}",
        asarray=asarray,
        asnumpy=to_host,
        empty_pinned=np.empty,
        stream=contextlib.nullcontext,
        copies=True,
        xp=xp,
        key=f"namespace:{xp.__name__}:{free}",
        free_bytes=lambda: free,
        copy_to_host=copy_to_host,
        block=getattr(xp, "eelsgpu_block", None),
    )


# --------------------------------------------------------------------------- the CPU path
class BlockMover:
    """Moves blocks to a device through a reusable staging buffer and runs a kernel there (the
    CPU path, and tests of the staging; the GPU path is :class:`DevicePool`).

    One mover per worker thread (see :func:`mover_for`): the staging buffer is reused for every
    block of the same size.
    """

    def __init__(self, device: Device) -> None:
        self.device = device
        self._staging: np.ndarray | None = None
        self.h2d_copies = 0
        self.h2d_bytes = 0
        self.d2h_copies = 0

    def stage(self, block: np.ndarray, dtype: Any) -> np.ndarray:
        """Copy ``block`` (cast to ``dtype``) into the staging buffer and return the view."""
        dtype = np.dtype(dtype)
        need = block.size
        buf = self._staging
        if buf is None or buf.dtype != dtype or buf.size < need:
            buf = self.device.empty_pinned((need,), dtype=dtype)
            self._staging = buf
        view = buf[:need].reshape(block.shape)
        np.copyto(view, block, casting="same_kind")
        return view

    def to_device(self, block: np.ndarray, dtype: Any) -> Any:
        """One host-to-device copy of ``block`` in ``dtype``; no copy at all on the host device."""
        if not self.device.copies:
            return np.asarray(block, dtype=dtype)
        staged = self.stage(block, dtype)
        self.h2d_copies += 1
        self.h2d_bytes += staged.nbytes
        return self.device.asarray(staged)

    def to_host(self, array: Any) -> np.ndarray:
        if not self.device.copies and isinstance(array, np.ndarray):
            return array
        self.d2h_copies += 1
        return self.device.asnumpy(array)

    def run(
        self,
        block: np.ndarray,
        fn: Callable[[Any], Mapping[str, Any]],
        dtype: Any,
    ) -> dict[str, np.ndarray]:
        """Copy ``block`` to the device once, run ``fn`` on it there, bring its results back."""
        with self.device.stream():
            dev = self.to_device(block, dtype)
            result = fn(dev)
            host = {k: self.to_host(v) for k, v in result.items()}
        self.device.synchronize()
        return host


_local = threading.local()


def mover_for(device: str) -> BlockMover:
    """The calling thread's :class:`BlockMover` on the CPU (``"cpu"``)."""
    movers = getattr(_local, "movers", None)
    if movers is None:
        movers = _local.movers = {}
    if device not in movers:
        movers[device] = BlockMover(cuda_device() if device == "gpu" else host_device())
    return movers[device]


def iter_tiles(n: int, tile: int | None) -> Iterator[slice]:
    """Row slices of at most ``tile`` rows covering ``range(n)`` (one slice when ``tile`` is None)."""
    if not tile or tile >= n:
        yield slice(0, n)
        return
    for start in range(0, n, tile):
        yield slice(start, min(n, start + tile))


# --------------------------------------------------------------------------- the GPU path
class MemoryGate:
    """A counting semaphore of device bytes: the passes in flight on one device never hold more
    than ``capacity`` bytes of their declared peaks (one pass larger than that runs alone)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self.used = 0
        self.holders = 0
        self.max_used = 0
        self.max_holders = 0
        self._cond = threading.Condition()

    def _take(self, n: int) -> None:
        self.used += n
        self.holders += 1
        self.max_used = max(self.max_used, self.used)
        self.max_holders = max(self.max_holders, self.holders)

    def acquire(self, nbytes: int) -> int:
        """Wait until ``nbytes`` (at most the capacity) fit; returns what was taken."""
        n = min(int(nbytes), self.capacity)
        with self._cond:
            while self.used and self.used + n > self.capacity:
                self._cond.wait()
            self._take(n)
        return n

    def try_acquire(self, nbytes: int) -> int:
        """Take ``nbytes`` if they fit now, else 0 (never waits)."""
        n = min(int(nbytes), self.capacity)
        with self._cond:
            if self.used and self.used + n > self.capacity:
                return 0
            self._take(n)
        return n

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self.holders -= 1
            self._cond.notify_all()


def _content_key(arr: np.ndarray) -> tuple[Any, ...]:
    """A key for a small host array by content (a block function shipped to another process is
    a new object with the same numbers)."""
    a = np.ascontiguousarray(arr)
    return (a.shape, a.dtype.str, hashlib.blake2b(a.view(np.uint8), digest_size=16).digest())


@dataclass
class _Pass:
    rows: slice
    out: np.ndarray
    event: Any
    nbytes: int


@dataclass
class Slot:
    """What one device thread owns and reuses from block to block: its stream, two staging
    buffers per input, two pinned result buffers, the constants it uploaded, and counters."""

    device: Device
    stream: Any = None
    staging: dict[str, list[np.ndarray | None]] = field(default_factory=dict)
    staged: dict[str, list[Any]] = field(default_factory=dict)
    results: list[np.ndarray | None] = field(default_factory=lambda: [None, None])
    constants: OrderedDict = field(default_factory=OrderedDict)
    h2d_copies: int = 0
    h2d_bytes: int = 0
    d2h_copies: int = 0
    d2h_bytes: int = 0
    pinned_allocations: int = 0

    def _pinned(self, old: np.ndarray | None, size: int, dtype: np.dtype) -> np.ndarray:
        if old is not None and old.dtype == dtype and old.size >= size:
            return old
        self.pinned_allocations += 1
        return self.device.empty_pinned((size,), dtype=dtype)

    def upload(self, name: str, i: int, host: np.ndarray, dtype: Any = None) -> Any:
        """Stage ``host`` (cast to ``dtype``) in buffer ``i % 2`` of input ``name`` and copy it to
        the device on this slot's stream (after the last copy out of that buffer is done)."""
        dtype = np.dtype(host.dtype if dtype is None else dtype)
        bufs = self.staging.setdefault(name, [None, None])
        done = self.staged.setdefault(name, [_DONE, _DONE])
        k = i % 2
        done[k].synchronize()  # the copy that last read this buffer has finished
        bufs[k] = buf = self._pinned(bufs[k], host.size, dtype)
        view = buf[: host.size].reshape(host.shape)
        np.copyto(view, host, casting="same_kind")
        dev = self.device.asarray(view)
        done[k] = self.device.event()
        self.h2d_copies += 1
        self.h2d_bytes += view.nbytes
        return dev

    def constant(self, host: np.ndarray) -> Any:
        """``host`` on the device, uploaded once per slot (on its stream) and kept (LRU of 16)."""
        key = _content_key(host)
        if key in self.constants:
            self.constants.move_to_end(key)
            return self.constants[key]
        dev = self.device.asarray(np.ascontiguousarray(host))
        self.h2d_copies += 1
        self.h2d_bytes += host.nbytes
        self.constants[key] = dev
        if len(self.constants) > 16:
            self.constants.popitem(last=False)
        return dev

    def result_buffer(self, i: int, shape: tuple[int, int], dtype: Any) -> np.ndarray:
        """The pinned result buffer ``i % 2`` viewed as ``shape`` (grown, never shrunk)."""
        k = i % 2
        size = int(np.prod(shape))
        self.results[k] = buf = self._pinned(self.results[k], size, np.dtype(dtype))
        return buf[:size].reshape(shape)


def _pack(
    xp: Any,
    result: Mapping[str, Any],
    names: Sequence[str],
    widths: Sequence[int],
    n_rows: int,
    dtype: np.dtype,
) -> Any:
    """Every output in ONE (n_rows, sum(widths)) device array of ``dtype`` (so one copy back)."""
    target = getattr(xp, np.dtype(dtype).name)
    cols = []
    for name, w in zip(names, widths, strict=True):
        if name not in result:
            raise KeyError(name)
        v = result[name]
        if v.dtype != target:
            v = xp.astype(v, target)
        cols.append(xp.reshape(v, (n_rows, w)))
    return cols[0] if len(cols) == 1 else xp.concat(cols, axis=1)


class DevicePool:
    """The GPU path of one device in this process: device threads with their :class:`Slot`, and
    the :class:`MemoryGate` that bounds the passes in flight (see the module docstring)."""

    def __init__(self, device: Device, *, streams: int = MAX_STREAMS) -> None:
        self.device = device
        free = device.free_bytes() if device.free_bytes is not None else 2**34
        self.budget = int(BUDGET_FRACTION * free)
        self.gate = MemoryGate(self.budget)
        self.streams = max(1, int(streams))
        self._executor = ThreadPoolExecutor(self.streams, thread_name_prefix="eelsgpu-device")
        self._local = threading.local()
        self._slots: list[Slot] = []
        self._lock = threading.Lock()
        self.passes = 0
        self.running = 0
        self.max_running = 0

    def slot(self) -> Slot:
        """The calling device thread's slot (made on its first pass, with its stream)."""
        s = getattr(self._local, "slot", None)
        if s is None:
            self.device.setup_thread()
            s = Slot(self.device, stream=self.device.stream())
            self._local.slot = s
            with self._lock:
                self._slots.append(s)
        return s

    def rows_per_pass(self, n_rows: int, peak_per_spectrum: int) -> int:
        """Spectra per pass: the whole block when two such passes fit in the budget, else as
        many as fit twice (at least one)."""
        fit = self.budget // max(1, 2 * int(peak_per_spectrum))
        return int(max(1, min(n_rows, fit)))

    def stats(self) -> dict[str, int]:
        """Counters over every slot: copies, bytes, pinned allocations, passes, concurrency."""
        out = {
            "slots": len(self._slots),
            "passes": self.passes,
            "max_running": self.max_running,
            "gate_max_holders": self.gate.max_holders,
            "gate_max_used": self.gate.max_used,
            "budget": self.budget,
        }
        for k in ("h2d_copies", "h2d_bytes", "d2h_copies", "d2h_bytes", "pinned_allocations"):
            out[k] = sum(getattr(s, k) for s in self._slots)
        return out

    def run(
        self,
        block: np.ndarray,
        kernel: Callable[..., Mapping[str, Any]],
        *,
        energy: np.ndarray,
        widths: Sequence[int],
        names: Sequence[str],
        dtype: Any,
        peak_per_spectrum: int,
        params: Mapping[str, Any] | None = None,
        extras: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """``kernel(block_on_device, energy_on_device, **params, **extras)`` over ``block``
        (n, n_E) in passes on a device thread; returns the packed (n, sum(widths)) host array of
        the outputs ``names`` (each ``widths[i]`` columns) in ``dtype``."""
        return self._executor.submit(
            self._run_block,
            block,
            kernel,
            energy,
            tuple(widths),
            tuple(names),
            np.dtype(dtype),
            int(peak_per_spectrum),
            dict(params or {}),
            dict(extras or {}),
        ).result()

    def _run_block(self, block, kernel, energy, widths, names, dtype, peak, params, extras):
        slot = self.slot()
        n = block.shape[0]
        out = np.empty((n, int(sum(widths))), dtype=dtype)
        step = self.rows_per_pass(n, peak)
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        pending: _Pass | None = None
        try:
            with slot.stream if slot.stream is not None else contextlib.nullcontext():
                for i, start in enumerate(range(0, n, step)):
                    rows = slice(start, min(n, start + step))
                    need = peak * (rows.stop - rows.start)
                    taken = self.gate.try_acquire(need) if pending is not None else 0
                    if not taken:
                        if pending is not None:  # finish the pass in flight first: no deadlock
                            self._finish(pending, out)
                            pending = None
                        taken = self.gate.acquire(need)
                    try:
                        launched = self._launch(
                            slot,
                            i,
                            rows,
                            block,
                            kernel,
                            energy,
                            widths,
                            names,
                            dtype,
                            params,
                            extras,
                            taken,
                        )
                    except BaseException:
                        self.gate.release(taken)
                        raise
                    if pending is not None:
                        self._finish(pending, out)
                    pending = launched
                if pending is not None:
                    self._finish(pending, out)
                    pending = None
        finally:
            if pending is not None:
                pending.event.synchronize()
                self.gate.release(pending.nbytes)
            with self._lock:
                self.running -= 1
        return out

    def _launch(
        self, slot, i, rows, block, kernel, energy, widths, names, dtype, params, extras, taken
    ) -> _Pass:
        dev = self.device
        n_rows = rows.stop - rows.start
        hook = dev.block(n_rows) if dev.block is not None else contextlib.nullcontext()
        with hook:
            dev_block = slot.upload("block", i, block[rows], dtype)
            kwargs = {
                k: (slot.constant(v) if isinstance(v, np.ndarray) else v) for k, v in params.items()
            }
            for name, arr in extras.items():
                kwargs[name] = slot.upload(f"extra:{name}", i, arr[rows])
            result = kernel(dev_block, slot.constant(energy), **kwargs)
            packed = _pack(dev.xp, result, names, widths, n_rows, dtype)
            host = slot.result_buffer(i, (n_rows, int(sum(widths))), dtype)
            dev.copy_to_host(packed, host)
            slot.d2h_copies += 1
            slot.d2h_bytes += host.nbytes
            event = dev.event()
        with self._lock:
            self.passes += 1
        return _Pass(rows, host, event, taken)

    def _finish(self, p: _Pass, out: np.ndarray) -> None:
        p.event.synchronize()
        out[p.rows] = p.out  # the pinned buffer is reused: its rows go to the block's array
        self.gate.release(p.nbytes)


_POOLS: dict[tuple[int, str], DevicePool] = {}
_POOLS_LOCK = threading.Lock()
_DEVICES: dict[tuple[int, str], Device] = {}


def device_for(device: Any) -> Device:
    """The :class:`Device` of a resolved device (``"gpu"`` or an array-API namespace), one per
    process (made on first use in the process that runs the blocks)."""
    key = (os.getpid(), "gpu" if isinstance(device, str) else f"ns:{id(device)}")
    with _POOLS_LOCK:
        if key not in _DEVICES:
            _DEVICES[key] = cuda_device() if device == "gpu" else namespace_device(device)
        return _DEVICES[key]


def pool_for(device: Device) -> DevicePool:
    """The process's :class:`DevicePool` of ``device`` (a fork gets its own)."""
    key = (os.getpid(), device.key)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = DevicePool(device)
        return pool
