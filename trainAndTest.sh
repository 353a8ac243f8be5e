#!/usr/bin/env bash
# Paper workflow: train the ASL heads on MVTec AD and test on VisA, then train on VisA and test
# on MVTec AD (cross-dataset, so test classes are never seen in training).
#
#   bash trainAndTest.sh {model_name} {device} {useNAM} {winmode} {win-size} {win-stride} {win-weight} {seed} {kshots}
#
# Reference commands and the paper's numbers (ViT-L-14-336 @ 518, mean over classes):
#   bash trainAndTest.sh fasl 0 1 mul 13 2 0.5 111 1   # MVTec img/pix AUROC 94.4/96.8, VisA 90.7/97.8
#   bash trainAndTest.sh fasl 0 1 mul 13 2 0.5 111 2   # MVTec 95.0/97.0, VisA 93.0/98.1
#   bash trainAndTest.sh fasl 0 1 mul 13 2 0.5 111 4   # MVTec 96.3/97.2, VisA 93.8/98.3
set -euo pipefail
cd "$(dirname "$0")"
source scripts/workflow.sh
fasl_setup "$@"

for k in "${K_LIST[@]}"; do
    for pair in "mvtec:$MVTEC_ROOT:$EPOCHS_MVTEC:visa:$VISA_ROOT" "visa:$VISA_ROOT:$EPOCHS_VISA:mvtec:$MVTEC_ROOT"; do
        IFS=: read -r train_set train_root epochs test_set test_root <<< "$pair"
        ckpt_dir="$CKPT_ROOT/$train_set/$MODEL_NAME/${k}shot/seed$SEED"
        echo "== train on $train_set, k=$k, $epochs epochs -> $ckpt_dir"
        "$PYTHON" train.py --train_data_path "$train_root" --dataset "$train_set" --save_path "$ckpt_dir" \
            "${COMMON_ARGS[@]}" --k_shot "$k" --epoch "$epochs" --batch_size "$BATCH_SIZE" --resume
        fasl_test "$test_set" "$test_root" "$ckpt_dir/epoch_$epochs.pth" "$k"
    done
done
