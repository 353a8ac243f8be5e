#!/usr/bin/env bash
# Paper workflow, test only: evaluate existing checkpoints (from trainAndTest.sh) on VisA (heads
# trained on MVTec AD) and on MVTec AD (heads trained on VisA).
#
#   bash test_few_shot.sh {model_name} {device} {useNAM} {winmode} {win-size} {win-stride} {win-weight} {seed} {kshots}
#
# The paper's numbers (ViT-L-14-336 @ 518, mean over classes; not re-measured here):
#   bash test_few_shot.sh fasl 0 1 mul 13 2 0.5 111 1   # MVTec img/pix AUROC 94.4/96.8, VisA 90.7/97.8
#   bash test_few_shot.sh fasl 0 1 mul 13 2 0.5 111 4   # MVTec 96.3/97.2, VisA 93.8/98.3
# Checkpoints are read from $CKPT_ROOT/<train set>/<model_name>/seed<seed>/epoch_<TEST_EPOCH_*>.pth.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/workflow_lib.sh
fasl_setup "$@"

fasl_tests visa "$VISA_ROOT" "$(fasl_ckpt_dir mvtec)/epoch_$TEST_EPOCH_VISA.pth"
fasl_tests mvtec "$MVTEC_ROOT" "$(fasl_ckpt_dir visa)/epoch_$TEST_EPOCH_MVTEC.pth"
