"""Prometheus' text exposition format, version 0.0.4.

https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format: per metric family a
``# HELP`` line (backslash and line feed escaped), a ``# TYPE`` line, then one sample a line,
``name{label="value",...} value``, label values escaping backslash, double quote and line feed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


class Exposition:
    """Prometheus text format 0.0.4: a HELP and a TYPE line, then the family's samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help: str, samples: Iterable[tuple[Mapping[str, str], float | None]]
    ) -> None:
        self.lines.append(f"# HELP {name} {escape(help)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is not None:
                self.lines.append(f"{name}{label_set(labels)} {number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def escape(text: str, *, quote: bool = False) -> str:
    """Backslash and line feed escaped (HELP text); the double quote too in label values."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def label_set(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{escape(value, quote=True)}"' for key, value in labels.items()) + "}"


def number(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
