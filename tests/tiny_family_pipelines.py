"""Tiny diffusers pipelines of every supported family, built from config (no hub access), and a 2-step call for each.

Each builder returns ``(pipe, call)``: the real diffusers pipeline with tiny components and the keyword arguments
of a short run (2 steps) whose latent grid is F x 4 x 5 tokens (the grid tests/test_families.py uses; LTX-2's
pipeline needs 32-pixel multiples: 3 x 8 x 8), returning latents. Used by tests/test_family_pipelines.py.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    SkyReelsV2DiffusionForcingPipeline,
    SkyReelsV2Pipeline,
    SkyReelsV2Transformer3DModel,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
    WanVACEPipeline,
    WanVACETransformer3DModel,
)
from transformers import UMT5Config, UMT5EncoderModel

from vidattn.pipelines.default_model import build_tokenizer

# Wan VAE in miniature: 8x spatial, 4x temporal; 17 frames at 64 x 80 pixels are 5 x 8 x 10 latents, 5 x 4 x 5 tokens.
WAN_CALL = dict(prompt="a red circle moving right", num_frames=17, height=64, width=80, num_inference_steps=2,
                max_sequence_length=16, output_type="latent")
WAN_BLOCK = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=32,
                 freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=64)


def _eval(*modules) -> None:
    for module in modules:
        if module is not None:
            module.eval()  # built modules start in train mode: dropout would make runs random


def _wan_parts(seed: int) -> dict:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, relative_attention_num_buckets=8)
    )
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    _eval(text_encoder, vae)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae)


def image(height: int = 64, width: int = 80, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def wan22_a14b(seed: int = 0):
    """Wan 2.2 A14B: two experts (``transformer`` above the boundary, ``transformer_2`` below), CFG as two calls."""
    parts = _wan_parts(seed)
    high = WanTransformer3DModel(**WAN_BLOCK).eval()
    low = WanTransformer3DModel(**WAN_BLOCK).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = WanPipeline(**parts, scheduler=scheduler, transformer=high, transformer_2=low, boundary_ratio=0.8)
    return pipe, dict(WAN_CALL, guidance_scale=2.0, guidance_scale_2=3.0)


def wan22_ti2v(seed: int = 0):
    """Wan 2.2 TI2V-5B in image-to-video mode: ``expand_timesteps`` gives a per-token timestep, the first frame clean."""
    parts = _wan_parts(seed)
    transformer = WanTransformer3DModel(**WAN_BLOCK).eval()
    pipe = WanImageToVideoPipeline(**parts, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer,
                                   image_processor=None, image_encoder=None, expand_timesteps=True)
    return pipe, dict(WAN_CALL, image=image(), guidance_scale=1.0)


def wan_flf2v(seed: int = 0):
    """Wan 2.1 FLF2V: first and last frame, CLIP image tokens through attn2's added K/V."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    parts = _wan_parts(seed)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    ).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transformer = WanTransformer3DModel(**{**WAN_BLOCK, "in_channels": 12, "image_dim": 16, "added_kv_proj_dim": 24, "pos_embed_seq_len": 2 * 17}).eval()
    pipe = WanImageToVideoPipeline(**parts, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer,
                                   image_processor=image_processor, image_encoder=image_encoder)
    return pipe, dict(WAN_CALL, num_frames=9, image=image(seed=1), last_image=image(seed=2), guidance_scale=1.0)


def wan_vace(seed: int = 0):
    """Wan VACE: control video and mask through ``vace_blocks`` (their self-attention is video attention too)."""
    parts = _wan_parts(seed)
    # control channels: inactive + reactive latents (2 x z_dim) and the mask folded to 8 x 8 = 64 channels
    transformer = WanVACETransformer3DModel(**WAN_BLOCK, vace_layers=[0, 1], vace_in_channels=2 * 4 + 64).eval()
    pipe = WanVACEPipeline(**parts, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer)
    video = [image(seed=i) for i in range(9)]
    mask = [PIL.Image.new("L", (80, 64), 255 if i >= 4 else 0) for i in range(9)]
    return pipe, dict(WAN_CALL, num_frames=9, video=video, mask=mask, guidance_scale=1.0)  # 3 latent frames: the VAE encodes less


def skyreels_v2(seed: int = 0, diffusion_forcing: bool = True, **transformer_config):
    """SkyReels-V2 text-to-video; ``diffusion_forcing`` gives each latent frame its own timestep (UniPC per frame)."""
    parts = _wan_parts(seed)
    transformer = SkyReelsV2Transformer3DModel(**WAN_BLOCK, **transformer_config).eval()
    cls = SkyReelsV2DiffusionForcingPipeline if diffusion_forcing else SkyReelsV2Pipeline
    pipe = cls(**parts, scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0),
               transformer=transformer)
    call = dict(WAN_CALL, guidance_scale=2.0)
    if diffusion_forcing:
        call.update(base_num_frames=17)
    return pipe, call


