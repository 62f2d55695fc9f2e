"""Conditional writes on Azure Blob Storage through adlfs: the Azure lease backend.

An object's token is its ETag. A create-only write is an upload with ``overwrite=False`` (``If-None-Match: *``,
answered 409 ``BlobAlreadyExists``, which adlfs raises as ``FileExistsError``); a replacement sends
``If-Match: <etag>`` (``match_condition=IfNotModified``), answered 412 ``ConditionNotMet`` when the blob changed
or is gone. This module is the one that imports ``azure.core``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AzureConditionalWrites"]


class AzureConditionalWrites:
    """Azure Blob ETag conditions through an adlfs filesystem.

    Args:
        fs: an ``adlfs.AzureBlobFileSystem``.
    """

    name = "Azure"

    def __init__(self, fs: Any) -> None:
        self._fs = fs
        core: Any = importlib.import_module("azure.core")  # installed with adlfs
        self._if_not_modified = core.MatchConditions.IfNotModified
        errors: Any = importlib.import_module("azure.core.exceptions")
        self._condition_failed: tuple[type[BaseException], ...] = (
            errors.ResourceModifiedError,  # 412: If-Match did not hold
            errors.ResourceExistsError,  # 409: the blob exists (create-only)
            errors.ResourceNotFoundError,  # 404: gone meanwhile
        )

    def token(self, info: dict[str, Any]) -> str | None:
        """The blob's ETag."""
        etag = info.get("etag")
        return None if etag in (None, "") else str(etag)

    def create(self, path: str, data: bytes) -> str | None:
        """Upload with ``overwrite=False`` (``If-None-Match: *``)."""
        return self._put(path, data, overwrite=False)

    def replace(self, path: str, data: bytes, token: str) -> str | None:
        """Upload with ``If-Match: <token>``."""
        return self._put(path, data, overwrite=True, etag=token, match_condition=self._if_not_modified)

    def _put(self, path: str, data: bytes, **options: Any) -> str | None:
        try:
            reply = self._fs.pipe_file(path, data, **options)
        except (FileExistsError, FileNotFoundError):
            return None
        except self._condition_failed:
            return None
        finally:
            self._fs.invalidate_cache(path.rsplit("/", 1)[0])
        etag = reply.get("etag") if isinstance(reply, dict) else None
        if not etag:
            etag = self._fs.info(path).get("etag")
        return str(etag)
