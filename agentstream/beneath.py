"""Opening a relative path beneath a directory, so that nothing outside it can be reached, even
while another process swaps directories and symlinks on the way.

Checking a path and then opening it by name is a race (check-then-use, CWE-367): between the
two, a directory can be replaced by a symlink to ``/etc``. Here the path is walked one component
at a time from a directory file descriptor, each component opened relative to the descriptor of
the one before (``openat(2)`` with ``O_NOFOLLOW``), so what was checked is what is used:

- a symlink is never followed by the kernel. Its target is read (``readlinkat(2)``) and walked
  the same way; a ``..`` that would climb above the starting directory is refused, and so is an
  absolute target, unless it names a place below the directory's own real path (then the rest
  of it is walked from the directory's descriptor). ``..`` climbs by returning to a descriptor
  already held, never by opening ``..``. Symlinks that stay beneath the directory therefore
  work, as with Linux's ``openat2(2)`` ``RESOLVE_BENEATH``, on every POSIX system;
- every open has ``O_NONBLOCK`` (a FIFO or device is opened without waiting for a writer, then
  refused), ``O_NOCTTY`` and ``O_CLOEXEC``; intermediate components have ``O_DIRECTORY``;
- the descriptor that comes back is checked with ``fstat(2)``: a regular file, or a directory.

``openat2(2)`` itself is not used: it exists only on Linux 5.6+, container seccomp profiles
older than Docker 20.10 refuse it with ``EPERM``, and one walk that behaves the same everywhere
is easier to trust and to test than two.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Literal

from schemas.errors import AgentstreamError, ErrorKind

MAX_SYMLINKS = 40
"""Most symlinks followed in one path, as Linux's own limit (``path_resolution(7)``)."""

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
_DIR_FLAGS = _OPEN_FLAGS | os.O_DIRECTORY
# O_NOFOLLOW on a symlink: ELOOP (Linux, macOS), EMLINK (FreeBSD); with O_DIRECTORY Linux says ENOTDIR.
_MAYBE_SYMLINK = frozenset({errno.ELOOP, errno.EMLINK, errno.ENOTDIR})

Kind = Literal["file", "dir"]


class BeneathError(AgentstreamError):
    """A path that cannot be opened beneath the directory.

    ``kind`` is machine-readable: ``invalid_path`` (absolute, ``..``, NUL, empty), ``not_found``,
    ``outside_root`` (a symlink leading out), ``symlink_loop`` (more than :data:`MAX_SYMLINKS`),
    ``not_a_file`` (a directory, FIFO, device or socket where a regular file was asked for),
    ``not_a_directory``, ``permission_denied``, ``os_error``; ``message`` is for people and
    names the path as it was asked.
    """

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(kind, message)


@dataclass(frozen=True)
class Opened:
    """An open descriptor beneath the directory. ``fd`` belongs to the caller (close it);
    ``parts`` is where it was found, symlinks resolved (``()`` for the directory itself);
    ``st`` is its ``fstat``."""

    fd: int
    parts: tuple[str, ...]
    st: os.stat_result

    @property
    def display(self) -> str:
        """``parts`` as a POSIX relative path, ``.`` for the directory itself."""
        return "/".join(self.parts) or "."


def relative_parts(path: str) -> list[str]:
    """The components of a relative path, ``.`` and empty ones dropped.

    Raises BeneathError ``invalid_path`` for a non-string or blank path, a NUL byte, an absolute
    path (POSIX, Windows drive or UNC, or ``~``) and any ``..`` component.
    """
    if not isinstance(path, str) or path.strip() == "":  # a caller may pass anything
        raise BeneathError(ErrorKind.INVALID_PATH, "path must be a non-empty relative path")
    if "\x00" in path:
        raise BeneathError(ErrorKind.INVALID_PATH, "path contains a NUL byte")
    posix = PurePosixPath(path)
    if posix.is_absolute() or PureWindowsPath(path).is_absolute() or path.startswith(("~", "\\")):
        raise BeneathError(
            ErrorKind.INVALID_PATH, f"absolute paths are refused; give a relative path, not {path!r}"
        )
    if ".." in posix.parts or ".." in PureWindowsPath(path).parts:
        raise BeneathError(ErrorKind.INVALID_PATH, "paths with '..' are refused")
    return [p for p in path.split("/") if p not in ("", ".")]


