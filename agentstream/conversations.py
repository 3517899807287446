"""Conversations: the runs that make one conversation, in order, kept in the CONVERSATIONS bucket.

A message posted with a ``conversation_id`` becomes a turn of that conversation: the edge appends
its run to the conversation's entry (``{tenant}.{sha256 of the id}``) before submitting it, by
compare-and-set, so turns are ordered the same for every edge. The agent runner that takes a
turn gives the model the earlier turns (agent_runner/conversation.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

import nats.js.errors
from nats.js.kv import KeyValue
from pydantic import Field

from schemas import subjects
from schemas.common import MessageId, Strict, Token

MAX_TURNS = 1000
"""Turns a conversation entry keeps (the oldest are forgotten first)."""
MAX_TRIES = 16


class Turn(Strict):
    """One turn: its run, the agent that answered, the client's message id, when it was posted."""

    run_id: Token
    agent: Token
    message_id: MessageId
    submitted_at: datetime


class Conversation(Strict):
    """A conversation: its id (as the client gave it), when it began, its turns in order."""

    conversation_id: str = Field(max_length=200)
    created_at: datetime
    updated_at: datetime
    turns: list[Turn] = Field(default_factory=list)

    @property
    def agents(self) -> list[str]:
        """The agents that answered in it, in order of first appearance."""
        return list(dict.fromkeys(t.agent for t in self.turns))

    def before(self, run_id: str) -> list[Turn]:
        """The turns before the one of ``run_id`` (all of them if it is not a turn)."""
        for i, turn in enumerate(self.turns):
            if turn.run_id == run_id:
                return self.turns[:i]
        return list(self.turns)


async def load(kv: KeyValue, tenant: str, conversation_id: str) -> tuple[Conversation | None, int]:
    """The conversation and its entry's revision (``(None, 0)`` if it has none)."""
    try:
        entry = await kv.get(subjects.conversation_key(tenant, conversation_id))
    except nats.js.errors.KeyNotFoundError:
        return None, 0
    return Conversation.model_validate_json(entry.value or b"{}"), int(entry.revision or 0)


async def append(kv: KeyValue, tenant: str, conversation_id: str, turn: Turn) -> Conversation:
    """Add ``turn`` to the conversation (created if new), by compare-and-set; returns it as stored.
    A turn whose run is already in it is not added again (a repeated submission).

    Raises nats errors, or RuntimeError when other writers kept winning.
    """
    key = subjects.conversation_key(tenant, conversation_id)
    for _ in range(MAX_TRIES):
        current, revision = await load(kv, tenant, conversation_id)
        now = datetime.now(UTC)
        conversation = current or Conversation(conversation_id=conversation_id, created_at=now, updated_at=now)
        if any(t.run_id == turn.run_id for t in conversation.turns):
            return conversation
        conversation.turns = [*conversation.turns, turn][-MAX_TURNS:]
        conversation.updated_at = now
        value = conversation.model_dump_json().encode()
        try:
            if revision:
                await kv.update(key, value, last=revision)
            else:
                await kv.create(key, value)
            return conversation
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
    raise RuntimeError(f"conversation {conversation_id!r}: {MAX_TRIES} conflicting writers")


async def forget(kv: KeyValue, tenant: str, conversation_id: str) -> bool:
    """Delete the conversation's entry; False when there was none."""
    current, _ = await load(kv, tenant, conversation_id)
    if current is None:
        return False
    await kv.delete(subjects.conversation_key(tenant, conversation_id))
    return True
