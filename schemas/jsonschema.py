"""JSON Schema files for the contracts, generated from the models and committed in ``schemas/json``.

``python -m schemas.jsonschema`` rewrites them; a test fails when the committed files differ from
what the models generate (so the files other languages code against never drift).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from schemas.agents import AgentDefinition
from schemas.events import RunEvent
from schemas.runs import DeadLetter, RunControl, RunRequest
from schemas.tools import ToolCallRequest, ToolCallResult
from schemas.webhooks import WebhookJob

JSON_DIR = Path(__file__).resolve().parent / "json"

MODELS: dict[str, Any] = {
    "run-request": RunRequest,
    "run-event": RunEvent,
    "run-control": RunControl,
    "dead-letter": DeadLetter,
    "tool-call-request": ToolCallRequest,
    "tool-call-result": ToolCallResult,
    "agent-definition": AgentDefinition,
    "webhook-job": WebhookJob,
}
"""File stem -> model (or annotated union) it is generated from."""


def generate() -> dict[str, str]:
    """``{file name: JSON text}`` for every contract (JSON Schema draft 2020-12)."""
    out = {}
    for stem, model in MODELS.items():
        schema = TypeAdapter(model).json_schema(mode="validation")
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://agentstream.dev/schemas/{stem}.schema.json",
            **schema,
        }
        schema.setdefault("title", stem)
        out[f"{stem}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write(directory: Path = JSON_DIR) -> list[Path]:
    """Write every schema file; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in generate().items():
        path = directory / name
        path.write_text(text)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write():
        print(p.relative_to(Path.cwd()) if p.is_relative_to(Path.cwd()) else p)
    sys.exit(0)
