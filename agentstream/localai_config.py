"""LocalAI's agent configuration, as its agent pool takes it on create, mapped to an agent document.

LocalAI's agents are LocalAGI's: the create body is LocalAGI's ``AgentConfig`` (mudler/LocalAGI,
``core/state/config.go``): ``name``, ``description``, ``model``, ``system_prompt``, ``api_url``,
``actions`` (``[{"name", "config"}]``), and many fields for features agentstream does not have
(connectors, MCP servers, knowledge base, periodic runs, ...). A client written for LocalAI sends
all of them, most at their zero value. :func:`from_localai` maps what has a meaning here:

============================  ===============================================================
LocalAI field                 agentstream
============================  ===============================================================
``name``, ``description``,    the same fields
``model``, ``system_prompt``
``api_url``                   ``llm.base_url``
``actions: [{name, config}]``  ``actions: [name]`` (a tool of the tool runners; no ``config``)
``api_key``                   refused: keys are never stored; the agent names an environment
                              variable of the agent runners in ``llm.api_key_env``
anything else                 accepted at its zero value (``false``, ``""``, ``0``, ``[]``,
                              ``{}``, ``null``) or, for the knowledge base's settings, at
                              LocalAI's default (the knowledge base being off); refused with
                              the field named otherwise
============================  ===============================================================

A refusal is a :class:`LocalAIFieldError` naming the field (``connectors``, ``actions.0.config``).
Fields that are not LocalAI's are left for :class:`schemas.agents.AgentDefinition` to judge.
"""

from __future__ import annotations

from typing import Any

UNSUPPORTED = frozenset({
    "connectors", "dynamic_prompts", "mcp_servers", "mcp_stdio_servers", "mcp_prepare_script", "filters",
    "multimodal_model", "transcription_model", "transcription_language", "tts_model", "local_rag_url",
    "local_rag_api_key", "last_message_duration", "hud", "standalone_job", "random_identity",
    "initiate_conversations", "enable_planning", "plan_reviewer_model", "disable_sink_state", "identity_guidance",
    "periodic_runs", "scheduler_poll_interval", "scheduler_task_template", "permanent_goal", "enable_kb",
    "enable_kb_compaction", "kb_compaction_interval", "kb_compaction_summarize", "kb_auto_search", "kb_as_tools",
    "enable_reasoning", "enable_reasoning_tool", "enable_guided_tools", "enable_skills", "kb_results",
    "can_stop_itself", "skills_prompt", "inner_monologue_template", "long_term_memory", "summary_long_term_memory",
    "conversation_storage_mode", "parallel_jobs", "cancel_previous_on_new_message", "strip_thinking_tags",
    "enable_evaluation", "max_evaluation_loops", "max_attempts", "loop_detection",
})
"""LocalAI fields for features agentstream does not have: accepted only when inert."""

INERT_DEFAULTS: dict[str, Any] = {
    "kb_results": 5,
    "kb_compaction_interval": "daily",
    "kb_compaction_summarize": True,
    "kb_auto_search": True,
    "conversation_storage_mode": "user_only",
}
"""LocalAI's defaults for the knowledge base's settings (its web UI sends them): inert while the
knowledge base (``enable_kb``) is off, which it must be here."""


class LocalAIFieldError(ValueError):
    """A LocalAI field that cannot be honoured. ``field``: its dotted path; the message says why."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _own_action(action: Any) -> bool:
    """True for agentstream's own action entry with an approval rule (``{name, approval}``:
    schemas/agents.py), which is not LocalAI's ``{name, config}``."""
    return isinstance(action, dict) and "approval" in action and set(action) <= {"name", "approval"}


def is_localai(doc: dict[str, Any]) -> bool:
    """True when ``doc`` has a field only LocalAI's configuration has, or LocalAI's shape of actions."""
    actions = doc.get("actions")
    return bool(set(doc) & (UNSUPPORTED | {"api_url", "api_key"})) or (
        isinstance(actions, list) and any(isinstance(a, dict) and not _own_action(a) for a in actions)
    )


def from_localai(doc: dict[str, Any]) -> dict[str, Any]:
    """The agent document for a LocalAI agent configuration ``doc`` (see the module docstring);
    ``doc`` itself is left unchanged. A document without LocalAI's fields comes back as it is.

    Raises :class:`LocalAIFieldError` naming the first field that does not map.
    """
    if not is_localai(doc):
        return doc
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "api_key":
            if _inert(value):
                continue
            raise LocalAIFieldError("api_key", "field 'api_key' is not supported: agentstream never stores a key; put "
                                    "it in an environment variable of the agent runners (matching "
                                    "LLM_KEY_ENV_PATTERN) and name that variable in llm.api_key_env")
        if key == "api_url":
            if _inert(value):
                continue
            if "llm" in doc:
                raise LocalAIFieldError("api_url", "set either 'api_url' (LocalAI's) or 'llm.base_url', not both")
            out["llm"] = {"base_url": value}
        elif key == "actions":
            out["actions"] = _actions(value)
        elif key in UNSUPPORTED:
            if _inert(value) or INERT_DEFAULTS.get(key, _NO_DEFAULT) == value:
                continue
            raise LocalAIFieldError(key, f"field {key!r} is not supported")
        elif key in ("description", "model", "system_prompt") and value is None:
            continue  # LocalAI's zero value; the agent's default applies
        else:
            out[key] = value
    if out.get("model") == "":
        del out["model"]  # LocalAI's "no model": LLM_MODEL applies, as in LocalAI
    return out


_NO_DEFAULT = object()


def _inert(value: Any) -> bool:
    """True for a zero value: ``false``, ``""``, ``0``, ``[]``, ``{}``, ``null``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0
    return value is None or value in ("", [], {})


def _actions(value: Any) -> Any:
    if not isinstance(value, list):
        return value  # AgentDefinition says what is wrong
    names: list[Any] = []
    for i, action in enumerate(value):
        if not isinstance(action, dict) or _own_action(action):
            names.append(action)  # a name, or agentstream's own {name, approval}
            continue
        unknown = sorted(set(action) - {"name", "config"})
        if unknown:
            raise LocalAIFieldError(f"actions.{i}.{unknown[0]}", f"field 'actions.{i}.{unknown[0]}' is not supported")
        config = action.get("config")
        if not (config is None or (isinstance(config, str) and config.strip() in ("", "{}")) or config == {}):
            raise LocalAIFieldError(f"actions.{i}.config", f"field 'actions.{i}.config' is not supported: "
                                    "agentstream's tools take no configuration per agent")
        names.append(action.get("name"))
    return names
