"""Training: the flow-matching objective, video data preparation and LoRA training with accelerate + peft.

``train``/``main`` live in :mod:`vidattn.training.train_lora` (not imported here, so ``python -m`` runs it cleanly).
"""

from .cache import CachedLatentDataset, PrepareReport, prepare_data
from .cache_check import CacheError, verify_cache
from .config import TrainConfig
from .dataset import BucketBatchSampler, VideoClipDataset
from ..flow_matching import flow_matching_loss, sample_sigmas, shift_sigmas

__all__ = [
    "BucketBatchSampler",
    "CacheError",
    "CachedLatentDataset",
    "PrepareReport",
    "TrainConfig",
    "VideoClipDataset",
    "flow_matching_loss",
    "prepare_data",
    "sample_sigmas",
    "shift_sigmas",
    "verify_cache",
]
