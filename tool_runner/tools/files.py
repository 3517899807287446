"""``read_file`` and ``list_dir``: confined to the tool runner's root (see tool_runner.sandbox),
run on the file tools' own pool of threads with a deadline (see tool_runner.filepool)."""

from __future__ import annotations

import codecs
import os
import stat
from typing import Any

from schemas.errors import ErrorKind
from schemas.tools import ListDirArgs, ReadFileArgs
from tool_runner.errors import ToolError
from tool_runner.filepool import Deadline
from tool_runner.sandbox import open_in_root
from tool_runner.tools import ToolContext

CHUNK_BYTES = 64 * 1024
"""Bytes read at a time; the deadline is checked between reads."""
BINARY_SNIFF_BYTES = 8192
"""A NUL byte among a file's first this many bytes marks it binary (as grep and git decide)."""


async def read_file(args: ReadFileArgs, ctx: ToolContext) -> dict[str, Any]:
    """Read a text file (or a line range of it).

    Returns ``{path, size, total_lines, read_to_end, start_line, end_line, content, truncated}``:
    ``path`` where the file was found (symlinks inside the root resolved), ``size`` in bytes
    (``fstat``); ``content`` the asked lines, at most TOOL_READ_MAX_BYTES of them (``truncated``
    says if it was cut). Reading stops at ``end_line`` and at the byte cap, so a huge file costs
    no more than its first lines: ``read_to_end`` says whether the file was read to its end, and
    only then is ``total_lines`` its line count (a last line without ``\\n`` counts); otherwise
    ``total_lines`` is None. ``start_line``..``end_line`` are the lines ``content`` holds (0, 0
    for an empty file). Raises ToolError ``invalid_range``, ``binary_file``, ``timeout`` and the
    sandbox's errors (``not_a_file`` for directories, FIFOs, devices).
    """
    start = args.start_line or 1
    if args.end_line is not None and args.end_line < start:
        raise ToolError(ErrorKind.INVALID_RANGE, f"end_line {args.end_line} is before start_line {start}")
    cap = ctx.settings.tool_read_max_bytes

    def work(deadline: Deadline) -> dict[str, Any]:
        opened = open_in_root(ctx.root, args.path, "file")
        try:
            lines = _read(opened.fd, args.path, start, args.end_line, cap, deadline)
            return {"path": opened.display, "size": opened.st.st_size, **lines}
        finally:
            os.close(opened.fd)

    return await ctx.files.run(f"read_file {args.path!r}", work)


def _read(fd: int, asked: str, start: int, end: int | None, cap: int, deadline: Deadline) -> dict[str, Any]:
    """Lines ``start``..``end`` of the open file, at most ``cap`` bytes; see :func:`read_file`."""
    kept = bytearray()
    truncated = False
    line_no = 1  # line number of the next byte
    newlines = 0
    last_kept_line = 0
    last_byte = b""
    at_end = False
    first = True
    while True:
        chunk = os.read(fd, CHUNK_BYTES)
        if not chunk:
            at_end = True
            break
        deadline.check()
        if first and b"\x00" in chunk[:BINARY_SNIFF_BYTES]:
            raise ToolError(ErrorKind.BINARY_FILE, f"{asked!r} looks like a binary file; read_file returns text only")
        first = False
        last_byte = chunk[-1:]
        newlines += chunk.count(b"\n")
        pos = 0
        while pos < len(chunk) and not truncated and (end is None or line_no <= end):
            nl = chunk.find(b"\n", pos)
            piece_end = len(chunk) if nl == -1 else nl + 1
            if line_no >= start:
                piece = chunk[pos:piece_end]
                room = cap - len(kept)
                if len(piece) > room:
                    piece, truncated = piece[:room], True
                if piece:
                    kept += piece
                    last_kept_line = line_no
            if nl == -1:
                break
            line_no += 1
            pos = piece_end
        if truncated or (end is not None and line_no > end):
            at_end = not os.read(fd, 1)  # the usual small file was read whole in this chunk
            break
    total_lines = (newlines + (1 if last_byte not in (b"", b"\n") else 0)) if at_end else None
    if at_end and total_lines and start > total_lines:
        raise ToolError(ErrorKind.INVALID_RANGE,
                        f"start_line {start} is past the end of the file ({total_lines} lines)")
    return {
        "total_lines": total_lines,
        "read_to_end": at_end,
        "start_line": start if last_kept_line else 0,
        "end_line": last_kept_line,
        "content": _decode(bytes(kept), cut=truncated),
        "truncated": truncated,
    }


def _decode(data: bytes, *, cut: bool) -> str:
    """UTF-8 text of ``data``; when ``cut`` (truncated), an incomplete last character is dropped."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=not cut)


async def list_dir(args: ListDirArgs, ctx: ToolContext) -> dict[str, Any]:
    """List a directory: ``{path, entries: [{name, type: file|dir|symlink|other, size}], truncated}``.

    The directory is listed through the descriptor it was opened as (no second lookup by name).
    Entries are sorted by name; symlinks are listed, not followed; ``size`` in bytes for files;
    at most TOOL_LIST_MAX_ENTRIES. Raises ToolError ``not_a_directory``, ``timeout`` and the
    sandbox's errors.
    """
    cap = ctx.settings.tool_list_max_entries

    def work(deadline: Deadline) -> dict[str, Any]:
        opened = open_in_root(ctx.root, args.path, "dir")
        try:
            names = sorted(os.listdir(opened.fd))
            entries = []
            for name in names[:cap]:
                deadline.check()
                entries.append(_entry(opened.fd, name))
            return {"path": opened.display, "entries": entries, "truncated": len(names) > cap}
        finally:
            os.close(opened.fd)

    return await ctx.files.run(f"list_dir {args.path!r}", work)


def _entry(dir_fd: int, name: str) -> dict[str, Any]:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:  # removed since it was listed
        return {"name": name, "type": "other", "size": None}
    if stat.S_ISLNK(st.st_mode):
        return {"name": name, "type": "symlink", "size": None}
    if stat.S_ISDIR(st.st_mode):
        return {"name": name, "type": "dir", "size": None}
    if stat.S_ISREG(st.st_mode):
        return {"name": name, "type": "file", "size": st.st_size}
    return {"name": name, "type": "other", "size": None}
