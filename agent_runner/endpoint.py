"""Which model server an agent talks to, and with which key.

Keys are secrets of the operator, and agent files are written by others, so a key goes only where
the operator sent it:

- ``LLM_API_KEY`` is sent only to the origin of ``LLM_BASE_URL`` (scheme, host and port, compared
  as RFC 6454 §4 defines an origin): an agent with its own ``llm.base_url`` elsewhere gets no key
  unless it names one;
- ``llm.api_key_env`` may name only variables matching ``LLM_KEY_ENV_PATTERN``, so an agent file
  cannot have ``HOME`` or another secret of the runner's environment sent to its server. Agent
  files are checked when they are loaded (:mod:`agentstream.agents`); this is checked again here.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent_runner.llm import LLMEndpoint
from agentstream.origins import origin, same_origin
from agentstream.settings import Settings
from schemas.agents import AgentDefinition, key_env_allowed, key_env_refusal

__all__ = ["llm_endpoint", "origin", "same_origin"]  # origin and same_origin: agentstream.origins

def llm_endpoint(
    agent: AgentDefinition, settings: Settings, default_base_url: str, environ: Mapping[str, str]
) -> LLMEndpoint:
    """Where ``agent``'s model is served and how: its ``llm`` block, else ``default_base_url``
    (LLM_BASE_URL, or the built-in model's URL when that is unset).

    The key: from ``environ[llm.api_key_env]`` if the agent names a variable; else LLM_API_KEY
    when the server is ``default_base_url``'s origin; else none. Raises ValueError (naming
    ``llm.api_key_env``) when the named variable does not match LLM_KEY_ENV_PATTERN or is not set.
    """
    llm = agent.llm
    base_url = (llm.base_url if llm and llm.base_url else None) or default_base_url
    global_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    api_key = global_key if same_origin(base_url, default_base_url) else None
    if llm and llm.api_key_env:
        if not key_env_allowed(llm.api_key_env, settings.llm_key_env_pattern):
            raise ValueError(f"agent {agent.name!r}: llm.api_key_env: "
                             f"{key_env_refusal(llm.api_key_env, settings.llm_key_env_pattern)}")
        api_key = environ.get(llm.api_key_env)
        if not api_key:
            raise ValueError(f"agent {agent.name!r} takes its LLM API key from ${llm.api_key_env}, which is not set")
    timeout = (llm.timeout if llm and llm.timeout else None) or settings.llm_timeout
    return LLMEndpoint(base_url=base_url, model=agent.model or settings.llm_model, api_key=api_key, timeout=timeout)
