"""The repository's documentation is self-contained: every tracked file cites only what a reader of
the repository can follow (our docs/, a spec section, an RFC, an upstream issue or URL).

Refused anywhere in a tracked file:

- the names of the research notes the project was first designed from, which are not in the
  repository (and the "design" card they were summed up in);
- the checklist codes of those notes (a capital A to N and a number, in brackets, in a range, as
  an assertion message or a comment): cite the section of docs/streaming.md or docs/nats.md instead;
- our own issue numbers ("issue" and a number): say what the rule is instead; an upstream issue is
  cited as ``owner/repo#N``;
- a path of the machine the project was built on.

And every citation of a section of our docs (a path under docs/, or the README, then a comma and
the section's name in double quotes) names a file that exists and a heading it has.

Files left out, and why: anything under ``node_modules/`` and minified or vendored builds
(``*.min.js``, ``vendor/``), which we do not write; ``package-lock.json``, which npm generates
(its integrity hashes are base64 and could match a pattern by chance); binary files (images).
Pure and fast: reads files, starts nothing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_CODE = r"[A-N]\d{1,2}"
_CODES = rf"{_CODE}(?:\s*[/,-]\s*{_CODE})*"

# The patterns are written so that this file's own source does not match them (a character class
# in the middle of each name), so no file needs to be left out for holding them.
FORBIDDEN: dict[str, re.Pattern[str]] = {
    "outside notes": re.compile(
        r"nats-note[s]|openai-streamin[g]|localai-agent[s]|llm-sse\.m[d]|\bdesign\.m[d]\b|design car[d]",
        re.IGNORECASE,
    ),
    "issue number": re.compile(r"\bissues?\s*#?\s*\d", re.IGNORECASE),
    "checklist code": re.compile(
        "|".join((
            # With X for a capital from A to N (the samples at the end are the real thing):
            rf"\(\s*{_CODES}\s*[),:]",  # (X10)  (X1-X7)  (X1, X1, X2)  (X2: ...
            rf"\b{_CODE}-{_CODE}\b",  # X1-X10
            rf"[\"']{_CODES}(?:[\"':]|\s\()",  # "X2"  "X6: no BOM"  "X2 (n=1)"
            rf"#\s+{_CODES}(?::|[ \t]*$)",  # a comment: hash, space, X4 and a colon or nothing
            rf",\s*{_CODE}\)",  # "... must stay, X4)"
        )),
        re.MULTILINE,
    ),
    "machine path": re.compile(r"(?<![\w.~-])/wor[k]/"),
}

CITATION = re.compile(r"\b(docs/[\w-]+\.md|README(?:\.md)?),\s+\"([^\"]{1,120})\"")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def _skipped(path: str) -> bool:
    parts = path.split("/")
    return ("node_modules" in parts or "vendor" in parts or path.endswith((".min.js", ".min.css"))
            or parts[-1] == "package-lock.json")


def tracked_texts() -> dict[str, str]:
    """Every tracked text file (``git ls-files``) but the ones left out (module doc): path → text."""
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    texts: dict[str, str] = {}
    for path in listing.decode().split("\0"):
        if not path or _skipped(path) or not (ROOT / path).is_file():
            continue
        data = (ROOT / path).read_bytes()
        if b"\0" in data:
            continue
        try:
            texts[path] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def offences(text: str) -> list[tuple[str, int, str]]:
    """``(kind, line, what matched)`` for every forbidden citation in ``text``."""
    found = []
    for kind, pattern in FORBIDDEN.items():
        for match in pattern.finditer(text):
            found.append((kind, text.count("\n", 0, match.start()) + 1, match.group(0).strip()))
    return found


def _headings(text: str) -> list[str]:
    return [h.strip("# ").strip() for h in HEADING.findall(text)]


def _has_section(headings: list[str], name: str) -> bool:
    """True when a heading is ``name``, or starts with it and goes on after a space, ``:`` or ``(``
    (README's "Ensembles: several agents, one answer" is cited as "Ensembles")."""
    return any(h == name or (h.startswith(name) and h[len(name)] in " :(") for h in headings)


def test_tracked_files_cite_only_what_the_repository_holds():
    texts = tracked_texts()
    assert "README.md" in texts and "docs/architecture.md" in texts  # the listing really is the repository
    problems = [f"{path}:{line}: {kind}: {what!r}" for path, text in sorted(texts.items())
                for kind, line, what in offences(text)]
    assert not problems, "cite our docs, a spec section or an upstream issue instead:\n" + "\n".join(problems)


def test_every_cited_section_of_our_docs_exists():
    texts = tracked_texts()
    headings = {path: _headings(text) for path, text in texts.items() if path.endswith(".md")}
    problems = []
    for path, text in sorted(texts.items()):
        for match in CITATION.finditer(text):
            doc = "README.md" if match.group(1).startswith("README") else match.group(1)
            name = " ".join(match.group(2).split())  # a name may be wrapped over two lines
            line = text.count("\n", 0, match.start()) + 1
            if doc not in headings:
                problems.append(f"{path}:{line}: {doc} does not exist")
            elif not _has_section(headings[doc], name):
                problems.append(f"{path}:{line}: {doc} has no section {name!r}")
    assert not problems, "\n".join(problems)


# The patterns themselves: what they must catch, and legitimate text they must leave alone. The
# samples that must be caught are assembled at run time, so this file's source holds none of them.
A, B, E, F, K = "A", "B", "E", "F", "K"


@pytest.mark.parametrize("sample", [
    f"keep-alives are comments ({B}5), written by the caller",
    f"tool_calls deltas for client-side tools ({E}1-{E}7), one finish chunk",
    f"cancels its run ({A}10); so does an edge",
    f"include_usage was true ({F}2: then every chunk carries",
    f"one chunk with one choice ({A}1, {B}1, {B}2).",
    f"framing rules {B}1-{B}10 and more",
    f'assert resp.status_code == 200, "{A}2"',
    f'assert not raw.startswith(bom), "{B}6: no BOM"',
    f"check_headers(resp)  # {A}1",
    f"    # {K}4: the model server failed",
    f"null must stay, {K}4).",
    "see " + "nats" + "-notes.md, section 2",
    "as the " + "design" + " card says",
    "the " + "openai" + "-streaming checklist",
    "(" + "issue" + " 5, item 6)",
    "Targets (" + "Issue" + " #6)",
    "read " + "/wo" + "rk/shared/x.md",
])
def test_the_patterns_catch_outside_citations(sample):
    assert offences(sample), sample


@pytest.mark.parametrize("sample", [
    "WHATWG HTML §9.2.6 and RFC 9110 §15.5.20",
    "answered 404, 409, 413 or 422; Retry-After (RFC 9110 §10.2.3)",
    'fill="#1f6feb" and color: #E11; background: #A1B2C3',
    '<path d="M3 11h3l2-6 2 6h3"/>',
    "nats-io/nats.py#447 and mudler/LocalAI#1187 (upstream issues)",
    "ADR-31 (direct get), ADR-32 (services), RFC 7230 tokens",
    "the issues corpus; open an issue on GitHub",
    "uuid 3f2a9c1e-8b7d-4e21-a1b2-c3d4e5f6a7b8",
    "docs/streaming.md, \"Tool call deltas\"",
    "an A4 page, a B2B sale, K8s, H2O",
    "/home/user/project and https://example.com/work/page",
])
def test_the_patterns_leave_legitimate_text_alone(sample):
    assert not offences(sample), offences(sample)
