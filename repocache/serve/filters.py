"""What a ``git-upload-pack`` request asks for (its command, filter and wants), and which mirror serves it.

The server keeps mirrors with one filter per prefix (``ServeOptions.mirror_filter``, ``mirror_filters``): full by
default, or blob-less (``blob:none``). A partial mirror serves only a request whose filter is the same or
stricter; anything else (no filter, ``blob:limit=N``, ``tree:1``, ``combine:...``, a spelling git never sends) is
served from a full mirror of the same URL, which the cache clones on demand. Only the filters repocache keeps
count as stricter:

| mirror kept | requests served by it | every other request |
| --- | --- | --- |
| full | all | (none) |
| ``blob:none`` | ``filter blob:none``, ``filter tree:0`` | full mirror |

A tree-less mirror (``tree:0``) is not offered: git's upload-pack (2.39) reads the root tree of every commit it
packs, even for a ``tree:0`` request, and dies on a mirror that lacks them.

The request is read as git writes it (``gitprotocol-v2``, ``gitprotocol-pack``): in protocol v2 a ``command=``
line, capabilities, a delimiter (``0001``) and the command's arguments (``want <oid>``, ``filter <spec>``) up to a
flush; in protocol v0 the want lines (the first carries the capabilities), ``shallow``/``deepen`` lines and
``filter <spec>`` up to the first flush. Nothing after that (the haves) is read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from repocache.errors import ConfigError

__all__ = [
    "MAX_WANTS",
    "UploadRequest",
    "check_mirror_filter",
    "mirror_filter_of",
    "parse_upload_request",
    "serving_filter",
]

MAX_WANTS = 1_000_000
"""The most ``want`` lines read from one request (a lazy fetch of a large checkout wants one line per blob)."""

_SERVED_BY = {"blob:none": ("blob:none", "tree:0")}  # a mirror's filter -> request filters
_OID = re.compile(rb"[0-9a-f]{40}|[0-9a-f]{64}")
_LENGTH = re.compile(rb"[0-9a-fA-F]{4}")


@dataclass(frozen=True)
class UploadRequest:
    """What a ``git-upload-pack`` request body asks for.

    Attributes:
        command: the protocol v2 command (``fetch``, ``ls-refs``, ``object-info``), or None for protocol v0 (whose
            only request is a fetch).
        filter: the ``filter <spec>`` argument, or None when the request has none.
        wants: the object ids of its ``want`` lines, in order.
    """

    command: str | None
    filter: str | None
    wants: tuple[str, ...]

    @property
    def fetches(self) -> bool:
        """Whether the request asks for objects (a v0 request or a v2 ``fetch``), so its filter picks the mirror."""
        return self.command in (None, "fetch")


def check_mirror_filter(value: object, *, name: str = "mirror_filter") -> str | None:
    """Validate the filter of the server's mirrors: None (full) or ``"blob:none"``.

    Raises:
        ConfigError: anything else, named, with what is accepted (``"tree:0"`` with why it is not).
    """
    if value is None or (isinstance(value, str) and value in _SERVED_BY):
        return value
    if value == "tree:0":
        raise ConfigError(
            f"{name}='tree:0' is not accepted: git's upload-pack cannot pack from a tree-less mirror (it reads "
            "every commit's root tree); use 'blob:none', which also serves tree:0 clones, or None (full mirrors)"
        )
    raise ConfigError(f"{name}={value!r} is not accepted; expected None (full mirrors) or 'blob:none'")


def serving_filter(request: UploadRequest | None, mirror_filter: str | None) -> str | None:
    """The filter of the mirror that serves ``request`` when the server keeps mirrors with ``mirror_filter``.

    The one place the choice is made. ``request`` None is the ref advertisement (``info/refs``), made before any
    filter is known: it comes from the kept mirror (the cache serves it from a full mirror instead when one is on
    disk, as for any partial request), and so do v2 commands that fetch nothing (``ls-refs``). A fetch is served
    by the kept partial mirror only when its filter is the same or stricter; otherwise by a full mirror.

    Returns:
        The filter to ask the cache for (None: a full mirror).
    """
    if mirror_filter is None or request is None or not request.fetches:
        return mirror_filter
    return mirror_filter if request.filter in _SERVED_BY[mirror_filter] else None


def parse_upload_request(read: Callable[[int], bytes]) -> UploadRequest:
    """Read the command, filter and wants of a request body from ``read(n)`` (which returns up to ``n`` bytes).

    Raises:
        ValueError: the body is not pkt-lines as git writes them (the message says where).
    """
    lines = _PktLines(read)
    first = lines.next(allow_end=True)
    if first is None:
        return UploadRequest(command=None, filter=None, wants=())
    if first.startswith(b"command="):
        return _v2(first, lines)
    return _v0(first, lines)


def _v2(first: bytes, lines: _PktLines) -> UploadRequest:
    command = first[len(b"command=") :].decode("ascii", "replace")
    while True:  # capabilities, up to the delimiter (or a flush: a command without arguments)
        line = lines.next()
        if line is None:
            return UploadRequest(command=command, filter=None, wants=())
        if line is _DELIM:
            break
    return _arguments(command, lines, None)


def _v0(first: bytes, lines: _PktLines) -> UploadRequest:
    return _arguments(None, lines, first)


def _arguments(command: str | None, lines: _PktLines, first: bytes | None) -> UploadRequest:
    spec: str | None = None
    wants: list[str] = []
    line = first if first is not None else lines.next()
    while line is not None:
        if line is _DELIM:
            raise ValueError("the request has a second delimiter packet")
        if line.startswith(b"want "):
            oid = line[5:].split(b" ", 1)[0]
            if not _OID.fullmatch(oid):
                raise ValueError(f"a want line names no object id: {line[:80]!r}")
            if len(wants) >= MAX_WANTS:
                raise ValueError(f"the request has more than {MAX_WANTS} want lines")
            if len(oid) == 40:  # a SHA-256 repository's ids are passed to upload-pack, never fetched by id here
                wants.append(oid.decode("ascii"))
        elif line.startswith(b"filter "):
            spec = line[7:].decode("ascii", "replace").strip()
        line = lines.next()
    return UploadRequest(command=command, filter=spec, wants=tuple(wants))


_DELIM = b"\x00delim"


class _PktLines:
    """pkt-line payloads (newline stripped) up to a flush (None); a delimiter is :data:`_DELIM`."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._offset = 0

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            more = self._read(count - len(data))
            if not more:
                raise ValueError(f"the request ends inside a pkt-line at byte {self._offset + len(data)}")
            data += more
        self._offset += count
        return data

    def next(self, *, allow_end: bool = False) -> bytes | None:
        if allow_end:  # an empty body: nothing asked
            head = self._read(4)
            if not head:
                return None
            self._offset += len(head)
            head += self._exactly(4 - len(head)) if len(head) < 4 else b""
        else:
            head = self._exactly(4)
        if not _LENGTH.fullmatch(head):
            raise ValueError(f"the request has no pkt-line length at byte {self._offset - 4}: {head!r}")
        length = int(head, 16)
        if length == 0:
            return None
        if length == 1:
            return _DELIM
        if length < 4:
            raise ValueError(f"the request has a pkt-line of length {length} at byte {self._offset - 4}")
        payload = self._exactly(length - 4)
        return payload[:-1] if payload.endswith(b"\n") else payload


def mirror_filter_of(prefix: str, mirror_filter: str | None, mirror_filters: Mapping[str, str | None]) -> str | None:
    """The filter of the mirrors kept for ``prefix``: its own entry in ``mirror_filters``, else ``mirror_filter``."""
    return mirror_filters.get(prefix, mirror_filter)
