"""The tools themselves, on a real filesystem and against real HTTP servers on loopback."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from agentstream.builtin_model.policy import Options, decide
from agentstream.settings import Settings
from schemas.tools import HttpRequestArgs, ListDirArgs, ReadFileArgs
from tool_runner.errors import ToolError
from tool_runner.filepool import FilePool
from tool_runner.netguard import refusal_reason
from tool_runner.tools import ToolContext
from tool_runner.tools.files import CHUNK_BYTES, list_dir, read_file
from tool_runner.tools.http import http_request


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.go").write_text("package main\n\nfunc main() {}\n")
    (tmp_path / "notes.txt").write_text("one\ntwo\nthree\nfour\nfive")  # no final newline
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "big.txt").write_text("x" * 5000 + "\n" + "y" * 10 + "\n")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    os.symlink(outside / "secret.txt", tmp_path / "leak.txt")
    os.symlink(outside, tmp_path / "leakdir")
    os.symlink(tmp_path / "notes.txt", tmp_path / "inside-link.txt")
    return tmp_path.resolve()


@pytest.fixture
def files():
    pool = FilePool(workers=4, timeout=10)
    yield pool
    pool.close()


_POOL = FilePool(workers=4, timeout=10)  # shared by the tests that need no pool of their own


def ctx_for(root: Path, files: FilePool = _POOL, **settings) -> ToolContext:
    return ToolContext(settings=Settings.from_env({}, **settings), root=root, http=httpx.AsyncClient(trust_env=False),
                       files=files)


async def test_read_file_returns_content_and_real_line_count(root):
    out = await read_file(ReadFileArgs(path="src/main.go"), ctx_for(root))
    assert out["content"] == "package main\n\nfunc main() {}\n"
    assert (
        out["total_lines"] == 3
        and out["size"] == (root / "src" / "main.go").stat().st_size
        and out["truncated"] is False
    )
    notes = await read_file(ReadFileArgs(path="notes.txt"), ctx_for(root))
    assert notes["total_lines"] == 5


async def test_read_file_line_range(root):
    out = await read_file(ReadFileArgs(path="notes.txt", start_line=2, end_line=3), ctx_for(root))
    assert out["content"] == "two\nthree\n"
    assert (out["start_line"], out["end_line"], out["total_lines"]) == (2, 3, 5)
    with pytest.raises(ToolError) as err:
        await read_file(ReadFileArgs(path="notes.txt", start_line=9), ctx_for(root))
    assert err.value.kind == "invalid_range"


async def test_read_file_size_cap_truncates_a_small_file_still_counted(root):
    # big.txt (5,013 bytes) is read whole in the first chunk, so its lines are known.
    assert (root / "big.txt").stat().st_size < CHUNK_BYTES
    out = await read_file(ReadFileArgs(path="big.txt"), ctx_for(root, tool_read_max_bytes=100))
    assert out["truncated"] is True and len(out["content"]) == 100
    assert out["total_lines"] == 2 and out["read_to_end"] is True


async def test_a_whole_small_file_reports_its_line_count(root):
    out = await read_file(ReadFileArgs(path="notes.txt", end_line=2), ctx_for(root))
    assert out["content"] == "one\ntwo\n" and out["total_lines"] == 5 and out["read_to_end"] is True


async def test_a_huge_sparse_file_answers_its_first_line_without_reading_the_rest(root):
    # 6 GiB, almost all a hole: the first line, then NUL bytes to the end (read_file would count
    # lines through all of it before).
    huge = root / "huge.log"
    huge.write_bytes(b"first line\n" + b"x" * 9000 + b"\n")
    os.truncate(huge, 6 * 1024**3)
    out = await read_file(ReadFileArgs(path="huge.log", end_line=1), ctx_for(root))
    assert out["content"] == "first line\n"
    assert (out["start_line"], out["end_line"]) == (1, 1)
    assert out["size"] == 6 * 1024**3
    assert out["read_to_end"] is False and out["total_lines"] is None
    capped = await read_file(ReadFileArgs(path="huge.log"), ctx_for(root, tool_read_max_bytes=4096))
    assert capped["truncated"] is True and len(capped["content"]) == 4096
    assert capped["read_to_end"] is False and capped["total_lines"] is None


async def test_the_builtin_model_answers_from_a_read_that_stopped_early(root):
    huge = root / "huge.log"
    huge.write_bytes(b"first line\n" + b"more\n" * 100_000)
    out = await read_file(ReadFileArgs(path="huge.log", end_line=1), ctx_for(root))
    call = {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "huge.log"}'}}
    reply = decide([{"role": "user", "content": "How many lines has huge.log?"},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "call_1", "content": json.dumps(out)}], None, Options())
    assert "None" not in reply.text and "not to its end" in reply.text and "first line" in reply.text


@pytest.mark.parametrize("path,kind", [
    ("../outside/secret.txt", "invalid_path"),
    ("src/../../etc/passwd", "invalid_path"),
    ("/etc/passwd", "invalid_path"),
    ("~/.ssh/id_rsa", "invalid_path"),
    ("", "invalid_path"),
    ("leak.txt", "outside_root"),
    ("leakdir/secret.txt", "outside_root"),
    ("missing.txt", "not_found"),
    ("blob.bin", "binary_file"),
    ("src", "not_a_file"),
])
async def test_read_file_refusals(root, path, kind):
    with pytest.raises(ToolError) as err:
        await read_file(ReadFileArgs(path=path), ctx_for(root))
    assert err.value.kind == kind


async def test_a_symlink_inside_the_root_is_followed(root):
    out = await read_file(ReadFileArgs(path="inside-link.txt"), ctx_for(root))
    assert out["total_lines"] == 5 and out["path"] == "notes.txt"


async def test_list_dir_lists_without_following_symlinks(root):
    out = await list_dir(ListDirArgs(path="."), ctx_for(root))
    entries = {e["name"]: e for e in out["entries"]}
    assert entries["src"]["type"] == "dir"
    assert entries["notes.txt"] == {"name": "notes.txt", "type": "file", "size": 23}
    assert entries["leakdir"]["type"] == "symlink"
    assert [e["name"] for e in out["entries"]] == sorted(entries)
    with pytest.raises(ToolError) as err:
        await list_dir(ListDirArgs(path="leakdir"), ctx_for(root))
    assert err.value.kind == "outside_root"
    capped = await list_dir(ListDirArgs(path="."), ctx_for(root, tool_list_max_entries=2))
    assert len(capped["entries"]) == 2 and capped["truncated"] is True


# -- http_request against real local servers


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        """Quiet: no request log on stderr."""

    def do_GET(self):
        if self.path == "/ok":
            body = b"<html><title>hello</title>ok</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/big":
            body = b"z" * 100_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/slow":
            time.sleep(2)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_http_request_refuses_loopback_by_default(web, root):
    with pytest.raises(ToolError) as err:
        await http_request(HttpRequestArgs(url=f"{web}/ok"), ctx_for(root))
    assert err.value.kind == "address_refused"
    assert "loopback" in err.value.message


async def test_http_request_refuses_names_that_resolve_to_loopback(web, root):
    port = web.rsplit(":", 1)[1]
    with pytest.raises(ToolError) as err:
        await http_request(HttpRequestArgs(url=f"http://localhost:{port}/ok"), ctx_for(root))
    assert err.value.kind == "address_refused"


async def test_http_request_refuses_a_redirect_to_a_private_address(web, root):
    port = web.rsplit(":", 1)[1]
    ctx = ctx_for(root, tool_http_allow_hosts=f"127.0.0.1:{port}")  # the first hop is allowed...
    ok = await http_request(HttpRequestArgs(url=f"{web}/ok"), ctx)
    assert ok["status"] == 200
    with pytest.raises(ToolError) as err:  # ...but not where it redirects to
        await http_request(HttpRequestArgs(url=f"{web}/redirect?to=http://localhost:{port}/ok"), ctx)
    assert err.value.kind == "address_refused"


async def test_http_request_when_the_operator_allows_private_addresses(web, root):
    ctx = ctx_for(root, tool_http_allow_private=True)
    out = await http_request(HttpRequestArgs(url=f"{web}/redirect?to=/ok"), ctx)
    assert out["status"] == 200 and "hello" in out["body"]
    assert out["url"].endswith("/ok") and out["redirects"] == [f"{web}/redirect?to=/ok"]
    assert out["headers"]["content-type"].startswith("text/html")


async def test_http_request_caps_the_body(web, root):
    out = await http_request(
        HttpRequestArgs(url=f"{web}/big"), ctx_for(root, tool_http_allow_private=True, tool_http_max_bytes=1000)
    )
    assert out["bytes"] == 1000 and out["truncated"] is True


async def test_http_request_times_out(web, root):
    ctx = ctx_for(root, tool_http_allow_private=True)
    started = time.monotonic()
    with pytest.raises(ToolError) as err:
        await http_request(HttpRequestArgs(url=f"{web}/slow", timeout=0.3), ctx)
    assert err.value.kind == "timeout"
    assert time.monotonic() - started < 1.5


async def test_http_request_rejects_other_schemes(root):
    with pytest.raises(ToolError) as err:
        await http_request(HttpRequestArgs(url="file:///etc/passwd"), ctx_for(root))
    assert err.value.kind == "invalid_url"


@pytest.mark.parametrize("address,reason", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.1", "private"),
    ("172.16.5.4", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("::ffff:127.0.0.1", "loopback"), ("100.64.1.1", "shared (CGNAT)"), ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"), ("fd00::1", "private"), ("93.184.216.34", None), ("2606:4700::1111", None),
    # IPv6 addresses that carry an IPv4 address are judged by it too
    ("2002:c0a8:101::1", "6to4 of 192.168.1.1 (private)"), ("2002:7f00:1::", "6to4 of 127.0.0.1 (loopback)"),
    ("2002:a9fe:a9fe::1", "6to4 of 169.254.169.254 (link-local)"), ("2002:5db8:d822::1", None),
    ("64:ff9b::10.0.0.1", "NAT64 of 10.0.0.1 (private)"),
    ("64:ff9b::169.254.169.254", "NAT64 of 169.254.169.254 (link-local)"),
    ("64:ff9b::93.184.216.34", None), ("64:ff9b:1::a00:1", "local-use NAT64 (RFC 8215)"),
    ("64:ff9b:1::5db8:d822", "local-use NAT64 (RFC 8215)"),
    ("2001:0:a00:1:8000:63bf:3fff:fdd2", "Teredo server of 10.0.0.1 (private)"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo client of 10.0.0.1 (private)"),
    ("::127.0.0.1", "IPv4-compatible of 127.0.0.1 (loopback)"), ("::10.0.0.1", "IPv4-compatible of 10.0.0.1 (private)"),
    ("::93.184.216.34", "IPv4-compatible (deprecated, RFC 4291 §2.5.5.1)"),
    ("fec0::1", "site-local (deprecated)"), ("feff::1", "site-local (deprecated)"),
    ("::", "unspecified"),
])
def test_address_policy(address, reason):
    assert refusal_reason(address) == reason


# -- races and odd files: what is opened is what was checked


async def _attempt(coro) -> dict | ToolError:
    try:
        return await coro
    except ToolError as err:
        return err


async def test_a_directory_swapped_for_a_symlink_never_leads_out(tmp_path, files):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "passwd").write_text("inside\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("SECRET\n")
    (outside / "secret-file").write_text("SECRET\n")
    os.symlink(outside, root / "evil")  # absolute, out of the root
    os.symlink("../outside", root / "evil-relative")  # relative, climbing out
    stop = threading.Event()

    def swap() -> None:
        # "d" is the real directory, then (briefly absent) a symlink out, over and over.
        os.rename(root / "real", root / "d")
        while not stop.is_set():
            for link in ("evil", "evil-relative"):
                os.rename(root / "d", root / "real")
                os.rename(root / link, root / "d")
                os.rename(root / "d", root / link)
                os.rename(root / "real", root / "d")

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        ctx = ctx_for(root.resolve(), files)
        outcomes = [await _attempt(read_file(ReadFileArgs(path="d/passwd"), ctx)) for _ in range(400)]
        listings = [await _attempt(list_dir(ListDirArgs(path="d"), ctx)) for _ in range(400)]
    finally:
        stop.set()
        swapper.join()
    assert not [o for o in outcomes if not isinstance(o, ToolError) and "SECRET" in o["content"]]
    assert not [o for o in listings if not isinstance(o, ToolError) and "secret-file" in str(o["entries"])]
    assert {o.kind for o in outcomes if isinstance(o, ToolError)} <= {"not_found", "outside_root", "not_a_directory"}
    assert any(not isinstance(o, ToolError) for o in outcomes)  # the directory itself was read too


async def test_a_relative_symlink_climbing_out_and_a_loop_are_refused(root):
    os.symlink(f"../{root.name}-outside/secret.txt", root / "climb.txt")
    os.symlink("loop-b", root / "loop-a")
    os.symlink("loop-a", root / "loop-b")
    os.symlink("src/../notes.txt", root / "roundabout.txt")  # stays inside: followed
    for path, kind in (("climb.txt", "outside_root"), ("loop-a", "symlink_loop")):
        with pytest.raises(ToolError) as err:
            await read_file(ReadFileArgs(path=path), ctx_for(root))
        assert err.value.kind == kind, err.value.message
    out = await read_file(ReadFileArgs(path="roundabout.txt"), ctx_for(root))
    assert out["path"] == "notes.txt" and out["total_lines"] == 5


async def test_a_fifo_is_refused_without_waiting_for_a_writer(root):
    os.mkfifo(root / "pipe")
    with pytest.raises(ToolError) as err:
        await read_file(ReadFileArgs(path="pipe"), ctx_for(root))
    assert err.value.kind == "not_a_file" and "FIFO" in err.value.message
    with pytest.raises(ToolError) as err:
        await list_dir(ListDirArgs(path="pipe"), ctx_for(root))
    assert err.value.kind == "not_a_directory"
    listed = {e["name"]: e["type"] for e in (await list_dir(ListDirArgs(path="."), ctx_for(root)))["entries"]}
    assert listed["pipe"] == "other"


async def test_devices_are_refused(root):
    os.symlink("/dev/zero", root / "zeros")
    with pytest.raises(ToolError) as err:
        await read_file(ReadFileArgs(path="zeros"), ctx_for(root))
    assert err.value.kind == "outside_root"


async def test_a_file_swapped_for_a_fifo_never_blocks_a_call(root, files):
    (root / "spare.txt").write_text("plain text\n")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(root / "spare.txt", root / "swapped")
            os.mkfifo(root / "fifo-tmp")
            os.rename(root / "fifo-tmp", root / "swapped")  # the FIFO replaces the file...
            os.rename(root / "swapped", root / "fifo-gone")
            os.unlink(root / "fifo-gone")
            (root / "spare.txt").write_text("plain text\n")
            os.rename(root / "spare.txt", root / "swapped")  # ...and a file the FIFO
            os.rename(root / "swapped", root / "spare.txt")

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        ctx = ctx_for(root, files)
        outcomes = [await _attempt(read_file(ReadFileArgs(path="swapped"), ctx)) for _ in range(400)]
    finally:
        stop.set()
        swapper.join()
    kinds = {o.kind for o in outcomes if isinstance(o, ToolError)}
    assert kinds <= {"not_found", "not_a_file"}, kinds  # never "timeout": no call waited on the FIFO
    assert all(o["content"] == "plain text\n" for o in outcomes if not isinstance(o, ToolError))


async def test_a_stuck_file_call_does_not_hold_up_the_next_one():
    pool = FilePool(workers=2, timeout=0.5)
    release = threading.Event()
    try:
        with pytest.raises(ToolError) as err:
            await pool.run("read_file 'stuck'", lambda deadline: release.wait(60))
        assert err.value.kind == "timeout" and "read_file 'stuck'" in err.value.message
        assert await pool.run("read_file 'next'", lambda deadline: "answered") == "answered"
    finally:
        release.set()
        pool.close()
