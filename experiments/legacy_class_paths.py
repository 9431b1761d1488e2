"""Class paths written before the ``medrobust.`` namespace (a run's old ``config.yaml``, an old sweep file) still load.

Up to version 0.1 the folders installed as top-level packages (``callbacks.RobustnessEvaluation``,
``experiments.mlflow_logger.MLflowRunLogger``). The ``medrobust`` parser reads every config and value through
:func:`upgrade_legacy`, which rewrites such a class path to its ``medrobust.`` path and warns once per path, naming
the new one; nothing else in a config is touched.
"""

from __future__ import annotations

import warnings
from typing import Any

#: the top-level packages of 0.1, now ``medrobust.<name>``
LEGACY_TOPS = ("callbacks", "datamodules", "experiments", "lightning_modules")
#: modules that also moved inside their package (old module -> new module below ``medrobust.``)
MOVED = {
    "callbacks.detection_figures": "callbacks.helpers.detection_figures",
    "callbacks.distance_tracker": "callbacks.evaluation.distance_tracker",
    "callbacks.evaluation_outputs": "callbacks.evaluation.outputs",
    "callbacks.figures": "callbacks.helpers.figures",
    "callbacks.mlflow_logger_lookup": "callbacks.helpers.mlflow_logger_lookup",
    "callbacks.saliency_figures": "callbacks.helpers.saliency_figures",
    "callbacks.tracking_uri": "utilities.tracking_uri",
    "callbacks.training_progress": "callbacks.helpers.training_progress",
    "experiments.check_mlflow_ui": "experiments.tracking.check_mlflow_ui",
    "experiments.construct": "experiments.construction.construct",
    "experiments.construct_chunks": "experiments.construction.construct_chunks",
    "experiments.construct_record": "experiments.construction.construct_record",
    "experiments.mlflow_logger": "experiments.tracking.mlflow_logger",
    "experiments.mlflow_save_config": "experiments.tracking.mlflow_save_config",
    "experiments.mlflow_server": "experiments.tracking.mlflow_server",
    "experiments.report": "experiments.reporting.report",
    "experiments.sweep": "experiments.sweeping.sweep",
    "experiments.sweep_runner": "experiments.sweeping.sweep_runner",
    "experiments.sweep_spec": "experiments.sweeping.sweep_spec",
    "experiments.sweep_store": "experiments.sweeping.sweep_store",
    "experiments.tradeoff": "experiments.reporting.tradeoff",
    "experiments.tradeoff_figures": "experiments.reporting.tradeoff_figures",
    "lightning_modules.components.attack_suite": "lightning_modules.attacks.attack_suite",
    "lightning_modules.components.attributions": "lightning_modules.saliency.attributions",
    "lightning_modules.components.confusion": "lightning_modules.metrics.confusion",
    "lightning_modules.components.deepfool": "lightning_modules.attacks.deepfool",
    "lightning_modules.components.detection": "lightning_modules.detection",
    "lightning_modules.components.detection.adaptive": "lightning_modules.detection.adaptive",
    "lightning_modules.components.detection.baselines": "lightning_modules.detection.baselines",
    "lightning_modules.components.detection.calibration": "lightning_modules.detection.calibration",
    "lightning_modules.components.detection.ensemble": "lightning_modules.detection.ensemble",
    "lightning_modules.components.detection.gaussians": "lightning_modules.detection.gaussians",
    "lightning_modules.components.detection.mahalanobis": "lightning_modules.detection.mahalanobis",
    "lightning_modules.components.detection.metrics": "lightning_modules.detection.metrics",
    "lightning_modules.components.detection.targets": "lightning_modules.detection.targets",
    "lightning_modules.components.distillation_losses": "lightning_modules.features.distillation_losses",
    "lightning_modules.components.errors": "utilities.errors",
    "lightning_modules.components.feature_datasets": "lightning_modules.features.feature_datasets",
    "lightning_modules.components.feature_taps": "lightning_modules.features.feature_taps",
    "lightning_modules.components.jsma": "lightning_modules.attacks.jsma",
    "lightning_modules.components.linear_probe": "lightning_modules.features.linear_probe",
    "lightning_modules.components.losses": "lightning_modules.losses",
    "lightning_modules.components.masking_checks": "lightning_modules.attacks.masking_checks",
    "lightning_modules.components.metric_names": "lightning_modules.metrics.metric_names",
    "lightning_modules.components.metrics": "lightning_modules.metrics.task_metrics",
    "lightning_modules.components.min_distance": "lightning_modules.attacks.min_distance",
    "lightning_modules.components.mlflow_source": "utilities.mlflow_source",
    "lightning_modules.components.modes": "lightning_modules.nets.modes",
    "lightning_modules.components.normalize": "lightning_modules.nets.normalize",
    "lightning_modules.components.normalized_classifier": "lightning_modules.nets.normalized_classifier",
    "lightning_modules.components.pgd": "lightning_modules.attacks.pgd",
    "lightning_modules.components.saliency_metrics": "lightning_modules.saliency.saliency_metrics",
    "lightning_modules.components.small_input": "lightning_modules.nets.small_input",
    "lightning_modules.components.summary": "lightning_modules.metrics.summary",
    "lightning_modules.components.teacher": "lightning_modules.features.teacher",
    "lightning_modules.components.threat_model": "lightning_modules.attacks.threat_model",
    "lightning_modules.components.trades": "lightning_modules.attacks.trades",
}
_warned: set[str] = set()


