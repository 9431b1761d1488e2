"""Lightning callbacks, one behaviour per file, each pluggable from YAML by ``class_path``."""

from callbacks.adversarial_training import AdversarialTraining
from callbacks.mlflow_run_recorder import MLflowRunRecorder
from callbacks.robustness_evaluation import RobustnessEvaluation

__all__ = ["AdversarialTraining", "MLflowRunRecorder", "RobustnessEvaluation"]
