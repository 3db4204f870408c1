"""Paths in error messages: what the OS refused, said so that a person can fix it.

Shared by the files the connector opens itself (the SQLite store, the spool): a path that
cannot be created is reported with the component in the way, and a name of thousands of
characters is shortened rather than repeated in full.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["absolute", "os_reason", "shown"]


def shown(path: object) -> str:
    """A path for an error line: a name of thousands of characters is cut, its length given."""
    text = str(path)
    return text if len(text) <= 200 else f"{text[:80]}… ({len(text):,} characters)"


def absolute(path: Path) -> Path:
    """``path`` made absolute without raising: a ``~user`` that does not exist or a symlink loop
    is reported when the file is opened, not by a constructor (which opens nothing)."""
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def os_reason(exc: OSError) -> str:
    """The OS's words for ``exc``, naming the file in the way when a directory cannot be made."""
    if isinstance(exc, FileExistsError | NotADirectoryError) and exc.filename:
        blocker = _file_in_the_way(Path(exc.filename))
        if blocker is not None:
            return f"{shown(blocker)} is a file, not a directory"
    reason = exc.strerror or str(exc)
    return f"{reason}: {shown(exc.filename)}" if exc.filename else reason


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest of ``path`` and its parents that exists and is not a directory."""
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return None if candidate.is_dir() else candidate
        except OSError:
            return None
    return None
