"""Routing configuration: queues and router settings from a TOML (or JSON) file or a dict.

``config/routing.example.toml`` documents every key. Validation is strict and every error names
the queue and key and says what is allowed, because a silently ignored typo ("min_proficency")
would route conversations to the wrong people. Errors are ``ValueError``; the hub turns them into
its configuration error. ``queue_to_dict`` / ``queue_from_dict`` are also the JSON form in which a
queue is stored and edited through the API.
"""

from __future__ import annotations

import itertools
import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from routing.model import (
    DEFAULT_CAPACITY,
    DEFAULT_CHANNEL_COSTS,
    AgentChoice,
    AssignMode,
    MatchRule,
    OnAgentAway,
    QueueSpec,
    Step,
)

MAX_SWEEP_SECONDS = 5.0  # a waiting conversation is looked at again at least this often
DEFAULT_QUEUE_NAME = "general"


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    """Router-wide settings (the per-queue ones, such as offer_timeout_seconds, live on QueueSpec)."""

    # Capacity units per channel kind; kinds not listed cost routing.model.UNKNOWN_CHANNEL_COST.
    costs: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_CHANNEL_COSTS))
    default_capacity: int = DEFAULT_CAPACITY  # an agent's capacity unless set on the agent
    sweep_seconds: float = 2.0  # how often the router re-plans without being woken (<= 5)
    heartbeat_timeout_seconds: float = 30.0  # an agent silent this long is treated as offline
    away_grace_seconds: float = 120.0  # away/offline this long before on_agent_away applies


SETTINGS_KEYS = ("sweep_seconds", "heartbeat_timeout_seconds", "away_grace_seconds", "default_capacity")
QUEUE_KEYS = (
    "name",
    "priority",
    "sla_seconds",
    "choice",
    "mode",
    "offer_timeout_seconds",
    "ageing_per_minute",
    "on_agent_away",
    "required_skills",
    "match",
    "steps",
)
MATCH_KEYS = ("channel_kinds", "channels", "languages", "contact_attributes", "keywords")
STEP_KEYS = ("after_seconds", "last_agent_only", "min_proficiency", "overflow_to")
TOP_KEYS = ("settings", "costs", "queues")

_E = TypeVar("_E", bound=StrEnum)


# -- small checkers: each names the place (``where``) in the message -----------------------------


def _unknown_keys(d: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    allowed = tuple(allowed)
    unknown = [k for k in d if k not in allowed]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise ValueError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {names} (allowed: {', '.join(allowed)})"
        )


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a table, got {value!r}")
    return value


