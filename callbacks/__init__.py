"""Lightning callbacks, one behaviour per file, each pluggable from YAML by ``class_path``."""

from medrobust.callbacks.adversarial_training import AdversarialTraining
from medrobust.callbacks.corruption_augmentation import CorruptionAugmentation
from medrobust.callbacks.detection_evaluation import DetectionEvaluation
from medrobust.callbacks.feature_distillation import FeatureDistillation
from medrobust.callbacks.mlflow_checkpoints import MLflowCheckpoints
from medrobust.callbacks.mlflow_dataset_inputs import MLflowDatasetInputs
from medrobust.callbacks.mlflow_model import MLflowModel
from medrobust.callbacks.mlflow_seams import MLflowSeams
from medrobust.callbacks.mlflow_system_metrics import MLflowSystemMetrics
from medrobust.callbacks.mlflow_test_record import MLflowTestRecord
from medrobust.callbacks.robust_validation import RobustValidation
from medrobust.callbacks.robustness_evaluation import RobustnessEvaluation
from medrobust.callbacks.saliency_evaluation import SaliencyEvaluation
from medrobust.callbacks.selection_checkpoint import SelectionCheckpoint
from medrobust.callbacks.shift_evaluation import ShiftEvaluation
from medrobust.callbacks.shortcut_evaluation import ShortcutEvaluation

__all__ = [
    "AdversarialTraining",
    "CorruptionAugmentation",
    "DetectionEvaluation",
    "FeatureDistillation",
    "MLflowCheckpoints",
    "MLflowDatasetInputs",
    "MLflowModel",
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
