"""The ingestion job's work as one function: optional synthetic input, then the Ray Data pipeline.

Shared by ``jobs/ingest_microlens.py`` and by the training job's ``data.prepare_with`` (the demo
ingests its synthetic data before training).
"""

from __future__ import annotations

import dataclasses

from mvrec_dist.config.jobs import IngestJobConfig
from mvrec_dist.config.load import config_to_dict
from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.pipeline import IngestResult, run_ingest

__all__ = ["run_ingest_job"]


def run_ingest_job(cfg: IngestJobConfig) -> IngestResult:
    """Generate the synthetic input if asked, then ingest (needs a Ray session).

    Args:
        cfg: The ingest job config.

    Returns:
        The pipeline's ``IngestResult`` (manifest, output directory, seconds).

    Raises:
        IngestError: as ``run_ingest``; also when ``video.enabled`` (not part of this job yet).
    """
    from mvrec_dist.data.synthetic import generate

    if cfg.video.enabled:
        raise IngestError("video.enabled: decoding videos into content shards is not part of the ingest job "
                          "yet (issue 4); run with video.enabled=false")
    ingest, extra = cfg.ingest, {}
    if cfg.synthetic.enabled:
        ingest = dataclasses.replace(ingest, input=generate(cfg.synthetic), format="pairs_csv")
        extra["synthetic"] = config_to_dict(cfg.synthetic)
    return run_ingest(ingest, extra_config=extra)