class LegacyClassPathWarning(FutureWarning):
    """A config names a class by its pre-``medrobust.`` path."""


def new_class_path(path: str) -> str | None:
    """The ``medrobust.`` path of a pre-namespace class path, or None when ``path`` is not one."""
    if not isinstance(path, str) or path.split(".", 1)[0] not in LEGACY_TOPS or "." not in path:
        return None
    module, _, name = path.rpartition(".")
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        prefix = ".".join(parts[:k])
        if prefix in MOVED:
            return ".".join(["medrobust", MOVED[prefix], *parts[k:], name])
    return f"medrobust.{path}"


def upgrade_legacy(value: Any) -> Any:
    """``value`` with every legacy class path (a ``class_path`` entry, or a bare string such as the value of
    ``--trainer.callbacks+=callbacks.RobustValidation``) rewritten; warns once per path."""
    if isinstance(value, dict):
        return {k: _upgrade_entry(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [upgrade_legacy(v) for v in value]
    if isinstance(value, str) and "\n" not in value and " " not in value:
        return _renamed(value) or value
    return value


def upgrade_argument(arg: Any) -> Any:
    """One command-line argument: ``--key=<legacy class path>`` or a bare legacy class path, upgraded."""
    if not isinstance(arg, str):
        return arg
    key, eq, value = arg.partition("=")
    if eq:
        new = _renamed(value)
        return f"{key}={new}" if new else arg
    return _renamed(arg) or arg


def _upgrade_entry(key: Any, value: Any) -> Any:
    if key == "class_path" and isinstance(value, str):
        return _renamed(value) or value
    return upgrade_legacy(value)


def _renamed(path: str) -> str | None:
    new = new_class_path(path)
    if new is None or not _importable(new):
        return None
    if path not in _warned:
        _warned.add(path)
        warnings.warn(
            f"class path {path!r} is from before the medrobust. namespace; it now reads {new!r} "
            "(update the config; the old path stops loading in a later version)",
            LegacyClassPathWarning,
            stacklevel=3,
        )
    return new


def _importable(path: str) -> bool:
    """Whether ``path`` names a class (not a module or function: only classes are ``class_path`` values)."""
    import importlib
    import inspect

    module, _, name = path.rpartition(".")
    try:
        return inspect.isclass(getattr(importlib.import_module(module), name, None))
    except ImportError:
        return False


def legacy_yaml_load(text: str) -> Any:
    """jsonargparse's ``yaml`` loader, then :func:`upgrade_legacy` (registered as the ``medrobust`` parser mode)."""
    from jsonargparse import get_loader

    return upgrade_legacy(get_loader("yaml")(text))


__all__ = ["LegacyClassPathWarning", "legacy_yaml_load", "new_class_path", "upgrade_argument", "upgrade_legacy"]
