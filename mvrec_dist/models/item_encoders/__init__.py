"""Item-content encoders. Importing this package registers their builders in ``CONTENT_ENCODERS``."""

from mvrec_dist.models.item_encoders.video import FrameCNN, VideoEncoder, VideoMAE, VideoResNet

__all__ = ["VideoEncoder", "VideoResNet", "FrameCNN", "VideoMAE"]
