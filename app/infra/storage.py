"""File storage behind one small interface: build artifacts and uploaded files.

`Storage` is what domains and workers call; `LocalStorage` keeps the files in a directory under
the data directory (`SEPULKI_DATA_DIR/storage`), which is not served over HTTP. An object store
(S3 and the like) would be another implementation of the same four methods. Keys are relative
POSIX paths such as `ingots/<id>/firmware.bin`; a key that could leave the root is refused.
File I/O runs in a thread so the event loop never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored file: its key, size in bytes and SHA-256 (hex)."""

    key: str
    size: int
    sha256: str

    @property
    def checksum(self) -> str:
        """The checksum as artifacts carry it: `sha256:<hex>`."""
        return f"sha256:{self.sha256}"


class Storage(Protocol):
    async def put(self, key: str, data: bytes) -> Stored: ...

    async def get(self, key: str) -> bytes: ...

    async def delete(self, key: str) -> None: ...

    async def exists(self, key: str) -> bool: ...


class LocalStorage:
    """Files in a local directory; a write lands under a temporary name first and is renamed,
    so a reader never sees half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or PurePosixPath(key).is_absolute() or any(p in ("..", "") for p in parts):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root.joinpath(*parts)

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    async def put(self, key: str, data: bytes) -> Stored:
        path = self.path(key)
        await asyncio.to_thread(self._write, path, data)
        return Stored(key, len(data), hashlib.sha256(data).hexdigest())

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.path(key).read_bytes)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, True)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)


def local_storage(data_dir: Path) -> LocalStorage:
    return LocalStorage(data_dir / "storage")
