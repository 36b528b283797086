"""Item-content encoders. Importing this package registers their builders in ``CONTENT_ENCODERS``.

Every encoder follows the ``ContentEncoder`` protocol (``base``): ``prepare`` stored content,
``forward`` it to ``[U, out_dim]``, and, for cached features, ``cache_split`` / ``cache_identity``.
"""

# base first: the encoder families subclass it.
from mvrec_dist.models.item_encoders.base import ContentEncoder, cached_feature_shape, cached_features
from mvrec_dist.models.item_encoders.video import FrameCNN, VideoEncoder, VideoMAE, VideoResNet
from mvrec_dist.models.item_encoders.text import TextEncoder

__all__ = ["ContentEncoder", "cached_features", "cached_feature_shape",
           "VideoEncoder", "VideoResNet", "FrameCNN", "VideoMAE", "TextEncoder"]
