"""Attention-only timing and accuracy of Monarch attention against dense SDPA at several tilings.

Prints per setting: wall time (best of ``--repeats`` after one warm-up), speed-up over dense SDPA, expected
matmul FLOPs (and ratio to dense), and relative L2 error vs dense on two inputs: iid Gaussian q/k/v (the
hardest case: no spatial structure) and smooth fields plus noise (neighbouring tokens alike, as in video).

    .venv/bin/python benchmarks/bench_monarch.py --grid 21x30x52 --heads 2 --head-dim 128 --h-reduce 1,2,5
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from vidattn.kernels.monarch import monarch_attention, monarch_flops
from vidattn.benchmarking import best_time, synthetic_qkv
from vidattn.layout import VideoLayout


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", default="21x30x52", help="latent tokens FxHxW")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--h-reduce", default="1,2,5", help="comma-separated h_reduce values")
    p.add_argument("--w-reduce", type=int, default=1)
    p.add_argument("--f-tied", type=int, default=1)
    p.add_argument("--smooth", type=float, default=0.8, help="share of the smooth field in the structured input")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--query-chunk", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 avoids barrier stalls on a busy machine)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    layout = VideoLayout.parse(args.grid)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cases = {
        "iid": [x.to(device, dtype) for x in synthetic_qkv(layout, args.heads, args.head_dim, 0.0)],
        "smooth": [x.to(device, dtype) for x in synthetic_qkv(layout, args.heads, args.head_dim, args.smooth)],
    }
    print(f"grid {layout} ({layout.video_tokens} tokens), {args.heads} heads x {args.head_dim}, {args.dtype}, {device}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    with torch.no_grad():
        dense_time, _ = best_time(lambda: F.scaled_dot_product_attention(*cases["iid"]), args.repeats, device)
        dense = {name: F.scaled_dot_product_attention(*qkv) for name, qkv in cases.items()}
        gflop_dense = 4 * layout.video_tokens**2 * args.head_dim * args.heads / 1e9
        print(f"{'setting':<22}{'time (s)':>10}{'dense/x':>9}{'GFLOP':>9}{'flop ratio':>11}{'err iid':>10}{'err smooth':>11}")
        print(f"{'dense sdpa':<22}{dense_time:>10.3f}{1.0:>9.2f}{gflop_dense:>9.1f}{1.0:>11.3f}{0.0:>10.4f}{0.0:>11.4f}")
        for h_reduce in (int(x) for x in args.h_reduce.split(",")):
            kw = dict(f_tied=args.f_tied, h_reduce=h_reduce, w_reduce=args.w_reduce, query_chunk=args.query_chunk)
            flops = monarch_flops(layout, args.head_dim, args.f_tied, h_reduce, args.w_reduce)
            t, out = best_time(lambda: monarch_attention(*cases["iid"], layout, **kw), args.repeats, device)
            err_smooth = rel_l2(monarch_attention(*cases["smooth"], layout, **kw), dense["smooth"])
            name = f"f{args.f_tied} h{h_reduce} w{args.w_reduce} (b1={flops['b1']},b2={flops['b2']})"
            print(f"{name:<22}{t:>10.3f}{dense_time / t:>9.2f}{flops['monarch'] * args.heads / 1e9:>9.1f}"
                  f"{flops['ratio']:>11.3f}{rel_l2(out, dense['iid']):>10.4f}{err_smooth:>11.4f}")


if __name__ == "__main__":
    main()
