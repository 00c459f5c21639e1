"""Outputs that never destroy data: what eelsgpu may replace, where it may write, one writer at a time.

eelsgpu deletes only what it made:

* :func:`check_output` refuses an output that is, contains or sits inside one of the run's inputs
  (or sits inside another zarr store), and, when the output exists, refuses it unless
  ``overwrite`` is given **and** it is an eelsgpu result store (:func:`is_eelsgpu_store`: a zarr
  group whose metadata says eelsgpu wrote it and which holds nothing but zarr entries). A folder of
  other files, a file, a store someone else wrote: never replaced.
* :class:`OutputLock` is the one lock per output (``fcntl.flock`` on a hidden lock file beside it):
  a second writer is refused with the first one's process id; the operating system drops the lock
  when its process dies, so a killed run never leaves it stuck.
* :func:`clean_leftovers` removes what killed runs left beside an output (hidden partial stores,
  run logs, replaced stores), only under the lock and only names eelsgpu makes.

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> (d / "notes").mkdir()
>>> check_output(d / "notes", overwrite=True)
Traceback (most recent call last):
...
eelsgpu.errors.InputError: ...notes: exists and is not an eelsgpu result store (no zarr.json); eelsgpu replaces only stores it wrote: remove it yourself or choose another output
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = [
    "OutputLock",
    "check_output",
    "clean_leftovers",
    "is_eelsgpu_store",
    "related",
    "remove_store",
]

#: Group attributes that only eelsgpu's store writer sets (older stores carry the first).
MARKERS = ("eelsgpu_complete", "eelsgpu_writer")


def _resolved(p: Any) -> Path:
    return Path(os.path.abspath(os.path.realpath(os.fspath(p))))


def related(output: Any, input: Any) -> str | None:
    """How ``output`` overlaps ``input``: ``"is"``, ``"contains"``, ``"inside"``, or None.

    >>> related("/data/scan.zarr", "/data/scan.zarr"), related("/data", "/data/scan.zarr")
    ('is', 'contains')
    >>> related("/data/scan.zarr/t.zarr", "/data/scan.zarr"), related("/data/t.zarr", "/data/s.zarr")
    ('inside', None)
    """
    out, inp = _resolved(output), _resolved(input)
    if out == inp:
        return "is"
    if inp.is_relative_to(out):
        return "contains"
    if out.is_relative_to(inp):
        return "inside"
    return None


def _group_attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of the zarr v3 (or v2) group at ``path``, or None when it is not one."""
    try:
        meta = path / "zarr.json"
        if meta.is_file():
            doc = json.loads(meta.read_text())
            return dict(doc.get("attributes") or {}) if doc.get("node_type") == "group" else None
        if (path / ".zgroup").is_file():
            attrs = path / ".zattrs"
            return json.loads(attrs.read_text()) if attrs.is_file() else {}
    except (OSError, ValueError, AttributeError):
        return None
    return None


def _not_eelsgpu(path: Path) -> str | None:
    """Why ``path`` is not an eelsgpu result store (None when it is one)."""
    if path.is_symlink():
        return "a symbolic link"
    if not path.is_dir():
        return "not a folder"
    attrs = _group_attrs(path)
    if attrs is None:
        return "no zarr.json" if not (path / "zarr.json").exists() else "not a zarr group"
    if not any(k in attrs for k in MARKERS):
        return "a zarr store that eelsgpu did not write"
    for entry in os.scandir(path):
        if entry.name in ("zarr.json", ".zgroup", ".zattrs", ".zmetadata"):
            continue
        if entry.is_dir(follow_symlinks=False) and any(
            (Path(entry.path) / m).is_file() for m in ("zarr.json", ".zarray", ".zgroup")
        ):
            continue
        if entry.name.startswith(".zarr.json.") and entry.name.endswith(".tmp"):
            continue  # an attribute update of eelsgpu's that was interrupted
        return f"it also holds {entry.name!r}, which eelsgpu did not write"
    return None


def is_eelsgpu_store(path: Any) -> bool:
    """True for a zarr group that eelsgpu's store writer made and that holds only zarr entries."""
    return _not_eelsgpu(Path(path)) is None


