"""Content-addressed attachment files under the data directory.

Files are written before the transaction that references them: a crash leaves at most an orphan
file (harmless, deduplicated by hash), never a row pointing at nothing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hub.model import Attachment


class AttachmentTooLarge(ValueError):
    pass


class AttachmentStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def check(self, attachment: Attachment) -> None:
        if len(attachment.data) > self.max_bytes:
            raise AttachmentTooLarge(
                f"attachment {attachment.filename!r} is {len(attachment.data)} bytes;"
                f" the limit is {self.max_bytes} (limits.max_attachment_bytes)"
            )

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        return digest

    def get(self, sha256: str) -> bytes:
        return self.path_for(sha256).read_bytes()
