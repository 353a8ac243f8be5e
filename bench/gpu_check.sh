#!/usr/bin/env bash
# The first run on a GPU, in one go (about 5 minutes on one GPU; no dataset, no weights, no network):
#   1. CPU vs CUDA maps of the tiny model: fp32 and --precision auto (fp16), the model built on
#      the GPU and built on the CPU then moved with .to(); distinct FD values (fp16 ties them
#      unless the pick is re-scored in fp32)
#   2. torchrun with one process on NCCL (all_reduce, object broadcast), then test_few_shot.py
#      under torchrun on CUDA with the tiny model on a generated dataset, and predict.py's
#      lot-aware scoring on CUDA
#   3. the full ViT-L-14-336 (random weights: the same compute) at 518 px, batch 8, winmode nan
#      and mul, the reproduction's exhaustive alignment: ms per image and peak GPU memory
# and prints one table (also in $OUT/table.md). A step that fails is reported in the table and
# the others still run; the exit status is 1 then.
#
#   bash bench/gpu_check.sh                 # GPU 0, results in gpu_check_out/
#   OUT=/tmp/gc DEVICE=cuda:1 bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-$(command -v python >/dev/null 2>&1 && echo python || echo python3)}
export FASL_CPU_AUTO_BF16=0  # the CPU side of the comparison in fp32
mkdir -p "$OUT"
failed=0
step() {  # step NAME SECONDS CMD...: run one check with a time limit, its output in $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
        echo "== $name: ok ($((SECONDS - t0)) s)"
    else
        echo "== $name: FAILED ($((SECONDS - t0)) s), see $OUT/$name.log"
        tail -n 5 "$OUT/$name.log"
        failed=1
    fi
}
TORCHRUN=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1)
TINY=(--model fasl-tiny-vit --pretrained none --image_size 112 --features_list 1 2 3 4)

step agreement 150 "$PYTHON" bench/gpu_check.py agreement --device "$DEVICE" --out "$OUT/agreement.json"
step nccl 60 "${TORCHRUN[@]}" bench/gpu_check.py nccl --out "$OUT/nccl.json"
step data 60 "$PYTHON" data/synthetic.py --out "$OUT/data" --layout visa --seed 0 --classes 2 --size 112 84 \
    --n_train 2 --n_test 6
step torchrun_test 90 "${TORCHRUN[@]}" test_few_shot.py --data_path "$OUT/data" --save_path "$OUT/torchrun_test" \
    --mode fd --winmode mul --win_size 4 --win_stride 2 --eval_size 64 --device cuda "${TINY[@]}"
step predict_lot 90 "$PYTHON" predict.py --refs "$OUT/data/blobs/Data/Images/Normal" --images "$OUT/data" \
    --out "$OUT/predict_lot" --lot on --min_lot 3 --device "$DEVICE" "${TINY[@]}"
for winmode in nan mul; do
    step "vitl_$winmode" 120 "$PYTHON" bench/benchmark.py --model ViT-L-14-336 --pretrained none \
        --features_list 6 12 18 24 --image_size 518 --device "$DEVICE" --batch_size 8 --n_images 16 --warmup 1 \
        --winmode "$winmode" --align exhaustive --metric_maps 0 --out "$OUT/vitl_$winmode.json"
done
echo
"$PYTHON" bench/gpu_check.py table "$OUT" | tee "$OUT/table.md"
exit $failed
