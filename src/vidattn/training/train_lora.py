"""LoRA training of a Wan transformer on cached latents, with any vidattn attention method active (accelerate + peft).

``accelerate launch -m vidattn.training.train_lora --config configs/radial_length_x2.yaml [--set key=value ...]``
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from ..processors.registry import apply_method
from ..atomic import replace_synced, write_json_atomic
from .cache import CachedLatentDataset, default_model_folder
from .checkpointing import FINISHED, clear_run, read_finished, read_state, resolve_resume, save_checkpoint, write_finished
from .config import TrainConfig
from .dataset import BucketBatchSampler
from .finite import NonFiniteError, nonfinite_step, nonfinite_tensors
from .killpoints import KillPoints
from .sharding import (
    SHARDED_OPTIMIZER_FILE, accelerator_options, any_rank, check_deepspeed, full_optimizer_state, gather_full, load_full, load_optimizer_state, local_parameter_bytes, shard_like,
    shard_model, sharding_plan,
)
from ..flow_matching import flow_matching_loss

logger = logging.getLogger("vidattn.training")

TRAINABLE_FILE = "trainable.safetensors"
EXTRA_PARAMS_FILE = "extra_params.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"
LOSSES_FILE = "losses.json"
CONFIG_FILE = "train_config.json"
RUN_ARTIFACTS = (LORA_FILE, EXTRA_PARAMS_FILE, LOSSES_FILE, CONFIG_FILE, ".export.tmp")
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    """What a run did: optimizer steps, (step, loss) pairs of this invocation, exported files, throughput, the
    number of non-finite steps skipped (``nonfinite: skip``), and whether the run had finished before (nothing done)."""

    global_step: int
    losses: list = field(default_factory=list)
    lora_path: str | None = None
    extra_params_path: str | None = None
    steps_per_second: float = 0.0
    skipped_steps: int = 0
    already_finished: bool = False
    transformer: torch.nn.Module | None = field(default=None, repr=False)  # the trained (unwrapped) model; FSDP: sharded


def expert_sigma_range(model: str, expert: str) -> tuple[float, float]:
    """Noise levels ``expert`` denoises in its pipeline: Wan 2.2 A14B's ``transformer`` takes t >= boundary_ratio * 1000,
    ``transformer_2`` the rest; a one-transformer pipeline takes them all (and has no ``transformer_2``)."""
    folder = default_model_folder() if model == "default" else model
    index = Path(folder) / "model_index.json" if folder else None
    boundary = json.loads(index.read_text()).get("boundary_ratio") if index is not None and index.is_file() else None
    if expert == "transformer_2" and boundary is None:
        raise ValueError(f"expert transformer_2 needs a two-expert pipeline folder (Wan 2.2 A14B, boundary_ratio set); {model!r} has one transformer")
    if boundary is None:
        return (0.0, 1.0)
    return (float(boundary), 1.0) if expert == "transformer" else (0.0, float(boundary))


def load_transformer(model: str, dtype: torch.dtype = torch.float32, expert: str = "transformer") -> torch.nn.Module:
    """Transformer ``expert`` of a diffusers pipeline folder (or a transformer folder), or of the embedded ``"default"``."""
    if model == "default" and default_model_folder() is None:
        from ..pipelines.default_model import build_default_pipeline

        transformer = build_default_pipeline().transformer
        return transformer if dtype == torch.float32 else transformer.to(dtype)
    from diffusers import AutoModel

    path = Path(default_model_folder() if model == "default" else model)
    if not path.is_dir():
        raise ValueError(f"model must be a diffusers pipeline folder, a transformer folder or 'default', got {model!r}")
    if (path / expert).is_dir():
        return AutoModel.from_pretrained(str(path), subfolder=expert, torch_dtype=dtype)
    if expert != "transformer":
        raise ValueError(f"expert {expert!r}: no {expert}/ folder in {str(path)!r}")
    return AutoModel.from_pretrained(str(path), torch_dtype=dtype)


def install_method(transformer: torch.nn.Module, method: str, method_args: dict, dense_layers: int):
    """Put ``method``'s processor on every video self-attention layer (the first ``dense_layers`` stay dense)."""
    if method == "none":
        return None
    if "dense_layers" in method_args:
        raise ValueError("set dense_layers at the top level of the training config, not method_args.dense_layers")
    return apply_method(transformer, method, **{**method_args, "dense_layers": dense_layers})


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
    """Exponential moving average of the trainable parameters (checkpointed with ``accelerator.save_state``; under FSDP
    each rank averages its shards and the checkpoint holds the whole tensors)."""

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

    def state_dict(self) -> dict:  # called on every rank (gathering shards is collective); rank 0 writes it
        return {"decay": self.decay, "shadow": gather_full(self.shadow.items())}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = {n: shard_like(t.float(), self.shadow[n]) for n, t in state["shadow"].items()}


