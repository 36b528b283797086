"""The ingestion job's work as one function: optional synthetic input, the interactions, the videos.

Shared by ``jobs/ingest_microlens.py`` and by the training job's ``data.prepare_with`` (the demo
ingests its synthetic data before training).

With ``video.enabled`` the video stage (``content.run_content_ingest``) runs after the
interactions, and with ``text.enabled`` the title stage (``text_content.run_text_ingest``). When
``ingest.output_dir`` already holds the dataset these inputs make (same fingerprint) and
``ingest.overwrite`` is off, the interactions are not ingested again: the content is added to that
dataset, so videos can be decoded, or titles tokenised, into a dataset ingested long before.
"""

from __future__ import annotations

import dataclasses
import time

from mvrec_dist.config.jobs import IngestJobConfig
from mvrec_dist.config.load import config_to_dict
from mvrec_dist.data.ingest.content import run_content_ingest
from mvrec_dist.data.ingest.pipeline import IngestResult, dataset_identity, run_ingest
from mvrec_dist.data.ingest.space import check_free_space
from mvrec_dist.data.ingest.text_content import run_text_ingest
from mvrec_dist.data.ingest.warm import derive_warm, warm_output_dir
from mvrec_dist.data.manifest import ManifestError, load_manifest

__all__ = ["run_ingest_job"]


def _existing_same_dataset(cfg) -> dict | None:
    """The manifest in ``cfg.output_dir`` when it is the dataset ``cfg`` would make, else None."""
    try:
        manifest = load_manifest(cfg.output_dir)
    except ManifestError:
        return None
    return manifest.data if manifest.data.get("fingerprint") == dataset_identity(cfg).fingerprint else None


def _already_ingested(cfg: IngestJobConfig) -> bool:
    """Whether ``cfg.ingest.output_dir`` holds the dataset these inputs make (checked before any generation)."""
    from mvrec_dist.data.synthetic import generated_bytes

    if not cfg.synthetic.enabled:
        return _existing_same_dataset(cfg.ingest) is not None
    if generated_bytes(cfg.synthetic) is None:
        return False
    fmt = "plays_csv" if cfg.synthetic.plays else "pairs_csv"
    return _existing_same_dataset(dataclasses.replace(cfg.ingest, input=cfg.synthetic.output, format=fmt)) is not None


def run_ingest_job(cfg: IngestJobConfig) -> IngestResult:
    """Generate the synthetic input if asked, ingest the interactions, then the videos and titles if enabled.

    Needs a Ray session.

    Args:
        cfg: The ingest job config.

    Returns:
        An ``IngestResult`` (final manifest, output directory, seconds; ``timings`` has
        ``content`` for the video stage, ``warm<N>`` per derived Warm-N dataset (``ingest.warm``,
        ``warm.derive_warm``, written to ``<output_dir>-warm<N>``) and ``reused`` when the
        interactions were already there).

    Raises:
        IngestError: as ``run_ingest`` and ``run_content_ingest``; before anything is written, when the
            output's (or Ray's spill directory's, or ``synthetic.output``'s) filesystem has less free
            space than the run needs (``space.check_free_space``; ``ingest.check_free_space=false`` skips it).
    """
    from mvrec_dist.data.synthetic import generate

    t0 = time.perf_counter()
    ingest, extra = cfg.ingest, {}
    adds_content = cfg.video.enabled or cfg.text.enabled
    # Content stages and Warm-N derivations work on the dataset these inputs make: reuse it when it is there.
    reuse = (adds_content or bool(ingest.warm)) and not ingest.overwrite
    if not (reuse and _already_ingested(cfg)):
        check_free_space(cfg)
    if cfg.synthetic.enabled:
        ingest = dataclasses.replace(ingest, input=generate(cfg.synthetic),
                                     format="plays_csv" if cfg.synthetic.plays else "pairs_csv")
        extra["synthetic"] = config_to_dict(cfg.synthetic)
    existing = _existing_same_dataset(ingest) if reuse else None
    if existing is not None:
        result = IngestResult(output_dir=ingest.output_dir, manifest=existing, seconds=0.0, timings={"reused": 0.0})
    else:
        result = run_ingest(ingest, extra_config=extra)
    if cfg.video.enabled:
        content = run_content_ingest(cfg.video, ingest.output_dir, progress=ingest.progress)
        result.manifest = content.manifest
        result.timings["content"] = content.seconds
    if cfg.text.enabled:
        text = run_text_ingest(cfg.text, ingest.output_dir, progress=ingest.progress)
        result.manifest = text.manifest
        result.timings["text"] = text.seconds
    for n in ingest.warm:
        t = time.perf_counter()
        out = warm_output_dir(ingest.output_dir, n)
        derived = derive_warm(ingest.output_dir, n, out, overwrite=ingest.overwrite, progress=ingest.progress)
        if cfg.text.enabled:  # a derived dataset's items are its own: its titles are tokenised for it
            derived = run_text_ingest(cfg.text, out, progress=ingest.progress).manifest
        result.timings[f"warm{n}"] = time.perf_counter() - t
        c = derived["derived_from"]["counts"]
        print(f"Warm-{n}: {out}: {c['kept_users']:,} users, {c['kept_items']:,} items, "
              f"{c['kept_interactions']:,} interactions ({c['removed_items']:,} items, "
              f"{c['removed_interactions']:,} interactions and {c['dropped_users']:,} users removed)", flush=True)
    result.seconds = time.perf_counter() - t0
    return result
