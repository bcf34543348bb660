"""Text that came from outside, made safe to log, store and forward."""

from __future__ import annotations

__all__ = ["printable"]


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates (which JSON allows and UTF-8
    does not) replaced by ``?``: it can go into logs, the audit log and bus messages."""
    return "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "?" for c in text)
