"""Confining file tools to one root directory.

Refused (issue 2, "Tool runner"): absolute paths, any ``..`` component, NUL bytes, and any path
whose real location (after following symlinks) is outside the root.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from tool_runner.errors import ToolError


def resolve_in_root(root: Path, relative: str, *, must_exist: bool = True) -> Path:
    """Return the real path of ``relative`` under ``root`` (which must itself be resolved).

    Raises ToolError ``invalid_path`` (absolute, ``..``, NUL, empty), ``not_found`` or
    ``outside_root`` (a symlink leading out of the root).
    """
    if not isinstance(relative, str) or relative.strip() == "":
        raise ToolError("invalid_path", "path must be a non-empty relative path")
    if "\x00" in relative:
        raise ToolError("invalid_path", "path contains a NUL byte")
    posix = PurePosixPath(relative)
    if posix.is_absolute() or PureWindowsPath(relative).is_absolute() or relative.startswith("~"):
        raise ToolError(
            "invalid_path", f"absolute paths are refused; give a path relative to the project root, not {relative!r}"
        )
    if ".." in posix.parts or ".." in PureWindowsPath(relative).parts:
        raise ToolError("invalid_path", "paths with '..' are refused")
    candidate = root.joinpath(*posix.parts)
    try:
        real = candidate.resolve(strict=must_exist)
    except FileNotFoundError:
        raise ToolError("not_found", f"{relative!r} does not exist") from None
    except (OSError, RuntimeError) as err:  # RuntimeError: symlink loop on some Pythons
        raise ToolError("invalid_path", f"cannot resolve {relative!r}: {err}") from None
    if real != root and not real.is_relative_to(root):
        raise ToolError("outside_root", f"{relative!r} leads outside the project root (symlink)")
    return real


def display_path(root: Path, real: Path) -> str:
    """``real`` relative to ``root``, POSIX style ('.' for the root itself)."""
    rel = real.relative_to(root).as_posix()
    return rel or "."
