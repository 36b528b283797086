"""DeepSpeed config (``parallel/zero.py``): bucket sizes DeepSpeed accepts for any dense tower size."""

import pytest

from mvrec_dist.config.parallel import ParallelConfig
from mvrec_dist.config.train import TrainConfig
from mvrec_dist.parallel.zero import deepspeed_config


@pytest.mark.parametrize("num_params", [1, 50_000, (1 << 22) + 1, 5_829_377, 10**9])
@pytest.mark.parametrize("stage", [1, 2])
def test_buckets_are_aligned_and_bounded(num_params, stage):
    zero = deepspeed_config(ParallelConfig(zero_stage=stage), TrainConfig(), micro_batch=32,
                            num_params=num_params)["zero_optimization"]
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        size = zero[key]
        # ZeRO-1/2 assert a multiple of their alignment factor (2 or 4 by dtype); an odd count used to fail.
        assert size % 512 == 0 and size >= min(num_params, 5e8) and size <= 5e8 + 512
