"""The image cache's files on disk: `<split>-<key>.npy` (uint8 rows, memory-mapped when read) plus
`<split>-<key>.json` (the manifest) in one folder; what image_cache.py writes and reads back.

A manifest holds the cache format's version, the key, the array's shape, the rows kept (files that
decoded), the data root (resolved), the split and `files`: a hash of the split's file list alone (paths,
sizes, modification times; the part of the key that the files decide). Both files are written under
temporary names (`.<name>.<pid>.tmp`) and renamed when complete, the manifest last, and checked
(version, key, shape, exact byte size) before use.

Writing a cache prunes the folder: a cache of the same root and split whose `files` differ describes
files as they no longer are, and can never be read again, so it is removed (npy and manifest); so is one
written by an older CACHE_VERSION for that root and split. Caches of the same files under other
transforms or sizes stay (another config may use them), as do caches of other roots, newer versions
and manifests without a root (written before trainlab recorded it: delete those by hand). Temporary
files left by a writer that was killed (its process is gone, or it is on another machine) are removed
once they are an hour old.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainlab.errors import DataError

CACHE_VERSION = 2  # bump when the decoded pixels or the file layout change (2: manifests name root and files)
_TEMPORARY_NAME = re.compile(r"\.\w+-[0-9a-f]+\.(npy|json)\.\d+\.tmp")  # .<split>-<key>.npy.<pid>.tmp
TEMPORARY_MAX_AGE_S = 3600  # a writer's temporary file untouched this long, with no such process here: dead


def default_cache_dir(root: Path) -> Path:
    """<root>/.trainlab-cache when the data folder is writable, else the user's cache folder."""
    if os.access(root, os.W_OK):
        return root / ".trainlab-cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "trainlab" / "images"


def file_list_hash(files: list[Path]) -> str:
    """A hash of the files as they are now: resolved path, size and modification time of each."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{Path(f).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _paths(folder: Path, split: str, key: str) -> tuple[Path, Path]:
    return folder / f"{split}-{key}.npy", folder / f"{split}-{key}.json"


def _kept_rows(manifest: dict[str, Any], items: int | None) -> list[int] | None:
    """The manifest's `kept`: increasing file indices (below `items` when given), else None."""
    kept = manifest.get("kept")
    if not isinstance(kept, list) or not all(type(i) is int for i in kept):
        return None
    if any(b <= a for a, b in zip(kept, kept[1:])) or (kept and kept[0] < 0):
        return None
    if kept and items is not None and kept[-1] >= items:
        return None
    return kept


def read_disk_cache(
    folder: Path, split: str, key: str, items: int | None = None
) -> tuple[torch.Tensor, list[int]] | None:
    """(memory-mapped rows, kept rows) of a complete cache with this key, else None (a malformed
    manifest included: the cache is then rebuilt). `items`: the number of files the cache holds."""
    npy, manifest_path = _paths(folder, split, key)
    try:
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest, dict):
            return None
        if manifest.get("version") != CACHE_VERSION or manifest.get("key") != key:
            return None
        kept = _kept_rows(manifest, items)
        if kept is None:
            return None
        rows = np.load(npy, mmap_mode="c")  # copy-on-write: writable for torch, the file is never changed
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if (
        rows.dtype != np.uint8
        or list(rows.shape) != manifest.get("shape")
        or npy.stat().st_size != rows.offset + rows.nbytes
    ):
        return None
    return torch.from_numpy(rows), kept


def _replace(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)  # atomic on one file system: readers see the old file or the whole new one


def _unwritable(folder: Path, e: OSError) -> DataError:
    return DataError(
        f"data.cache_dir: cannot write the image cache in {folder} ({e.strerror or e}); set data.cache_dir "
        f"to a writable folder, or data.cache: memory"
    )


