#!/usr/bin/env bash
# Runs the benchmark configurations behind the README's "Speed and memory" targets and prints a
# summary (bench/summarize.py). CPU, 4-block ViT-L/14 shape at 518 px, random weights.
# Takes about 35 minutes on a 2-core machine. The encoder runs in fp32 (the targets are ratios to an
# fp32 backbone; --precision auto would pick bf16 on an AMX CPU), then two runs with a bf16 encoder.
# Extra arguments go to every benchmark call and win over these (e.g. --device 0 --precision fp16).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench_out}
mkdir -p "$OUT"
run() {
    local name=$1; shift; echo "== $name"
    python bench/benchmark.py --metric_maps 0 --precision fp32 --out "$OUT/$name.json" "$@" | tail -n +3
}

# nan: the default (--search_precision auto: bf16 search on CPUs with AMX) and exact fp32 search
for k in 1 4; do
    for align in image_index exhaustive; do
        run "nan_k${k}_${align}_auto" --k_shot "$k" --n_images 10 --warmup 1 --align "$align" "$@"
        run "nan_k${k}_${align}_exact" --k_shot "$k" --n_images 10 --warmup 1 --align "$align" --search_precision exact "$@"
    done
done
# mul: the paper's exhaustive window search in fp32 (same work as the paper's code) with the
# agreement figures, then the fast modes with the default and with exact search
for k in 1 4; do
    run "mul_k${k}_exhaustive_exact" --k_shot "$k" --winmode mul --n_images 1 --warmup 0 --align exhaustive \
        --search_precision exact --agreement "$@"
    run "mul_k${k}_exhaustive_auto" --k_shot "$k" --winmode mul --n_images 1 --warmup 0 --align exhaustive "$@"
    for align in image_index position; do
        run "mul_k${k}_${align}_auto" --k_shot "$k" --winmode mul --n_images 2 --warmup 1 --align "$align" "$@"
        run "mul_k${k}_${align}_exact" --k_shot "$k" --winmode mul --n_images 2 --warmup 1 --align "$align" \
            --search_precision exact "$@"
    done
done
# the encoder in bf16 (README, Precision on CPUs)
run "nan_k1_image_index_bf16_encoder" --k_shot 1 --n_images 10 --warmup 1 --align image_index --precision bf16 "$@"
run "mul_k1_image_index_bf16_encoder" --k_shot 1 --winmode mul --n_images 2 --warmup 1 --align image_index \
    --precision bf16 "$@"
python bench/benchmark.py --metric_maps 100 --n_images 1 --warmup 0 --out "$OUT/metrics.json" "$@" | grep metrics
python bench/summarize.py "$OUT"
