"""``read_file`` and ``list_dir``: confined to the tool runner's root (see tool_runner.sandbox)."""

from __future__ import annotations

import asyncio
import codecs
import os
from pathlib import Path
from typing import Any

from schemas.tools import ListDirArgs, ReadFileArgs
from tool_runner.errors import ToolError
from tool_runner.sandbox import display_path, resolve_in_root
from tool_runner.tools import ToolContext

_CHUNK = 64 * 1024


async def read_file(args: ReadFileArgs, ctx: ToolContext) -> dict[str, Any]:
    """Read a text file (or a line range of it).

    Returns ``{path, size, total_lines, start_line, end_line, content, truncated}``: ``size`` in
    bytes, ``total_lines`` counted over the whole file, ``content`` at most TOOL_READ_MAX_BYTES of
    the asked lines (``truncated`` says if it was cut). Raises ToolError ``not_a_file``,
    ``binary_file``, ``invalid_range`` and the sandbox's errors.
    """
    real = resolve_in_root(ctx.root, args.path)
    return await asyncio.to_thread(_read, ctx.root, real, args, ctx.settings.tool_read_max_bytes)


def _read(root: Path, real: Path, args: ReadFileArgs, cap: int) -> dict[str, Any]:
    if not real.is_file():
        raise ToolError(
            "not_a_file",
            f"{args.path!r} is a directory, not a file" if real.is_dir() else f"{args.path!r} is not a regular file",
        )
    start = args.start_line or 1
    end = args.end_line
    if end is not None and end < start:
        raise ToolError("invalid_range", f"end_line {end} is before start_line {start}")
    size = real.stat().st_size
    total_lines = 0
    kept = bytearray()
    truncated = False
    line_no = 1  # line number of the next byte
    last_byte = b""
    with real.open("rb") as fh:
        first = True
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            if first and b"\x00" in chunk[:8192]:
                raise ToolError("binary_file", f"{args.path!r} looks like a binary file; read_file returns text only")
            first = False
            last_byte = chunk[-1:]
            # Keep the bytes of lines [start, end], at most `cap` bytes.
            pos = 0
            while pos < len(chunk):
                nl = chunk.find(b"\n", pos)
                piece_end = len(chunk) if nl == -1 else nl + 1
                if line_no >= start and (end is None or line_no <= end) and not truncated:
                    piece = chunk[pos:piece_end]
                    room = cap - len(kept)
                    if len(piece) > room:
                        kept += piece[:room]
                        truncated = True
                    else:
                        kept += piece
                if nl == -1:
                    break
                line_no += 1
                pos = piece_end
            total_lines += chunk.count(b"\n")
    if size and last_byte != b"\n":
        total_lines += 1
    if total_lines and start > total_lines:
        raise ToolError("invalid_range", f"start_line {start} is past the end of the file ({total_lines} lines)")
    end_line = min(end, total_lines) if end is not None else total_lines
    return {
        "path": display_path(root, real),
        "size": size,
        "total_lines": total_lines,
        "start_line": start if total_lines else 0,
        "end_line": end_line,
        "content": _decode(bytes(kept), cut=truncated),
        "truncated": truncated,
    }


def _decode(data: bytes, *, cut: bool) -> str:
    """UTF-8 text of ``data``; when ``cut`` (truncated), an incomplete last character is dropped."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=not cut)


async def list_dir(args: ListDirArgs, ctx: ToolContext) -> dict[str, Any]:
    """List a directory: ``{path, entries: [{name, type: file|dir|symlink|other, size}], truncated}``.

    Entries are sorted by name; symlinks are listed, not followed; at most TOOL_LIST_MAX_ENTRIES.
    Raises ToolError ``not_a_directory`` and the sandbox's errors.
    """
    real = resolve_in_root(ctx.root, args.path)
    return await asyncio.to_thread(_list, ctx.root, real, args.path, ctx.settings.tool_list_max_entries)


def _list(root: Path, real: Path, asked: str, cap: int) -> dict[str, Any]:
    if not real.is_dir():
        raise ToolError("not_a_directory", f"{asked!r} is not a directory")
    entries = []
    with os.scandir(real) as it:
        names = sorted(it, key=lambda e: e.name)
    for entry in names[:cap]:
        if entry.is_symlink():
            kind, size = "symlink", None
        elif entry.is_dir(follow_symlinks=False):
            kind, size = "dir", None
        elif entry.is_file(follow_symlinks=False):
            kind, size = "file", entry.stat(follow_symlinks=False).st_size
        else:
            kind, size = "other", None
        entries.append({"name": entry.name, "type": kind, "size": size})
    return {"path": display_path(root, real), "entries": entries, "truncated": len(names) > cap}
