"""Metric names, built and parsed in one place so that callbacks, the module, ``summary/*`` and reports agree.

Only ``[a-zA-Z0-9_/. -]`` is used, which MLflow keeps unchanged: ``val/auroc``, ``test/bal_acc``,
``train/loss/task``. Names that are read back (by :mod:`~medrobust.lightning_modules.metrics.summary`, the trade-off
report and the studies) follow a :data:`SCHEMA` of named templates: :func:`build_name` writes one, :func:`parse_name`
reads one back into its fields, so nothing splits a name by position.
"""

from __future__ import annotations

import re
from typing import Any

_ALLOWED = re.compile(r"^[a-zA-Z0-9_/. -]+$")

#: the families of names that are read back, by template; ``{where}`` is zero or more path components ending in
#: ``/`` (``""`` or ``"shortcut/aligned/"``), ``{split}`` of a summary name ``""`` or ``"/<split>"``, every other field
#: one component
SCHEMA = {
    # test/*, written by the evaluation callbacks
    "adv_worst": "test/adv/worst/{threat}/{stat}",
    "adv_distance": "test/adv/{attack}/{norm}_dist/{stat}",
    "adv_attack": "test/adv/{attack}/{threat}/{stat}",
    "shortcut": "test/shortcut/{split}/{stat}",
    "detect": "test/detect/{detector}/{target}/{stat}",
    "shift_corruption_mean": "test/shift/{corruption}/mean/{stat}",
    "saliency": "test/{where}saliency/{method}/{stat}",
    # summary/*, derived from them
    "summary_adv": "summary/adv_{stat}/{threat}",
    "summary_adv_distance": "summary/adv_dist/{norm}/{attack}",
    "summary_shortcut": "summary/shortcut_{stat}/{split}",
    "summary_detect": "summary/detect_{stat}/{detector}/{target}",
    "summary_saliency": "summary/saliency_{stat}/{method}{split}",
}
_FIELD = {
    "threat": r"(?:linf|l2)_[0-9][0-9.e+-]*(?:_255)?",
    "norm": r"linf|l2|l0",
    "stat": r"[a-z0-9_]+",
    "where": r"(?:[^/]+/)*",
}
#: fields whose pattern differs per family: the optional ``/<split>`` ending of a summary name
_FAMILY_FIELD = {("summary_saliency", "split"): r"(?:/[^/]+)?"}


def _regex(family: str, template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            pattern = _FAMILY_FIELD.get((family, part), _FIELD.get(part, r"[^/]+"))
            out.append(f"(?P<{part}>{pattern})")
        else:
            out.append(re.escape(part))
    return re.compile("^" + "".join(out) + "$")


_PATTERNS = {family: _regex(family, template) for family, template in SCHEMA.items()}


def metric_name(*parts: str | int | float) -> str:
    """Join parts with ``/``; raises if MLflow would rewrite the result."""
    name = "/".join(str(part) for part in parts)
    if not _ALLOWED.match(name):
        raise ValueError(f"metric name {name!r} has characters MLflow would strip; use [a-zA-Z0-9_/. -]")
    return name


def build_name(family: str, **fields: Any) -> str:
    """The name of ``family`` (a key of :data:`SCHEMA`) with ``fields``; it parses back to the same fields."""
    try:
        name = SCHEMA[family].format(**{k: str(v) for k, v in fields.items()})
    except KeyError as err:
        raise ValueError(f"metric family {family!r} needs field {err}; template {SCHEMA.get(family)!r}") from None
    if parse_name(name) != (family, {k: str(v) for k, v in fields.items()}):
        raise ValueError(f"{name!r} would not parse back as {family} with {fields}")
    return metric_name(name)


def parse_name(name: str) -> tuple[str, dict[str, str]] | None:
    """``(family, fields)`` of the first :data:`SCHEMA` template ``name`` matches, or None."""
    for family, pattern in _PATTERNS.items():
        match = pattern.match(name)
        if match:
            return family, match.groupdict()
    return None
