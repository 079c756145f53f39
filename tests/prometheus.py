"""A strict reader of Prometheus' text exposition format 0.0.4, enough for the hub's metrics.

https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format: each family starts
with ``# HELP name text`` and ``# TYPE name counter|gauge``; then its samples, one a line,
``name{label="value",...} number``, label values escaping backslash, double quote and line feed.
"""

from __future__ import annotations

import re
from typing import Any

Labels = tuple[tuple[str, str], ...]
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_exposition(text: str) -> dict[str, dict[str, Any]]:
    """name -> {"help", "type", "samples": {labels: value}}; fails on anything out of order or shape."""
    families: dict[str, dict[str, Any]] = {}
    current: str | None = None
    assert text.endswith("\n"), "the last line ends with a line feed"
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            assert NAME.fullmatch(name) and name not in families, line
            families[name] = {"help": help_text, "type": None, "samples": {}}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            assert name == current and kind in ("counter", "gauge"), f"TYPE out of place: {line}"
            families[name]["type"] = kind
        else:
            assert current is not None and families[current]["type"], f"sample before HELP/TYPE: {line}"
            labels, value = parse_sample(line)
            assert labels[0] == current, f"{labels[0]} sample in the {current} family"
            assert labels[1] not in families[current]["samples"], f"duplicate sample: {line}"
            families[current]["samples"][labels[1]] = value
    return families


def parse_sample(line: str) -> tuple[tuple[str, Labels], float]:
    name = NAME.match(line)
    assert name is not None, line
    rest = line[name.end() :]
    labels: list[tuple[str, str]] = []
    if rest.startswith("{"):
        rest = rest[1:]
        while not rest.startswith("}"):
            label = LABEL.match(rest)
            assert label is not None, f"bad label in {line!r}"
            value = re.sub(r'\\[\\"n]', lambda m: UNESCAPE[m.group(0)], label.group(2))
            labels.append((label.group(1), value))
            rest = rest[label.end() :]
            if rest.startswith(","):
                rest = rest[1:]
        rest = rest[1:]
    assert rest.startswith(" ") and " " not in rest[1:], f"not name{{labels}} value: {line!r}"
    return (name.group(0), tuple(labels)), float(rest[1:])
