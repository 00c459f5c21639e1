"""Every chunk of a store is checked before it is decompressed.

A truncated or damaged chunk file must never reach the decompressor: numcodecs' Blosc reads past
the end of a truncated chunk and can kill the process with a segmentation fault (a whole batch
run with it), and decompresses a chunk with overwritten bytes into wrong numbers without a word. :class:`CheckedStore` is the zarr store eelsgpu
reads its stores through; it checks the bytes of each chunk as they come off the disk:

* stores eelsgpu writes now end every chunk with zarr v3's ``crc32c`` codec: the checksum of the
  compressed bytes is compared (about 5 GB/s);
* older stores (Blosc without a checksum): the chunk's length is compared with the compressed
  size its Blosc header records, and the uncompressed size with the chunk's shape (this finds
  truncation, not overwritten bytes);
* a zero-length chunk file is damaged whatever the codec.

A damaged chunk is a :class:`~eelsgpu.errors.CorruptStoreError` (an ``InputError``) naming the
store and the chunk, raised in the task that reads it; a batch run reports the file and goes on.

Examples
--------
>>> import numpy as np, zarr
>>> from eelsgpu.engine import codecs
>>> z = zarr.create_array("a.zarr", shape=(4, 8), chunks=(2, 8), dtype="f4", **codecs())
>>> z[:] = np.arange(32.0).reshape(4, 8)
>>> with open("a.zarr/c/1/0", "r+b") as f:
...     _ = f.truncate(10)
>>> zarr.open_array(CheckedStore("a.zarr", read_only=True))[:]
Traceback (most recent call last):
...
eelsgpu.errors.CorruptStoreError: a.zarr: chunk c/1/0 is damaged (its CRC-32C checksum does not match: truncated or overwritten); copy the store again, or convert the original file again
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from zarr.storage import LocalStore

from ..errors import CorruptStoreError

__all__ = ["CheckedStore", "check_chunk", "reading_progress"]

#: Called with (store root, chunk key) for every chunk this process reads through a CheckedStore
#: (see :func:`reading_progress`).
_READ_HOOKS: list[Any] = []

_METADATA = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")


def _array_meta(root: Any, array: str) -> dict[str, Any] | None:
    """The metadata of the array at ``array`` (a path inside the store), v3 or v2."""
    base = root / array if array else root
    for name in ("zarr.json", ".zarray"):
        try:
            return json.loads((base / name).read_text())
        except (OSError, ValueError):
            continue
    return None


def _codec_names(meta: dict[str, Any]) -> tuple[list[str], int]:
    """The bytes-to-bytes codecs of an array, last applied last, and its uncompressed chunk size."""
    if "codecs" in meta:  # zarr v3
        names = [str(c.get("name")) for c in meta["codecs"] if isinstance(c, dict)]
        shape = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [])
        dtype = meta.get("data_type")
        try:
            itemsize = np.dtype(dtype).itemsize if isinstance(dtype, str) else 0
        except TypeError:
            itemsize = 0
        # drop the array-to-bytes codec ("bytes") and anything before it
        if "bytes" in names:
            names = names[names.index("bytes") + 1 :]
        elif "sharding_indexed" in names:
            return [], 0  # sharded: the shard index checks its own chunks
        return names, int(np.prod(shape)) * itemsize if shape and itemsize else 0
    comp = meta.get("compressor") or {}
    names = [str(f.get("id")) for f in meta.get("filters") or [] if isinstance(f, dict)]
    if comp:
        names.append(str(comp.get("id")))
    try:
        size = int(np.prod(meta.get("chunks", []))) * np.dtype(meta.get("dtype")).itemsize
    except TypeError:
        size = 0
    return names, size


def check_chunk(data: bytes | memoryview, codecs: list[str], nbytes: int) -> str | None:
    """Why the stored bytes of a chunk cannot be decoded safely (None when they look whole).

    ``codecs``: the bytes-to-bytes codecs applied when it was written, in order; ``nbytes``: the
    chunk's uncompressed size (0 when unknown).

    >>> check_chunk(b"", ["blosc"], 64)
    'the chunk file is empty'
    """
    n = len(data)
    if n == 0:
        return "the chunk file is empty"
    if codecs and codecs[-1] == "crc32c":
        import google_crc32c

        if n < 4:
            return f"{n} bytes cannot hold its checksum"
        buf = np.frombuffer(data, dtype=np.uint8)  # a view: no copy of the chunk
        stored = buf[-4:].tobytes()
        computed = struct.pack("<I", google_crc32c.value(buf[:-4]))
        if stored != computed:
            return "its CRC-32C checksum does not match: truncated or overwritten"
        return None
    if codecs and codecs[-1] == "blosc":
        if n < 16:
            return f"{n} bytes cannot hold a Blosc header (16 bytes)"
        raw, _, cbytes = struct.unpack("<III", bytes(data[4:16]))
        if cbytes != n:
            return f"{n} bytes on disk but its Blosc header says {cbytes}: truncated or overwritten"
        if nbytes and codecs == ["blosc"] and raw != nbytes:
            return f"its Blosc header says {raw} bytes uncompressed, the chunk holds {nbytes}"
    return None


class CheckedStore(LocalStore):
    """A read-only local zarr store that checks each chunk's bytes before zarr decodes them
    (see the module docstring). Pickles like :class:`zarr.storage.LocalStore`, so dask workers
    in other processes check too."""

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        buf = await super().get(key, prototype, byte_range)
        if buf is None or byte_range is not None or key.rsplit("/", 1)[-1] in _METADATA:
            return buf
        codecs, nbytes = self._codecs_of(key)
        if codecs:
            why = check_chunk(buf.as_numpy_array().data, codecs, nbytes)
            if why is not None:
                raise CorruptStoreError(
                    f"{self.root}: chunk {key} is damaged ({why}); copy the store again, or "
                    "convert the original file again"
                )
        for hook in list(_READ_HOOKS):
            hook(str(self.root), key)
        return buf

    def _codecs_of(self, key: str) -> tuple[list[str], int]:
        """The codecs of the array a chunk key belongs to (cached per array)."""
        cache = self.__dict__.setdefault("_eelsgpu_codecs", {})
        parts = key.split("/")
        # v3 default keys: ARRAY/c/i/j/k; v2: ARRAY/i.j.k (or ARRAY/i/j/k with "/" separators)
        if "c" in parts:
            array = "/".join(parts[: parts.index("c")])
        else:
            array = "/".join(parts[:-1])
        if array not in cache:
            meta = _array_meta(self.root, array)
            if meta is None and "c" not in parts:  # v2 nested keys: walk up to the .zarray
                for depth in range(len(parts) - 1, 0, -1):
                    meta = _array_meta(self.root, "/".join(parts[:depth]))
                    if meta is not None:
                        break
            cache[array] = _codec_names(meta) if meta else ([], 0)
        return cache[array]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_eelsgpu_codecs", None)
        return state


class reading_progress:  # noqa: N801 - used as a context manager, like open()
    """A progress bar of the chunks of ``array`` read from the store ``path`` (in this process),
    counting spectra and blocks, pass after pass: for the steps of an analysis that read the data
    eagerly before anything is written (a PCA's power iterations, a k-means sample), whose dask
    tasks say nothing about progress.

    Quiet (no bar) when ``quiet`` or when ``path`` is not a store with such an array.
    """

    def __init__(self, path: Any, description: str, *, array: str = "signal", quiet: bool = False):
        import threading
        from pathlib import Path

        self.bar = None
        self.lock = threading.Lock()
        meta = None if quiet else _array_meta(Path(path), array)
        if not meta or "shape" not in meta:
            return
        shape = [int(n) for n in meta["shape"]]
        chunks = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
        if not chunks or len(shape) < 2:
            return
        from ..engine.progress import BlockProgress

        self.root = str(Path(path))
        self.prefix = f"{array}/c/"
        self.shape, self.chunks = shape, [int(c) for c in chunks]
        self.n_blocks = int(np.prod([-(-n // c) for n, c in zip(shape, self.chunks, strict=True)]))
        self.description = description
        self.seen: set[str] = set()
        self.passes = 1
        self.bar = BlockProgress(
            description,
            n_blocks=self.n_blocks,
            n_done=0,
            total_spectra=int(np.prod(shape[:-1])),
            done_spectra=0,
            quiet=False,
        )

    def _spectra(self, key: str) -> int:
        idx = [int(i) for i in key[len(self.prefix) :].split("/")]
        n = 1
        for i, size, c in zip(idx[:-1], self.shape[:-1], self.chunks[:-1], strict=False):
            n *= max(0, min(c, size - i * c))
        return n

    def _hook(self, root: str, key: str) -> None:
        if root != self.root or not key.startswith(self.prefix) or self.bar is None:
            return
        with self.lock:
            if key in self.seen:  # every block read once already: another pass begins
                self.passes += 1
                self.seen.clear()
                bar = self.bar.bar
                self.bar.blocks = 0
                if bar is not None:
                    bar.reset()
                    bar.set_description_str(f"{self.description} (pass {self.passes})")
            self.seen.add(key)
            self.bar.tick(self._spectra(key))

    def __enter__(self) -> reading_progress:
        if self.bar is not None:
            _READ_HOOKS.append(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            if self._hook in _READ_HOOKS:
                _READ_HOOKS.remove(self._hook)
            self.bar.close()
