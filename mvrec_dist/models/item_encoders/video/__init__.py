"""Video encoders: ``forward(frames[U, F, 3, S, S]) -> [U, out_dim]``, plus ``prepare``, ``split``, ``blocks``.

Each is a ``ContentEncoder`` of kind ``'frames'`` (``mvrec_dist.models.item_encoders.base``).

Importing this package registers each family's builder in ``CONTENT_ENCODERS``: R3D-18 and
R(2+1)D-18 (``r3d``), the per-frame 2D CNN (``frame_cnn``) and VideoMAE (``videomae``).
"""

from mvrec_dist.models.item_encoders.video.checkpoints import (CheckpointError, KeyMap, LoadReport, apply_key_map,
                                                               load_public_checkpoint, read_state_dict)
from mvrec_dist.models.item_encoders.video.encoder import VideoEncoder
from mvrec_dist.models.item_encoders.video.finetune import FinetuneSummary, apply_finetune, frozen_block_count
from mvrec_dist.models.item_encoders.video.flops import EncoderFlops, encoder_flops, train_step_flops
from mvrec_dist.models.item_encoders.video.frame_cnn import FrameCNN, frame_cnn, torchvision_resnet_key_map
from mvrec_dist.models.item_encoders.video.r3d import VideoResNet, r2plus1d18, r3d18, torchvision_key_map
from mvrec_dist.models.item_encoders.video.trunk import (trunk_and_top, trunk_digest, trunk_features,
                                                         trunk_output_shape)
from mvrec_dist.models.item_encoders.video.videomae import VideoMAE, sinusoid_table, videomae, videomae_key_map

__all__ = [
    "VideoEncoder", "VideoResNet", "FrameCNN", "VideoMAE",
    "r3d18", "r2plus1d18", "frame_cnn", "videomae",
    "apply_finetune", "frozen_block_count", "FinetuneSummary",
    "KeyMap", "LoadReport", "CheckpointError", "read_state_dict", "apply_key_map", "load_public_checkpoint",
    "torchvision_key_map", "torchvision_resnet_key_map", "videomae_key_map", "sinusoid_table",
    "EncoderFlops", "encoder_flops", "train_step_flops",
    "trunk_and_top", "trunk_digest", "trunk_features", "trunk_output_shape",
]
