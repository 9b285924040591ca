"""A metric's difference in the unit people read it in: latency in ms, a rate in percentage
points (pp), anything else as measured. The report, its pictures and the gates' words use the
same (pure)."""

from __future__ import annotations

from collections.abc import Callable

from abgate.config.metrics_catalogue import ERROR_METRIC, LATENCY_METRIC
from abgate.config.model import Amount

MINUS = "\N{MINUS SIGN}"


def signed(value: float, show: Callable[[float], str]) -> str:
    sign = "+" if value > 0 else MINUS if value < 0 else ""
    return sign + show(abs(value))


def plain(value: float, digits: int = 2) -> str:
    text = f"{value:,.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _magnitude(metric: str, kind: str | None) -> tuple[float, Callable[[float], str]]:
    if metric == LATENCY_METRIC:
        return 1000.0, lambda a: plain(a, 2 if a < 10 else 1) + " ms"
    if kind == "binary" or metric == ERROR_METRIC:
        return 100.0, lambda a: plain(a) + " pp"
    return 1.0, lambda a: f"{a:,.3g}"


def unit_of(metric: str, kind: str | None) -> tuple[float, Callable[[float], str]]:
    """(scale, format) of a metric's signed difference: latency in ms, a rate in points."""
    scale, show = _magnitude(metric, kind)
    return scale, lambda v: signed(v, show)


def amount(metric: str, kind: str | None, value: float) -> str:
    """A difference's size in the metric's unit, without a sign ("15.3 ms", "1.2 pp")."""
    scale, show = _magnitude(metric, kind)
    return show(abs(value) * scale)


def margin_text(metric: str, kind: str | None, margin: Amount) -> str:
    """A margin as the plan says it when relative ("10%"), else in the metric's unit."""
    return str(margin) if margin.relative else amount(metric, kind, margin.value)
