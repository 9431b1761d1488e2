"""Accuracy-robustness trade-off across MLflow runs: seed aggregation, Pareto fronts and the ``tradeoff.json`` table,
rebuilt from what runs recorded (their ``summary/*`` metrics, :mod:`medrobust.lightning_modules.metrics.summary`).

Reading only: nothing here writes into any run; :mod:`~medrobust.experiments.reporting.tradeoff_record` writes a
report into the one run given, with the figures of :mod:`~medrobust.experiments.reporting.tradeoff_figures`.

The trade-off compares a metric chosen by name: ``bal_acc`` (the default, the headline of every study table),
``acc``, or ``auto``, which is balanced accuracy when a run's test labels are imbalanced (largest class over smallest
of at least :data:`IMBALANCE_RATIO`) and accuracy otherwise. On an imbalanced test set accuracy rewards answering the
majority class, which no attack can change.
Runs whose predictions are near-constant are flagged in the table and the figures.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from medrobust.experiments.reporting.seed_statistics import t_half_width
from medrobust.lightning_modules.attacks.threat import Threat, parse_eps
from medrobust.lightning_modules.metrics.confusion import CONSTANT_SHARE
from medrobust.lightning_modules.metrics.metric_names import parse_name
from medrobust.lightning_modules.metrics.summary import SUMMARY, summary_metrics
from medrobust.utilities.errors import InputError

TABLE = "tradeoff_table.json"
METRICS = ("auto", "acc", "bal_acc")
METRIC_NAMES = {"acc": "accuracy", "bal_acc": "balanced accuracy"}
#: test labels whose largest class outnumbers the smallest this much make ``auto`` compare balanced accuracy
IMBALANCE_RATIO = 1.5
#: tags the sweep writes; runs made in other ways have none of them
TAG_ROLE, TAG_SWEEP, TAG_POINT, TAG_VALUES, TAG_LABEL = (
    "sweep.role",
    "sweep.name",
    "sweep.point",
    "sweep.values",
    "sweep.label",
)
PARENT_TAG = "mlflow.parentRunId"
#: the parent run's swept axes, in the sweep file's order
TAG_AXES = "sweep.axes"
#: params that do not decide a run's result (or that a point repeats over): left out when comparing runs' settings
NOT_SETTINGS = (
    "seed_everything",
    "trainer.logger",
    "ckpt_path",
    "system_metrics",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.default_root_dir",
    "data.root",
    "data.download",
    "data.cache_dir",
    "data.num_workers",
)
#: near-constant flags a tested run carries (the module's, clean; RobustnessEvaluation's, per attack and threat)
CLEAN_FLAG, ROBUST_FLAG = "test.near_constant", "robustness.near_constant"


def display_value(value: Any) -> str:
    """A swept value as people write it: ``"8/255"`` stays, ``0.25`` stays, dicts become compact JSON."""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def numeric_value(value: Any) -> float | None:
    """A swept value as a number for plotting (``"8/255"`` -> 0.0314), or ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return parse_eps(value) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None


def is_seed_key(key: str) -> bool:
    """Swept keys that only repeat a point (averaged over, not compared): ``seed_everything``, ``*.seed``."""
    last = key.rsplit(".", 1)[-1]
    return last in ("seed_everything", "seed") or last.endswith("_seed")


def short_key(key: str) -> str:
    """The last component of a dotted override key: ``callbacks.AdversarialTraining.eps`` -> ``eps``."""
    last = key.rsplit(".", 1)[-1]
    return "seed" if last == "seed_everything" else last


# ------------------------------------------------------------------------------------------------ collection
@dataclass
class RunRow:
    """One evaluated run: what was swept, and its summary."""

    run_id: str
    name: str
    status: str
    values: dict[str, Any]
    summary: dict[str, float]

    #: the run's tags ``test.near_constant`` and ``robustness.near_constant``, when it has them
    flags: dict[str, str] = field(default_factory=dict)
    #: for a run made outside a sweep, the settings that decide its result (params without seed and bookkeeping)
    config: dict[str, str] = field(default_factory=dict)
    #: the attacks its robustness evaluation ran (``fgsm``, ``pgd20``, ``autoattack``...), from its metric names
    attacks: list[str] = field(default_factory=list)

    @property
    def near_constant(self) -> list[str]:
        """Where the run's predictions were near-constant: ``clean``, or a threat. Read from the tags its test wrote
        (label-aware: :func:`~medrobust.lightning_modules.metrics.confusion.near_constant`); a run without them is
        judged by the share of its most predicted class alone (at least :data:`CONSTANT_SHARE`)."""
        found = []
        clean = self.flags.get(CLEAN_FLAG)
        share = self.summary.get(SUMMARY + "clean_top_pred_share")
        if clean == "true" or (clean is None and share is not None and share >= CONSTANT_SHARE):
            found.append("clean")
        threats = worst_case_keys(self.summary, "top_pred_share")
        if ROBUST_FLAG in self.flags:
            flagged = set(self.flags[ROBUST_FLAG].split(","))
            return found + [threat for threat in threats if f"worst/{threat}" in flagged]
        return found + [threat for threat, key in threats.items() if self.summary[key] >= CONSTANT_SHARE]

    @property
    def seed(self) -> Any:
        return next((v for k, v in self.values.items() if is_seed_key(k)), None)

    @property
    def group(self) -> str:
        """The point without its seed: runs that differ only by seed share a group."""
        parts = [f"{short_key(k)}={display_value(v)}" for k, v in self.values.items() if not is_seed_key(k)]
        return ",".join(parts) if parts else (self.name if not self.values else "all")

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "name": self.name,
            "status": self.status,
            "group": self.group,
            "seed": self.seed,
            "values": self.values,
            "near_constant": ",".join(self.near_constant),
            "attacks": self.attacks,
            **{k.removeprefix(SUMMARY): v for k, v in self.summary.items()},
        }


