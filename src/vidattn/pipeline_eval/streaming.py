"""`vidattn eval --pipeline streaming`: does a long stream still show the prompt, and does its memory stay flat?

For the causal default model (the default model's transformer fine-tuned block-causally) and the bidirectional
default model, each attention mode (dense cache, sink + window, hybrid) streams every held-out prompt for 40 chunks;
chunks 1, 10 and 40 are read frame by frame: colour (``prompt_accuracy``'s per-frame colour) and direction
(``metrics.wrapped_motion``: the causal model's shapes wrap around the edges). Memory: the self-attention cache
(K/V + linear state) per video after each of those chunks, and the process's peak RSS.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import torch

from ..checks import check_choice, check_int
from ..evaluation import DEFAULT_MAX_SEQUENCE_LENGTH, held_out_prompts
from ..data.shapes import DIRECTIONS
from ..metrics.prompt_accuracy import foreground_masks, frame_colors, parse_caption
from ..metrics.wrapped_motion import circular_centroids, wrapped_direction, wrapped_steps
from ..pipelines.default_model import load_default_pipeline
from ..pipelines.default_model_causal import CAUSAL_DECODE_CONTEXT, CAUSAL_FRAMES_PER_CHUNK, causal_training_info, load_causal_pipeline
from ..pipelines.streaming import StreamingWanPipeline
from .report import PipelineReport, Table, frame_strip

MODES = ("dense", "window", "hybrid")
MODELS = ("causal", "bidirectional")
AT = (1, 10, 40)
SIZE = 64
DATA_SPEED = 0.025 * SIZE  # px / frame of the shapes clips (0.4 of the frame in 16 frames)


def load_model(name: str) -> StreamingWanPipeline:
    """The causal default model, or the bidirectional default model as a streaming pipeline."""
    check_choice("model", name, MODELS)
    if name == "causal":
        return load_causal_pipeline()
    pipe = StreamingWanPipeline.from_pipe(load_default_pipeline())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def spread_prompts(n: int) -> list[str]:
    """``n`` of the 20 held-out prompts spread over them (5 cover every colour and direction), all 20 and more cycled beyond."""
    pool = held_out_prompts(20)
    if n >= len(pool):
        return held_out_prompts(n)
    return [pool[i] for i in np.linspace(0, len(pool), n, endpoint=False).astype(int)]


def stream_chunks(pipe: StreamingWanPipeline, captions: list[str], seed: int, mode: str, at: tuple[int, ...]) -> dict:
    """Stream ``max(at)`` chunks of every caption (one batch); keep the frames and cache bytes per video of chunks ``at``."""
    states: list = []
    frames, cache, seconds = {}, {}, []
    tracks: list[list[np.ndarray]] = [[] for _ in captions]  # per video: circular centroids of every frame
    chunks = pipe.stream(captions, max(at), attention=mode, frames_per_chunk=CAUSAL_FRAMES_PER_CHUNK, height=SIZE, width=SIZE,
                         generator=torch.Generator().manual_seed(seed), max_sequence_length=DEFAULT_MAX_SEQUENCE_LENGTH,
                         decode_context=CAUSAL_DECODE_CONTEXT, state_out=states)
    start = time.perf_counter()
    for index, video in enumerate(chunks, start=1):
        seconds.append(time.perf_counter() - start)
        for track, v in zip(tracks, video):
            track.append(circular_centroids(foreground_masks(v)))
        if index in at:
            frames[index] = video  # (B, T, H, W, 3)
            cache[index] = states[0].self_cache_nbytes() / len(captions)
        start = time.perf_counter()
    speed = [stream_speed(np.concatenate(track), caption) for track, caption in zip(tracks, captions)]
    return {"frames": frames, "cache": cache, "seconds_per_chunk": float(np.mean(seconds)), "speed": speed}


def stream_speed(track: np.ndarray, caption: str, size: int = SIZE) -> float:
    """Mean wrap-aware centroid step (px / frame) along the caption's direction over the whole stream, chunk seams
    included (frames without a shape are skipped): a stream that restarts every chunk moves ~0 net."""
    ux, uy = DIRECTIONS[parse_caption(caption)["direction"]]
    steps = wrapped_steps(track, size, size)
    along = steps @ np.array([ux, uy], dtype=np.float64)
    valid = ~np.isnan(along)
    return float(along[valid].mean()) if valid.any() else 0.0


def score_chunk(videos: list[np.ndarray], captions: list[str]) -> dict:
    """Share of frames of the caption's colour, share of videos moving its way (wrap-aware), and both together."""
    colour, direction, both, total = 0, 0, [], 0
    for video, caption in zip(videos, captions):
        wanted = parse_caption(caption)
        right = sum(c == wanted["color"] for c in frame_colors(video))
        moves = wrapped_direction(video) == wanted["direction"]
        colour, total = colour + right, total + len(video)
        direction += moves
        both.append(right / len(video) * moves)
    return {"color": colour / total, "direction": direction / len(videos), "accuracy": float(np.mean(both)), "frames": total}