def cache_dir_problem(folder: Path) -> str | None:
    """Why the image cache cannot be written in `folder` (created if missing), or None when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"data.cache_dir: cannot write the image cache in {folder} ({e.strerror or e})"
    return None


_NO_ROOM = (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))


def _reserve(tmp: Path, folder: Path) -> None:
    """Allocates the whole (sparse) file now: on a full disk, writing the mapped pages would end the
    process with SIGBUS. A file system that cannot reserve space (EOPNOTSUPP, EINVAL) goes without."""
    if not hasattr(os, "posix_fallocate"):
        return
    size = tmp.stat().st_size
    fd = os.open(tmp, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in _NO_ROOM:
            raise DataError(
                f"data.cache_dir: not enough free space for the image cache ({size / 2**20:.0f} MB) in "
                f"{folder}; free some space, set data.cache_dir to another disk, or data.cache: memory"
            ) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def write_disk_cache(
    folder: Path,
    split: str,
    key: str,
    shape: tuple[int, ...],
    fill: Callable[[torch.Tensor], list[int]],
    source: dict[str, str],
) -> tuple[torch.Tensor, list[int]]:
    """Create `<split>-<key>.npy` of `shape` uint8, let `fill` write it (it returns the kept files), then
    the manifest (with `source`: root, split, files); both under temporary names first. Returns the
    mapped array and the kept files. A folder that cannot be written, or a disk without room for the
    file, is a DataError naming data.cache_dir."""
    npy, manifest_path = _paths(folder, split, key)
    tmp = folder / f".{npy.name}.{os.getpid()}.tmp"
    tmp_manifest = folder / f".{manifest_path.name}.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            _reserve(tmp, folder)
            kept = fill(torch.from_numpy(rows))
            rows.flush()
            del rows
            _replace(tmp, npy)
        finally:
            tmp.unlink(missing_ok=True)
        manifest = {
            "version": CACHE_VERSION,
            "key": key,
            "shape": list(shape),
            "kept": kept,
            **source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        try:
            tmp_manifest.write_text(json.dumps(manifest))
            _replace(tmp_manifest, manifest_path)
        finally:
            tmp_manifest.unlink(missing_ok=True)
    except OSError as e:
        raise _unwritable(folder, e) from None
    found = read_disk_cache(folder, split, key)
    if found is None:
        raise DataError(
            f"data.cache_dir: the image cache {npy} could not be read back after writing it; "
            f"check the disk (free space), or set data.cache: memory"
        )
    return found


# ----------------------------------------------------------------------------- pruning


def _stale(manifest: Any, source: dict[str, str]) -> bool:
    """A manifest of the same root and split that no later run can read: other files, or an older format."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("version"), int):
        return False
    if manifest.get("root") != source["root"] or manifest.get("split") != source["split"]:
        return False
    if manifest["version"] == CACHE_VERSION:
        return manifest.get("files") != source["files"]
    return manifest["version"] < CACHE_VERSION  # a newer trainlab's cache may hash its files otherwise


def _pid_gone(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap, harmless check (os.kill ends the process on Windows): age alone decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: another user's live process
        return False
    return False


def prune_stale(folder: Path, source: dict[str, str]) -> dict[str, int]:
    """Removes from `folder` the caches that `_stale` finds for `source` (root, split, files of the cache
    just written) and the temporary files of dead writers: {"caches": n, "temporary_files": n, "bytes": n}."""
    removed = {"caches": 0, "temporary_files": 0, "bytes": 0}
    for manifest_path in folder.glob("*.json"):
        try:
            stale = _stale(json.loads(manifest_path.read_text()), source)
        except (OSError, ValueError):
            continue
        if not stale:
            continue
        pair = (manifest_path, manifest_path.with_suffix(".npy"))  # the manifest first: never half-valid
        try:
            size = sum(p.stat().st_size for p in pair if p.exists())
            for p in pair:
                p.unlink(missing_ok=True)  # a run that maps the old file keeps its pages (POSIX)
        except OSError:  # in use (Windows) or not ours to delete: leave it
            continue
        removed["caches"] += 1
        removed["bytes"] += size
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        if not _TEMPORARY_NAME.fullmatch(tmp.name):  # only write_disk_cache's (cache_dir may be shared)
            continue
        pid = tmp.name.rsplit(".", 2)[-2]
        try:
            st = tmp.stat()
            if now - st.st_mtime < TEMPORARY_MAX_AGE_S or not pid.isdigit() or not _pid_gone(int(pid)):
                continue  # a writer of this machine still at work (or one on another machine, recently)
            tmp.unlink()
        except OSError:
            continue
        removed["temporary_files"] += 1
        removed["bytes"] += st.st_size
    return removed
