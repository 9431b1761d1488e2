"""A rule that picks one run among many, written in the command: ``max METRIC [if METRIC2 OP REFERENCE]``."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from medrobust.utilities.errors import InputError

_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_RULE = re.compile(
    r"^\s*(?P<goal>max|min)\s+(?P<metric>\S+)"
    rf"(?:\s+if\s+(?P<bound>\S+)\s*(?P<op>>=|<=)\s*(?:(?P<best>best)(?:\s*(?P<sign>[+-])\s*(?P<delta>{_NUMBER}))?"
    rf"|(?P<value>-?{_NUMBER})))?\s*$"
)
SYNTAX = (
    "max|min METRIC [if METRIC2 >=|<= best [- DELTA] | VALUE], e.g. 'max summary/robust_bal_acc_worst if "
    "summary/clean_bal_acc >= best - 0.02': the most robust run whose clean balanced accuracy is within 2 points of "
    "the best"
)


@dataclass(frozen=True)
class SelectionRule:
    """``goal`` (``max``/``min``) of ``metric`` among the runs that meet the optional bound ``bound op reference``,
    where the reference is a number or the best value of ``bound`` over the runs (``best``, plus ``offset``; best is
    the maximum for ``>=`` and the minimum for ``<=``)."""

    text: str
    goal: str
    metric: str
    bound: str | None = None
    op: str | None = None
    offset: float = 0.0
    relative: bool = False  # the reference is best + offset, not offset alone

    @classmethod
    def parse(cls, text: str) -> SelectionRule:
        match = _RULE.match(text)
        if match is None:
            raise InputError(f"--select {text!r} is not a rule; write {SYNTAX}")
        g = match.groupdict()
        if g["bound"] is None:
            return cls(text.strip(), g["goal"], g["metric"])
        relative = g["best"] is not None
        number = float(g["delta"] or 0) * (-1 if g["sign"] == "-" else 1) if relative else float(g["value"])
        return cls(text.strip(), g["goal"], g["metric"], g["bound"], g["op"], number, relative)

    def choose(self, runs: Mapping[str, Mapping[str, float]]) -> tuple[str, dict[str, float]]:
        """The run (its key in ``runs``: run id -> metrics) this rule picks, and the values it compared: the chosen
        value, the bound's reference and the number of runs compared. An :class:`InputError` when no run has the
        metrics or none meets the bound."""
        needed = [m for m in (self.metric, self.bound) if m]
        scored = {k: v for k, v in runs.items() if all(_finite(v.get(m)) for m in needed)}
        if not scored:
            raise InputError(f"rule {self.text!r}: none of the {len(runs)} runs has {' and '.join(needed)}")
        values: dict[str, float] = {"compared": float(len(scored))}
        candidates = scored
        if self.bound is not None:
            bounds = [v[self.bound] for v in scored.values()]
            best = max(bounds) if self.op == ">=" else min(bounds)
            reference = best + self.offset if self.relative else self.offset
            values |= {f"best {self.bound}": best} if self.relative else {}
            values["reference"] = reference
            meets = (lambda x: x >= reference) if self.op == ">=" else (lambda x: x <= reference)
            candidates = {k: v for k, v in scored.items() if meets(v[self.bound])}
            if not candidates:
                raise InputError(
                    f"rule {self.text!r}: no run has {self.bound} {self.op} {reference:.4g} (the {len(scored)} runs "
                    f"range {min(bounds):.4g}..{max(bounds):.4g})"
                )
        pick = max if self.goal == "max" else min
        chosen = pick(candidates, key=lambda k: (candidates[k][self.metric], k))
        values |= {self.metric: candidates[chosen][self.metric], "met the bound": float(len(candidates))}
        if self.bound is not None:
            values[self.bound] = candidates[chosen][self.bound]
        return chosen, values


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