def evaluate(*, prompts: int, seeds: list[int], out: Path | None, at: tuple[int, ...] = AT,
             modes: tuple[str, ...] = MODES, models: tuple[str, ...] = MODELS) -> PipelineReport:
    """Stream ``prompts`` held-out prompts x ``seeds`` for ``max(at)`` chunks per model and mode; score chunks ``at``."""
    check_int("prompts", prompts, 1)
    if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of ints >= 0, got {seeds!r}")
    if not at or any(not isinstance(c, int) or c < 1 for c in at) or list(at) != sorted(set(at)):
        raise ValueError(f"at must be increasing chunk numbers >= 1 (e.g. (1, 10, 40)), got {at!r}")
    for mode in modes:
        check_choice("modes", mode, MODES)
    for model in models:
        check_choice("models", model, MODELS)
    captions = spread_prompts(prompts)
    results: dict = {}
    rows, strips = [], {}
    started = time.perf_counter()
    for model in models:
        pipe = load_model(model)
        for mode in modes:
            runs = [stream_chunks(pipe, captions, seed, mode, at) for seed in seeds]
            speeds = [v for r in runs for v in r["speed"]]
            entry = {"seconds_per_chunk": float(np.mean([r["seconds_per_chunk"] for r in runs])), "chunks": {},
                     "speed_px_per_frame": float(np.mean(speeds)), "speeds": speeds}
            for c in at:
                videos = [v for r in runs for v in r["frames"][c]]
                scores = score_chunk(videos, captions * len(seeds))
                entry["chunks"][c] = {**scores, "cache_bytes_per_video": runs[0]["cache"][c]}
            results.setdefault(model, {})[mode] = entry
            strips[f"{model}_{mode}"] = frame_strip([runs[0]["frames"][c][0] for c in at])
            cells = [f"{entry['chunks'][c]['color']:.2f} / {entry['chunks'][c]['direction']:.2f}" for c in at]
            rows.append([model, mode, *cells, f"{entry['speed_px_per_frame']:.2f}", *(f"{entry['chunks'][c]['cache_bytes_per_video'] / 2**20:.2f}" for c in at),
                         f"{entry['seconds_per_chunk']:.2f}"])
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    headers = ["model", "mode", *(f"chunk {c}: colour / direction" for c in at), f"px / frame along prompt, chunks 1-{max(at)}", *(f"cache MB, chunk {c}" for c in at), "s / chunk"]
    table = Table(f"Per-frame colour share / wrap-aware direction share at chunks {', '.join(map(str, at))} "
                  f"({len(captions)} prompts x {len(seeds)} seed(s) per cell); self-attention cache per video.", headers, rows)
    info = causal_training_info() if "causal" in models else {}
    intro = (f"{len(captions)} held-out prompts (spread over colours and directions) x seeds {seeds}, streamed for {max(at)} chunks of {CAUSAL_FRAMES_PER_CHUNK} latent "
             f"frames (12 video frames; the first chunk 9) at {SIZE}x{SIZE}, all prompts of a seed in one batch, few-step "
             f"schedule (t = 1000, 750, 500, 250, shift 5), guidance 1, {DEFAULT_MAX_SEQUENCE_LENGTH} text tokens, VAE "
             f"decoded with a fresh cache per chunk after {CAUSAL_DECODE_CONTEXT} latents of warm-up. Modes: StreamingConfig "
             f"defaults (sink 3, window 9, max_frames 21; hybrid keep 0.2 of 64-token blocks, untrained zero linear branch). "
             f"Causal model: {info.get('step', '?')} fine-tune steps.")
    notes = [f"Peak RSS of the whole evaluation process: {peak_rss:.0f} MiB (all models and modes; the cache columns are per mode). "
             f"Wall time {time.perf_counter() - started:.0f} s; s / chunk includes the VAE decode and is noisy on a shared CPU.",
             f"px / frame: the mean wrap-aware centroid step along the prompt's direction over all frames of the stream, "
             f"chunk seams included; the training clips move {DATA_SPEED:.1f} px / frame. A model that redraws its first "
             f"chunk every chunk keeps its colour but moves ~0 net.",
             "Strips: one row per chunk (1, 10, 40 ...), 6 frames each, of the first prompt and seed."]
    return PipelineReport("Streaming: prompt kept over a long stream, memory per mode", intro, [table], notes, strips,
                          {"prompts": captions, "seeds": seeds, "at": list(at), "results": results, "peak_rss_mib": peak_rss})
