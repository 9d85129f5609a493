"""Frames per second of streaming generation for dense-cache, window (Self-Forcing) and hybrid attention.

Streams ``--chunks`` chunks of the embedded tiny Wan model (or a diffusers Wan folder, e.g. a Wan2.1-1.3B config
with random weights) and prints, per mode: total FPS (4 denoising steps + refresh pass + causal VAE decode),
denoising-only FPS, the mean latency of the last quarter of chunks, and the self-attention cache size at the end.
Dense grows with length; window and hybrid should stay flat.

    .venv/bin/python benchmarks/bench_streaming.py --chunks 8,32,128 --height 128 --width 128
"""

from __future__ import annotations

import argparse
import time

import torch

from vidattn.pipelines.streaming import CausalStreamDecoder, StreamingWanPipeline
from vidattn.processors.streaming import StreamingConfig


def build(model: str | None, device: str, dtype: torch.dtype) -> StreamingWanPipeline:
    if model:
        pipe = StreamingWanPipeline.from_pretrained(model, torch_dtype=dtype)
    else:
        from vidattn.pipelines.default_model import build_default_pipeline

        pipe = StreamingWanPipeline.from_pipe(build_default_pipeline())
    pipe.text_encoder.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def run(pipe, attention, chunks: int, args) -> dict:
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    decoder = CausalStreamDecoder(pipe.vae)
    states: list = []
    stream = pipe.stream_latents(
        args.prompt, chunks, attention, args.frames_per_chunk, height=args.height, width=args.width,
        generator=torch.Generator().manual_seed(0), state_out=states,
    )
    latencies, frames, denoise, decode = [], 0, 0.0, 0.0
    sync()
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        try:
            latents = next(stream)
        except StopIteration:
            break
        sync()
        t1 = time.perf_counter()
        if args.no_decode:  # frames the causal VAE would give: 1 + 4 (f - 1) for the first chunk, 4 f after
            frames += latents.shape[2] * 4 - (3 if not frames else 0)
        else:
            frames += decoder.decode(latents).shape[2]
        sync()
        t2 = time.perf_counter()
        denoise, decode = denoise + t1 - t0, decode + t2 - t1
        latencies.append(t2 - t0)
        cache_mb = states[0].self_cache_nbytes() / 2**20
    total = time.perf_counter() - start
    tail = latencies[-max(1, len(latencies) // 4) :]
    return dict(fps=frames / total, denoise_fps=frames / denoise, tail_ms=1e3 * sum(tail) / len(tail), cache_mb=cache_mb, frames=frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="diffusers Wan folder (default: the embedded tiny model)")
    parser.add_argument("--chunks", default="8,32,128")
    parser.add_argument("--modes", default="dense,window,hybrid")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--frames-per-chunk", type=int, default=3)
    parser.add_argument("--sink", type=int, default=3)
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--keep", type=float, default=0.2)
    parser.add_argument("--backend", default="gather" if not torch.cuda.is_available() else "auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-decode", action="store_true", help="skip the VAE (FPS then counts denoising only)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--prompt", default="a red circle moving right on a black background")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = build(args.model, args.device, getattr(torch, args.dtype))
    configs = {
        "dense": StreamingConfig(mode="dense", backend=args.backend),
        "window": StreamingConfig(mode="window", sink_frames=args.sink, window_frames=args.window, backend=args.backend),
        "hybrid": StreamingConfig(mode="hybrid", sink_frames=args.sink, window_frames=args.window, sparse_keep=args.keep, backend=args.backend),
    }
    run(pipe, configs["window"], 1, args)  # warm-up (allocator, lazy imports)
    print(f"{args.height}x{args.width}, {args.frames_per_chunk} latent frames per chunk, {args.device}, {args.dtype}, backend {args.backend}")
    print(f"{'mode':<8}{'chunks':>7}{'frames':>8}{'FPS':>8}{'denoise FPS':>13}{'last-25% ms/chunk':>19}{'cache MB':>10}")
    for chunks in (int(c) for c in args.chunks.split(",")):
        for mode in args.modes.split(","):
            r = run(pipe, configs[mode], chunks, args)
            print(f"{mode:<8}{chunks:>7}{r['frames']:>8}{r['fps']:>8.2f}{r['denoise_fps']:>13.2f}{r['tail_ms']:>19.1f}{r['cache_mb']:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
