"""The simulator: small runs complete, are reproducible, replay one trace per policy that differs
only in agent choice, and report figures in range, as a table or JSON lines."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import routing.simulate as simulate
from routing.model import DEFAULT_CHANNEL_COSTS, AgentChoice, AgentState, Presence, QueueSpec, Step
from routing.simulate import (
    Arrival,
    PolicyResult,
    Trace,
    jain_fairness,
    main,
    make_trace,
    run_policy,
    time_plan,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "routing.example.toml"
SMALL = ["--hours", "0.5", "--agents", "6", "--queues", "3", "--arrivals-per-hour", "150", "--seed", "5"]


def small_trace(seed: int = 3) -> simulate.Trace:
    return make_trace(seed=seed, hours=1, agents=8, queues=3, arrivals_per_hour=160, patience_seconds=120)


def check_in_range(r: PolicyResult) -> None:
    assert 0 <= r.service_level <= 1
    assert 0 < r.fairness <= 1
    assert 0 <= r.abandon_rate <= 1
    assert r.assignments + r.abandoned == r.arrivals  # everybody is served or gives up
    assert r.asa_s >= 0 and r.max_wait_s >= 0 and r.plans > 0


@pytest.mark.parametrize("policy", list(AgentChoice))
def test_a_small_run_completes_with_figures_in_range(policy: AgentChoice) -> None:
    trace = small_trace()
    assert len(trace.arrivals) > 50
    check_in_range(run_policy(trace, policy))


def test_a_trace_and_its_results_are_deterministic_for_a_seed() -> None:
    assert small_trace(seed=11) == small_trace(seed=11)
    assert small_trace(seed=11) != small_trace(seed=12)
    trace = small_trace(seed=11)
    assert run_policy(trace, AgentChoice.LEAST_OCCUPIED) == run_policy(
        small_trace(seed=11), AgentChoice.LEAST_OCCUPIED
    )


def test_policies_replay_the_same_trace_and_differ_only_in_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[Mapping[str, QueueSpec]]] = {}
    real_plan = simulate.plan

    def spy(queues: Mapping[str, QueueSpec], *args: Any, **kwargs: Any) -> Any:
        choices = {q.choice for q in queues.values()}
        assert len(choices) == 1
        seen.setdefault(next(iter(choices)).value, []).append(queues)
        return real_plan(queues, *args, **kwargs)

    monkeypatch.setattr(simulate, "plan", spy)
    trace = small_trace()
    results = [run_policy(trace, policy) for policy in AgentChoice]
    assert {r.arrivals for r in results} == {len(trace.arrivals)}
    assert set(seen) == {c.value for c in AgentChoice}
    as_longest_idle = [
        {name: replace(q, choice=AgentChoice.LONGEST_IDLE) for name, q in calls[0].items()}
        for calls in seen.values()
    ]
    assert all(queues == as_longest_idle[0] for queues in as_longest_idle)
    assert as_longest_idle[0] == {q.name: replace(q, choice=AgentChoice.LONGEST_IDLE) for q in trace.queues}


def test_json_output_is_one_parsable_line_per_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SMALL, "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    figures = [json.loads(line) for line in lines]
    assert [f["policy"] for f in figures] == [c.value for c in AgentChoice]
    for f in figures:
        assert f["sim"] == "routing" and f["seed"] == 5
        assert 0 <= f["service_level"] <= 1 and 0 < f["fairness"] <= 1
        for key in ("asa_s", "abandoned", "abandon_rate", "max_wait_s", "assignments"):
            assert key in f


def test_table_output_states_the_service_level_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SMALL, "--policy", "least_occupied"]) == 0
    out = capsys.readouterr().out
    assert "every abandonment counts as a miss" in out
    assert "least_occupied" in out and "longest_idle" not in out


def test_queues_come_from_a_routing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SMALL, "--routing", str(EXAMPLE), "--json", "--policy", "best_proficiency"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["arrivals"] > 0


def test_a_bad_routing_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[queues]]\nname = "a"\nmode = "push"\n')
    assert main([*SMALL, "--routing", str(bad)]) == 2
    assert "mode must be one of direct | offer" in capsys.readouterr().err


def test_help_describes_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for word in ("Erlang-A", "--patience-seconds", "--routing", "abandonment counts as a miss"):
        assert word in out


@pytest.mark.parametrize(
    ("values", "index"),
    [([1.0, 1.0, 1.0], 1.0), ([3.0, 0.0, 0.0], 1 / 3), ([], 1.0), ([0.0, 0.0], 1.0), ([1.0, 3.0], 0.8)],
)
def test_jain_fairness(values: list[float], index: float) -> None:
    assert jain_fairness(values) == pytest.approx(index)


def test_time_plan_reports_a_figure() -> None:
    figure = time_plan(repeat=1, agents=40, waiting=100, queues=5, skills=6)
    assert figure["sim"] == "plan" and figure["waiting"] == 100 and figure["best_ms"] > 0


def test_a_step_boundary_re_plans_to_the_microsecond_and_impatience_abandons() -> None:
    queue = QueueSpec("q", required_skills={"x": 1}, steps=(Step(0, min_proficiency=5), Step(20)))
    ana = AgentState(1, "ana", Presence.ONLINE, skills={"x": 3})
    arrivals = (
        Arrival(
            1,
            at=10.123457,
            queue="q",
            channel_kind="webchat",
            priority=0,
            contact=1,
            service_seconds=600,
            patience_seconds=100,
        ),
        Arrival(
            2,
            at=11.5,
            queue="q",
            channel_kind="webchat",
            priority=0,
            contact=2,
            service_seconds=600,
            patience_seconds=5,
        ),
    )
    trace = Trace((queue,), (ana,), arrivals, DEFAULT_CHANNEL_COSTS, hours=1)
    result = run_policy(trace, AgentChoice.LONGEST_IDLE)
    assert (result.assignments, result.abandoned) == (1, 1)
    assert result.asa_s == pytest.approx(20.0, abs=1e-9)  # nobody has proficiency 5; anyone from 20 s
    assert result.service_level == pytest.approx(1 / 2)  # assigned within 60 s, the other gave up
