"""Tiny configs of every video encoder family (F=4 frames of 32x32), shared by this folder's tests."""

from __future__ import annotations

import pytest

from mvrec_dist.config.content import FrameCNNConfig, R2Plus1D18Config, R3D18Config, VideoMAEConfig

FRAMES, SIZE = 4, 32

TINY = {
    "r3d18": R3D18Config(widths=(4, 8, 8, 16), layers=(1, 1, 1, 1), stem_width=4, frames=FRAMES, size=SIZE),
    "r2plus1d18": R2Plus1D18Config(widths=(4, 8, 8, 16), layers=(1, 2, 1, 1), stem_width=4, stem_mid_width=3,
                                   frames=FRAMES, size=SIZE),
    "frame_cnn": FrameCNNConfig(widths=(4, 8, 8, 16), layers=(1, 1, 2, 1), stem_width=4, frames=FRAMES, size=SIZE),
    "videomae": VideoMAEConfig(embed_dim=16, depth=3, num_heads=2, mlp_dim=24, patch=8, tubelet=2,
                               frames=FRAMES, size=SIZE),
}


@pytest.fixture(params=sorted(TINY))
def tiny_cfg(request):
    """One tiny config per family (finetune 'top', top_blocks 2: the config defaults)."""
    return TINY[request.param]
