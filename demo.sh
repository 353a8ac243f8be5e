#!/usr/bin/env bash
# FASL demo, offline, on a fresh clone after `pip install -r requirements.txt` (~2 min on 2 CPU cores):
# generate a synthetic MVTec-layout and a synthetic VisA-layout dataset, train the ASL heads on
# the MVTec-layout one with the tiny random-weight backbone, then test on the VisA-layout one
# with k = 1 and LFE windows on. Prints the table and writes overlays to results/demo/.
#
# Random weights cannot match the paper's numbers (those need ViT-L-14-336 with OpenAI weights
# and the real datasets); the demo shows the whole workflow running end to end. Override
# anything with environment variables, e.g. DEMO_OUT=/tmp/demo EPOCHS=5 bash demo.sh
set -euo pipefail
cd "$(dirname "$0")"
OUT=${DEMO_OUT:-results/demo}
EPOCHS=${EPOCHS:-8}
PYTHON=${PYTHON:-$(command -v python >/dev/null 2>&1 && echo python || echo python3)}  # python3 where there is no python
TINY=(--model fasl-tiny-vit --pretrained none --image_size 224 --features_list 1 2 3 4 --device cpu --seed 7)

echo "== 1/4 generating synthetic datasets under $OUT/data"
"$PYTHON" data/synthetic.py --out "$OUT/data/mvtec" --layout mvtec --seed 0 --classes 2
"$PYTHON" data/synthetic.py --out "$OUT/data/visa" --layout visa --seed 1 --classes 2

echo "== 2/4 training the ASL heads + NAM on the MVTec-layout set ($EPOCHS epochs)"
"$PYTHON" train.py --train_data_path "$OUT/data/mvtec" --dataset mvtec --save_path "$OUT/checkpoints" \
    "${TINY[@]}" --k_shot 1 --epoch "$EPOCHS" --batch_size 8 --learning_rate 0.01  # tiny random ViT: 10x the paper's lr

echo "== 3/4 few-shot test on the VisA-layout set (k=1, winmode mul: global + LFE windows)"
"$PYTHON" test_few_shot.py --data_path "$OUT/data/visa" --dataset visa --save_path "$OUT/visa" \
    --checkpoint_path "$OUT/checkpoints/epoch_$EPOCHS.pth" "${TINY[@]}" --k_shot 1 \
    --winmode mul --win_size 8 --win_stride 2 --win_weight 0.5 --save_vis

echo "== 4/4 the training-free FD map on the same set, for comparison"
"$PYTHON" test_few_shot.py --data_path "$OUT/data/visa" --dataset visa --save_path "$OUT/visa_fd" \
    --mode fd "${TINY[@]}" --k_shot 1 --winmode mul --win_size 8 --win_stride 2 --save_vis

echo
echo "results: $OUT/visa/results.json (trained heads), $OUT/visa_fd/results.json (FD map)"
"$PYTHON" - "$OUT/visa/results.json" "$OUT/visa_fd/results.json" <<'PY'
import json, sys
heads, fd = (json.load(open(p))["mean"]["pixel_auroc"] for p in sys.argv[1:3])
if heads < fd:
    print(f"why the trained heads ({100 * heads:.1f}) lose to FD ({100 * fd:.1f}) here: the tiny backbone has random "
          f"weights, so its features carry no learnable notion of a defect; see README, Measured on real images")
PY
echo "overlays (image | ground truth | heatmap): $OUT/visa/vis/ and $OUT/visa_fd/vis/"
