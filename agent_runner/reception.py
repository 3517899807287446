"""What happens to a delivered run request before it runs: refused when its tenant may not use its
agent, handed back for a moment while its conversation's previous turn is still running, held
while its agent is paused, then waiting for one of this runner's slots (agent_runner.intake),
kept alive all along; once it has a slot it goes to agent_runner.execution.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from pydantic import ValidationError

from agent_runner import conversation
from agent_runner.intake import keep_alive, nak
from agentstream import eventlog
from schemas import headers as H
from schemas import subjects
from schemas.errors import AgentstreamError, ErrorKind
from schemas.runs import RunRequest

if TYPE_CHECKING:
    from agent_runner.runner import AgentRunner

log = logging.getLogger(__name__)

TURN_WAIT = 0.5
"""Seconds before a conversation's turn whose previous turn is still running is offered again."""


class Reception:
    """Takes the requests ``runner``'s consumers deliver (:meth:`take`, agent_runner.intake's
    handler). ``handlers``: each request held now (its task) and whether it has a slot."""

    def __init__(self, runner: AgentRunner):
        self.runner = runner
        self.handlers: dict[asyncio.Task[None], bool] = {}

    async def take(self, msg: Msg, admitted: asyncio.Event) -> None:
        """One delivered request: refuse it if its tenant may not use its agent, else wait for a
        slot (kept alive meanwhile), then handle it. Sets ``admitted`` once it has a slot (or was
        refused), so its consumer's loop fetches the next (agent_runner.intake)."""
        r = self.runner
        task = asyncio.current_task()
        assert task is not None
        self.handlers[task] = False
        alive = asyncio.create_task(keep_alive(msg, r.settings.runner_ack_wait))
        try:
            if await self._forbidden(msg) or await self._waits_for_its_turn(msg):
                return
            try:
                await self._hold_while_paused(msg, admitted)
                await r.slots.acquire()
            except asyncio.CancelledError:
                await nak(msg)  # stopping before it got a slot: another runner takes it at once
                raise
            self.handlers[task] = True
            admitted.set()
            alive.cancel()
            try:
                await r.executor.handle(msg)
            finally:
                r.slots.release()
        except Exception:
            log.exception("run handler crashed")
        finally:
            admitted.set()
            alive.cancel()
            self.handlers.pop(task, None)

    async def _waits_for_its_turn(self, msg: Msg) -> bool:
        """True (and the request handed back for a moment) when the run is a conversation's turn
        whose previous turn has not ended yet (``on_busy: enqueue``)."""
        r = self.runner
        if r.conversations is None:
            return False
        try:
            request = RunRequest.model_validate_json(msg.data)
            tenant = subjects.parse_run_request(msg.subject).tenant
        except (ValidationError, subjects.SubjectTokenError):
            return False  # the executor refuses it
        if not conversation.is_turn(request):
            return False
        try:
            waiting = await conversation.previous_still_running(r.nc, r.conversations, tenant, request)
        except (eventlog.EventLogError, nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            log.warning("run %s: its conversation could not be read (%s); running it now", request.run_id, err)
            return False
        if waiting:
            await nak(msg, delay=TURN_WAIT)
        return waiting

    async def _forbidden(self, msg: Msg) -> bool:
        """True (and the run ended ``run.failed``) when the request's tenant may not use its agent."""
        r = self.runner
        if r.policies is None or not msg.subject.endswith(".run"):
            return False  # an ensemble member: its parent was checked
        try:
            where = subjects.parse_run_request(msg.subject)
        except subjects.SubjectTokenError:
            return False  # the executor terminates it
        policy = r.policies.get(where.tenant)
        if policy is None or policy.may_use(where.agent):
            return False
        problem = AgentstreamError(ErrorKind.FORBIDDEN_AGENT,
                                   f"tenant {where.tenant!r} may not use agent {where.agent!r}",
                                   reason="agent not allowed")
        log.warning("run request on %s refused: %s", msg.subject, problem.message)
        await r.opener.refuse(msg, where.tenant, where.agent, problem)
        return True

    async def _hold_while_paused(self, msg: Msg, admitted: asyncio.Event) -> None:
        """Resolve the request's agent from its tenant's catalog now (reading the AGENTS bucket if
        this runner has not seen the agent yet), and while the agent is paused hold the request:
        kept alive, holding no slot, its consumer free to deliver the next request (``admitted``
        is set). It goes on when the agent is resumed (or deleted), or the run is cancelled (it
        then ends ``run.cancelled``); nothing is written meanwhile, so the wait is no attempt of
        the run. Stopping hands it back (:meth:`take`)."""
        r = self.runner
        try:
            where = subjects.parse_run_request(msg.subject)
        except subjects.SubjectTokenError:
            return  # the executor terminates it
        if r.catalog.get(where.tenant, where.agent) is None:
            await r.catalog.resolve(where.tenant, where.agent)
        if r.catalog.paused(where.tenant, where.agent) is None:
            return
        admitted.set()
        log.info("run request on %s held: agent %s of %s is paused", msg.subject, where.agent, where.tenant)
        run = (where.tenant, (msg.headers or {}).get(H.MSG_ID, ""))
        while r.catalog.paused(where.tenant, where.agent) is not None and run not in r.cancels:
            with contextlib.suppress(TimeoutError):  # cancels are not catalog changes: look again each second
                await asyncio.wait_for(r.catalog.changed(), 1.0)
