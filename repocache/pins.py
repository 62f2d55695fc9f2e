"""Never-evict pins: URLs and glob patterns read from a YAML file or given directly.

The canonical file has a top-level ``never_evict:`` list. pizza's spellings, ``never-evict-repos:`` and
``config: cache: neverEvict:``, are read too, so its configuration files drop in. A plain URL pins exactly that
repository (normalized, so ``https://host/a/b.git`` pins ``https://host/a/b``); an entry containing ``*``, ``?`` or
``[`` is a glob matched against normalized URLs (``https://github.com/open-sauced/*``). The file is read again
when it changes; a file that becomes invalid keeps the last good pins and logs one warning saying where it is
wrong.

The pin file must be a regular file (a symbolic link to one is fine) of at most :data:`PINS_MAX_BYTES`: a FIFO, a
device or a directory is refused at once, and a larger file is refused unread (see :mod:`repocache.safe_read`).

An entry may also be a mapping that gives the pattern a partial-clone filter, beside plain strings::

    never_evict:
      - https://github.com/org/pinned
      - {url: "https://github.com/org/history-only-*", filter: "blob:none"}

A request for a repository such a pattern matches gets a mirror with that filter (unless the call names one);
the first matching entry that names a filter wins. Every matching entry pins, with or without a filter.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

import yaml

from repocache.errors import ConfigError, InvalidURLError, UnsafeFileError
from repocache.keys import FILTERS, normalize_url
from repocache.safe_read import read_regular

__all__ = ["PINS_MAX_BYTES", "Pins", "PinsSpec", "load_pin_file"]

logger = logging.getLogger("repocache")
PINS_MAX_BYTES = 1 << 20
"""The largest pin file read, in bytes (1 MiB: tens of thousands of URLs); a larger one is refused unread."""
_GLOB_CHARS = re.compile(r"[*?\[]")
_FORMATS = "a top-level 'never_evict:' list (or pizza's 'never-evict-repos:' / 'config: cache: neverEvict:')"


_Compiled = tuple[frozenset[str], tuple[str, ...], tuple[tuple[str, str | None], ...]]


def _entry(item: object, source: str) -> tuple[object, bool, str | None]:
    """(the pattern, whether the entry names a filter, the filter) of one pin entry."""
    if not isinstance(item, Mapping):
        return item, False, None
    unknown = sorted(str(name) for name in item if name not in ("url", "filter"))
    if unknown or "url" not in item:
        raise ConfigError(
            f"{source}: pin {dict(item)!r} is not a URL or glob pattern, nor a mapping with a 'url' (a URL or glob "
            "pattern) and an optional 'filter' (null, 'blob:none' or 'tree:0')"
        )
    if "filter" not in item:
        return item["url"], False, None
    value = item["filter"]
    if value is not None and (not isinstance(value, str) or value not in FILTERS):
        raise ConfigError(
            f"{source}: pin {item['url']!r} has filter {value!r}; expected null (a full mirror), 'blob:none' or "
            "'tree:0'"
        )
    return item["url"], True, value


def _compile(patterns: Iterable[object], source: str) -> _Compiled:
    urls: set[str] = set()
    globs: list[str] = []
    filters: list[tuple[str, str | None]] = []  # (URL or glob, filter) of the entries that name a filter
    for entry in patterns:
        item, has_filter, filter = _entry(entry, source)
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{source}: pin {item!r} is not a URL or glob pattern (expected a non-empty string)")
        text = item.strip()
        if _GLOB_CHARS.search(text):
            while text.endswith(("/", ".git")):
                text = text[:-1] if text.endswith("/") else text[: -len(".git")]
            globs.append(text)
        else:
            try:
                text = normalize_url(text).url
            except InvalidURLError as exc:
                raise ConfigError(f"{source}: pin {text!r} is not a valid repository URL: {exc.reason}") from exc
            urls.add(text)
        if has_filter:
            filters.append((text, filter))
    return frozenset(urls), tuple(globs), tuple(filters)


def _extract(document: Any, source: str) -> list[object]:
    if document is None:
        return []
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping with {_FORMATS}, got {type(document).__name__}")
    found: Any = None
    if "never_evict" in document:
        found = document["never_evict"]
    elif "never-evict-repos" in document:
        found = document["never-evict-repos"]
    elif isinstance(document.get("config"), dict) and isinstance(document["config"].get("cache"), dict):
        found = document["config"]["cache"].get("neverEvict")
    else:
        raise ConfigError(f"{source}: no pin list found; expected {_FORMATS}")
    if found is None:
        return []
    if not isinstance(found, list):
        raise ConfigError(f"{source}: the pin list must be a YAML list, got {type(found).__name__}")
    return list(found)


def load_pin_file(path: Path) -> list[object]:
    """Read the pin entries of a never-evict YAML file.

    Raises:
        ConfigError: the file cannot be read, is not a regular file (a FIFO, a device, a directory), is larger
            than :data:`PINS_MAX_BYTES`, is not YAML, or has none of the accepted shapes.
    """
    try:
        text = read_regular(path, limit=PINS_MAX_BYTES, follow_symlinks=True).decode("utf-8")
    except UnsafeFileError as exc:
        raise ConfigError(f"cannot read pin file {str(path)!r}: {exc.reason}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read pin file {str(path)!r}: {exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"pin file {str(path)!r} is not valid YAML: {_yaml_problem(exc)}") from exc
    return _extract(document, repr(str(path)))


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line for a YAML error: where it is in the file (1-based line and column) and what is wrong there.

    PyYAML's own text spans several lines and names ``<unicode string>`` instead of the file.
    """
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or getattr(error, "context", None) or type(error).__name__
    where = "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: "
    return f"{where}{' '.join(str(problem).split())}"


