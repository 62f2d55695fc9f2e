"""Conditional writes of small objects: the atomic primitive a lease in an object store is built on.

A :class:`ConditionalWrites` backend writes one small object either *create-only* (it must not exist) or *only if
it is still the version read* (its token: an S3 or Azure ETag, a GCS generation). A write whose condition does not
hold returns None; any other failure raises the backend's own exception, which
:class:`~repocache.cold.fsspec_store.FsspecStore` turns into :class:`~repocache.errors.ColdStoreError`.

Backends are chosen by the filesystem's protocol (:func:`conditional_writes_for`): S3 here (``If-None-Match: *``,
``If-Match``), GCS in :mod:`~repocache.cold.leases_gcs` (``ifGenerationMatch``) and Azure in
:mod:`~repocache.cold.leases_azure` (``If-None-Match: *``, ``If-Match``). Whether a store really enforces the
conditions is checked once per process before its first lease (:mod:`~repocache.cold.enforcement`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["ConditionalWrites", "S3ConditionalWrites", "conditional_writes_for"]


class ConditionalWrites(Protocol):
    """Create-only and compare-and-swap writes of one small object on an fsspec filesystem.

    Attributes:
        name: the kind of store, for messages ("S3", "GCS", "Azure").
    """

    name: str

    def token(self, info: dict[str, Any]) -> str | None:
        """The version token of an object from its fsspec ``info`` (None when the listing does not carry one)."""
        ...

    def create(self, path: str, data: bytes) -> str | None:
        """Write ``data`` at ``path`` only if nothing is there; the new token, or None if an object exists."""
        ...

    def replace(self, path: str, data: bytes, token: str) -> str | None:
        """Overwrite ``path`` only if its token is still ``token``; the new token, or None if it changed or is gone."""
        ...


class S3ConditionalWrites:
    """S3 conditional writes through s3fs: ``If-None-Match: *`` creates, ``If-Match: <etag>`` replaces.

    Args:
        fs: an s3fs filesystem.
    """

    name = "S3"

    def __init__(self, fs: Any) -> None:
        self._fs = fs

    def token(self, info: dict[str, Any]) -> str | None:
        """The object's ETag."""
        etag = info.get("ETag")
        return None if etag is None else str(etag)

    def create(self, path: str, data: bytes) -> str | None:
        """PUT with ``If-None-Match: *``."""
        return self._put(path, data, IfNoneMatch="*")

    def replace(self, path: str, data: bytes, token: str) -> str | None:
        """PUT with ``If-Match: <token>``."""
        return self._put(path, data, IfMatch=token)

    def _put(self, path: str, data: bytes, **condition: str) -> str | None:
        try:
            reply = self._fs.pipe_file(path, data, **condition)
        except FileNotFoundError:
            return None  # If-Match on an object deleted meanwhile
        except Exception as exc:
            if _s3_precondition_failed(exc):
                return None
            raise
        etag = reply.get("ETag") if isinstance(reply, dict) else None
        if not etag:
            self._fs.invalidate_cache(path.rsplit("/", 1)[0])
            etag = self._fs.info(path).get("ETag")
        return str(etag)


def _s3_precondition_failed(exc: BaseException) -> bool:
    """Whether an s3fs/botocore error says the precondition did not hold (HTTP 412, or 409 when S3 reports a
    concurrent conditional write)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, FileExistsError):
            return True
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return True
        if "pre-condition" in str(seen) or "precondition" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def conditional_writes_for(fs: Any, protocols: Iterable[str]) -> ConditionalWrites | None:
    """The conditional-write backend for a filesystem of ``protocols``, or None when its store offers none here.

    S3 (``s3``, ``s3a``), GCS (``gs``, ``gcs``) and Azure Blob Storage (``az``, ``abfs``, ``abfss``) have one;
    other filesystems (a shared directory is served by :class:`~repocache.cold.LocalDirStore`, not here) do not.
    """
    names = set(protocols)
    if names & {"s3", "s3a"}:
        return S3ConditionalWrites(fs)
    if names & {"gs", "gcs"}:
        from repocache.cold.leases_gcs import GCSConditionalWrites

        return GCSConditionalWrites(fs)
    if names & {"az", "abfs", "abfss"}:
        from repocache.cold.leases_azure import AzureConditionalWrites

        return AzureConditionalWrites(fs)
    return None
