"""Fused-optimizer parameters of the sharded item table (the parts that need no process group)."""

from __future__ import annotations

from mvrec_dist.config.parallel import ParallelConfig
from mvrec_dist.parallel.sharding import _fused_params


def test_bf16_outputs_use_fbgemm_sparse_type():
    # The GPU presets run bf16: the lookup output dtype must resolve (it is only built on CUDA runs,
    # so nothing else on a CPU machine would import it).
    from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType

    params = _fused_params(ParallelConfig(embedding_optimizer="rowwise_adagrad", embedding_lr=0.05), output_bf16=True)
    assert params["output_dtype"] == SparseType.BF16
    assert params["optimizer"] == EmbOptimType.EXACT_ROWWISE_ADAGRAD and params["learning_rate"] == 0.05
    assert "output_dtype" not in _fused_params(ParallelConfig(), output_bf16=False)
