"""Confining file tools to one root directory.

A path is opened beneath the root by :func:`agentstream.beneath.open_beneath`: one component at a
time from a descriptor of the root, never following a symlink by name, so a directory swapped for
a symlink while a call runs cannot lead out. Refused, as a :class:`ToolError` of the same type as
the walk's refusal: absolute paths, any ``..`` component and NUL bytes (``invalid_path``),
symlinks whose target climbs above the root or is an absolute path elsewhere (``outside_root``), FIFOs, devices and
sockets (``not_a_file``), and missing paths (``not_found``). Symlinks that stay inside the root
are followed.
"""

from __future__ import annotations

import os
from pathlib import Path

from agentstream.beneath import BeneathError, Kind, Opened, open_beneath
from schemas.errors import ErrorKind
from tool_runner.errors import ToolError


def open_in_root(root: Path, relative: str, kind: Kind) -> Opened:
    """Open ``relative`` beneath ``root`` as a regular file (``kind="file"``) or a directory
    (``kind="dir"``). The caller closes ``Opened.fd``.

    Raises ToolError ``invalid_path``, ``not_found``, ``outside_root``, ``symlink_loop``,
    ``not_a_file``, ``not_a_directory``, ``permission_denied`` or ``os_error``.
    """
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise ToolError(ErrorKind.OS_ERROR, f"the tool runner's root cannot be opened: {err.strerror or err}") from None
    try:
        return open_beneath(root_fd, relative, kind, dir_path=os.path.realpath(root), label="the project root")
    except BeneathError as err:
        message = err.message
        if err.kind == ErrorKind.OUTSIDE_ROOT:
            message += "; only symlinks that stay inside the project root are followed"
        raise ToolError(err.kind, message) from None
    finally:
        os.close(root_fd)
