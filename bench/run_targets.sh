#!/usr/bin/env bash
# Runs the benchmark configurations behind the README's "Speed and memory" targets and prints a
# summary (bench/summarize.py). CPU, 4-block ViT-L/14 shape at 518 px, random weights.
# Takes about 30 minutes on a 2-core machine. Extra arguments go to every benchmark call
# (e.g. --device 0 --precision fp16).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench_out}
mkdir -p "$OUT"
run() { local name=$1; shift; echo "== $name"; python bench/benchmark.py --metric_maps 0 --out "$OUT/$name.json" "$@" | tail -n +3; }

for k in 1 4; do
    run "nan_k${k}_exhaustive" --k "$k" --n_images 6 --warmup 1 --align exhaustive "$@"
    run "nan_k${k}_image_index" --k "$k" --n_images 6 --warmup 1 --align image_index "$@"
    run "nan_k${k}_exhaustive_bf16search" --k "$k" --n_images 6 --warmup 1 --align exhaustive --search_precision bf16 "$@"
    run "nan_k${k}_image_index_bf16search" --k "$k" --n_images 6 --warmup 1 --align image_index --search_precision bf16 "$@"
done
for k in 1 4; do
    run "mul_k${k}_exhaustive" --k "$k" --winmode mul --n_images 1 --warmup 0 --align exhaustive --agreement "$@"
    run "mul_k${k}_image_index" --k "$k" --winmode mul --n_images 2 --warmup 1 --align image_index "$@"
    run "mul_k${k}_position" --k "$k" --winmode mul --n_images 2 --warmup 1 --align position "$@"
    run "mul_k${k}_image_index_bf16search" --k "$k" --winmode mul --n_images 2 --warmup 1 --align image_index --search_precision bf16 "$@"
    run "mul_k${k}_position_bf16search" --k "$k" --winmode mul --n_images 2 --warmup 1 --align position --search_precision bf16 "$@"
done
python bench/benchmark.py --metric_maps 100 --n_images 1 --warmup 0 --out "$OUT/metrics.json" "$@" | grep metrics
python bench/summarize.py "$OUT"
