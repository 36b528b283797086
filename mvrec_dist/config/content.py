"""Item-content encoder variants (video encoders, title text).

Each variant subclasses ``ContentEncoderConfig`` with a ``name`` tag; the builder registered for
it in ``mvrec_dist.models.registry`` turns it into a module. Video encoders arrive with the video
item-tower work; this file is their home.
"""

from __future__ import annotations

__all__: list[str] = []
