"""The one progress bar of a store run: spectra done, spectra/s, time left, blocks done.

A write task returns the number of spectra it wrote; :class:`BlockProgress` counts them, on the
local schedulers through a dask callback (:meth:`BlockProgress.callback`) and on a distributed
cluster as the futures complete. Quiet (no bar) when asked; the bar goes to stderr.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["BlockProgress"]


class BlockProgress:
    """Counts finished blocks and their spectra, and drives a tqdm bar unless ``quiet``."""

    def __init__(
        self,
        description: str,
        *,
        n_blocks: int,
        n_done: int,
        total_spectra: int,
        done_spectra: int,
        quiet: bool = True,
    ) -> None:
        self.n_blocks = n_blocks
        self.blocks = n_done
        self.bar = None
        if not quiet:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_spectra,
                initial=done_spectra,
                desc=description,
                unit="spectra",
                unit_scale=True,
                file=sys.stderr,
                dynamic_ncols=True,
            )
            self.bar.set_postfix_str(f"{n_done}/{n_blocks} blocks")

    def tick(self, n_spectra: int) -> None:
        """One more block done, holding ``n_spectra`` spectra."""
        self.blocks += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.blocks}/{self.n_blocks} blocks", refresh=False)
            self.bar.update(n_spectra)

    def callback(self, prefix: str, count: Any = int) -> Any:
        """A dask local-scheduler callback that ticks for each finished task named ``prefix...``
        (exactly ``prefix`` for a tuple key), ``count(result)`` spectra each (default: the task
        returns its number of spectra)."""
        from dask.callbacks import Callback

        progress = self

        class _Tick(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):  # noqa: ANN001
                if isinstance(key, tuple):
                    hit = bool(key) and key[0] == prefix
                else:
                    hit = str(key).startswith(prefix)
                if hit:
                    progress.tick(count(result))

        return _Tick()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
