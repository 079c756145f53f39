"""The Prometheus text writer: escaping, absent samples, number formats."""

from __future__ import annotations

import math

from routing.exposition import Exposition, label_set, number
from tests.prometheus import parse_exposition


def test_label_values_and_help_are_escaped() -> None:
    assert label_set({"queue": 'a"b\\c\nd', "window": "15m"}) == '{queue="a\\"b\\\\c\\nd",window="15m"}'
    out = Exposition()
    out.family("m", "gauge", "line\\one\ntwo", [({"queue": 'x"'}, 1.5), ({"queue": "none"}, None)])
    assert out.text() == '# HELP m line\\\\one\\ntwo\n# TYPE m gauge\nm{queue="x\\""} 1.5\n'
    families = parse_exposition(out.text())
    assert families["m"]["samples"] == {(("queue", 'x"'),): 1.5}


def test_numbers() -> None:
    assert [number(v) for v in (3, 0.5, 1e-05, math.inf, -math.inf)] == ["3", "0.5", "1e-05", "+Inf", "-Inf"]
    assert number(math.nan) == "NaN"
