#!/bin/bash
# Issue 15's table in one run: every method and backend at 21x30x52, 2 heads x 128, bf16 and f32, then the backward rows.
cd "$(dirname "$0")/.."
V=".venv/bin/python -m vidattn.cli.main bench --grid 21x30x52 --heads 2 --head-dim 128"
F='it/s\]\|call/s\]\|^\s*$'
echo "start $(date +%T) $(uptime)"
for dt in bfloat16 float32; do
  $V --repeats 3 --dtype $dt --method radial --param decay=0.2 --backends flex,segments,gather 2>&1 | grep -v "$F" | tail -6
  $V --repeats 3 --dtype $dt --method vmoba --param kind=1d --backends ranges,flex 2>&1 | grep -v "$F" | tail -5
  $V --repeats 2 --dtype $dt --method vmoba --param kind=2d --backends ranges,flex 2>&1 | grep -v "$F" | tail -5
  $V --repeats 2 --dtype $dt --method vmoba --param kind=3d --backends ranges 2>&1 | grep -v "$F" | tail -4
  $V --repeats 3 --dtype $dt --method window --param tile_aligned=true --param size=[3,3,3] --backends groups,flex,segments 2>&1 | grep -v "$F" | tail -5
  $V --repeats 3 --dtype $dt --method window --param "window=[1,7,13]" --param tile=null --backends rows,flex 2>&1 | grep -v "$F" | tail -4
  $V --repeats 3 --dtype $dt --method monarch 2>&1 | grep -v "$F" | tail -4
done
echo "radial bf16 again $(date +%T)"
$V --repeats 3 --dtype bfloat16 --method radial --param decay=0.2 --backends flex,segments 2>&1 | grep -v "$F" | tail -5
echo "backward $(date +%T) $(uptime)"
PYTHONPATH=src .venv/bin/python benchmarks/bench_segments.py --grid 21x30x52 --heads 2 --head-dim 128 --repeats 3 --modes backward 2>&1 | grep -v "$F" | tail -12
PYTHONPATH=src .venv/bin/python benchmarks/bench_vmoba.py --grid 21x30x52 --heads 2 --head-dim 128 --repeats 2 --kinds 1d --modes backward --backends ranges --dtypes bfloat16,float32 2>&1 | grep -v "$F" | tail -12
for dt in bfloat16 float32; do
  $V --repeats 2 --dtype $dt --mode backward --method window --param tile_aligned=true --param size=[3,3,3] --backends groups,segments 2>&1 | grep -v "$F" | tail -4
  $V --repeats 2 --dtype $dt --mode backward --method window --param "window=[1,7,13]" --param tile=null --backends rows 2>&1 | grep -v "$F" | tail -3
done
echo "end $(date +%T) $(uptime)"
