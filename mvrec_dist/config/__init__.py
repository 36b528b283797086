"""Typed configuration: dataclass schemas, YAML presets and dotted overrides. Imports no torch or ray."""

from mvrec_dist.config.data import DataConfig
from mvrec_dist.config.eval import EvalConfig
from mvrec_dist.config.features import TrunkCacheConfig
from mvrec_dist.config.fields import ConfigError, setting
from mvrec_dist.config.ingest import IngestConfig, SyntheticConfig, VideoIngestConfig
from mvrec_dist.config.jobs import IngestJobConfig, TrainJobConfig
from mvrec_dist.config.load import (config_to_dict, config_to_yaml, describe_config, load_config)
from mvrec_dist.config.model import (ContentEncoderConfig, FullSoftmaxConfig, GRU4RecConfig,
                                     InBatchSoftmaxConfig, LossConfig, ModelConfig, NextItNetConfig,
                                     SampledSoftmaxConfig, SASRecConfig, UserEncoderConfig)
from mvrec_dist.config.parallel import ParallelConfig
from mvrec_dist.config.retrieval import RetrievalConfig
from mvrec_dist.config.runtime import RayConfig
from mvrec_dist.config.train import TrainConfig

__all__ = [
    "ConfigError", "setting", "load_config", "config_to_dict", "config_to_yaml", "describe_config",
    "DataConfig", "EvalConfig", "IngestConfig", "SyntheticConfig", "VideoIngestConfig",
    "IngestJobConfig", "TrainJobConfig", "ModelConfig", "UserEncoderConfig", "SASRecConfig",
    "GRU4RecConfig", "NextItNetConfig", "LossConfig", "FullSoftmaxConfig", "InBatchSoftmaxConfig",
    "SampledSoftmaxConfig", "ContentEncoderConfig", "ParallelConfig", "RayConfig", "TrainConfig",
    "TrunkCacheConfig", "RetrievalConfig",
]
