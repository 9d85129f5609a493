"""LoRA training of a Wan transformer on cached latents, with any vidattn attention method active (accelerate + peft).

``accelerate launch -m vidattn.training.train_lora --config configs/radial_length_x2.yaml [--set key=value ...]``
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from ..processors.install import install_processors
from ..processors.registry import METHODS, make_processor
from .cache import CachedLatentDataset, default_model_folder
from .config import TrainConfig
from .dataset import BucketBatchSampler
from .objectives import flow_matching_loss

logger = logging.getLogger("vidattn.training")

TRAINABLE_FILE = "trainable.safetensors"
EXTRA_PARAMS_FILE = "extra_params.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    """What a run did: optimizer steps, (step, loss) pairs, exported files and throughput."""

    global_step: int
    losses: list = field(default_factory=list)
    lora_path: str | None = None
    extra_params_path: str | None = None
    steps_per_second: float = 0.0
    transformer: torch.nn.Module | None = field(default=None, repr=False)  # the trained (unwrapped) model


def load_transformer(model: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The transformer of a diffusers pipeline folder (or a transformer folder), or of the embedded ``"default"``."""
    if model == "default" and default_model_folder() is None:
        from ..pipelines.default_model import build_default_pipeline

        transformer = build_default_pipeline().transformer
        return transformer if dtype == torch.float32 else transformer.to(dtype)
    from diffusers import AutoModel

    path = Path(default_model_folder() if model == "default" else model)
    if not path.is_dir():
        raise ValueError(f"model must be a diffusers pipeline folder, a transformer folder or 'default', got {model!r}")
    if (path / "transformer").is_dir():
        return AutoModel.from_pretrained(str(path), subfolder="transformer", torch_dtype=dtype)
    return AutoModel.from_pretrained(str(path), torch_dtype=dtype)


def dense_layer_argument(method: str) -> str:
    """The config field through which ``method`` keeps its first n layers dense (VMoBA: ``first_sparse_layer``)."""
    entry = METHODS[method]
    fields = set(getattr(entry.config, "__dataclass_fields__", ()))
    return "first_sparse_layer" if "dense_layers" not in fields and "first_sparse_layer" in fields else "dense_layers"


def install_method(transformer: torch.nn.Module, method: str, method_args: dict, dense_layers: int):
    """Put ``method``'s processor on every video self-attention layer (the first ``dense_layers`` stay dense)."""
    if method == "none":
        return None
    argument = dense_layer_argument(method)
    if argument in method_args:
        raise ValueError(f"set dense_layers at the top level of the training config, not method_args.{argument}")
    plan_cache: dict = {}

    def make(index: int, family: str, context) -> object:
        return make_processor(method, layer_idx=index, context=context, plan_cache=plan_cache, **{argument: dense_layers}, **method_args)

    return install_processors(transformer, make)


def add_lora(transformer: torch.nn.Module, config: TrainConfig) -> list[str]:
    """Freeze the transformer, add a peft LoRA adapter on ``target_modules``; return the LoRA parameter names."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.alpha, lora_dropout=config.lora_dropout, init_lora_weights=True, target_modules=config.target_modules)
    try:
        transformer.add_adapter(lora)
    except ValueError as exc:
        raise ValueError(f"target_modules {config.target_modules} match no layer of {type(transformer).__name__}: {exc}") from None
    names = [n for n, p in transformer.named_parameters() if "lora_" in n]
    for name, param in transformer.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()  # LoRA weights train in fp32 even when the base runs in bf16/fp16
            param.requires_grad_(True)
    return names


def mark_extra_params(transformer: torch.nn.Module, patterns: Sequence[str]) -> list[str]:
    """Unfreeze (full fine-tune, fp32) every non-LoRA parameter whose name matches one of ``patterns`` (regex search)."""
    names = []
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"train_extra_params entry {pattern!r} is not a valid regular expression: {exc}") from None
        hits = [n for n, _ in transformer.named_parameters() if "lora_" not in n and regex.search(n)]
        if not hits:
            raise ValueError(f"train_extra_params entry {pattern!r} matches no parameter of the transformer")
        names += [n for n in hits if n not in names]
    params = dict(transformer.named_parameters())
    for name in names:
        params[name].data = params[name].data.float()
        params[name].requires_grad_(True)
    return names


class ParamEMA:
    """Exponential moving average of the trainable parameters (checkpointed with ``accelerator.save_state``)."""

    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().clone().float() for n, p in named_params.items()}

    @torch.no_grad()
    def update(self, named_params: dict[str, torch.nn.Parameter]) -> None:
        for name, param in named_params.items():
            self.shadow[name].lerp_(param.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, named_params: dict[str, torch.nn.Parameter]) -> None:
        for name, param in named_params.items():
            param.copy_(self.shadow[name].to(param.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = {n: t.float() for n, t in state["shadow"].items()}


def checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders of ``output_dir``, oldest first."""
    root = Path(output_dir)
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def resolve_resume(config: TrainConfig) -> Path | None:
    """The checkpoint to resume from: None, ``"latest"`` (None if there is none yet) or an explicit folder."""
    if config.resume_from_checkpoint is None:
        return None
    if config.resume_from_checkpoint == "latest":
        found = checkpoints(config.output_dir)
        return found[-1] if found else None
    path = Path(config.resume_from_checkpoint)
    if not path.is_dir() or not path.name.startswith("checkpoint-") or not path.name.split("-", 1)[1].isdigit():
        raise ValueError(f"resume_from_checkpoint must be null, 'latest' or an existing checkpoint-<step> folder, got {str(path)!r}")
    return path


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft naming (what ``save_lora_weights`` expects for ``transformer_lora_layers``)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}


