"""The embedded default model: a tiny Wan-architecture text-to-video pipeline that works offline.

``load_default_pipeline()`` loads the trained weights shipped in the package (``default_model_path()``:
coloured shapes moving on plain backgrounds, 17 frames of 64x64); ``build_default_pipeline()`` builds a
seeded random-weight pipeline from config, for tests that only need the architecture.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

WORDS = "a an the red green blue yellow white black circle square triangle moving left right up down on background".split()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a small fixed vocabulary, built in code."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    model = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_default_pipeline(seed: int = 0) -> WanPipeline:
    """A WanPipeline with a tiny transformer, VAE and UMT5 encoder, seeded and deterministic."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
    )
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=128, num_layers=4, rope_max_seq_len=256,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    for module in (text_encoder, vae, transformer):
        module.eval()  # built modules start in train mode: UMT5's dropout would make prompts random
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=False)
    return pipe


# What the shipped weights were trained on (configs/default_model.yaml): generate at these settings.
DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH = 17, 64, 64
DEFAULT_STEPS, DEFAULT_GUIDANCE = 8, 1.0


def default_model_path() -> str:
    """The folder of the trained default model inside the package (diffusers format, safetensors)."""
    return str(Path(__file__).resolve().parent.parent / "assets" / "default_model")


def load_default_pipeline(torch_dtype: torch.dtype = torch.float32) -> WanPipeline:
    """``WanPipeline.from_pretrained(default_model_path())``, offline."""
    path = Path(default_model_path())
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"the trained default model is missing from {path}; reinstall vidattn or run "
                                "python -m vidattn.pipelines.default_model_pretrain --config configs/default_model.yaml")
    # float32 is what the weights are stored in; newer diffusers warn on `torch_dtype`, older ones lack `dtype`.
    dtype = {} if torch_dtype == torch.float32 else {"torch_dtype": torch_dtype}
    pipe = WanPipeline.from_pretrained(str(path), local_files_only=True, **dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
