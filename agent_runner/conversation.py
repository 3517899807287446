"""A turn of a conversation, as the agent runner prepares it: wait for the previous turn to end,
then give the model the earlier turns (agentstream/conversations.py keeps their order).

The history is rebuilt from the earlier turns' stored events: each completed turn is the user's
message, the steps in which the agent called its own tools (the calls and their results), and
the answer. Turns that did not complete are left out. Newest turns are kept whole while they fit
the agent's ``history_max_messages`` and ``history_max_tokens`` (tokens estimated as four
characters each); older ones are dropped.

A run whose request already carries a history (an OpenAI client sending the whole conversation,
AG-UI, a Responses continuation) is given no other: the client's history is the conversation.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from agent_runner.loop import StepCall, step_messages
from agent_runner.resume import fold
from agentstream import conversations, eventlog
from agentstream.conversations import Turn
from schemas import events as E
from schemas import subjects
from schemas.agents import AgentDefinition
from schemas.common import ChatMessage
from schemas.runs import RunRequest

CHARS_PER_TOKEN = 4


def is_turn(request: RunRequest) -> bool:
    """True when the runner adds the conversation's history to this run (see the module doc)."""
    return bool(request.conversation_id) and request.parent_run_id is None and not request.history


async def previous_still_running(nc: NATS, kv: KeyValue, tenant: str, request: RunRequest) -> bool:
    """True while the turn before this run's has not ended (the run must wait: ``enqueue``)."""
    assert request.conversation_id is not None
    conversation, _ = await conversations.load(kv, tenant, request.conversation_id)
    earlier = conversation.before(request.run_id) if conversation else []
    if not earlier:
        return False
    previous = earlier[-1]
    last = await eventlog.last_event(nc, subjects.run_events(tenant, previous.agent, previous.run_id))
    if last is None:
        return False  # never started and never will: its submission failed, or it was deleted
    return not (E.is_terminal(last.type) or E.is_deleted(last.type))


async def history_for(nc: NATS, kv: KeyValue, tenant: str, agent: AgentDefinition,
                      request: RunRequest) -> list[ChatMessage]:
    """The earlier turns of the run's conversation as chat messages, within the agent's budget."""
    assert request.conversation_id is not None
    conversation, _ = await conversations.load(kv, tenant, request.conversation_id)
    earlier = conversation.before(request.run_id) if conversation else []
    if not earlier or agent.history_max_messages == 0:
        return []
    earlier = earlier[-agent.history_max_messages:]  # a turn is at least one message
    rendered = await asyncio.gather(*(_turn_messages(nc, tenant, turn) for turn in earlier))
    kept: list[list[dict[str, Any]]] = []
    count = chars = 0
    for messages in reversed(rendered):
        size = sum(len(str(m.get("content") or "")) + len(str(m.get("tool_calls") or "")) for m in messages)
        if not messages:
            continue
        if count + len(messages) > agent.history_max_messages or \
                (chars + size) / CHARS_PER_TOKEN > agent.history_max_tokens:
            break
        kept.append(messages)
        count += len(messages)
        chars += size
    return [ChatMessage.model_validate(m) for messages in reversed(kept) for m in messages]


async def _turn_messages(nc: NATS, tenant: str, turn: Turn) -> list[dict[str, Any]]:
    events = await eventlog.read_list(nc, subjects.run_events(tenant, turn.agent, turn.run_id))
    if not events or events[-1].type != E.RUN_COMPLETED:
        return []
    history = fold(events)
    queued = next((ev.event for ev in events if isinstance(ev.event, E.RunQueued)), None)
    messages: list[dict[str, Any]] = []
    if queued is not None and queued.data.message:
        messages.append({"role": "user", "content": queued.data.message})
    for number in sorted(history.steps):
        record = history.steps[number]
        if record.calls and all(c.tool_call_id in record.results for c in record.calls):
            calls = [StepCall(id=c.tool_call_id, name=c.name, arguments=c.arguments) for c in record.calls]
            messages.extend(step_messages(record.text, calls, dict(record.results)))
    if history.completed is not None and history.completed.text:
        messages.append({"role": "assistant", "content": history.completed.text})
    return messages