def export_lora(transformer: torch.nn.Module, output_dir: str | Path, extra_names: Sequence[str] = ()) -> tuple[str, str | None]:
    """Write ``pytorch_lora_weights.safetensors`` (diffusers format, loads with ``WanPipeline.load_lora_weights``)
    and, when extra parameters were trained, ``extra_params.safetensors`` (load with ``load_state_dict(strict=False)``)."""
    from diffusers import WanPipeline

    metadata = transformer.peft_config["default"].to_dict()
    metadata = {k: (sorted(v) if isinstance(v, set) else v) for k, v in metadata.items()}
    WanPipeline.save_lora_weights(str(output_dir), transformer_lora_layers=lora_state_dict(transformer), transformer_lora_adapter_metadata=metadata)
    extra_path = None
    if extra_names:
        params = dict(transformer.named_parameters())
        extra_path = str(Path(output_dir) / EXTRA_PARAMS_FILE)
        save_file({n.replace(".base_layer", ""): params[n].detach().float().cpu().contiguous() for n in extra_names}, extra_path)
    return str(Path(output_dir) / LORA_FILE), extra_path


def make_lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """Constant, constant-with-warmup or cosine (to 0 at ``max_train_steps``) with linear warm-up."""
    warmup, total = config.lr_warmup_steps, config.max_train_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.lr_scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def has_accelerator() -> bool:
    """Whether torch sees a GPU-like device; without one, accelerate must be told ``cpu=True`` to go distributed."""
    probe = getattr(torch, "accelerator", None)
    return bool(probe.is_available()) if probe is not None else torch.cuda.is_available()


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) one LoRA training run described by ``config``; the main process exports the LoRA at the end."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from tqdm.auto import tqdm

    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        cpu=not has_accelerator(),  # multi-process CPU runs (torchrun, tests) then use DDP over gloo
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logger.info("process %d of %d on %s (%s)", accelerator.process_index, accelerator.num_processes, accelerator.device, accelerator.distributed_type)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and accelerator.distributed_type.value != "FSDP":
        raise ValueError(  # accelerate would silently train unsharded (MULTI_CPU / NO on a machine without an accelerator)
            f"the accelerate config asks for FSDP but accelerate chose {accelerator.distributed_type.value} (FSDP needs an "
            "accelerator device); on this machine use configs/accelerate/ddp.yaml"
        )
    dataset = CachedLatentDataset(config.data)  # fails early, before the model loads, on a bad cache
    sampler = BucketBatchSampler(
        dataset.shape_keys(), config.batch_size, seed=config.seed, rank=accelerator.process_index, world_size=accelerator.num_processes
    )
    weight_dtype = WEIGHT_DTYPES[config.mixed_precision]
    transformer = load_transformer(config.model, weight_dtype)
    install_method(transformer, config.method, config.method_args, config.dense_layers)
    torch.manual_seed(config.seed)  # LoRA A init (DDP then broadcasts rank 0's copy)
    add_lora(transformer, config)
    extra_names = mark_extra_params(transformer, config.train_extra_params)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    trainable = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    groups = [{"params": [p for n, p in trainable.items() if n not in extra_names], "lr": config.learning_rate}]
    if extra_names:
        groups.append({"params": [trainable[n] for n in extra_names], "lr": config.extra_params_learning_rate or config.learning_rate})
    optimizer = torch.optim.AdamW(
        groups, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon, weight_decay=config.weight_decay
    )
    lr_scheduler = make_lr_scheduler(optimizer, config)
    model, optimizer = accelerator.prepare(transformer, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    ema = ParamEMA(trainable, config.ema_decay) if config.ema_decay is not None else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    def save_hook(models, weights, directory):  # only the trainable parameters, not the frozen base model
        if accelerator.is_main_process:
            state = {n: p.detach().float().cpu().contiguous() for n, p in accelerator.unwrap_model(models[0]).named_parameters() if p.requires_grad}
            save_file(state, str(Path(directory) / TRAINABLE_FILE))
        weights.clear()

    def load_hook(models, directory):
        state = load_file(str(Path(directory) / TRAINABLE_FILE))
        params = dict(accelerator.unwrap_model(models[0]).named_parameters())
        if set(state) != {n for n, p in params.items() if p.requires_grad}:
            raise ValueError(f"checkpoint {directory} was written by a run with other trainable parameters (LoRA targets/rank or extra params differ)")
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor.to(params[name].dtype))
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    global_step = 0
    resume = resolve_resume(config)
    if resume is not None:
        accelerator.load_state(str(resume))
        global_step = int(resume.name.split("-", 1)[1])
        logger.info("resumed from %s at step %d", resume, global_step)
    if config.log_with is not None:
        accelerator.init_trackers("vidattn_lora", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.to_dict().items()})
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=1))

    accum = config.gradient_accumulation_steps
    micro_step = global_step * accum
    batches = sampler.iterate(start=micro_step)
    losses: list[tuple[int, float]] = []
    progress = tqdm(
        total=config.max_train_steps, initial=global_step, desc="train", disable=not (config.progress_bar and accelerator.is_main_process)
    )
    group_loss, start_time, start_step = 0.0, time.perf_counter(), global_step
    stop_at = config.max_train_steps if config.max_steps_per_run is None else min(config.max_train_steps, global_step + config.max_steps_per_run)
    while global_step < stop_at:
        batch = dataset.batch(next(batches))
        latents = batch["latents"].to(accelerator.device, weight_dtype)
        text = batch["text_embeds"].to(accelerator.device, weight_dtype)
        # noise and noise levels: a pure function of (seed, micro step, rank), so resuming reproduces them
        generator = torch.Generator().manual_seed((config.seed * 1_000_003 + micro_step) * 1_009 + accelerator.process_index)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss = flow_matching_loss(model, latents, text, shift=config.shift, generator=generator)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(list(trainable.values()), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        micro_step += 1
        group_loss += accelerator.reduce(loss.detach(), reduction="mean").item() / accum
        if not accelerator.sync_gradients:
            continue
        lr_scheduler.step()
        global_step += 1
        if ema is not None:
            ema.update(trainable)
        losses.append((global_step, group_loss))
        progress.update(1)
        progress.set_postfix(loss=f"{group_loss:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
        if global_step % config.log_every == 0:
            accelerator.log({"loss": group_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
        group_loss = 0.0
        if global_step % config.checkpointing_steps == 0 or global_step == stop_at:
            save_checkpoint(accelerator, config, global_step)
    progress.close()
    elapsed = time.perf_counter() - start_time
    accelerator.wait_for_everyone()
    result = TrainResult(global_step=global_step, losses=losses, steps_per_second=(global_step - start_step) / elapsed if elapsed > 0 else 0.0)
    unwrapped = accelerator.unwrap_model(model)
    result.transformer = unwrapped
    finished = global_step == config.max_train_steps  # not when stopped early by max_steps_per_run
    if finished and ema is not None:
        ema.copy_to(trainable)  # the exported (and returned) weights are the averaged ones
    if finished and accelerator.is_main_process:
        result.lora_path, result.extra_params_path = export_lora(unwrapped, output_dir, extra_names)
        (output_dir / "losses.json").write_text(json.dumps(losses))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def save_checkpoint(accelerator, config: TrainConfig, step: int) -> Path:
    """``accelerator.save_state`` into ``checkpoint-<step>``, pruning the oldest beyond ``checkpoints_total_limit``."""
    directory = Path(config.output_dir) / f"checkpoint-{step}"
    if accelerator.is_main_process and config.checkpoints_total_limit is not None:
        old = [p for p in checkpoints(config.output_dir) if p != directory]
        for stale in old[: max(0, len(old) - config.checkpoints_total_limit + 1)]:
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(directory))
    return directory


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vidattn.training.train_lora", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML training config (see configs/ and docs/training.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key (YAML value)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``--config X.yaml [--set key=value ...]``; returns 0, or 2 on a configuration error."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = TrainConfig.from_yaml(args.config, args.overrides)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = train(config)
    if result.lora_path:
        first, last = (result.losses[0][1], result.losses[-1][1]) if result.losses else (float("nan"), float("nan"))
        print(f"trained {result.global_step} steps ({result.steps_per_second:.2f} steps/s), loss {first:.4f} -> {last:.4f}; LoRA: {result.lora_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