def lora_state_dict(transformer: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft naming (what ``save_lora_weights`` expects for ``transformer_lora_layers``), from
    the model or from ``state`` (whole tensors by parameter name, e.g. gathered from an FSDP-sharded model)."""
    from peft.utils import get_peft_model_state_dict

    weights = get_peft_model_state_dict(transformer, state_dict=state)
    return {k: v.detach().float().cpu().contiguous() for k, v in weights.items()}


def export_lora(
    transformer: torch.nn.Module, output_dir: str | Path, extra_names: Sequence[str] = (), kill: KillPoints | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> tuple[str, str | None]:
    """Write ``pytorch_lora_weights.safetensors`` (diffusers format, loads with ``WanPipeline.load_lora_weights``)
    and, when extra parameters were trained, ``extra_params.safetensors`` (load with ``load_state_dict(strict=False)``).
    Both are written into ``.export.tmp`` and renamed into place, so a crash never leaves a half-written LoRA.
    ``state``: the trainable weights whole (an FSDP run gathers them first); default: read from the model."""
    from diffusers import WanPipeline

    output_dir = Path(output_dir)
    staging = output_dir / ".export.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    metadata = transformer.peft_config["default"].to_dict()
    metadata = {k: (sorted(v) if isinstance(v, set) else v) for k, v in metadata.items()}
    WanPipeline.save_lora_weights(str(staging), transformer_lora_layers=lora_state_dict(transformer, state), transformer_lora_adapter_metadata=metadata)
    names = [LORA_FILE]
    if extra_names:
        params = state if state is not None else dict(transformer.named_parameters())
        save_file({n.replace(".base_layer", ""): params[n].detach().float().cpu().contiguous() for n in extra_names}, str(staging / EXTRA_PARAMS_FILE))
        names.append(EXTRA_PARAMS_FILE)
    if kill is not None:
        kill.reach("export")
    for name in names:
        replace_synced(staging / name, output_dir / name)
    shutil.rmtree(staging, ignore_errors=True)
    return str(output_dir / LORA_FILE), (str(output_dir / EXTRA_PARAMS_FILE) if extra_names else None)


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


def finished_before(config: TrainConfig, overwrite: bool) -> dict | None:
    """The finished mark of ``output_dir`` when re-running would redo (overwrite) a finished run, else None.

    A run continues past its mark only when it resumes and ``max_train_steps`` grew (training it further)."""
    mark = read_finished(config.output_dir)
    if overwrite or mark is None:
        return None
    extends = config.resume_from_checkpoint is not None and config.max_train_steps > int(mark.get("global_step", 0))
    return None if extends else mark


def train(config: TrainConfig, *, overwrite: bool = False) -> TrainResult:
    """Run (or resume) one LoRA training run described by ``config``; the main process exports the LoRA at the end.

    A finished run in ``output_dir`` is left untouched (``already_finished``) unless ``overwrite``, which deletes
    its checkpoints and outputs and starts from step 0. Raises ``NonFiniteError`` on a non-finite loss or gradient
    (``nonfinite: error``) and never exports non-finite weights.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from tqdm.auto import tqdm

    output_dir = Path(config.output_dir)
    kill = KillPoints.from_env()
    accelerator = Accelerator(
        **accelerator_options(has_accelerator()),  # CPU: DDP over gloo (torchrun, tests), or DeepSpeed over gloo
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logger.info("process %d of %d on %s (%s)", accelerator.process_index, accelerator.num_processes, accelerator.device, accelerator.distributed_type)
    # FSDP launch: train_lora shards with torch's FSDP2 itself (accelerate 1.15 would run plain DDP on a CPU)
    fsdp = sharding_plan(accelerator.distributed_type.value, accelerator.num_processes)
    deepspeed = check_deepspeed(accelerator.distributed_type.value, config.nonfinite)
    if deepspeed:  # accelerate takes it from a prepared dataloader, which vidattn does not use
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
    mark = finished_before(config, overwrite)
    if mark is not None:
        lora = output_dir / mark.get("lora", LORA_FILE)
        logger.info("%s holds a finished run (%s steps); nothing to do (--overwrite trains it again)", output_dir, mark.get("global_step"))
        return TrainResult(global_step=int(mark.get("global_step", 0)), lora_path=str(lora), already_finished=True, skipped_steps=int(mark.get("skipped_steps", 0)))
    dataset = CachedLatentDataset(config.data)  # fails early, before the model loads, on a bad cache (naming the file)
    sampler = BucketBatchSampler(
        dataset.shape_keys(), config.batch_size, seed=config.seed, rank=accelerator.process_index, world_size=accelerator.num_processes
    )
    resume = None if overwrite else resolve_resume(config.resume_from_checkpoint, output_dir)
    weight_dtype = WEIGHT_DTYPES[config.mixed_precision]
    sigma_range = expert_sigma_range(config.model, config.expert)
    transformer = load_transformer(config.model, weight_dtype, config.expert)
    install_method(transformer, config.method, config.method_args, config.dense_layers)
    torch.manual_seed(config.seed)  # LoRA A init (DDP then broadcasts rank 0's copy)
    add_lora(transformer, config)
    extra_names = mark_extra_params(transformer, config.train_extra_params)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    if fsdp is not None:  # before the optimizer is built: the parameters become DTensors (this rank's shards)
        blocks = shard_model(transformer, fsdp.transformer_cls_names_to_wrap, accelerator.device, fsdp.reshard_after_forward)
        logger.info("FSDP2: %d %s blocks and the root sharded over %d processes; rank %d holds %d of %d parameter bytes",
                    blocks, "/".join(fsdp.transformer_cls_names_to_wrap), accelerator.num_processes, accelerator.process_index,
                    local_parameter_bytes(transformer), sum(p.numel() * p.element_size() for p in transformer.parameters()))
    trainable = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    groups = [{"params": [p for n, p in trainable.items() if n not in extra_names], "lr": config.learning_rate}]
    if extra_names:
        groups.append({"params": [trainable[n] for n in extra_names], "lr": config.extra_params_learning_rate or config.learning_rate})
    optimizer = torch.optim.AdamW(
        groups, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon, weight_decay=config.weight_decay
    )
    lr_scheduler = make_lr_scheduler(optimizer, config)
    if fsdp is None:
        model, optimizer = accelerator.prepare(transformer, optimizer)
    else:  # already sharded; accelerate must not wrap it in DDP (nor save the optimizer's shards as if whole)
        model = transformer
    accelerator.register_for_checkpointing(lr_scheduler)
    ema = ParamEMA(trainable, config.ema_decay) if config.ema_decay is not None else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    def save_hook(models, weights, directory):  # only the trainable parameters, not the frozen base model
        if accelerator.is_main_process:
            state = {n: p.detach().float().cpu().contiguous() for n, p in transformer.named_parameters() if p.requires_grad}
            save_file(state, str(Path(directory) / TRAINABLE_FILE))
            kill.reach("save_files")  # test hook: dies with the optimizer state not yet written
        weights.clear()

    def load_hook(models, directory):
        if (Path(directory) / SHARDED_OPTIMIZER_FILE).is_file():
            raise ValueError(f"checkpoint {directory} was written by an FSDP run; resume it with the same accelerate config")
        state = load_file(str(Path(directory) / TRAINABLE_FILE))
        params = dict(transformer.named_parameters())
        if set(state) != {n for n, p in params.items() if p.requires_grad}:
            raise ValueError(f"checkpoint {directory} was written by a run with other trainable parameters (LoRA targets/rank or extra params differ)")
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor.to(params[name].dtype))
        models.clear()

    def sharded_save_hook(models, weights, directory):  # every rank gathers (collective); rank 0 writes whole tensors
        state = gather_full(trainable.items())
        optimizer_state = full_optimizer_state(model, optimizer)
        if accelerator.is_main_process:
            save_file(state, str(Path(directory) / TRAINABLE_FILE))
            kill.reach("save_files")
            torch.save(optimizer_state, str(Path(directory) / SHARDED_OPTIMIZER_FILE))
        weights.clear()

    def sharded_load_hook(models, directory):  # every rank reads the whole state and keeps its shards
        if not (Path(directory) / SHARDED_OPTIMIZER_FILE).is_file():
            raise ValueError(f"checkpoint {directory} was written by a run without FSDP (no {SHARDED_OPTIMIZER_FILE}); resume it with the same accelerate config")
        state = load_file(str(Path(directory) / TRAINABLE_FILE))
        if set(state) != set(trainable):
            raise ValueError(f"checkpoint {directory} was written by a run with other trainable parameters (LoRA targets/rank or extra params differ)")
        load_full(trainable, state)
        load_optimizer_state(model, optimizer, torch.load(str(Path(directory) / SHARDED_OPTIMIZER_FILE), weights_only=True))
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook if fsdp is None else sharded_save_hook)
    accelerator.register_load_state_pre_hook(load_hook if fsdp is None else sharded_load_hook)

    if overwrite:  # only now: a config or data error above must not have cost the old run
        if accelerator.is_main_process:
            removed = clear_run(output_dir, RUN_ARTIFACTS)
            if removed:
                logger.info("--overwrite: deleted %s from %s; starting from step 0", ", ".join(removed), output_dir)
        accelerator.wait_for_everyone()
    global_step, history, skipped = 0, [], 0
    if resume is not None:
        accelerator.load_state(str(resume), **({"load_module_strict": False} if deepspeed else {}))  # (frozen base not saved)
        global_step = int(resume.name.split("-", 1)[1])
        saved = read_state(resume)
        history, skipped = saved["losses"], saved["skipped_steps"]
        logger.info("resumed from %s at step %d", resume, global_step)
    if config.log_with is not None:
        accelerator.init_trackers("vidattn_lora", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.to_dict().items()})
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / CONFIG_FILE, config.to_dict())

    ds_save = {"exclude_frozen_parameters": True} if deepspeed else None  # DeepSpeed would copy the frozen base each time
    accum = config.gradient_accumulation_steps
    micro_step = global_step * accum
    batches = sampler.iterate(start=micro_step)
    losses: list[tuple[int, float]] = []
    progress = tqdm(
        total=config.max_train_steps, initial=global_step, desc="train", disable=not (config.progress_bar and accelerator.is_main_process)
    )
    group_loss, start_time, start_step = 0.0, time.perf_counter(), global_step
    check_grads = accelerator.scaler is None  # fp16's grad scaler skips overflowing steps by itself
    stop_at = config.max_train_steps if config.max_steps_per_run is None else min(config.max_train_steps, global_step + config.max_steps_per_run)
    while global_step < stop_at:
        batch = dataset.batch(next(batches))  # raises naming the file on an unreadable or non-finite clip
        latents = batch["latents"].to(accelerator.device, weight_dtype)
        text = batch["text_embeds"].to(accelerator.device, weight_dtype)
        # noise and noise levels: a pure function of (seed, micro step, rank), so resuming reproduces them
        generator = torch.Generator().manual_seed((config.seed * 1_000_003 + micro_step) * 1_009 + accelerator.process_index)
        bad = None
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss = flow_matching_loss(model, latents, text, shift=config.shift, generator=generator, sigma_range=sigma_range)
            accelerator.backward(loss)
            group_loss += accelerator.reduce(loss.detach(), reduction="mean").item() / accum  # the same on every rank
            if accelerator.sync_gradients:
                bad = nonfinite_step(group_loss, trainable.items(), check_grads)  # grads are all-reduced: same on every rank
                if fsdp is not None and any_rank(bad is not None, accelerator.device) and bad is None:  # FSDP: each rank
                    bad = "the gradient of a parameter shard on another process is not finite"  # checked its own shards
                if bad is not None and config.nonfinite == "error":
                    raise NonFiniteError(
                        f"step {global_step + 1}: {bad}; stopped without exporting (lower learning_rate, check the data with "
                        f"`vidattn prepare-data --verify --out {config.data}`, or set nonfinite: skip to skip such steps)"
                    )
                if bad is None and config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(list(trainable.values()), config.max_grad_norm)
            if accelerator.sync_gradients:  # (accelerate's prepared optimizer also skips accumulation micro-steps)
                if bad is None:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        micro_step += 1
        if not accelerator.sync_gradients:
            continue
        lr_scheduler.step()
        global_step += 1
        if bad is not None:
            skipped += 1
            logger.warning("skipped step %d: %s (%d skipped so far)", global_step, bad, skipped)
        else:
            if ema is not None:
                ema.update(trainable)
            losses.append((global_step, group_loss))
        progress.update(1)
        progress.set_postfix(loss=f"{group_loss:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
        if global_step % config.log_every == 0 and bad is None:
            accelerator.log({"loss": group_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
        group_loss = 0.0
        kill.reach("step")
        if global_step % config.checkpointing_steps == 0 or global_step == stop_at:
            state = {"losses": history + losses, "skipped_steps": skipped}
            save_checkpoint(accelerator, output_dir, global_step, state, config.checkpoints_total_limit, kill, ds_save)
    progress.close()
    elapsed = time.perf_counter() - start_time
    accelerator.wait_for_everyone()
    result = TrainResult(
        global_step=global_step, losses=losses, skipped_steps=skipped,
        steps_per_second=(global_step - start_step) / elapsed if elapsed > 0 else 0.0,
    )
    unwrapped = accelerator.unwrap_model(model)
    result.transformer = unwrapped
    finished = global_step == config.max_train_steps  # not when stopped early by max_steps_per_run
    if finished and ema is not None:
        ema.copy_to(trainable)  # the exported (and returned) weights are the averaged ones
    if finished:
        final = gather_full(trainable.items())  # whole on every rank (collective under FSDP)
        bad_weights = nonfinite_tensors(final.items())  # the same on every rank, so every rank stops together
        if bad_weights:
            raise NonFiniteError(f"{len(bad_weights)} trained tensor(s) are not finite (first: {bad_weights[0]}); no LoRA exported")
    if finished and accelerator.is_main_process:
        (output_dir / FINISHED).unlink(missing_ok=True)
        result.lora_path, result.extra_params_path = export_lora(unwrapped, output_dir, extra_names, kill, final)
        write_json_atomic(output_dir / LOSSES_FILE, history + losses, indent=None)
        write_finished(output_dir, {"global_step": global_step, "lora": LORA_FILE, "extra_params": EXTRA_PARAMS_FILE if extra_names else None, "skipped_steps": skipped})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vidattn.training.train_lora", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML training config (see configs/ and docs/training.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key (YAML value)")
    parser.add_argument("--overwrite", action="store_true", help="train again from step 0 in an output_dir that holds a run (deletes its checkpoints and LoRA)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``--config X.yaml [--set key=value ...] [--overwrite] [--debug]``.

    Returns 0 (trained, stopped by max_steps_per_run, or already finished), 2 on a configuration, data or file error
    (one line; the traceback with ``--debug``), 3 on a non-finite loss, gradient or weight.
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = TrainConfig.from_yaml(args.config, args.overrides)
        result = train(config, overwrite=args.overwrite)
    except (ValueError, OSError, NonFiniteError) as exc:  # OSError: a path that is a file, no permission, disk full
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, NonFiniteError) else 2
    if result.already_finished:
        print(f"{config.output_dir} holds a finished run ({result.global_step} steps; LoRA: {result.lora_path}); nothing done. "
              "Use --overwrite to train again from step 0, or raise max_train_steps with resume_from_checkpoint: latest to continue.")
    elif result.global_step == config.max_train_steps:  # every rank gets here; only the main one exported
        trend = f", loss {result.losses[0][1]:.4f} -> {result.losses[-1][1]:.4f}" if result.losses else ""
        where = f"LoRA: {result.lora_path}" if result.lora_path else "the main process exported the LoRA"
        print(f"trained {result.global_step} steps ({result.steps_per_second:.2f} steps/s){trend}; {where}")
    else:
        print(f"stopped at step {result.global_step} of {config.max_train_steps} (max_steps_per_run); resume with resume_from_checkpoint: latest")
    if result.skipped_steps:
        print(f"warning: {result.skipped_steps} step(s) skipped for a non-finite loss or gradient (nonfinite: skip)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
