"""run_ingest_job: the job's work as a function (used by the ingest job and the training job)."""

import json
from pathlib import Path

from mvrec_dist.config import IngestJobConfig, load_config
from mvrec_dist.data.ingest import run_ingest_job

SMALL = Path(__file__).resolve().parents[3] / "jobs" / "configs" / "synthetic" / "ingest-small.yaml"


def test_synthetic_input_is_generated_then_ingested(ray_local, tmp_path):
    cfg = load_config(IngestJobConfig, SMALL,
                      [f"ingest.output_dir={tmp_path / 'ds'}", f"synthetic.output={tmp_path / 'raw'}",
                       "synthetic.users=200", "synthetic.items=50", "synthetic.interactions=1500",
                       "synthetic.chunk_users=200"])
    result = run_ingest_job(cfg)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert result.manifest["counts"]["users"] == 200 == manifest["counts"]["users"]
    assert manifest["config"]["synthetic"]["interactions"] == 1500



def test_synthetic_plays_are_ingested_as_plays_csv(ray_local, tmp_path):
    cfg = load_config(IngestJobConfig, SMALL,
                      [f"ingest.output_dir={tmp_path / 'ds'}", f"synthetic.output={tmp_path / 'raw'}",
                       "synthetic.users=60", "synthetic.items=50", "synthetic.interactions=400",
                       "synthetic.chunk_users=60", "synthetic.plays=true"])
    manifest = run_ingest_job(cfg).manifest
    assert manifest["config"]["ingest"]["format"] == "plays_csv" and manifest["plays"]["members"] == ["play", "duration"]
    assert manifest["config"]["synthetic"]["plays"] is True