def _int(value: Any, where: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be a whole number, got {value!r}")
    _check_range(value, where, low, high)
    return value


def _number(value: Any, where: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where} must be a number, got {value!r}")
    _check_range(value, where, low, high)
    return float(value)


def _check_range(value: float, where: str, low: float | None, high: float | None) -> None:
    if low is not None and high is not None and not low <= value <= high:
        raise ValueError(f"{where} must be {_fmt(low)}-{_fmt(high)}, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{where} must be >= {_fmt(low)}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{where} must be <= {_fmt(high)}, got {value!r}")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _positive(value: Any, where: str) -> float:
    number = _number(value, where)
    if number <= 0:
        raise ValueError(f"{where} must be > 0, got {value!r}")
    return number


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ValueError(f"{where} must be a non-empty name without surrounding spaces, got {value!r}")
    return value


def _names(value: Any, where: str) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise ValueError(f'{where} must be a list of strings, e.g. ["email"], got {value!r}')
    return frozenset(_name(v, f"{where} entry") for v in value)


def _choice(enum: type[_E], value: Any, where: str) -> _E:
    try:
        return enum(value)
    except ValueError:
        allowed = " | ".join(m.value for m in enum)
        raise ValueError(f"{where} must be one of {allowed}, got {value!r}") from None


# -- queues ----------------------------------------------------------------------------------------


def _match_from_dict(value: Any, where: str) -> MatchRule:
    d = _table(value, where)
    _unknown_keys(d, MATCH_KEYS, where)
    attributes = _table(d.get("contact_attributes", {}), f"{where}.contact_attributes")
    for key, attr in attributes.items():
        if not isinstance(attr, str | int | float | bool):
            raise ValueError(
                f"{where}.contact_attributes.{key} must be a string, number or boolean, got {attr!r}"
            )
    return MatchRule(
        channel_kinds=_names(d.get("channel_kinds", []), f"{where}.channel_kinds"),
        channels=_names(d.get("channels", []), f"{where}.channels"),
        languages=_names(d.get("languages", []), f"{where}.languages"),
        contact_attributes=dict(attributes),
        keywords=_names(d.get("keywords", []), f"{where}.keywords"),
    )


def _step_from_dict(value: Any, where: str, queue: str) -> Step:
    d = _table(value, where)
    _unknown_keys(d, STEP_KEYS, where)
    if "after_seconds" not in d:
        raise ValueError(f"{where}.after_seconds is required (seconds waited before the step applies)")
    overflow = d.get("overflow_to")
    if overflow is not None:
        overflow = _name(overflow, f"{where}.overflow_to")
        if overflow == queue:
            raise ValueError(f"{where}.overflow_to must name another queue, not {queue!r} itself")
        clashing = [k for k in ("last_agent_only", "min_proficiency") if k in d]
        if clashing:
            raise ValueError(
                f"{where}: overflow_to moves the conversation away, so {' and '.join(clashing)} "
                "cannot be set on the same step"
            )
    minimum = d.get("min_proficiency")
    return Step(
        after_seconds=_number(d["after_seconds"], f"{where}.after_seconds", low=0),
        last_agent_only=_bool(d.get("last_agent_only", False), f"{where}.last_agent_only"),
        min_proficiency=None if minimum is None else _int(minimum, f"{where}.min_proficiency", 1, 5),
        overflow_to=overflow,
    )


def _steps_from_list(value: Any, where: str, queue: str) -> tuple[Step, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{where} must be a non-empty list of steps ([[queues.steps]] tables)")
    steps = sorted(
        (_step_from_dict(v, f"{where}[{i}]", queue) for i, v in enumerate(value)),
        key=lambda s: s.after_seconds,
    )
    if steps[0].after_seconds != 0:
        raise ValueError(
            f"{where}: the first step must have after_seconds = 0, got {steps[0].after_seconds:g}"
        )
    for earlier, later in itertools.pairwise(steps):
        if earlier.after_seconds == later.after_seconds:
            raise ValueError(f"{where}: two steps start at after_seconds = {later.after_seconds:g}")
        if earlier.overflow_to is not None:
            raise ValueError(
                f"{where}: the step at {later.after_seconds:g} s comes after an overflow step "
                f"(at {earlier.after_seconds:g} s) and would never apply"
            )
    if steps[-1].last_agent_only:
        raise ValueError(
            f"{where}: the last step must not be last_agent_only, or conversations whose last agent "
            "never comes back would wait forever; add a later step"
        )
    return tuple(steps)


def queue_from_dict(d: Mapping[str, Any]) -> QueueSpec:
    """A QueueSpec from its TOML/JSON table, or ValueError naming the queue, the key and what is
    allowed. Omitted keys take QueueSpec's defaults; steps are sorted by after_seconds."""
    d = _table(d, "queue")
    if "name" not in d:
        raise ValueError("queue: name is required")
    name = _name(d["name"], "queue name")
    where = f"queue {name!r}"
    _unknown_keys(d, QUEUE_KEYS, where)
    defaults = QueueSpec(name)
    skills = _table(d.get("required_skills", {}), f"{where}: required_skills")
    return QueueSpec(
        name=name,
        match=_match_from_dict(d.get("match", {}), f"{where}: match"),
        required_skills={
            _name(skill, f"{where}: required_skills key"): _int(
                level, f"{where}: required_skills.{skill}", 1, 5
            )
            for skill, level in skills.items()
        },
        priority=_int(d.get("priority", defaults.priority), f"{where}: priority", -100, 100),
        sla_seconds=_positive(d.get("sla_seconds", defaults.sla_seconds), f"{where}: sla_seconds"),
        steps=_steps_from_list(d["steps"], f"{where}: steps", name) if "steps" in d else defaults.steps,
        choice=_choice(AgentChoice, d.get("choice", defaults.choice), f"{where}: choice"),
        mode=_choice(AssignMode, d.get("mode", defaults.mode), f"{where}: mode"),
        offer_timeout_seconds=_positive(
            d.get("offer_timeout_seconds", defaults.offer_timeout_seconds), f"{where}: offer_timeout_seconds"
        ),
        ageing_per_minute=_number(
            d.get("ageing_per_minute", defaults.ageing_per_minute), f"{where}: ageing_per_minute", low=0
        ),
        on_agent_away=_choice(
            OnAgentAway, d.get("on_agent_away", defaults.on_agent_away), f"{where}: on_agent_away"
        ),
    )


def _step_to_dict(step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {"after_seconds": step.after_seconds}
    if step.last_agent_only:
        out["last_agent_only"] = True
    if step.min_proficiency is not None:
        out["min_proficiency"] = step.min_proficiency
    if step.overflow_to is not None:
        out["overflow_to"] = step.overflow_to
    return out


def queue_to_dict(q: QueueSpec) -> dict[str, Any]:
    """The JSON-safe (and TOML-safe: no nulls) table of ``q``; queue_from_dict reads it back equal."""
    match: dict[str, Any] = {}
    for key in ("channel_kinds", "channels", "languages", "keywords"):
        values = getattr(q.match, key)
        if values:
            match[key] = sorted(values)
    if q.match.contact_attributes:
        match["contact_attributes"] = dict(q.match.contact_attributes)
    return {
        "name": q.name,
        "priority": q.priority,
        "sla_seconds": q.sla_seconds,
        "choice": q.choice.value,
        "mode": q.mode.value,
        "offer_timeout_seconds": q.offer_timeout_seconds,
        "ageing_per_minute": q.ageing_per_minute,
        "on_agent_away": q.on_agent_away.value,
        "required_skills": dict(q.required_skills),
        "match": match,
        "steps": [_step_to_dict(s) for s in q.steps],
    }


# -- the whole file --------------------------------------------------------------------------------


def _settings_from_dict(settings: Mapping[str, Any], costs: Mapping[str, Any]) -> RoutingSettings:
    _unknown_keys(settings, SETTINGS_KEYS, "[settings]")
    merged = dict(DEFAULT_CHANNEL_COSTS)
    for kind, cost in costs.items():
        merged[_name(kind, "[costs] key")] = _int(cost, f"[costs] {kind}", low=1)
    defaults = RoutingSettings()
    return RoutingSettings(
        costs=merged,
        default_capacity=_int(
            settings.get("default_capacity", defaults.default_capacity), "[settings] default_capacity", low=1
        ),
        sweep_seconds=_number(
            settings.get("sweep_seconds", defaults.sweep_seconds),
            "[settings] sweep_seconds",
            0.1,
            MAX_SWEEP_SECONDS,
        ),
        heartbeat_timeout_seconds=_positive(
            settings.get("heartbeat_timeout_seconds", defaults.heartbeat_timeout_seconds),
            "[settings] heartbeat_timeout_seconds",
        ),
        away_grace_seconds=_number(
            settings.get("away_grace_seconds", defaults.away_grace_seconds),
            "[settings] away_grace_seconds",
            low=0,
        ),
    )


def default_queues() -> list[QueueSpec]:
    """Without configured queues: one catch-all queue, no skills, longest idle agent first."""
    return [QueueSpec(DEFAULT_QUEUE_NAME)]


def routing_from_dict(d: Mapping[str, Any]) -> tuple[RoutingSettings, list[QueueSpec]]:
    """Settings and queues (in matching order) from the parsed file; checks what spans queues:
    unique names and overflow targets that exist."""
    d = _table(d, "routing configuration")
    _unknown_keys(d, TOP_KEYS, "routing configuration")
    settings = _settings_from_dict(
        _table(d.get("settings", {}), "[settings]"), _table(d.get("costs", {}), "[costs]")
    )
    raw = d.get("queues", [])
    if not isinstance(raw, list):
        raise ValueError("queues must be an array of tables: [[queues]]")
    queues: list[QueueSpec] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ValueError(f"[[queues]] entry {i + 1} needs a name")
        queues.append(queue_from_dict(entry))
    if not queues:
        return settings, default_queues()
    names = [q.name for q in queues]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two queues share the name {duplicates[0]!r}; every [[queues]] entry needs its own")
    for q in queues:
        for step in q.steps:
            if step.overflow_to is not None and step.overflow_to not in names:
                raise ValueError(
                    f"queue {q.name!r}: the step at {step.after_seconds:g} s overflows to "
                    f"{step.overflow_to!r}, which is not a queue (queues: {', '.join(names)})"
                )
    _check_redirect_loops(queues)
    return settings, queues


def _check_redirect_loops(queues: list[QueueSpec]) -> None:
    """A queue whose first step overflows at 0 s is a redirect; redirects that lead back to where
    they started would move a conversation round the loop forever without waiting anywhere."""
    redirect = {q.name: q.steps[0].overflow_to for q in queues if q.steps[0].overflow_to is not None}
    for start in redirect:
        path = [start]
        while (target := redirect.get(path[-1])) is not None:
            if target in path:
                loop = " -> ".join([*path[path.index(target) :], target])
                raise ValueError(
                    f"queues {loop} overflow to each other at 0 s, so a conversation would never stay"
                )
            path.append(target)


def load_routing(path: Path) -> tuple[RoutingSettings, list[QueueSpec]]:
    """Read a routing file: TOML, or JSON when the name ends in .json."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"routing configuration file {path} does not exist") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        return routing_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
