"""Schedule arithmetic without processes: when ticks are (every, cron in a time zone, across a
daylight-saving change), which ticks fire after an outage for each ``catch_up``, and how a
schedule's definition is checked (each refusal names its field)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from agentstream.ticks import Plan, Timing, plan
from schemas.agents import AgentDefinition
from schemas.schedules import ScheduleBody, ScheduleError, checked, parse_every, scheduled_run_id


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


EVERY_10 = Timing(anchor=1000, every=10)


def test_every_ticks_from_its_anchor() -> None:
    assert EVERY_10.next_after(1000) == 1010
    assert EVERY_10.next_after(1009) == 1010
    assert EVERY_10.next_after(1010) == 1020
    assert EVERY_10.next_after(500) == 1000
    assert EVERY_10.latest_at_or_before(1019) == 1010
    assert EVERY_10.latest_at_or_before(1020) == 1020
    assert EVERY_10.latest_at_or_before(999) is None
    assert EVERY_10.before(1020) == 1010
    assert EVERY_10.count_between(1000, 1050) == 4  # 1010 1020 1030 1040
    assert EVERY_10.count_between(1000, 1010) == 0
    assert EVERY_10.count_between(1005, 1011) == 1


def test_cron_ticks_in_its_time_zone_across_daylight_saving() -> None:
    nine = Timing(anchor=0, cron="0 9 * * *", timezone="Europe/Berlin")
    # 30 March 2025: clocks go forward in Berlin; 09:00 stays 09:00 local (07:00 UTC after, 08:00 before).
    before = nine.next_after(at("2025-03-29T00:00:00+00:00"))
    after = nine.next_after(before)
    assert datetime.fromtimestamp(before, UTC).hour == 8
    assert datetime.fromtimestamp(after, UTC).hour == 7
    assert after - before == 23 * 3600
    assert nine.latest_at_or_before(after) == after
    assert nine.latest_at_or_before(after - 1) == before
    assert nine.before(after) == before
    assert nine.count_between(before - 1, after + 1) == 2
    seconds = Timing(anchor=0, cron="* * * * * */5")  # six fields: seconds last (croniter)
    assert seconds.next_after(at("2025-01-01T00:00:01+00:00")) == at("2025-01-01T00:00:05+00:00")


def test_an_on_time_tick_fires_alone() -> None:
    for catch_up in ("none", "one", "all"):
        assert plan(EVERY_10, 1000, 1010.3, catch_up=catch_up, grace=60, max_catch_up=100) == Plan((1010,), 0, 1010)
        assert plan(EVERY_10, 1010, 1019.9, catch_up=catch_up, grace=60, max_catch_up=100) == Plan((), 0, 1010)


@pytest.mark.parametrize(("catch_up", "fire", "skipped"), [
    ("none", (1060,), 5),                          # the missed 1010..1050 are skipped; 1060 is on time
    ("one", (1050, 1060), 4),                      # one run stands for the missed ones: the newest
    ("all", (1010, 1020, 1030, 1040, 1050, 1060), 0),
])
def test_missed_ticks_follow_catch_up(catch_up: Any, fire: tuple[int, ...], skipped: int) -> None:
    # Last handled tick 1000; back up at 1061.5: 1010..1050 were missed, 1060 is on time.
    assert plan(EVERY_10, 1000, 1061.5, catch_up=catch_up, grace=60, max_catch_up=100) == Plan(fire, skipped, 1060)


def test_all_catches_up_at_most_max_catch_up_ticks_the_newest() -> None:
    assert plan(EVERY_10, 1000, 1061.5, catch_up="all", grace=60, max_catch_up=3) == Plan((1030, 1040, 1050, 1060),
                                                                                         2, 1060)


def test_a_tick_later_than_the_grace_was_missed() -> None:
    hourly = Timing(anchor=0, every=3600)
    # 90 s late with a grace of 60 s: missed; none skips it, one and all fire it.
    assert plan(hourly, 0, 3690, catch_up="none", grace=60, max_catch_up=10) == Plan((), 1, 3600)
    assert plan(hourly, 0, 3690, catch_up="one", grace=60, max_catch_up=10) == Plan((3600,), 0, 3600)
    assert plan(hourly, 0, 3630, catch_up="none", grace=60, max_catch_up=10) == Plan((3600,), 0, 3600)


def test_claiming_one_tick_at_a_time_reaches_the_same_end() -> None:
    """The scheduler claims plan.fire[0], then plans again from it: the ticks fired and skipped
    over an outage add up to every tick, each counted once."""
    for catch_up in ("none", "one", "all"):
        last, fired, skipped = 1000, [], 0
        while True:
            step = plan(EVERY_10, last, 1061.5, catch_up=catch_up, grace=60, max_catch_up=2)
            skipped += step.skipped
            if not step.fire:
                last = step.latest
                break
            fired.append(step.fire[0])
            last = step.fire[0]
        assert last == 1060
        assert len(fired) + skipped == 6, catch_up
        assert len(set(fired)) == len(fired) and fired == sorted(fired)


def test_a_scheduled_run_id_is_the_same_everywhere_and_differs_per_tick_schedule_and_tenant() -> None:
    assert scheduled_run_id("t", "s", 10) == scheduled_run_id("t", "s", 10)
    assert len({scheduled_run_id("t", "s", 10), scheduled_run_id("t", "s", 11), scheduled_run_id("t", "z", 10),
                scheduled_run_id("u", "s", 10)}) == 4


@pytest.mark.parametrize(("value", "seconds"), [
    (1, 1), ("1", 1), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("2d", 172800), (60.0, 60),
])
def test_every_takes_seconds_or_a_duration(value: Any, seconds: int) -> None:
    assert parse_every(value) == seconds


@pytest.mark.parametrize("value", [0, -5, 0.5, "5ms", "1.5h", "", "soon", True, "400d", [1]])
def test_a_bad_every_is_refused(value: Any) -> None:
    with pytest.raises(ScheduleError) as err:
        parse_every(value)
    assert err.value.field == "every"


@pytest.mark.parametrize(("body", "field"), [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "* * *"}, "cron"),
    ({"cron": "0 0 30 2 *"}, "cron"),           # never fires
    ({"every": 0}, "every"),
    ({"every": 5, "timezone": "Mars/Olympus"}, "timezone"),
    ({"every": 5, "timezone": "../../etc/passwd"}, "timezone"),
    ({"every": 5, "catch_up": "some"}, "catch_up"),
    ({"every": 5, "agent": "a.b"}, "agent"),
    ({"every": 5, "webhook": "ftp://x/y"}, "webhook.url"),
])
def test_a_bad_schedule_names_its_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ScheduleBody.model_validate({"agent": "echo", "message": "hi", **body})
    assert ".".join(str(p) for p in err.value.errors()[0]["loc"]) == field


@pytest.mark.parametrize("body", [{}, {"cron": "* * * * *", "every": 5}])
def test_exactly_one_of_cron_and_every(body: dict[str, Any]) -> None:
    with pytest.raises(ScheduleError) as err:
        checked(ScheduleBody.model_validate({"agent": "echo", "message": "hi", **body}), "s", datetime.now(UTC))
    assert err.value.field in ("cron", "every")


def test_localai_periodic_runs_map_onto_a_schedule_definition() -> None:
    agent = AgentDefinition.model_validate({"name": "watcher", "periodic_runs": "10m",
                                            "permanent_goal": "check the queue"})
    assert agent.periodic_runs == 600
    with pytest.raises(ValidationError) as err:
        AgentDefinition.model_validate({"name": "watcher", "periodic_runs": "10m"})
    assert err.value.errors()[0]["loc"] == ("permanent_goal",)
    with pytest.raises(ValidationError) as err:
        AgentDefinition.model_validate({"name": "watcher", "periodic_runs": "0s", "permanent_goal": "x"})
    assert err.value.errors()[0]["loc"] == ("periodic_runs",)
