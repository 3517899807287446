"""llm-sse's own settings, named when found in the environment instead of being silently ignored.

Someone moving from llm-sse (WolfusFlow/llm-sse) to agentstream may still export its variables:
``LLM_KEY`` (its model API key), ``USE_LLM_MOCK`` (its canned-answer mode) and ``HTTP_ADDR`` (its
listen address). agentstream reads none of them; at start-up each component that would have used
one logs a warning naming the agentstream setting that does the job (the README's configuration
table). A secret's value is never logged.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentstream.settings import Settings

EDGE_VARIABLES = ("HTTP_ADDR",)
"""llm-sse variables about serving HTTP: the edge names them."""
RUNNER_VARIABLES = ("LLM_KEY", "USE_LLM_MOCK")
"""llm-sse variables about the model: agent runners name them."""

_TRUE = {"1", "true", "yes", "on"}


def warnings(environ: Mapping[str, str], settings: Settings, variables: tuple[str, ...]) -> list[str]:
    """One message per llm-sse variable of ``variables`` set (non-empty) in ``environ``, naming
    what agentstream reads instead and what it does now with ``settings``."""
    out = []
    for name in variables:
        value = environ.get(name, "").strip()
        if not value:
            continue
        if name == "LLM_KEY":
            now = "LLM_API_KEY is set and is used" if settings.llm_api_key else "LLM_API_KEY is not set"
            out.append(f"LLM_KEY (llm-sse) is ignored: agentstream sends LLM_API_KEY to the model server "
                       f"(or an agent's llm.api_key_env); {now}")
        elif name == "USE_LLM_MOCK":
            wanted = value.lower() in _TRUE
            if settings.llm_base_url:
                now = ("LLM_BASE_URL is set, so agents use that server"
                       + ("; unset it for the built-in stand-in model" if wanted else ""))
            else:
                now = ("LLM_BASE_URL is not set, so agents use the built-in stand-in model"
                       + ("" if wanted else "; set LLM_BASE_URL (and LLM_MODEL) for a real one"))
            out.append(f"USE_LLM_MOCK (llm-sse) is ignored: agentstream's stand-in is chosen by leaving "
                       f"LLM_BASE_URL unset; {now}")
        elif name == "HTTP_ADDR":
            bind = f"0.0.0.0{value}" if value.startswith(":") else value
            out.append(f"HTTP_ADDR={value} (llm-sse) is ignored: the edge listens on EDGE_BIND "
                       f"(now {settings.edge_bind}); for that address set EDGE_BIND={bind}")
    return out
