"""Length extension in miniature (issue 9 part 4): prompt accuracy of the default model at 2x its trained length.

The default model was trained on 17-frame clips; this generates 33 frames with dense attention, radial attention,
and radial attention + a LoRA trained (radial active) on 33-frame shapes clips, and writes ``report.md`` and
``results.json`` to ``--work``. Every stage is skipped when its output exists (the LoRA run resumes).
Usage: ``python scripts/length_extension.py --config configs/length_extension.yaml --work runs/length_extension``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from vidattn.data.shapes import ShapesDataset
from vidattn.evaluation import generate, held_out_prompts
from vidattn.metrics.prompt_accuracy import prompt_accuracy
from vidattn.pipelines.default_model import default_model_path, load_default_pipeline
from vidattn.processors.registry import apply_method
from vidattn.training.cache import prepare_data
from vidattn.training.config import TrainConfig
from vidattn.training.train_lora import train

KEYS = {"frames", "height", "width", "clips", "clip_seed", "position_jitter", "max_sequence_length", "radial", "dense_layers", "eval", "lora"}


def load(path: str) -> dict:
    """The experiment's settings; unknown keys are an error."""
    cfg = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(cfg) - KEYS
    if unknown or KEYS - set(cfg):
        raise ValueError(f"{path}: keys must be exactly {sorted(KEYS)}; unknown {sorted(unknown)}, missing {sorted(KEYS - set(cfg))}")
    return cfg


def write_clips(cfg: dict, folder: Path) -> Path:
    """``clips`` shapes videos of ``frames`` frames as lossless FFV1 .mkv files and a captions.jsonl; returns the jsonl.

    (Not GIF: Pillow merges identical consecutive frames, so slowly moving shapes lose frames.)
    """
    import imageio

    folder.mkdir(parents=True, exist_ok=True)
    data = ShapesDataset(cfg["clips"], frames=cfg["frames"], height=cfg["height"], width=cfg["width"], seed=cfg["clip_seed"],
                         position_jitter=cfg["position_jitter"])
    lines = []
    for i in range(len(data)):
        sample = data[i]
        writer = imageio.get_writer(str(folder / f"clip{i:04d}.mkv"), fps=8, codec="ffv1", pixelformat="bgr0", macro_block_size=1,
                                    ffmpeg_log_level="error")
        for frame in (sample.video * 255).round().astype(np.uint8):
            writer.append_data(frame)
        writer.close()
        lines.append(json.dumps({"video": f"clip{i:04d}.mkv", "caption": sample.caption}))
    captions = folder / "captions.jsonl"
    captions.write_text("\n".join(lines) + "\n")
    return captions


def accuracy(pipe, cfg: dict, method: str) -> dict:
    """Prompt accuracy of ``held_out_prompts`` at ``frames`` frames with ``method`` ("dense" or "radial") installed."""
    e = cfg["eval"]
    if method == "radial":
        apply_method(pipe.transformer, "radial", dense_layers=cfg["dense_layers"], **cfg["radial"])
    prompts = held_out_prompts(e["prompts"])
    try:
        start = time.perf_counter()
        videos, _ = generate(pipe, prompts, e["seed"], frames=cfg["frames"], height=cfg["height"], width=cfg["width"],
                             steps=e["steps"], guidance=e["guidance"], max_sequence_length=cfg["max_sequence_length"])
        seconds = time.perf_counter() - start
    finally:
        apply_method(pipe.transformer, "dense")
    r = prompt_accuracy(list(videos), prompts)
    return {"accuracy": r.accuracy, "color": r.color, "direction": r.direction, "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/length_extension.yaml")
    p.add_argument("--work", default="runs/length_extension")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg, work = load(args.config), Path(args.work)
    cache = work / "cache"
    if not (cache / "index.json").is_file():
        captions = write_clips(cfg, work / "clips")
        prepare_data(work / "clips", captions, default_model_path(), cache, num_frames=cfg["frames"], height=cfg["height"],
                     width=cfg["width"], max_sequence_length=cfg["max_sequence_length"])
    lora_dir = work / "lora"
    if not (lora_dir / "pytorch_lora_weights.safetensors").is_file():
        train(TrainConfig.from_dict({**cfg["lora"], "model": default_model_path(), "data": str(cache), "output_dir": str(lora_dir),
                                     "method": "radial", "method_args": dict(cfg["radial"]), "dense_layers": cfg["dense_layers"]}))
    pipe = load_default_pipeline()
    results = {"dense": accuracy(pipe, cfg, "dense"), "radial": accuracy(pipe, cfg, "radial")}
    pipe.load_lora_weights(str(lora_dir))
    results["radial + LoRA"] = accuracy(pipe, cfg, "radial")
    results["dense + LoRA"] = accuracy(pipe, cfg, "dense")
    e = cfg["eval"]
    lines = [f"{e['prompts']} held prompts, seed {e['seed']}, {cfg['frames']} frames {cfg['height']}x{cfg['width']}, {e['steps']} steps, "
             f"guidance {e['guidance']}, radial {cfg['radial']} dense_layers {cfg['dense_layers']}; {time.strftime('%Y-%m-%d')}", "",
             "| attention | prompt acc. | colour | direction | generation (s) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['accuracy']:.2f} | {v['color']:.2f} | {v['direction']:.2f} | {v['seconds']} |" for k, v in results.items()]
    (work / "report.md").write_text("\n".join(lines) + "\n")
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
