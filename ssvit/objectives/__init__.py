"""Self-supervised objectives (losses) as standalone modules."""
from .ddino_loss import DDINOLoss, match_regions
from .dino_loss import DINOLoss
from .ibot_loss import iBOTLoss
from .koleo import KoLeoLoss
from .schedules import cosine_scheduler, patch_temp_schedule, teacher_temp_schedule
from .sere_loss import ChannelSERELoss, PixelSERELoss

__all__ = ["DINOLoss", "KoLeoLoss", "DDINOLoss", "match_regions", "iBOTLoss", "ChannelSERELoss", "PixelSERELoss", "cosine_scheduler", "patch_temp_schedule",
           "teacher_temp_schedule"]