@dataclass
class Group:
    """Runs of one point over seeds: mean and spread (sample std) per summary metric."""

    label: str
    values: dict[str, Any]
    runs: list[RunRow] = field(default_factory=list)

    def stats(self, key: str) -> tuple[float, float, int] | None:
        xs = [r.summary[key] for r in self.runs if key in r.summary and math.isfinite(r.summary[key])]
        if not xs:
            return None
        return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)

    @property
    def near_constant(self) -> list[str]:
        """The labels of runs of this group flagged as near-constant, with where."""
        return [f"{run.name}: {','.join(run.near_constant)}" for run in self.runs if run.near_constant]

    @property
    def not_repeats(self) -> list[str]:
        """Why this group's runs are not repeats of one point over seeds: settings that differ between them (runs
        named alike outside a sweep), or a seed used twice."""
        found = []
        keys = sorted({k for run in self.runs for k in run.config})
        differ = [k for k in keys if len({run.config.get(k) for run in self.runs}) > 1]
        if differ:
            found.append(f"settings differ: {', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''}")
        seeds = [str(run.seed) for run in self.runs if run.seed is not None]
        if len(seeds) != len(set(seeds)):
            found.append("a seed repeats")
        return found

    def as_dict(self, keys: Iterable[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"group": self.label, "values": self.values, "n": len(self.runs)}
        out["runs"] = [f"{run.name} ({run.run_id[:8]})" for run in self.runs]
        out["near_constant"] = self.near_constant
        out["not_repeats"] = self.not_repeats
        out["attacks"] = sorted({a for run in self.runs for a in run.attacks})  # PGD only without autoattack
        for key in keys:
            s = self.stats(key)
            if s is not None:
                name = key.removeprefix(SUMMARY)
                out[f"{name}/mean"], out[f"{name}/std"], out[f"{name}/n"] = s
        return out


def _bookkeeping(key: str) -> bool:
    """A param that does not make runs different points: :data:`NOT_SETTINGS`, or a teacher's resolved identity
    (each seed of a study may have its own teacher)."""
    return key.startswith(NOT_SETTINGS) or key.endswith((".teacher.run_id", ".teacher.md5", ".teacher.source"))


def row_from_run(run: Any) -> RunRow:
    tags = run.data.tags
    name = tags.get("mlflow.runName", run.info.run_id[:8])
    if TAG_VALUES in tags:
        values = json.loads(tags[TAG_VALUES])
    else:
        # A run made outside a sweep: its name is the point, its seed (if logged) what repeats it (unnamed runs get
        # distinct names, so only runs named alike on purpose share a point; the table lists each one's short id).
        values = {"run": name}
        if "seed_everything" in run.data.params:
            values["seed_everything"] = run.data.params["seed_everything"]
    flags = {key: tags[key] for key in (CLEAN_FLAG, ROBUST_FLAG) if key in tags}
    params = run.data.params
    config = {} if TAG_VALUES in tags else {k: v for k, v in params.items() if not _bookkeeping(k)}
    attacks = sorted(
        {f["attack"] for key in run.data.metrics if (p := parse_name(key)) and p[0] == "adv_attack" for f in [p[1]]}
    )
    summary = summary_metrics(run.data.metrics)
    return RunRow(run.info.run_id, name, run.info.status, values, summary, flags, config, attacks)


def group_rows(rows: Sequence[RunRow]) -> list[Group]:
    groups: dict[str, Group] = {}
    for row in rows:
        values = {k: v for k, v in row.values.items() if not is_seed_key(k)}
        groups.setdefault(row.group, Group(row.group, values)).runs.append(row)
    return list(groups.values())


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximised), by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def paired_stats(groups: Sequence[Group], xkey: str, ykey: str) -> list[tuple[Group, tuple, tuple]]:
    """The groups that have both metrics, each with ``(mean, std, n)`` of ``xkey`` and of ``ykey``."""
    pairs = [(group, group.stats(xkey), group.stats(ykey)) for group in groups]
    return [(group, sx, sy) for group, sx, sy in pairs if sx is not None and sy is not None]


