"""When a tool call waits for a person's approval: the ``approval`` of an agent's action (or of an
MCP server), and the one function that decides it for a call.

In an agent file (README, "Approval of tool calls")::

    actions:
      - read_file                         # a bare name: never asks
      - name: http_request
        approval: required                # every call asks (``never``, the default, none does)
      - name: http_request
        approval:
          unless: {method: [GET, HEAD]}   # asks unless the method is GET or HEAD
      - name: read_file
        approval:
          when: {path: "secrets/*"}       # asks only for paths matching secrets/*

A rule has ``when``, ``unless`` or both; each maps argument names to what the argument must be:
one value, or a list of values (any of them will do). A string is a shell glob matched against
the argument's text (``fnmatch.fnmatchcase``: ``*``, ``?``, ``[...]``, case-sensitive); a number,
a boolean or null must equal the argument (JSON equality: ``1`` is not ``true``). A mapping
matches a call when every argument it names matches; an argument the call does not give matches
nothing, after the tool's own defaults are filled in (a built-in tool's: ``http_request``
without ``method`` is a GET). A call needs approval when ``when`` matches (or there is none) and
``unless`` does not (or there is none). ``unless`` is an allow-list: a call the rule did not
foresee (an argument missing, a new method) needs approval, which is the safe way round.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, ValidationInfo, ValidatorFunctionWrapHandler, model_validator
from pydantic_core import PydanticCustomError

from schemas.common import Strict

ArgumentName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
ArgumentValue = Annotated[str, StringConstraints(max_length=1024)] | int | float | bool | None
"""One value a rule allows for an argument (a string is a glob)."""
ArgumentMatch = ArgumentValue | Annotated[list[ArgumentValue], Field(min_length=1, max_length=64)]
"""What a rule says about one argument: a value, or a list of values any of which will do."""
Conditions = Annotated[dict[ArgumentName, ArgumentMatch], Field(min_length=1, max_length=32)]


class ApprovalRule(Strict):
    """``approval: {when: {...}, unless: {...}}``: see the module docstring. At least one of the two."""

    when: Conditions | None = None
    unless: Conditions | None = None

    @model_validator(mode="after")
    def _something(self) -> ApprovalRule:
        if self.when is None and self.unless is None:
            raise ValueError("a rule needs when or unless (or both); for every call write approval: required")
        return self


ApprovalPolicy = Literal["required", "never"] | ApprovalRule
"""An action's ``approval``: ``required``, ``never`` (the default) or an :class:`ApprovalRule`."""

POLICY_WORDS = ("required", "never")


def validate_policy(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> ApprovalPolicy:
    """Pydantic wrap validator for an ``approval`` field: errors name the field as written
    (``actions.1.approval.unless.method``), not a branch of the union."""
    if isinstance(value, ApprovalRule):
        return value
    if isinstance(value, dict):
        return ApprovalRule.model_validate(value)
    if value in POLICY_WORDS:
        word: Literal["required", "never"] = value
        return word
    raise PydanticCustomError(
        "approval_policy", "approval must be required, never, or a rule such as {unless: {method: [GET]}}")


def _equal(argument: Any, wanted: Any) -> bool:
    """JSON equality: a bool equals only a bool; an int or float equals the same number."""
    if isinstance(wanted, bool) or isinstance(argument, bool):
        return isinstance(wanted, bool) and isinstance(argument, bool) and wanted is argument
    if wanted is None:
        return argument is None
    if isinstance(wanted, (int, float)):
        return isinstance(argument, (int, float)) and argument == wanted
    return False


def _value_matches(argument: Any, wanted: Any) -> bool:
    if isinstance(wanted, str):
        return isinstance(argument, str) and fnmatchcase(argument, wanted)
    return _equal(argument, wanted)


def conditions_match(conditions: dict[str, Any], arguments: dict[str, Any]) -> bool:
    """True when every argument ``conditions`` names is in ``arguments`` and matches one of its
    allowed values (see the module docstring)."""
    for name, wanted in conditions.items():
        if name not in arguments:
            return False
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if not any(_value_matches(arguments[name], w) for w in allowed):
            return False
    return True


def needs_approval(policy: ApprovalPolicy, arguments: dict[str, Any]) -> bool:
    """Whether a call with ``arguments`` (a JSON object, the tool's defaults filled in) needs a
    person's approval under ``policy``."""
    if policy == "never":
        return False
    if policy == "required":
        return True
    assert isinstance(policy, ApprovalRule)
    if policy.when is not None and not conditions_match(policy.when, arguments):
        return False
    return not (policy.unless is not None and conditions_match(policy.unless, arguments))
