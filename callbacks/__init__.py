"""Lightning callbacks, one behaviour per file, each pluggable from YAML by ``class_path``."""

from callbacks.adversarial_training import AdversarialTraining
from callbacks.corruption_augmentation import CorruptionAugmentation
from callbacks.mlflow_run_recorder import MLflowRunRecorder
from callbacks.robustness_evaluation import RobustnessEvaluation
from callbacks.shift_evaluation import ShiftEvaluation

__all__ = [
    "AdversarialTraining",
    "CorruptionAugmentation",
    "MLflowRunRecorder",
    "RobustnessEvaluation",
    "ShiftEvaluation",
]