def open_beneath(
    dir_fd: int, path: str, kind: Kind, *, dir_path: str | None = None, label: str = "the directory"
) -> Opened:
    """Open ``path`` (relative) beneath the directory open as ``dir_fd``.

    ``kind``: ``"file"`` for a regular file, ``"dir"`` for a directory (``"."`` is the directory
    itself). A FIFO, device or socket is refused by ``lstat`` before it is opened and, should it
    be swapped in after that, by ``fstat`` after the non-blocking open. ``dir_path``: the
    directory's real path (``os.path.realpath``), if known: an absolute symlink target below it
    is then walked from ``dir_fd`` like a relative one (the rest of the target, not the path
    string, is what gets opened); without it every absolute target is refused. ``label`` names
    the directory in messages (``"the project root"``). ``dir_fd`` stays open and the caller's.
    Raises :class:`BeneathError`.
    """
    pending = relative_parts(path)
    stack = [os.dup(dir_fd)]  # descriptors of the directories walked; stack[-1] is where we are
    names: list[str] = []
    links = 0
    try:
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":  # only from a symlink's target
                if len(stack) == 1:
                    raise BeneathError(ErrorKind.OUTSIDE_ROOT, f"{path!r} leads outside {label} (symlink)")
                os.close(stack.pop())
                names.pop()
                continue
            last = not any(p not in ("", ".") for p in pending)
            target = _symlink_target(stack[-1], name)
            if target is not None:
                links += 1
                if links > MAX_SYMLINKS:
                    raise BeneathError(ErrorKind.SYMLINK_LOOP, f"{path!r}: more than {MAX_SYMLINKS} symlinks")
                if target.startswith("/"):
                    inside = _below(target, dir_path)
                    if inside is None:
                        raise BeneathError(ErrorKind.OUTSIDE_ROOT, f"{path!r} leads outside {label} (absolute symlink)")
                    for fd in stack[1:]:
                        os.close(fd)
                    del stack[1:]
                    names.clear()
                    target = inside
                pending[:0] = target.split("/")
                continue
            if last and kind == "file":
                fd = _open_file(stack[-1], name, path)
                return Opened(fd, (*names, name), _checked(fd, "file", path))
            fd = _open(stack[-1], name, _DIR_FLAGS, path)
            stack.append(fd)
            names.append(name)
        fd = stack.pop()
        if kind == "file":
            os.close(fd)
            raise BeneathError(ErrorKind.NOT_A_FILE, f"{path!r} is a directory, not a file")
        return Opened(fd, tuple(names), _checked(fd, "dir", path))
    finally:
        for fd in stack:
            os.close(fd)


def read_capped(fd: int, cap: int) -> bytes | None:
    """Up to ``cap`` bytes from ``fd``; None when it holds more (it read at most ``cap + 1``)."""
    data = bytearray()
    while len(data) <= cap:
        chunk = os.read(fd, cap + 1 - len(data))
        if not chunk:
            return bytes(data)
        data += chunk
    return None


def _below(target: str, dir_path: str | None) -> str | None:
    """The rest of absolute ``target`` below ``dir_path`` (``""`` for the directory itself), or None."""
    if dir_path is None:
        return None
    base = dir_path.rstrip("/") + "/"
    if target.rstrip("/") + "/" == base:
        return ""
    return target[len(base):] if target.startswith(base) else None


def _symlink_target(dir_fd: int, name: str) -> str | None:
    """The target of ``name`` if it is a symlink (``lstat`` then ``readlinkat``), else None."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            return None
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None  # gone or swapped since: the open that follows reports it


def _open_file(dir_fd: int, name: str, asked: str) -> int:
    """Open a last component that should be a regular file; refuse others before opening them."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as err:
        raise _error(err, asked) from None
    if stat.S_ISDIR(st.st_mode):
        raise BeneathError(ErrorKind.NOT_A_FILE, f"{asked!r} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
        raise BeneathError(ErrorKind.NOT_A_FILE, f"{asked!r} is not a regular file ({_type_name(st.st_mode)})")
    return _open(dir_fd, name, _OPEN_FLAGS, asked)


def _open(dir_fd: int, name: str, flags: int, asked: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in _MAYBE_SYMLINK and _symlink_target(dir_fd, name) is not None:
            # Swapped for a symlink after it was looked at: refuse rather than chase it.
            raise BeneathError(ErrorKind.OUTSIDE_ROOT, f"{asked!r} changed while it was opened (symlink)") from None
        if err.errno == errno.ENOTDIR:
            raise BeneathError(ErrorKind.NOT_A_DIRECTORY, f"{asked!r}: {name!r} is not a directory") from None
        raise _error(err, asked) from None


def _checked(fd: int, kind: Kind, asked: str) -> os.stat_result:
    st = os.fstat(fd)
    if kind == "file" and not stat.S_ISREG(st.st_mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(st.st_mode) else _type_name(st.st_mode)
        raise BeneathError(ErrorKind.NOT_A_FILE, f"{asked!r} is not a regular file ({what})")
    if kind == "dir" and not stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise BeneathError(ErrorKind.NOT_A_DIRECTORY, f"{asked!r} is not a directory")
    return st


def _error(err: OSError, asked: str) -> BeneathError:
    if err.errno == errno.ENOENT:
        return BeneathError(ErrorKind.NOT_FOUND, f"{asked!r} does not exist")
    if err.errno in (errno.EACCES, errno.EPERM):
        return BeneathError(ErrorKind.PERMISSION_DENIED, f"{asked!r}: permission denied")
    if err.errno == errno.ENOTDIR:
        return BeneathError(ErrorKind.NOT_A_DIRECTORY, f"{asked!r}: a part of it is not a directory")
    return BeneathError(ErrorKind.OS_ERROR, f"{asked!r}: {err.strerror or err}")


def _type_name(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "not a regular file"