def worst_case_keys(keys: Iterable[str], stat: str) -> dict[str, str]:
    """The ``summary/adv_<stat>/<threat>`` names among ``keys``, by their threat label (``linf_8_255``)."""
    found = {}
    for key in keys:
        parsed = parse_name(key)
        if parsed and parsed[0] == "summary_adv" and parsed[1]["stat"] == stat:
            found[parsed[1]["threat"]] = key
    return found


def adv_threats(rows: Sequence[RunRow], kind: str = "acc") -> list[str]:
    """The threats (``linf_8_255``) some run has a worst-case ``kind`` summary for, ordered by norm and eps."""
    threats = {threat for row in rows for threat in worst_case_keys(row.summary, kind)}
    return sorted(threats, key=Threat.from_label)


# --------------------------------------------------------------------------------------------------- report
def choose_metric(rows: Sequence[RunRow], metric: str = "auto") -> str:
    """``acc`` or ``bal_acc``: ``metric`` itself, or for ``auto`` balanced accuracy on imbalanced test labels."""
    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not one of {list(METRICS)}")
    if metric != "auto":
        return metric
    ratios = [r.summary.get(SUMMARY + "test_class_ratio", 1.0) for r in rows]
    return "bal_acc" if any(ratio >= IMBALANCE_RATIO for ratio in ratios) else "acc"


def build_report(rows: Sequence[RunRow], axes: Sequence[str] = (), metric: str = "auto") -> dict[str, Any]:
    """The ``tradeoff.json`` content: every run, every group (mean/std over seeds), and the Pareto fronts of clean
    against worst-case adversarial ``metric``."""
    chosen = choose_metric(rows, metric)
    groups = group_rows(rows)
    keys = sorted({k for r in rows for k in r.summary})
    fronts = {}
    for threat in adv_threats(rows, chosen):
        pairs = paired_stats(groups, f"{SUMMARY}clean_{chosen}", f"{SUMMARY}adv_{chosen}/{threat}")
        front = pareto_front([(sx[0], sy[0]) for _, sx, sy in pairs])
        fronts[threat] = [pairs[i][0].label for i in front]
    return {
        "axes": list(axes),
        "metric": chosen,
        "metric_requested": metric,
        "runs": [r.as_dict() for r in rows],
        "groups": [g.as_dict(keys) for g in groups],
        "pareto_front": fronts,
        "near_constant": [flag for g in groups for flag in g.near_constant],
    }


def _cell(group: dict[str, Any], column: str) -> str:
    """``mean [lo, hi]`` over a group's seeds, the 95% Student-t interval of the mean
    (:mod:`~medrobust.experiments.reporting.seed_statistics`); one run alone has no interval to show."""
    if f"{column}/mean" not in group:
        return ""
    n, mean, sd = group.get(f"{column}/n", group["n"]), group[column + "/mean"], group[column + "/std"]
    if n < 2:
        return f"{mean:.3f}"
    half = t_half_width(sd, n)
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def format_table(report: dict[str, Any]) -> str:
    """The groups as a Markdown table: mean +- std over seeds for the headline metrics, and the flags."""
    metric = report.get("metric", "acc")
    cols = ["clean_acc", "clean_bal_acc", "clean_auroc"]
    means = [SUMMARY + k.removesuffix("/mean") for group in report["groups"] for k in group if k.endswith("/mean")]
    threats = {Threat.from_label(threat) for threat in worst_case_keys(means, metric)}
    cols += [f"adv_{metric}/{t.label}" for t in sorted(threats, key=lambda t: (t.eps, t.norm))]
    cols += ["shift_bal_acc"]
    cols = [c for c in cols if any(f"{c}/mean" in g for g in report["groups"])]
    lines = ["| point | n | " + " | ".join(cols) + " | flags | runs |", "|---|---|" + "---|" * (len(cols) + 2)]
    for g in report["groups"]:
        cells = [_cell(g, c) for c in cols]
        flags = "; ".join(
            [
                *(["near-constant: " + "; ".join(g["near_constant"])] if g.get("near_constant") else []),
                *g.get("not_repeats", []),
            ]
        )
        runs = ", ".join(g.get("runs", []))
        lines.append(f"| {g['group']} | {g['n']} | " + " | ".join(cells) + f" | {flags} | {runs} |")
    attacks = sorted({a for g in report["groups"] for a in g.get("attacks", [])})
    pgd_only = bool(attacks) and "autoattack" not in attacks
    suite = ", ".join(attacks) or "none"
    note = (
        f"cells: mean [95% t interval] over seeds; adversarial columns: worst case over attacks ({suite}), per "
        f"sample, by {METRIC_NAMES.get(metric, metric)}"
        + (
            "; PGD ONLY: no AutoAttack component ran, so robust accuracies are upper bounds of unknown tightness"
            if pgd_only
            else ""
        )
    )
    return "\n".join([*lines, "", note])
