"""The session's derived numbers, defined once, and how they are printed.

``summary.json``, ``rig report`` (its header and its captions) and the lines the supervisor prints all
take the hit rate from :func:`hit_rate`, so they cannot disagree; and every float meant for a reader goes
through :func:`sig`, so a threshold reads ``0.1235``, not ``0.12345678901234568``.
"""

from __future__ import annotations

import math

#: Significant digits of a float shown to a reader (thresholds, cursor values).
SIG_DIGITS = 4


def hit_rate(hits: int, misses: int) -> float | None:
    """Hits over completed trials (a hit or a miss); None before the first completed trial.

    A trial still running when the session ended, or aborted (paused, stopped), has no outcome and so
    is not in the denominator: counting it would make the rate depend on when the operator pressed stop.
    """
    completed = hits + misses
    return hits / completed if completed > 0 else None


def sig(value: float | None, digits: int = SIG_DIGITS) -> str:
    """``value`` with ``digits`` significant digits ("—" for None, "nan"/"inf" as such)."""
    if value is None:
        return "—"
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def percent(rate: float | None) -> str:
    """A fraction as a whole percentage ("—" for None): 0.4 -> "40 %"."""
    return "—" if rate is None else f"{rate * 100:.0f} %"


def hit_rate_text(hits: int, misses: int) -> str:
    """"2 hits in 5 completed trials (40 %)": the one sentence for the hit rate, wherever it is shown."""
    completed = hits + misses
    if completed == 0:
        return f"{hits} hits, no completed trial"
    return (f"{hits} hit{'s' if hits != 1 else ''} in {completed} completed trial{'s' if completed != 1 else ''} "
            f"({percent(hit_rate(hits, misses))})")
