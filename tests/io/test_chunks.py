"""Damaged chunks are found before they are decompressed (issue 12, item 3).

Truth: chunk files truncated, emptied or overwritten by the test itself, in stores written with
checksums (new) and without (as eelsgpu wrote them before: Blosc only). The reading must stop with
a :class:`CorruptStoreError` naming the store and the chunk, never a crash (Blosc segfaulted on a
truncated chunk: exit 139 in 1 of 3 runs of ``eelsgpu thickness`` on the old store below) and,
in checksummed stores, never silently wrong numbers (one byte flipped in a Blosc chunk read back
without error before, 8 of its 4096 values changed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eelsgpu.errors import CorruptStoreError
from eelsgpu.io import open_store, write_store
from eelsgpu.model import spectrum_image

ROOT = Path(__file__).resolve().parents[2]


def _image(n=8, c=4, channels=256, seed=0):
    e = np.arange(channels) * 0.05 - 5.0
    rng = np.random.default_rng(seed)
    lam = 1000 * np.exp(-0.5 * (e / 0.3) ** 2) + 50 * np.exp(-e.clip(0) / 20) + 1
    data = rng.poisson(lam, (n, n, channels)).astype(np.float32)
    return spectrum_image(data, e, beam_energy_keV=200.0, chunks=(c, c)), data


def _cut(path: Path, keep):
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])
    return len(data)


@pytest.mark.parametrize(
    "keep, why",
    [
        (lambda n: n // 2, "checksum does not match"),
        (lambda n: n - 1, "checksum does not match"),
        (lambda n: 3, "cannot hold its checksum"),
        (lambda n: 0, "the chunk file is empty"),
    ],
    ids=["half", "one-byte-short", "3-bytes", "empty"],
)
def test_damaged_chunk_of_a_checksummed_store(tmp_path, keep, why):
    """New stores carry a CRC-32C per chunk: every truncation is an error naming the store and
    the chunk; the undamaged chunks still read back exactly."""
    si, data = _image()
    store = write_store(si, tmp_path / "s.zarr")
    _cut(store / "signal" / "c" / "1" / "0" / "0", keep)
    ds = open_store(store)
    with pytest.raises(
        CorruptStoreError, match=rf"s\.zarr: chunk signal/c/1/0/0 is damaged.*{why}"
    ):
        ds["signal"].load()
    np.testing.assert_array_equal(ds["signal"][:4].values, data[:4])  # block row 0 is intact


def test_overwritten_bytes_are_found(tmp_path):
    """A chunk of the right length with one byte changed fails its checksum (without one it read
    back silently wrong; a size check could not see it)."""
    si, _ = _image()
    store = write_store(si, tmp_path / "s.zarr")
    chunk = store / "signal" / "c" / "0" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match="chunk signal/c/0/1/0"):
        open_store(store)["signal"].load()


def _old_store(path: Path, n: int, c: int) -> np.ndarray:
    """A store as eelsgpu wrote it before checksums: Blosc-LZ4 + bit-shuffle only."""
    import zarr
    from zarr.codecs import BloscCodec, BloscShuffle

    si, data = _image(n=n, c=c, channels=2048, seed=1)
    si.to_dataset(name="signal").assign_attrs(eelsgpu_complete=True).to_zarr(
        path,
        zarr_format=3,
        consolidated=False,
        encoding={
            "signal": {
                "compressors": (
                    BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle),
                ),
                "chunks": (c, c, 2048),
            }
        },
    )
    assert [c_.to_dict()["name"] for c_ in zarr.open_array(path / "signal").compressors] == [
        "blosc"
    ]
    return data


@pytest.mark.parametrize("keep", [lambda n: n // 2, lambda n: 10, lambda n: 0])
def test_truncated_chunk_of_an_old_store_in_process(tmp_path, keep):
    """Blosc-only stores: the chunk's length is checked against its Blosc header (and a header
    that does not fit), before Blosc sees it."""
    _old_store(tmp_path / "old.zarr", 8, 4)
    _cut(tmp_path / "old.zarr" / "signal" / "c" / "0" / "1" / "0", keep)
    with pytest.raises(CorruptStoreError, match=r"old\.zarr: chunk signal/c/0/1/0 is damaged"):
        open_store(tmp_path / "old.zarr")["signal"].load()


def test_truncated_old_chunk_is_one_line_not_a_segfault(tmp_path):
    """The reproduction of the segfault (an 8 MiB Blosc chunk cut in half; ``eelsgpu thickness``
    died with SIGSEGV, exit 139, in 1 of 3 runs): now exit 2, one line naming the chunk, no
    output store; run in a subprocess, so a crash would be a clean failure here."""
    data = _old_store(tmp_path / "old.zarr", 32, 32)
    n = _cut(tmp_path / "old.zarr" / "signal" / "c" / "0" / "0" / "0", lambda n: n // 2)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [sys.executable, "-m", "eelsgpu", "thickness", "old.zarr", "-o", "t.zarr", "-q"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert (
        f"chunk signal/c/0/0/0 is damaged ({n // 2} bytes on disk but its Blosc header says {n}"
        in lines[0]
    )
    assert not (tmp_path / "t.zarr").exists()
    assert data.size == 32 * 32 * 2048


def test_reading_progress_counts_blocks_and_passes(tmp_path, capsys):
    """Truth: an 8 x 8 image in 4 x 4 blocks (4 blocks, 64 spectra) read twice: the bar counts
    64 spectra in 4 blocks per pass and says pass 2 (not dask tasks)."""
    from eelsgpu.io.chunks import reading_progress

    si, _ = _image()
    store = write_store(si, tmp_path / "s.zarr")
    with reading_progress(store, "reading") as progress:
        ds = open_store(store)
        ds["signal"].sum().compute(scheduler="synchronous")
        ds["signal"].max().compute(scheduler="synchronous")
    assert progress.passes == 2 and progress.bar.blocks == 4
    assert progress.bar.bar.n == 64
    assert "reading (pass 2)" in capsys.readouterr().err
