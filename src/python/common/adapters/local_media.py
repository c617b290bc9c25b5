"""Media in a local directory, served by the API at ``/media/<key>`` in local mode."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from common.domain.creation import MediaRef
from common.ports import MediaStore

# Media of one creation live under "<creation id>/"; anything else (".", "..", a path) is refused.
_CREATION_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


class LocalMediaStore(MediaStore):
    def __init__(self, root: Path | str, url_prefix: str = "/media") -> None:
        self.root = Path(root)
        self.url_prefix = url_prefix.rstrip("/")

    def _path(self, key: str) -> Path:
        # Keys are ours ("<creation>/<n>.png"), but never let one escape the media root, and a
        # name no filesystem can hold (over 255 bytes) is simply not there (not an OSError).
        if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in Path(key).parts):
            raise KeyError(key)
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise KeyError(key)
        return path

    def put(self, key: str, data: bytes, mime_type: str) -> MediaRef:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: a reader (the browser) never sees a half-written file, and a job
        # killed mid-write leaves no truncated artefact under the final name.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return MediaRef(key=key, mime_type=mime_type)

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise KeyError(key) from None

    def file_path(self, key: str) -> Path:
        """For the API's local media route (send_file streams ranges for the video player)."""
        path = self._path(key)
        if not path.is_file():
            raise KeyError(key)
        return path

    def delete_for(self, creation_id: str) -> int:
        if not _CREATION_ID.fullmatch(creation_id):
            raise KeyError(creation_id)
        folder = self._path(creation_id)
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder)  # raises if anything stays (the delete then stays pending)
        return count

    def url_for(self, ref: MediaRef) -> str:
        return f"{self.url_prefix}/{ref.key}"
