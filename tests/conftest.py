"""Test fixtures shared by the whole suite.

The environment that keeps every test on loopback (Ray, gloo) and on one thread per process is set
here, at import, before any test imports ray or torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mvrec_dist.runtime.ray_cluster import LOOPBACK_ENV

for _k, _v in LOOPBACK_ENV.items():
    os.environ[_k] = _v
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
MICROLENS_50K = SHARED / "data" / "microlens-50k"
MICROLENS_VIDEOS = SHARED / "data" / "microlens-videos"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the real MicroLens files live in ../shared beside the checkout "
                    "(present in CI); this test needs them")
    return path


@pytest.fixture(scope="session")
def microlens_50k() -> Path:
    """Directory of the real MicroLens-50K files (skips the test when ../shared is absent)."""
    return _require(MICROLENS_50K)


@pytest.fixture(scope="session")
def microlens_videos() -> Path:
    """Directory of the three real MicroLens videos (skips the test when ../shared is absent)."""
    return _require(MICROLENS_VIDEOS)


@pytest.fixture(scope="session")
def ray_local():
    """One embedded loopback-only Ray cluster for the whole session, shut down at the end."""
    import ray

    from mvrec_dist.config import RayConfig
    from mvrec_dist.runtime.ray_cluster import apply_loopback_env, local_cluster_resources

    apply_loopback_env()
    if not ray.is_initialized():
        kwargs = local_cluster_resources(RayConfig(num_cpus=2))
        kwargs["include_dashboard"] = False
        kwargs["object_store_memory"] = 1 << 30
        ray.init(address="local", runtime_env={"env_vars": dict(LOOPBACK_ENV, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")},
                 **kwargs)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def manifest_dataset(tmp_path_factory) -> Path:
    """A tiny dataset (10 users, train split only, no content; tests/helpers/shards.py, no Ray):
    enough for the driver-side checks that read a manifest."""
    from tests.helpers.shards import train_dataset

    root = tmp_path_factory.mktemp("manifest-dataset") / "ds"
    root.mkdir()
    train_dataset(root, [5, 5])
    return root