CHAT_TEMPLATE = "{% for m in messages %}<|im_start|> {{ m['role'] }} {% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}{{ c['text'] }} {% endfor %}{% endif %} <|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"


def chat_tokenizer():
    """The default model's word-level tokenizer plus the role words, with a chat template (Qwen/Llama-encoder pipelines)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from vidattn.pipelines.default_model import WORDS

    words = ["<pad>", "</s>", "<unk>", "system", "user", "assistant", *WORDS]
    model = Tokenizer(WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    model.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def qwen25_text(tokenizer, hidden: int = 16, vision: bool = False):
    """A one-layer Qwen2.5-VL language model (the ``...TextModel`` or, ``vision=True``, the whole conditional model)."""
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=0, bos_token_id=None, eos_token_id=1,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]})
    if not vision:
        return Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**text)).eval()
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(text_config=text, vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden,
                                                                    fullatt_block_indexes=[0], patch_size=4, spatial_merge_size=1, window_size=8))
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def hunyuan15(seed: int = 0, guidance_scale: float = 2.0):
    """HunyuanVideo 1.5 text-to-video: Qwen2.5-VL prompt states (1000 text tokens), ByT5 glyph states (masked out when
    the prompt quotes no text), zero image states (masked), CFG through diffusers' guider as two calls."""
    from diffusers import AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, HunyuanVideo15Pipeline, HunyuanVideo15Transformer3DModel
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = chat_tokenizer()
    text_encoder = qwen25_text(tokenizer)
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=384, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)).eval()
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1).eval()
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=4 * 2 + 1, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2, num_refiner_layers=1,
        patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(4, 4, 4),
    ).eval()
    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=text_encoder_2, tokenizer_2=ByT5Tokenizer(),
        guider=ClassifierFreeGuidance(guidance_scale=guidance_scale),
    )
    # The pipeline's sequence lengths (1000 prompt tokens after the 108-token template, 256 ByT5 tokens, 729 image
    # tokens) are instance attributes: shortened, the joint attention is 100 video + 40 other tokens.
    pipe.tokenizer_max_length, pipe.tokenizer_2_max_length, pipe.vision_num_semantic_tokens = 24, 8, 8
    # 16x spatial VAE, patch 1: 64 x 80 pixels are 4 x 5 tokens
    return pipe, dict(prompt="a red circle moving right", num_frames=17, height=64, width=80, num_inference_steps=2, output_type="latent")


def ltx2(seed: int = 0):
    """LTX-2 text-to-audio+video: Gemma 3 hidden states through the text connectors, a video and an audio VAE, the
    vocoder; CFG batched (one call per step), spatio-temporal guidance off (vidattn refuses perturbed attention)."""
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2Pipeline, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = chat_tokenizer()
    text_encoder = Gemma3ForConditionalGeneration(Gemma3Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=8, max_position_embeddings=256, sliding_window=16, pad_token_id=0,
                         bos_token_id=None, eos_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8),
        mm_tokens_per_image=4,
    )).eval()
    layers = text_encoder.config.text_config.num_hidden_layers + 1
    connectors = LTX2TextConnectors(
        caption_channels=16, text_proj_in_factor=layers, video_connector_num_attention_heads=2, video_connector_attention_head_dim=8,
        video_connector_num_layers=1, video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
        connector_rope_base_seq_len=32, rope_double_precision=False, rope_type="split",
    ).eval()
    vae = AutoencoderKLLTX2Video(  # 4x spatial, 4x temporal: 9 frames of 32 x 32 pixels are 3 x 8 x 8 latents
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1), spatio_temporal_scaling=(True, True),
        decoder_spatio_temporal_scaling=(True, True), decoder_inject_noise=(False, False, False), downsample_type=("spatial", "spatiotemporal"),
        upsample_residual=(False, False), upsample_factor=(1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    ).eval()
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2, resolution=32,
        latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0, mid_block_add_attention=False, sample_rate=16000,
        mel_hop_length=160, is_causal=True, mel_bins=8,
    ).eval()
    vocoder = LTX2Vocoder(in_channels=2 * 8, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
                          resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1, output_sampling_rate=16000).eval()
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8,
        num_layers=2, caption_channels=16, rope_double_precision=False, rope_type="split",
    ).eval()
    pipe = LTX2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, connectors=connectors, transformer=transformer, vocoder=vocoder)
    call = dict(prompt="a red circle moving right", negative_prompt="", num_inference_steps=2, guidance_scale=2.0, stg_scale=0.0,
                modality_scale=1.0, guidance_rescale=0.0, audio_guidance_scale=2.0, audio_stg_scale=0.0, audio_modality_scale=1.0,
                audio_guidance_rescale=0.0, spatio_temporal_guidance_blocks=None, use_cross_timestep=False, height=32, width=32,
                num_frames=9, frame_rate=25.0, max_sequence_length=16, output_type="latent")
    return pipe, call


