"""`vidattn make-clips`: the procedural shapes clips and captions that the training docs' `prepare-data` commands use."""

from __future__ import annotations

import argparse

from .checks import UsageError, check_output_folder, int_at_least, number_in


def add_make_clips_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="data/clips", help="folder for clipNNNN.mkv, clipNNNN.txt and captions.jsonl")
    p.add_argument("--count", type=int, default=16, help="number of clips")
    p.add_argument("--frames", type=int, default=40, help="frames per clip (prepare-data takes 4k+1 of them from the middle)")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="clip i is a pure function of (seed, i)")
    p.add_argument("--position-jitter", type=float, default=1.0, help="0: every clip of a direction starts alike; 1: anywhere it fits")
    p.add_argument("--backgrounds", default="black", help="comma-separated: black, white")


def cmd_make_clips(args) -> None:
    from ..data.clips import write_shape_clips
    from ..data.shapes import BACKGROUNDS, ShapesDataset

    int_at_least(args.count, 1, "--count")
    int_at_least(args.frames, 2, "--frames")
    int_at_least(args.height, 16, "--height")
    int_at_least(args.width, 16, "--width")
    int_at_least(args.seed, 0, "--seed")
    number_in(args.position_jitter, 0.0, 1.0, "--position-jitter")
    backgrounds = tuple(b.strip() for b in args.backgrounds.split(","))
    if not backgrounds or any(b not in BACKGROUNDS for b in backgrounds):
        raise UsageError(f"--backgrounds must be comma-separated names of {', '.join(BACKGROUNDS)}, got {args.backgrounds!r}")
    check_output_folder(args.out)
    data = ShapesDataset(args.count, frames=args.frames, height=args.height, width=args.width, seed=args.seed,
                         backgrounds=backgrounds, position_jitter=args.position_jitter)
    captions = write_shape_clips(args.out, data, progress=True)
    print(f"wrote {args.count} clips of {args.frames} frames {args.height}x{args.width} to {args.out} (captions: {captions})")
