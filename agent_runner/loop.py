"""The agent loop: LLM step → tool calls (concurrently) → LLM step … up to ``max_steps``.

Every step is written as events through the run's :class:`RunEventWriter`: text deltas while the
model streams, ``tool.call`` once a step's calls are complete, ``tool.result`` as each finishes,
``message.completed`` with the final answer. The last allowed step is offered no server-side
tools, so the model has to answer. The terminal event is the caller's job (agent_runner.execution).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from agent_runner import metrics
from agent_runner.event_writer import RunEventWriter
from agent_runner.llm import LLMClient, LLMEndpoint, ToolCallAccum
from agent_runner.mcp_tools import McpTool, McpToolLister
from agent_runner.resume import ResumePlan
from agent_runner.tool_client import ToolClient, ToolOutcome
from agentstream import tracing
from agentstream.agents import Skill
from agentstream.metrics import bounded
from agentstream.openai_format import new_tool_call_id
from schemas import events as E
from schemas import subjects
from schemas.agents import RESERVED_PARAMETERS, AgentDefinition
from schemas.common import ErrorInfo, FunctionCall, ToolCallRef, Usage
from schemas.errors import AgentstreamError, ErrorKind
from schemas.runs import RunRequest
from schemas.tools import BUILTIN_AGENT_TOOLS, LOAD_SKILL, TOOL_RUNNER_TOOLS, json_schema_for_llm

log = logging.getLogger(__name__)


class MaxStepsExceeded(AgentstreamError):
    """The model still asked for tools after its last allowed step (``max_steps``)."""

    reason = "max_steps reached"

    def __init__(self, message: str):
        super().__init__(ErrorKind.MAX_STEPS, message)


class AwaitingApproval(Exception):
    """Calls of step ``step`` wait for a person's approval (their agent's ``approval`` rule matched
    them and no decision is known yet). The step's other server-side calls have run and their
    results are stored; the runner stores the wait and lets the run go (agent_runner.suspension)."""

    def __init__(self, step: int, calls: list[StepCall]):
        super().__init__(f"{len(calls)} tool call(s) of step {step} wait for approval")
        self.step = step
        self.calls = calls


@dataclass(frozen=True)
class StepCall:
    """One tool call of a step as the loop handles it: unlike a streamed ToolCallAccum, it has an id
    (the model's, or one made up for it) and JSON arguments."""

    id: str
    name: str
    arguments: str


@dataclass
class RunContext:
    """Everything one run attempt needs. ``usage`` and ``steps`` grow as it goes (also on failure)."""

    tenant: str
    agent: AgentDefinition
    request: RunRequest
    writer: RunEventWriter
    llm: LLMClient
    endpoint: LLMEndpoint
    tools: ToolClient
    skills: list[Skill]
    usage: Usage = field(default_factory=Usage)
    steps: int = 0
    extra_usage: Usage = field(default_factory=Usage)
    """Usage spent outside this loop but on this run (an ensemble's members)."""
    mcp: McpToolLister | None = None
    """Where the agent's MCP servers' tools are learnt (agent_runner.mcp_tools); None: no MCP."""
    mcp_tools: dict[str, McpTool] = field(default_factory=dict)
    """The MCP tools this run offers, by the model's name for them (filled when the run starts)."""
    decisions: dict[str, E.ToolApprovalDecidedData] = field(default_factory=dict)
    """Approval decisions known for this run's calls, by tool call id (from its events)."""

    @property
    def total_usage(self) -> Usage:
        """What the run's terminal event reports."""
        return self.usage + self.extra_usage


def system_prompt(agent: AgentDefinition, skills: list[Skill]) -> str:
    """The agent's system prompt, plus the list of skills it can load (names and one-liners)."""
    prompt = agent.system_prompt.strip()
    if skills:
        lines = "\n".join(f"- {s.name}: {s.description}" for s in skills)
        prompt = f"{prompt}\n\nSkills you can load with the load_skill tool when they are relevant:\n{lines}".strip()
    return prompt


def initial_messages(agent: AgentDefinition, skills: list[Skill], request: RunRequest) -> list[dict[str, Any]]:
    """System prompt first, then the request's history, then its message."""
    messages: list[dict[str, Any]] = []
    prompt = system_prompt(agent, skills)
    if prompt:
        messages.append({"role": "system", "content": prompt})
    messages.extend(m.model_dump(mode="json", exclude_none=True) for m in request.history)
    if request.message is not None and request.message.strip():
        messages.append({"role": "user", "content": request.message})
    return messages


def tool_definitions(agent: AgentDefinition, skills: list[Skill]) -> list[dict[str, Any]]:
    """OpenAI ``tools`` for the agent's actions, plus ``load_skill`` when it has skills."""
    defs = [TOOL_RUNNER_TOOLS[name].function_definition() for name in agent.tool_names]
    if skills:
        params = json_schema_for_llm(LOAD_SKILL.args)
        params["properties"]["name"]["enum"] = [s.name for s in skills]
        defs.append(LOAD_SKILL.function_definition(params))
    return defs


REQUEST_ONLY_PARAMETERS = frozenset({"tool_choice"})
"""Set by a run request (an OpenAI client), never by an agent file; applies to the first step only."""


def llm_parameters(agent: AgentDefinition, request: RunRequest) -> dict[str, Any]:
    """The agent's parameters with the run's overrides on top; fields the runner owns dropped
    (a run may set ``tool_choice``, for its first step)."""
    merged = {**agent.parameters, **request.parameters}
    return {k: v for k, v in merged.items() if k not in RESERVED_PARAMETERS or (k in REQUEST_ONLY_PARAMETERS
            and k in request.parameters)}


async def run_agent(ctx: RunContext, plan: ResumePlan | None = None) -> E.MessageCompletedData:
    """Run the loop to its final answer (already written as ``message.completed``).

    ``plan``: continue a run an earlier attempt left unfinished (agent_runner.resume).
    Raises LLMError, MaxStepsExceeded, OwnershipLost; CancelledError on cancel or timeout.
    """
    agent, request, writer = ctx.agent, ctx.request, ctx.writer
    messages = initial_messages(agent, ctx.skills, request)
    if ctx.mcp is not None and agent.mcp_servers:
        ctx.mcp_tools = await ctx.mcp.tools_for(ctx.tenant, agent, request.run_id)
    server_tools = tool_definitions(agent, ctx.skills) + [t.definition for t in ctx.mcp_tools.values()]
    client_tools = [t.model_dump(mode="json") for t in request.tools]
    client_names = {t.function["name"] for t in request.tools if isinstance(t.function.get("name"), str)}
    parameters = llm_parameters(agent, request)

    step = 1
    if plan is not None:
        ctx.usage = plan.usage
        for record in plan.finished:
            messages.extend(step_messages(record.text, [_step_call(c) for c in record.calls], record.results))
        step = plan.step
        if plan.pending is not None:
            record = plan.pending
            ctx.steps = step
            done = await _finish_step(ctx, step, record.text, [_step_call(c) for c in record.calls], record.results,
                                      messages, client_names, record.usage)
            if done is not None:
                return done
            step += 1

    while step <= agent.max_steps:
        ctx.steps = step
        last = step == agent.max_steps
        offered = ([] if last else server_tools) + client_tools

        async def on_text(text: str, _step: int = step) -> None:
            await writer.delta(_step, text)

        step_parameters = parameters if step == 1 else {
            k: v for k, v in parameters.items() if k not in REQUEST_ONLY_PARAMETERS
        }
        if not offered:
            step_parameters = {k: v for k, v in step_parameters.items() if k != "tool_choice"}
        result = await ctx.llm.chat(ctx.endpoint, messages, tools=offered or None, parameters=step_parameters,
                                    on_text=on_text)
        ctx.usage = ctx.usage + result.usage
        await writer.flush()

        if not result.tool_calls:
            done = E.MessageCompletedData(text=result.text, finish_reason=_final_finish_reason(result.finish_reason),
                                          steps=step, usage=result.usage)
            await writer.emit(E.MESSAGE_COMPLETED, done)
            return done

        calls = [_normalise(c) for c in result.tool_calls]
        if last and any(c.name not in client_names for c in calls):
            raise MaxStepsExceeded(
                f"the model still called tools after its last allowed step ({agent.max_steps}); raise max_steps"
            )
        for i, call in enumerate(calls):
            await writer.emit(
                E.TOOL_CALL,
                E.ToolCallData(step=step, tool_call_id=call.id, name=call.name, arguments=call.arguments,
                               client=call.name in client_names, usage=result.usage if i == 0 else None),
            )
        done = await _finish_step(ctx, step, result.text, calls, {}, messages, client_names, result.usage)
        if done is not None:
            return done
        step += 1
    raise MaxStepsExceeded(f"no answer within max_steps ({agent.max_steps})")


async def _finish_step(
    ctx: RunContext,
    step: int,
    text: str,
    calls: list[StepCall],
    known: dict[str, E.ToolResultData],
    messages: list[dict[str, Any]],
    client_names: set[str],
    usage: Usage | None,
) -> E.MessageCompletedData | None:
    """Produce the step's missing tool results (server-side calls run concurrently; results already
    stored are reused), then either end the run (client-side calls: the client executes them) or
    add the step to ``messages`` and return None to go on."""
    server_calls = [c for c in calls if c.name not in client_names]
    client_calls = [c for c in calls if c.name in client_names]
    waiting = [c for c in server_calls if c.id not in known and c.id not in ctx.decisions and needs_approval(ctx, c)]
    if waiting:
        # The calls that need no approval run now (a resumed attempt reuses their stored results).
        await asyncio.gather(*(_execute(ctx, step, c) for c in server_calls
                               if c.id not in known and c not in waiting and c.id not in ctx.decisions))
        raise AwaitingApproval(step, waiting)
    outcomes = await asyncio.gather(*(
        _reuse(known[c.id]) if c.id in known else _decided(ctx, step, c, ctx.decisions[c.id])
        if c.id in ctx.decisions else _execute(ctx, step, c) for c in server_calls
    ))
    if client_calls:
        refs = [ToolCallRef(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in client_calls]
        done = E.MessageCompletedData(text=text, finish_reason="tool_calls", tool_calls=refs, steps=step, usage=usage)
        await ctx.writer.emit(E.MESSAGE_COMPLETED, done)
        return done
    messages.extend(step_messages(text, calls, dict(zip((c.id for c in server_calls), outcomes, strict=True))))
    return None


def step_messages(text: str, calls: list[StepCall], results: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished step as the model sees it next time: its assistant message (text and tool
    calls), then one ``tool`` message per call (``results``: ToolOutcome or ToolResultData by id)."""
    out: list[dict[str, Any]] = [
        {
            "role": "assistant",
            "content": text or None,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
            ],
        }
    ]
    for call in calls:
        result = results.get(call.id)
        content = tool_message_content(result) if result is not None else json.dumps(
            {"error": {"type": ErrorKind.MISSING_RESULT, "message": "no result was recorded for this call"}})
        out.append({"role": "tool", "tool_call_id": call.id, "content": content})
    return out


async def _reuse(result: E.ToolResultData) -> E.ToolResultData:
    return result


def needs_approval(ctx: RunContext, call: StepCall) -> bool:
    """Whether a server-side call waits for a person's approval: its action's (or MCP server's)
    ``approval`` rule matches its arguments (schemas/approval_rules.py). Arguments that are not a
    JSON object never wait: the call fails without running anyway."""
    mcp = ctx.mcp_tools.get(call.name)
    if mcp is not None:
        server = next((s for s in ctx.agent.mcp_servers if s.name == mcp.server), None)
        if server is None or server.approval == "never":
            return False
    elif ctx.agent.approval_of(call.name) == "never":
        return False  # the common case: no parsing
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        return False
    if not isinstance(arguments, dict):
        return False
    if mcp is not None:
        return ctx.agent.call_needs_approval(call.name, arguments, mcp_server=mcp.server)
    return ctx.agent.call_needs_approval(call.name, arguments)


def rejection(decision: E.ToolApprovalDecidedData, timeout: float) -> ErrorInfo:
    """The error a rejected call answers the model with (its ``tool.result``)."""
    if decision.by == "timeout":
        message = f"this call was not approved within the agent's approval_timeout ({timeout:g} s), so it did not run"
    else:
        message = "a person rejected this call, so it did not run"
    if decision.reason:
        message += f"; reason: {decision.reason}"
    return ErrorInfo(type=ErrorKind.APPROVAL_REJECTED, message=message)


async def _decided(ctx: RunContext, step: int, call: StepCall, decision: E.ToolApprovalDecidedData) -> ToolOutcome:
    """A call that waited for approval: run it if approved, else write its rejection as its result."""
    if decision.decision == "approved":
        return await _execute(ctx, step, call)
    outcome = ToolOutcome(ok=False, error=rejection(decision, ctx.agent.approval_timeout), attempts=0)
    await ctx.writer.emit(E.TOOL_RESULT, E.ToolResultData(
        step=step, tool_call_id=call.id, name=call.name, ok=False, error=outcome.error, ms=0.0, attempts=0))
    return outcome


def _step_call(call: E.ToolCallData) -> StepCall:
    return StepCall(id=call.tool_call_id, name=call.name, arguments=call.arguments)


def tool_message_content(outcome: ToolOutcome | E.ToolResultData) -> str:
    """What the model reads as a tool's answer: the output as JSON, or ``{"error": {type, message}}``."""
    if outcome.ok:
        return json.dumps(outcome.output, ensure_ascii=False)
    return json.dumps(
        {"error": outcome.error.model_dump() if outcome.error else {"type": "error", "message": "failed"}}
    )


def _normalise(call: ToolCallAccum) -> StepCall:
    return StepCall(id=call.id or new_tool_call_id(), name=call.name, arguments=call.arguments or "{}")


def _final_finish_reason(reason: str | None) -> E.FinishReason:
    """The finish reason of a step without tool calls: the model's, if it is one of these, else ``stop``."""
    match reason:
        case "length" | "content_filter":
            return reason
    return "stop"


KNOWN_TOOLS = frozenset(TOOL_RUNNER_TOOLS) | frozenset(BUILTIN_AGENT_TOOLS)
"""Tool names that are metric label values (any other name the model writes is ``_unknown``)."""


def _tool_label(ctx: RunContext, name: str) -> str:
    """The metric label and span name of tool ``name``: a known tool's name, ``mcp`` for any MCP
    server's tool (their names come from servers: unbounded), else ``_unknown``."""
    if name in ctx.mcp_tools:
        return subjects.MCP_CALL_TOOL
    return bounded(name, KNOWN_TOOLS)


async def _execute(ctx: RunContext, step: int, call: StepCall) -> ToolOutcome:
    """Run one server-side tool call (a span of the run's trace, whose context its request
    carries to the tool runner), count it, and write its ``tool.result``."""
    started = time.perf_counter()
    label = _tool_label(ctx, call.name)
    with tracing.span(f"execute_tool {label}", kind=tracing.SpanKind.CLIENT,
                      attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": call.name,
                                  "gen_ai.tool.call.id": call.id, "agentstream.step": step}) as span:
        outcome = await _outcome(ctx, step, call, started)
        error_type = outcome.error.type if outcome.error is not None else None
        metrics.tool_call(label, outcome.ms / 1000, error_type)
        if span is not None:
            span.set_attribute("agentstream.attempts", outcome.attempts)
            if outcome.runner:
                span.set_attribute("agentstream.tool_runner", outcome.runner)
            if error_type is not None:
                tracing.mark_error(span, error_type)
    await ctx.writer.emit(
        E.TOOL_RESULT,
        E.ToolResultData(
            step=step, tool_call_id=call.id, name=call.name, ok=outcome.ok, output=outcome.output,
            error=outcome.error, ms=outcome.ms, attempts=outcome.attempts, runner=outcome.runner,
        ),
    )
    return outcome


async def _outcome(ctx: RunContext, step: int, call: StepCall, started: float) -> ToolOutcome:
    """What one tool call answered (a tool runner's result, a skill, or an error), with its ``ms``."""
    try:
        arguments = json.loads(call.arguments)
        if not isinstance(arguments, dict):
            raise ValueError("arguments must be a JSON object")
    except ValueError as err:
        outcome = ToolOutcome(
            ok=False, error=ErrorInfo(type=ErrorKind.INVALID_ARGUMENTS,
                                      message=f"arguments are not a JSON object: {err}")
        )
    else:
        if call.name in BUILTIN_AGENT_TOOLS:
            outcome = _load_skill(ctx, arguments)
        elif call.name in ctx.agent.tool_names:
            outcome = await ctx.tools.call(
                ctx.tenant,
                call.name,
                run_id=ctx.request.run_id,
                tool_call_id=call.id,
                idempotency_key=f"{ctx.request.run_id}:{step}:{call.id}",
                arguments=arguments,
                budget=ctx.agent.tool_timeout,
            )
        elif call.name in ctx.mcp_tools:
            outcome = await ctx.tools.call(
                ctx.tenant,
                subjects.MCP_CALL_TOOL,
                run_id=ctx.request.run_id,
                tool_call_id=call.id,
                idempotency_key=f"{ctx.request.run_id}:{step}:{call.id}",
                arguments=ctx.mcp_tools[call.name].request_arguments(ctx.agent.name, arguments),
                budget=ctx.agent.tool_timeout,
            )
        else:
            offered = [*ctx.agent.tool_names, *(["load_skill"] if ctx.skills else []), *ctx.mcp_tools]
            available = ", ".join(offered) or "none"
            outcome = ToolOutcome(
                ok=False,
                error=ErrorInfo(type=ErrorKind.UNKNOWN_TOOL,
                                message=f"there is no tool {call.name!r}; available: {available}"),
            )
    if not outcome.ms:
        outcome.ms = round((time.perf_counter() - started) * 1000, 3)
    return outcome


def _load_skill(ctx: RunContext, arguments: dict[str, Any]) -> ToolOutcome:
    name = arguments.get("name")
    for skill in ctx.skills:
        if skill.name == name:
            return ToolOutcome(ok=True, output={"name": skill.name, "text": skill.text})
    known = ", ".join(s.name for s in ctx.skills) or "none"
    return ToolOutcome(
        ok=False, error=ErrorInfo(type=ErrorKind.UNKNOWN_SKILL,
                                  message=f"no skill {name!r}; this agent's skills: {known}")
    )
