"""Routing configuration: the example loads and documents every key, queues round-trip through
their dict form, and every mistake is refused with a message naming the place and the fix."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from routing.config import (
    MATCH_KEYS,
    QUEUE_KEYS,
    SETTINGS_KEYS,
    STEP_KEYS,
    RoutingSettings,
    load_routing,
    queue_from_dict,
    queue_to_dict,
    routing_from_dict,
)
from routing.model import (
    DEFAULT_CHANNEL_COSTS,
    AgentChoice,
    AssignMode,
    MatchRule,
    OnAgentAway,
    QueueSpec,
    Step,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "routing.example.toml"

FULL = QueueSpec(
    "billing",
    match=MatchRule(
        channel_kinds=frozenset({"email", "webchat"}),
        channels=frozenset({"support-mail"}),
        languages=frozenset({"es"}),
        contact_attributes={"tier": "gold", "score": 3, "vip": True},
        keywords=frozenset({"invoice", "credit card"}),
    ),
    required_skills={"billing": 3, "spanish": 4},
    priority=2,
    sla_seconds=45.5,
    steps=(
        Step(0, last_agent_only=True),
        Step(30, min_proficiency=4),
        Step(90),
        Step(300, overflow_to="general"),
    ),
    choice=AgentChoice.BEST_PROFICIENCY,
    mode=AssignMode.OFFER,
    offer_timeout_seconds=20,
    ageing_per_minute=0.5,
    on_agent_away=OnAgentAway.KEEP,
)


def test_example_file_loads() -> None:
    settings, queues = load_routing(EXAMPLE)
    assert settings == RoutingSettings()
    assert [q.name for q in queues] == ["billing", "vip", "general"]
    billing, vip, general = queues
    assert billing.required_skills == {"billing": 3, "spanish": 3}
    assert billing.match.languages == {"es"} and billing.match.channel_kinds == {"email", "webchat"}
    assert [s.after_seconds for s in billing.steps] == [0, 30, 90, 300]
    assert billing.steps[0].last_agent_only and billing.steps[1].min_proficiency == 4
    assert billing.steps[3].overflow_to == "general"
    assert vip.match.contact_attributes == {"tier": "gold"}
    assert (vip.priority, vip.mode) == (3, AssignMode.OFFER)
    assert general.match == MatchRule() and not general.required_skills


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for key in (*SETTINGS_KEYS, *(k for k in QUEUE_KEYS if k != "steps"), *STEP_KEYS):
        assert re.search(rf"^#?\s*{key}\b", text, re.M), f"{key} is not documented"
    assert "[[queues.steps]]" in text
    for key in MATCH_KEYS:
        assert re.search(rf"^#\s+{key}\b", text, re.M), f"match.{key} is not documented"
    for kind in DEFAULT_CHANNEL_COSTS:
        assert re.search(rf"^{kind} = \d+", text, re.M)
    for value in [*AgentChoice, *AssignMode, *OnAgentAway]:
        assert value.value in text


@pytest.mark.parametrize("queue", [FULL, QueueSpec("general"), QueueSpec("x", steps=(Step(0), Step(60.5)))])
def test_queue_round_trips_through_json(queue: QueueSpec) -> None:
    d = queue_to_dict(queue)
    assert queue_from_dict(json.loads(json.dumps(d))) == queue


def test_steps_are_sorted_and_defaults_filled() -> None:
    q = queue_from_dict(
        {"name": "q", "steps": [{"after_seconds": 60}, {"after_seconds": 0, "min_proficiency": 2}]}
    )
    assert q.steps == (Step(0, min_proficiency=2), Step(60))
    assert q == QueueSpec("q", steps=q.steps)


def test_redirects_and_later_overflow_loops_are_allowed() -> None:
    _, queues = routing_from_dict(
        {
            "queues": [
                {"name": "a", "steps": [{"after_seconds": 0, "overflow_to": "b"}]},
                {"name": "b", "steps": [{"after_seconds": 0}, {"after_seconds": 300, "overflow_to": "a"}]},
            ]
        }
    )
    assert [q.name for q in queues] == ["a", "b"]


def test_no_queues_means_one_catch_all() -> None:
    settings, queues = routing_from_dict({})
    assert settings.costs == DEFAULT_CHANNEL_COSTS
    assert queues == [QueueSpec("general")]


def test_costs_extend_and_override_the_defaults() -> None:
    settings, _ = routing_from_dict(
        {"costs": {"voice": 80, "whatsapp": 15}, "settings": {"sweep_seconds": 0.5}}
    )
    assert settings.costs == {**DEFAULT_CHANNEL_COSTS, "voice": 80, "whatsapp": 15}
    assert settings.sweep_seconds == 0.5


def test_json_file_loads_like_toml(tmp_path: Path) -> None:
    path = tmp_path / "routing.json"
    path.write_text(json.dumps({"queues": [queue_to_dict(FULL), {"name": "general"}]}))
    _, queues = load_routing(path)
    assert queues == [FULL, QueueSpec("general")]


def _queue(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(queue_to_dict(FULL))
    d.update(changes)
    return d


def _with_step(index: int, **changes: Any) -> dict[str, Any]:
    d = _queue()
    d["steps"][index] = {**d["steps"][index], **changes}
    return d


QUEUE_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"priority": 1}, "queue: name is required"),
    (_queue(name=""), "queue name must be a non-empty name"),
    (_queue(priorty=1), "queue 'billing': unknown key 'priorty' (allowed: name, priority,"),
    (_queue(priorty=1, sla=3), "unknown keys 'priorty', 'sla'"),
    (_queue(priority="high"), "queue 'billing': priority must be a whole number, got 'high'"),
    (_queue(priority=True), "priority must be a whole number, got True"),
    (_queue(priority=1000), "priority must be -100-100, got 1000"),
    (_queue(sla_seconds=0), "queue 'billing': sla_seconds must be > 0, got 0"),
    (_queue(offer_timeout_seconds=-1), "offer_timeout_seconds must be > 0"),
    (_queue(ageing_per_minute=-0.5), "ageing_per_minute must be >= 0, got -0.5"),
    (_queue(ageing_per_minute=float("nan")), "ageing_per_minute must be a number"),
    (
        _queue(choice="random"),
        "choice must be one of longest_idle | least_occupied | best_proficiency, got 'random'",
    ),
    (_queue(mode="push"), "mode must be one of direct | offer, got 'push'"),
    (
        _queue(on_agent_away="drop"),
        "on_agent_away must be one of keep | requeue | requeue_unanswered, got 'drop'",
    ),
    (_queue(required_skills={"billing": 0}), "queue 'billing': required_skills.billing must be 1-5, got 0"),
    (_queue(required_skills={"billing": 6}), "required_skills.billing must be 1-5, got 6"),
    (_queue(required_skills=["billing"]), "required_skills must be a table"),
    (
        _queue(match={"language": ["es"]}),
        "queue 'billing': match: unknown key 'language' (allowed: channel_kinds,",
    ),
    (_queue(match={"channel_kinds": "email"}), "match.channel_kinds must be a list of strings"),
    (_queue(match={"keywords": ["ok", ""]}), "match.keywords entry must be a non-empty name"),
    (
        _queue(match={"contact_attributes": {"tier": ["gold"]}}),
        "contact_attributes.tier must be a string, number",
    ),
    (_queue(steps=[]), "queue 'billing': steps must be a non-empty list"),
    (_with_step(1, min_proficiency=7), "queue 'billing': steps[1].min_proficiency must be 1-5, got 7"),
    (_with_step(1, min_proficency=4), "queue 'billing': steps[1]: unknown key 'min_proficency'"),
    (_with_step(2, after_seconds=-1), "steps[2].after_seconds must be >= 0, got -1"),
    (_with_step(1, last_agent_only="yes"), "steps[1].last_agent_only must be true or false"),
    (_queue(steps=[{"last_agent_only": True}]), "steps[0].after_seconds is required"),
    (_queue(steps=[{"after_seconds": 10}]), "the first step must have after_seconds = 0, got 10"),
    (_queue(steps=[{"after_seconds": 0}, {"after_seconds": 0}]), "two steps start at after_seconds = 0"),
    (
        _queue(
            steps=[
                {"after_seconds": 0},
                {"after_seconds": 60, "overflow_to": "general"},
                {"after_seconds": 90},
            ]
        ),
        "the step at 90 s comes after an overflow step (at 60 s) and would never apply",
    ),
    (
        _with_step(3, overflow_to="billing"),
        "steps[3].overflow_to must name another queue, not 'billing' itself",
    ),
    (
        _with_step(3, min_proficiency=2),
        "overflow_to moves the conversation away, so min_proficiency cannot be set",
    ),
    (
        _queue(steps=[{"after_seconds": 0, "last_agent_only": True}]),
        "the last step must not be last_agent_only",
    ),
]


@pytest.mark.parametrize(("d", "message"), QUEUE_ERRORS)
def test_queue_validation_errors(d: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        queue_from_dict(d)


GENERAL = {"name": "general"}

FILE_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"queue": []}, "routing configuration: unknown key 'queue' (allowed: settings, costs, queues)"),
    ({"settings": {"sweep": 2}}, "[settings]: unknown key 'sweep'"),
    ({"settings": {"sweep_seconds": 6}}, "[settings] sweep_seconds must be 0.1-5, got 6"),
    ({"settings": {"sweep_seconds": 0}}, "[settings] sweep_seconds must be 0.1-5, got 0"),
    ({"settings": {"default_capacity": 0}}, "[settings] default_capacity must be >= 1, got 0"),
    ({"settings": {"heartbeat_timeout_seconds": 0}}, "[settings] heartbeat_timeout_seconds must be > 0"),
    ({"settings": {"away_grace_seconds": -1}}, "[settings] away_grace_seconds must be >= 0"),
    ({"settings": []}, "[settings] must be a table"),
    ({"costs": {"voice": 0}}, "[costs] voice must be >= 1, got 0"),
    ({"costs": {"voice": 2.5}}, "[costs] voice must be a whole number"),
    ({"queues": {"name": "x"}}, "queues must be an array of tables: [[queues]]"),
    ({"queues": [GENERAL, {"priority": 1}]}, "[[queues]] entry 2 needs a name"),
    ({"queues": [GENERAL, GENERAL]}, "two queues share the name 'general'"),
    (
        {"queues": [_queue(), {"name": "other"}]},
        "queue 'billing': the step at 300 s overflows to 'general', which is not a queue "
        "(queues: billing, other)",
    ),
    (
        {
            "queues": [
                {"name": "a", "steps": [{"after_seconds": 0, "overflow_to": "b"}]},
                {"name": "b", "steps": [{"after_seconds": 0, "overflow_to": "c"}]},
                {"name": "c", "steps": [{"after_seconds": 0, "overflow_to": "b"}]},
            ]
        },
        "queues b -> c -> b overflow to each other at 0 s",
    ),
]


@pytest.mark.parametrize(("d", "message"), FILE_ERRORS)
def test_file_validation_errors(d: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        routing_from_dict(d)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ValueError, match=r"routing configuration file .*nope\.toml does not exist"):
        load_routing(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("[settings\n")
    with pytest.raises(ValueError, match=re.escape(str(broken))):
        load_routing(broken)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[[queues]]\nname = "a"\nchoice = "fastest"\n')
    with pytest.raises(ValueError, match=r"wrong\.toml: queue 'a': choice must be one of"):
        load_routing(wrong)
