"""Lightning callbacks, one behaviour per file, each pluggable from YAML by ``class_path``."""

from callbacks.adversarial_training import AdversarialTraining
from callbacks.corruption_augmentation import CorruptionAugmentation
from callbacks.detection_evaluation import DetectionEvaluation
from callbacks.feature_distillation import FeatureDistillation
from callbacks.mlflow_checkpoints import MLflowCheckpoints
from callbacks.mlflow_dataset_inputs import MLflowDatasetInputs
from callbacks.mlflow_seams import MLflowSeams
from callbacks.mlflow_system_metrics import MLflowSystemMetrics
from callbacks.mlflow_test_record import MLflowTestRecord
from callbacks.robust_validation import RobustValidation
from callbacks.robustness_evaluation import RobustnessEvaluation
from callbacks.saliency_evaluation import SaliencyEvaluation
from callbacks.selection_checkpoint import SelectionCheckpoint
from callbacks.shift_evaluation import ShiftEvaluation
from callbacks.shortcut_evaluation import ShortcutEvaluation

__all__ = [
    "AdversarialTraining",
    "CorruptionAugmentation",
    "DetectionEvaluation",
    "FeatureDistillation",
    "MLflowCheckpoints",
    "MLflowDatasetInputs",
    "MLflowSeams",
    "MLflowSystemMetrics",
    "MLflowTestRecord",
    "RobustValidation",
    "RobustnessEvaluation",
    "SaliencyEvaluation",
    "SelectionCheckpoint",
    "ShiftEvaluation",
    "ShortcutEvaluation",
]