PinsSpec = Union[str, "os.PathLike[str]", Iterable[str | Mapping[str, object]], None]
"""What ``pins=`` accepts: a never-evict YAML file, or an iterable of URLs and glob patterns, each alone or as a
mapping ``{"url": ..., "filter": "blob:none"}`` (None: no pins)."""


class Pins:
    """The never-evict set; :meth:`matches` answers for a normalized URL and reloads a changed file."""

    def __init__(self, source: PinsSpec) -> None:
        """Load pins.

        Args:
            source: None (nothing pinned), a path to a YAML pin file, or an iterable of URLs / glob patterns (or
                mappings with ``url`` and ``filter``).

        Raises:
            ConfigError: the file or a pattern is invalid.
        """
        self._lock = threading.Lock()
        self.path: Path | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._urls: frozenset[str] = frozenset()
        self._globs: tuple[str, ...] = ()
        self._filters: tuple[tuple[str, str | None], ...] = ()
        if source is None:
            return
        if isinstance(source, (str, os.PathLike)):
            self.path = Path(source)
            if not self.path.exists():
                raise ConfigError(f"pins file {str(self.path)!r} does not exist (expected a YAML file path)")
            self._reload(strict=True)
        elif isinstance(source, Iterable):
            self._urls, self._globs, self._filters = _compile(list(source), "pins")
        else:
            raise ConfigError(
                f"pins={source!r} is not accepted: give a YAML file path, a list of URLs or globs, or None"
            )

    def _file_stamp(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload(self, *, strict: bool) -> None:
        assert self.path is not None
        stamp = self._file_stamp()
        if stamp == self._stamp and self._stamp is not None:
            return
        try:
            self._urls, self._globs, self._filters = _compile(load_pin_file(self.path), repr(str(self.path)))
            self._stamp = stamp
        except ConfigError as exc:
            if strict:
                raise
            self._stamp = stamp  # do not re-parse a broken file on every call
            # One line, no traceback: the message says where the file is wrong, and nothing else failed.
            logger.warning("%s; keeping the previous pins", exc)

    def refresh(self, *, wait: bool = True) -> None:
        """Reload the pin file if it changed since it was last read.

        With ``wait=False`` (an event loop), a reload under way in another thread is not waited for: the pins as
        last read answer, as they would for a call made just before that reload.
        """
        if self.path is not None:
            if not self._lock.acquire(blocking=wait):
                return
            try:
                self._reload(strict=False)
            finally:
                self._lock.release()

    def matches(self, url: str) -> bool:
        """True when the normalized ``url`` is pinned (reloading the file first if it changed)."""
        self.refresh()
        if url in self._urls:
            return True
        return any(fnmatch.fnmatchcase(url, pattern) for pattern in self._globs)

    def filter_for(self, url: str, *, wait: bool = True) -> tuple[bool, str | None]:
        """(whether a pin names a filter for the normalized ``url``, that filter): the first matching entry that
        names one wins (a pin with ``filter: null`` asks for a full mirror); ``wait`` as for :meth:`refresh`."""
        self.refresh(wait=wait)
        for pattern, filter in self._filters:
            if url == pattern or (_GLOB_CHARS.search(pattern) and fnmatch.fnmatchcase(url, pattern)):
                return True, filter
        return False, None

    @property
    def patterns(self) -> list[str]:
        """The current pins: normalized URLs then glob patterns."""
        return sorted(self._urls) + list(self._globs)