class NoGuardrail(torch.nn.Module):
    """Stands in for Cosmos' safety checker (the ``cosmos_guardrail`` package and its hub weights): passes everything.
    Only text is checked through it; the video check runs for ``CosmosSafetyChecker`` instances only."""

    device = torch.device("cpu")  # what DiffusionPipeline.device reads of every component

    def check_text_safety(self, prompt: str) -> bool:
        return True


def cosmos25(seed: int = 0):
    """Cosmos 2.5 Predict, Video2World: Qwen2.5-VL hidden states of every layer (normalised, concatenated) projected to
    the text width, the Wan VAE, one conditioning latent frame (per-frame timestep ~0) and UniPC flow sigmas.
    ``concat_padding_mask`` is off: it resizes the mask with torchvision, which the test environment lacks."""
    from diffusers import Cosmos2_5_PredictBasePipeline, CosmosTransformer3DModel

    parts = _wan_parts(seed)
    tokenizer = chat_tokenizer()
    text_encoder = qwen25_text(tokenizer, vision=True)
    layers = text_encoder.config.text_config.num_hidden_layers
    transformer = CosmosTransformer3DModel(
        in_channels=4 + 1, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2, text_embed_dim=16,
        adaln_lora_dim=8, max_size=(8, 16, 16), patch_size=(1, 2, 2), concat_padding_mask=False, use_crossattn_projection=True,
        crossattn_proj_in_channels=16 * layers, encoder_hidden_states_channels=16,
    ).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    pipe = Cosmos2_5_PredictBasePipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=parts["vae"],
                                         scheduler=scheduler, safety_checker=NoGuardrail())
    video = torch.rand(1, 3, 1, 64, 80, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # the last frame conditions
    call = dict(video=video, prompt="a red circle moving right", negative_prompt="", num_frames=9, height=64, width=80,
                num_inference_steps=2, guidance_scale=2.0, max_sequence_length=16, num_latent_conditional_frames=1, output_type="latent")
    return pipe, call


def wan21_i2v(seed: int = 0):
    """Wan 2.1 I2V (tests/tiny_pipelines.py): the first frame conditions, CLIP image tokens through attn2."""
    from tiny_pipelines import tiny_wan_i2v_pipeline

    pipe = tiny_wan_i2v_pipeline(seed)
    for module in (pipe.text_encoder, pipe.vae, pipe.image_encoder, pipe.transformer):
        module.eval()
    return pipe, dict(WAN_CALL, num_frames=9, image=image(), guidance_scale=1.0)


def skyreels_v2_t2v(seed: int = 0):
    """SkyReels-V2 text-to-video without diffusion forcing (one timestep per sample)."""
    return skyreels_v2(seed, diffusion_forcing=False)


def hunyuan_video(seed: int = 0):
    """HunyuanVideo: Llama prompt states (template cropped) and a CLIP pooled state; one call per step (embedded guidance)."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    tokenizer = chat_tokenizer()
    text_encoder = LlamaModel(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                                          bos_token_id=None, eos_token_id=1)).eval()
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                                  num_attention_heads=2, max_position_embeddings=77, projection_dim=8,
                                                  pad_token_id=0, bos_token_id=0, eos_token_id=1)).eval()
    vae = AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4).eval()
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8, guidance_embeds=True,
        rope_axes_dim=(4, 4, 4),
    ).eval()
    pipe = HunyuanVideoPipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2, tokenizer_2=tokenizer)
    template = {"template": "<|im_start|> system describe the video <|im_end|> <|im_start|> user {} <|im_end|>", "crop_start": 6}
    return pipe, dict(prompt="a red circle moving right", prompt_template=template, num_frames=17, height=64, width=80,
                      num_inference_steps=2, guidance_scale=6.0, max_sequence_length=8, output_type="latent")


def cogvideox(seed: int = 0):
    """CogVideoX 5B shape (3D RoPE): T5 prompt states joined to the video tokens; CFG batched into one call."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).eval()
    vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4).eval()
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8, text_embed_dim=16, num_layers=2,
        sample_width=10, sample_height=8, sample_frames=17, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=8,
        use_rotary_positional_embeddings=True,
    ).eval()
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler(timestep_spacing="trailing"))
    return pipe, dict(prompt="a red circle moving right", negative_prompt="", num_frames=17, height=64, width=80, num_inference_steps=2,
                      guidance_scale=6.0, max_sequence_length=8, output_type="latent")
