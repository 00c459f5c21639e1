"""One BLAS thread per block while the engine runs blocks on a thread per core.

The engine runs one pixel block per core (the eager path's threads, dask's threads); a kernel's
matrix products (the analytic KK uncertainty's Hilbert and rank-one terms, the film fit's
Gauss-Newton steps) call OpenBLAS, which starts its own pool of one thread per core inside each
product: 2 blocks x 2 BLAS threads on 2 cores spin against each other (measured: the analytic KK
with its cubes, 96 x 96 pixels, 1.41 s with 2 BLAS threads, 0.60 s with 1, 2 cores). The FFTs are already
held to one worker per block (scipy.fft's default); :func:`one_blas_thread` does the same for
BLAS, through threadpoolctl (a dependency of scikit-learn, which eelsgpu needs).

The limit is set by the thread that starts the blocks (the eager path's caller, the store
writer's), around the whole run, not by the block threads: measured here (OpenBLAS 0.3.30/0.3.31
of NumPy 2.4 and SciPy 1.17, threadpoolctl 3.8), a limit set from a thread other than the main
one changes nothing, not even in that thread, while one set from the main thread holds in every
thread. OpenBLAS's thread count is process-wide, so the limit is reference-counted: the first run
to enter sets it, the last to leave puts the original limits back (two analyses run at once from
two threads never lift it under each other). The limiter is made afresh at each first entry,
after NumPy's and SciPy's BLAS libraries are loaded, so that no BLAS copy loaded later escapes
it. Without threadpoolctl BLAS keeps its own threads (slower, never wrong).

Examples
--------
>>> with one_blas_thread():
...     inside = blas_threads()
>>> set(inside) <= {1}
True
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["blas_threads", "one_blas_thread"]

_lock = threading.Lock()
_inside = 0
_limiter: Any = None


def _make_limiter() -> Any:
    """A threadpoolctl limiter holding every loaded BLAS library to one thread, or None."""
    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's own OpenBLAS before the scan)
        from threadpoolctl import threadpool_limits
    except ImportError:  # no threadpoolctl: BLAS keeps its own threads (slower, not wrong)
        return None
    return threadpool_limits(limits=1, user_api="blas")


def blas_threads() -> list[int]:
    """The thread count of each loaded BLAS library, as threadpoolctl reports it ([] without
    threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]


@contextmanager
def one_blas_thread(enabled: bool = True) -> Iterator[None]:
    """Hold every BLAS library to one thread while any run is inside (reference-counted over
    threads; the original limits come back when the last one leaves). ``enabled=False``: a
    no-op (one block at a time: BLAS may use every core)."""
    global _inside, _limiter
    if not enabled:
        yield
        return
    with _lock:
        if _inside == 0:
            _limiter = _make_limiter()
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                if _limiter is not None:
                    _limiter.restore_original_limits()
                _limiter = None