def check_output(
    output: Any,
    inputs: Iterable[Any] = (),
    *,
    overwrite: bool = False,
    flag: str = "--overwrite",
) -> Path:
    """Refuse an output that would destroy data; return it as a Path.

    Raises :class:`InputError` when ``output`` is, contains or sits inside one of ``inputs``,
    sits inside a zarr store, or exists and is not replaceable: without ``overwrite``, or (with
    it) when it is not an eelsgpu result store (:func:`is_eelsgpu_store`).
    """
    out = Path(output)
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        how = related(out, inp)
        if how == "is":
            raise InputError(f"{out}: is the input {inp}; choose another output")
        if how == "contains":
            raise InputError(
                f"{out}: contains the input {inp}; the output must be a new store beside it, "
                "not a folder that holds the data"
            )
        if how == "inside":
            raise InputError(f"{out}: lies inside the input {inp}; choose an output outside it")
    for parent in _resolved(out).parents:
        if _group_attrs(parent) is not None:
            raise InputError(
                f"{out}: lies inside the zarr store {parent}; choose an output outside it"
            )
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise InputError(f"{out}: already exists (pass {flag} to replace it)")
        why = _not_eelsgpu(out)
        if why is not None:
            raise InputError(
                f"{out}: exists and is not an eelsgpu result store ({why}); eelsgpu replaces only "
                "stores it wrote: remove it yourself or choose another output"
            )
    return out


def remove_store(path: Any) -> None:
    """Delete an eelsgpu result store, refusing anything else (the last check before a delete)."""
    p = Path(path)
    why = _not_eelsgpu(p)
    if why is not None:
        raise InputError(f"{p}: not removed, it is not an eelsgpu result store ({why})")
    shutil.rmtree(p)


# --------------------------------------------------------------------------- leftovers
def _leftover_pattern(name: str) -> re.Pattern[str]:
    """Hidden names eelsgpu makes beside an output ``name`` (partial stores, run logs, stores
    being replaced; ``-xxxxxxxx`` suffixes are those of earlier versions and of one-shot runs)."""
    return re.compile(rf"^\.{re.escape(name)}\.(partial|eelsgpu-run|replaced)(-[0-9a-f]{{8,32}})?$")


def leftovers(output: Any) -> list[Path]:
    """The hidden working folders that runs on ``output`` left beside it."""
    out = Path(output)
    folder = out.parent
    if not folder.is_dir():
        return []
    pat = _leftover_pattern(out.name)
    return sorted(folder / n for n in os.listdir(folder) if pat.match(n))


def clean_leftovers(output: Any, keep: Iterable[Any] = ()) -> list[Path]:
    """Remove the leftovers of killed runs on ``output`` (call it holding :class:`OutputLock`),
    except ``keep`` (a partial store the caller resumes). Returns what was removed."""
    kept = {_resolved(k) for k in keep}
    removed = []
    for p in leftovers(output):
        if _resolved(p) in kept:
            continue
        if p.is_symlink() or not p.is_dir():
            p.unlink(missing_ok=True)
        else:
            shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


# --------------------------------------------------------------------------- the lock
class OutputLock:
    """An exclusive (or shared) advisory lock on ``path``, held until :meth:`release`.

    ``fcntl.flock`` on the hidden file ``.NAME.eelsgpu-lock`` beside ``path``; the file holds the
    holder's process id and host for the message a refused writer gets. The kernel releases a
    flock when the process that holds it dies (SIGKILL included), so a killed run never leaves a
    stuck lock; the file itself is removed on release. ``shared=True`` takes a shared lock (job
    array tasks that share an output folder).

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "r.zarr"
    >>> with OutputLock(target):
    ...     OutputLock(target)
    Traceback (most recent call last):
    ...
    eelsgpu.errors.InputError: ...r.zarr: another eelsgpu run (process ...) is writing it; wait for it to finish or choose another output
    """

    def __init__(
        self,
        path: Any,
        *,
        shared: bool = False,
        what: str = "is writing it",
        lock_file: Any = None,
    ) -> None:
        import socket

        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): no advisory locks; one writer is up to you
            self.path, self.file, self.fd, self.shared = Path(path), None, None, shared
            return
        self.path = Path(path)
        self.file = (
            Path(lock_file) if lock_file else self.path.with_name(f".{self.path.name}.eelsgpu-lock")
        )
        self.file.parent.mkdir(parents=True, exist_ok=True)
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        self.shared = shared
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = ""
                try:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                except OSError:
                    pass
                os.close(fd)
                who = f" (process {holder})" if holder else ""
                raise InputError(
                    f"{self.path}: another eelsgpu run{who} {what}; wait for it to finish or "
                    "choose another output"
                ) from None
            # the file may have been removed (and made anew) by a holder releasing it between our
            # open and our lock: then this lock guards nothing; try again on the current file
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.file))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd: int | None = fd
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}".encode(), 0)

    def release(self) -> None:
        """Drop the lock (and remove the lock file when no one else holds it)."""
        if self.fd is None:
            return
        import fcntl

        fd, self.fd = self.fd, None
        try:
            # remove the file only as its sole holder: upgrade to exclusive without waiting
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.file)):
                    self.file.unlink()
            except FileNotFoundError:
                pass
        except BlockingIOError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:  # a writer dropped without release: never keep the lock
        try:
            self.release()
        except Exception:
            pass
