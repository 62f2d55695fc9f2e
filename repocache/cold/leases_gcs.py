"""Conditional writes on Google Cloud Storage through gcsfs: the GCS lease backend.

An object's token is its *generation* (a number GCS gives every write). A create-only write sends
``ifGenerationMatch=0``, a replacement ``ifGenerationMatch=<generation>``; GCS answers 412 when the condition does
not hold, which gcsfs raises as ``FileExistsError``. gcsfs's ``pipe_file`` offers only the first, so the write is
the same single-request multipart upload gcsfs makes, with the precondition added, through gcsfs's own session
(its credentials, retries and ``endpoint_url``/``STORAGE_EMULATOR_HOST``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

__all__ = ["GCSConditionalWrites"]

_BOUNDARY = "==repocache-lease=="


class GCSConditionalWrites:
    """GCS generation preconditions (``ifGenerationMatch``) through a gcsfs filesystem.

    Args:
        fs: a ``gcsfs.GCSFileSystem``.
    """

    name = "GCS"

    def __init__(self, fs: Any) -> None:
        self._fs = fs

    def token(self, info: dict[str, Any]) -> str | None:
        """The object's generation."""
        generation = info.get("generation")
        return None if generation in (None, "") else str(generation)

    def create(self, path: str, data: bytes) -> str | None:
        """Upload with ``ifGenerationMatch=0`` (only if no live object is there)."""
        return self._upload(path, data, "0")

    def replace(self, path: str, data: bytes, token: str) -> str | None:
        """Upload with ``ifGenerationMatch=<token>``."""
        if not token.isdigit() or token == "0":
            return None  # not a generation GCS could have given: it cannot match
        return self._upload(path, data, token)

    def _upload(self, path: str, data: bytes, generation: str) -> str | None:
        bucket, key, _ = self._fs.split_path(path)
        head = (
            f"--{_BOUNDARY}\nContent-Type: application/json; charset=UTF-8\n\n{json.dumps({'name': key})}\n"
            f"--{_BOUNDARY}\nContent-Type: application/octet-stream\n\n"
        )
        body = head.encode() + data + f"\n--{_BOUNDARY}--".encode()
        try:
            reply = self._fs.call(
                "POST",
                f"{self._fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
                uploadType="multipart",
                ifGenerationMatch=generation,
                headers={"Content-Type": f'multipart/related; boundary="{_BOUNDARY}"'},
                data=body,
                json_out=True,
            )
        except FileExistsError:  # gcsfs's translation of 412 Precondition Failed
            return None
        except FileNotFoundError:
            return None
        finally:
            self._fs.invalidate_cache(path.rsplit("/", 1)[0])
        found = reply.get("generation") if isinstance(reply, dict) else None
        if found is None:
            found = self._fs.info(path).get("generation")
        return str(found)
