"""Ingestion of raw MicroLens interactions into webdataset shards with Ray Data (``pipeline.py``).

Modules by concern: ``sources`` (inputs, byte ranges), ``parse``/``validate`` (vectorised parsing
and the per-line slow path), ``datasource`` (the Ray Data source and its ledger), ``grouping``
(per-user sequences), ``ids`` (dense ids), ``shard_writer``/``tar_writer``/``items`` (shards),
``titles``, ``quarantine``, ``manifest_writer`` (reconciliation and atomic publish).
"""

from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.job import run_ingest_job
from mvrec_dist.data.ingest.pipeline import IngestResult, run_ingest

__all__ = ["IngestError", "IngestResult", "run_ingest", "run_ingest_job"]
