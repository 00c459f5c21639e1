"""Task and storage chunks: tasks are unions of whole storage chunks near the target size.

Truth: the storage chunks themselves (a task must never split one) and the target size.
"""

from __future__ import annotations

import numpy as np
import pytest

from eelsgpu import engine


@pytest.mark.parametrize(
    ("shape", "stored", "target"),
    [
        ((1024, 1024, 2048), (32, 32, 2048), 32 * 2**20),
        ((1024, 1024, 2048), (64, 64, 2048), 128 * 2**20),
        ((100, 30, 512), (16, 16, 512), 8 * 2**20),
        ((10, 10, 4096), (64, 64, 4096), 2**20),
        ((500, 2048), (100, 2048), 4 * 2**20),
    ],
)
def test_task_chunks_are_whole_storage_chunks_near_the_target(shape, stored, target):
    """Task chunks are integer multiples of the storage chunks (or the whole axis), never split
    energy, and hold no more than the target unless one storage chunk is already bigger."""
    chunks = engine.task_chunks(shape, stored, 4, target)
    assert chunks[-1] == shape[-1]
    for c, s, n in zip(chunks[:-1], stored[:-1], shape[:-1], strict=True):
        assert c == n or c % s == 0
    task_bytes = int(np.prod(chunks)) * 4
    one_chunk = int(np.prod([min(s, n) for s, n in zip(stored, shape, strict=True)])) * 4
    assert task_bytes <= max(target, one_chunk)
    # and not needlessly small: one more storage chunk along some axis would pass the target
    if task_bytes < target and any(c < n for c, n in zip(chunks[:-1], shape[:-1], strict=True)):
        assert task_bytes + one_chunk > target or task_bytes * 2 > target


def test_align_tasks_uses_the_stores_chunks(tmp_path, stand_in):
    """A cube stored in small chunks is read by tasks made of whole stored chunks."""
    from eelsgpu.io import open_store, write_store

    si = stand_in.image(shape=(32, 32, 128), chunks=(4, 4))
    write_store(si, tmp_path / "in.zarr")
    stored = open_store(tmp_path / "in.zarr")["signal"]
    assert engine.storage_chunks(stored) == (4, 4, 128)
    aligned = engine.align_tasks(stored, target_bytes=16 * 4 * 4 * 128 * 4)
    cy, cx = aligned.data.chunks[0][0], aligned.data.chunks[1][0]
    assert cy % 4 == 0 and cx % 4 == 0 and cy * cx == 16 * 16
