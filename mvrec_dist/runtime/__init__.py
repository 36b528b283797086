"""Where jobs run: connecting to Ray, and checks of the paths they are given."""

from mvrec_dist.runtime.paths import (PathError, check_dataset_dir, check_input_path, check_manifest_path,
                                      check_storage_path)
from mvrec_dist.runtime.ray_cluster import LOOPBACK_ENV, apply_loopback_env, ray_session

__all__ = ["PathError", "check_dataset_dir", "check_input_path", "check_manifest_path", "check_storage_path",
           "LOOPBACK_ENV", "apply_loopback_env", "ray_session"]
