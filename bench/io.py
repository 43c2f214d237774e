"""File formats: IDX (MNIST's, gzipped or not), checksums, atomic writes and locks."""
from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import math
import os
import socket
import tempfile
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes, transparently decompressing ``.gz``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read()


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (the MNIST/Fashion-MNIST format): magic, dims, then row-major data.

    A file that is not IDX, is truncated or does not decompress is a ``DataFileError`` naming it."""
    from unlearnbench.validate import DataFileError

    try:
        raw = read_bytes(path)
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as err:  # a broken or truncated .gz
        raise DataFileError(f"{path} cannot be read: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFileError(f"{path} is not an IDX file (bad magic number)")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path} is truncated: its {ndim}-dimensional header needs {header} bytes, "
                            f"the file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    need = math.prod(dims) * dtype.itemsize
    if any(d < 0 for d in dims) or need != len(raw) - header:
        raise DataFileError(f"{path}: header says {dims} ({need} bytes) but the file holds {len(raw) - header} "
                            f"bytes of data (truncated or corrupt)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    payload = header + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: 0644 under the usual umask 022, never mkstemp's 0600
_HOST = socket.gethostname().replace(".", "_")


def temporary_prefix(name: str) -> str:
    """``.NAME.HOST.PID.``: a temporary names its writer, so a cleanup can tell a live one from an orphan."""
    return f".{name}.{_HOST}.{os.getpid()}."


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the whole new file
    (temporary file named by its writer in the same folder, fsync, rename; normal permissions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def discard_bad_cache(path: Path, what: str, err: Exception) -> None:
    """A cache file failed its checks: name it in a warning and delete it (the caller recomputes it)."""
    warnings.warn(f"{what} {path} is unusable ({type(err).__name__}: {err}); deleted, recomputing",
                  RuntimeWarning, stacklevel=3)
    Path(path).unlink(missing_ok=True)


STALE_AFTER_SECONDS = 24 * 3600  # a temporary of another machine is an orphan only after a day


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def is_orphan_temporary(path: Path, now: float | None = None) -> bool:
    """True for a temporary whose writer is gone: its process on this host has exited, or (another
    host, or an old unnamed temporary) it has not been touched for ``STALE_AFTER_SECONDS``."""
    parts = path.name.split(".")
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if len(parts) >= 5 and parts[-4] == _HOST and parts[-3].isdigit():
        return not _pid_alive(int(parts[-3]))
    return age > STALE_AFTER_SECONDS


def remove_orphan_temporaries(folder: Path) -> list[Path]:
    """Delete temporaries left by writers that were killed mid-write; live writers' are kept."""
    removed = []
    for tmp in sorted(Path(folder).glob(".*.tmp")) if Path(folder).exists() else []:
        if is_orphan_temporary(tmp):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def file_lock(path: str | Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive advisory lock (``flock``) on ``path``; yields False when ``wait`` is off and it is held.

    The kernel drops the lock when its holder exits, however it exits, so a killed runner never
    leaves a stale claim. Works on local filesystems and NFSv4; see docs/reliability.md.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
