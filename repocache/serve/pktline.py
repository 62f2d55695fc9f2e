"""Git's pkt-line framing, as far as the server writes it: a line, a flush, an error line.

A pkt-line is four hexadecimal digits giving its length (the four included) and the payload; ``0000`` is a flush.
See git's ``gitprotocol-common`` documentation.
"""

from __future__ import annotations

__all__ = ["FLUSH", "MAX_PAYLOAD", "error_line", "pkt_line", "service_announcement"]

FLUSH = b"0000"
"""The flush packet."""

MAX_PAYLOAD = 65516
"""The largest payload of one pkt-line (65520 minus the four length bytes)."""


def pkt_line(payload: bytes) -> bytes:
    """``payload`` framed as one pkt-line.

    Raises:
        ValueError: the payload is longer than :data:`MAX_PAYLOAD`.
    """
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a pkt-line payload is at most {MAX_PAYLOAD} bytes, got {len(payload)}")
    return b"%04x%s" % (len(payload) + 4, payload)


def service_announcement(service: str) -> bytes:
    """What protocol v0 smart HTTP puts before the ref advertisement: ``# service=<service>`` and a flush."""
    return pkt_line(f"# service={service}\n".encode("ascii")) + FLUSH


def error_line(message: str) -> bytes:
    """An ``ERR`` pkt-line: git stops and shows ``remote error: <message>`` (the message is cut to fit one line)."""
    text = " ".join(message.split())
    return pkt_line(("ERR " + text).encode("utf-8")[:MAX_PAYLOAD])
