"""MedMNIST-C-style corruptions as batched, seeded tensor operations."""

from medrobust.datamodules.corruptions.api import SEVERITIES, check, corrupt, corruptions_for
from medrobust.datamodules.corruptions.registry import ALEXNET_BASELINE, FAMILIES

__all__ = ["ALEXNET_BASELINE", "FAMILIES", "SEVERITIES", "check", "corrupt", "corruptions_for"]
