"""Progress bars for long dask computations (tqdm), quiet when asked or when not a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from dask.callbacks import Callback


class _TqdmCallback(Callback):
    """A dask local-scheduler callback that drives a tqdm bar (tasks done / tasks in total)."""

    def __init__(self, description: str) -> None:
        super().__init__()
        self.description = description
        self.bar = None

    def _start_state(self, dsk, state) -> None:
        from tqdm.auto import tqdm

        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self.bar = tqdm(
            total=total, desc=self.description, unit="task", file=sys.stderr, dynamic_ncols=True
        )

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def _finish(self, dsk, state, errored) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def progress_bar(description: str = "computing", quiet: bool = False) -> Iterator[None]:
    """Show a bar for dask computations run inside the block (local schedulers)."""
    if quiet:
        yield
        return
    with _TqdmCallback(description):
        yield
