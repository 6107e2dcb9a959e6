"""Self-supervised objectives (losses) as standalone modules."""
from .dino_loss import DINOLoss
from .schedules import cosine_scheduler, teacher_temp_schedule

__all__ = ["DINOLoss", "cosine_scheduler", "teacher_temp_schedule"]
