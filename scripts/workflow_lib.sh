# A bash library, sourced (never run) by trainAndTest.sh and test_few_shot.sh: their positional
# arguments, environment defaults, up-front flag checks, dataset checks and the train / test steps.

FASL_USAGE="usage: bash $(basename "$0") {model_name} {device} {useNAM} {winmode} {win-size} {win-stride} {win-weight} {seed} {kshots}

  model_name  name of this experiment (folder under \$CKPT_ROOT and \$RESULTS_ROOT), e.g. fasl
  device      cpu, or a CUDA index (0, 1, ...) or cuda:N
  useNAM      1/0 (or true/false): refine scores with the Neighbor Aggregation Module
  winmode     nan (global only) | mul (global and LFE windows) | onlywin (windows only)
  win-size    LFE window side in patches (paper: 13)
  win-stride  LFE window step in patches (paper: 2)
  win-weight  weight of the window map in 'mul' (paper: 0.5)
  seed        random seed (reference images, shuffling, augmentation)
  kshots      reference images per class; one value or a comma list, e.g. 1,2,4

environment (defaults: the reference code's recipe): MVTEC_ROOT (./datasets/mvtec)
  VISA_ROOT (./datasets/visa) MODEL (ViT-L-14-336, or timm:<name>) PRETRAINED (openai)
  IMAGE_SIZE (518) BLOCKS (the model's default: 6 12 18 24 for ViT-L-14-336)
  ALIGN (exhaustive) SEARCH_PRECISION (auto; 'exact' for an fp32 search on CPU)
  training: EPOCHS_MVTEC (5: heads trained on MVTec AD) EPOCHS_VISA (11: heads trained on VisA)
    TRAIN_K (10 good references per class in the training banks) BATCH_SIZE (8)
    AUG_RATE_MVTEC (0.3: mosaic, MVTec AD only) CROP_RATE_VISA (0.6: crop, VisA only)
    CROP_SMALL_RATE (0.6) EXTRA_TRAIN_ARGS (extra flags for train.py)
  testing: TEST_EPOCH_VISA (5: epoch of the MVTec-trained heads that test VisA)
    TEST_EPOCH_MVTEC (5: epoch of the VisA-trained heads that test MVTec AD)
    SEEDS (unset: the seed argument; e.g. '0 1 2': a sweep over reference draws, every k at once,
      with a mean +- std summary in \$RESULTS_ROOT/<test set>/<model_name>/sweep.md)
    EXTRA_TEST_ARGS (extra flags for test_few_shot.py, e.g. '--save_vis')
  NPROC (1; N: every program runs in N processes on this machine through torchrun)
  RESULTS_ROOT (results) CKPT_ROOT (checkpoints) PYTHON (python, or python3 where there is no python)"

fasl_die() { echo "error: $*" >&2; echo >&2; echo "$FASL_USAGE" >&2; exit 2; }

fasl_parse_args() {
    [ "$#" -eq 9 ] || fasl_die "expected 9 positional arguments, got $#"
    MODEL_NAME=$1; DEVICE=$2; USE_NAM=$3; WINMODE=$4; WIN_SIZE=$5; WIN_STRIDE=$6; WIN_WEIGHT=$7
    SEED=$8; KSHOTS=$9
    [[ "$MODEL_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || fasl_die "model_name '$MODEL_NAME' must be a plain folder name"
    [[ "$DEVICE" =~ ^(cpu|cuda|cuda:[0-9]+|[0-9]+)$ ]] || fasl_die "device '$DEVICE' must be cpu, N or cuda:N"
    case "$USE_NAM" in
        1|true|True|TRUE|yes) NAM_FLAG=--nam ;;
        0|false|False|FALSE|no) NAM_FLAG=--no-nam ;;
        *) fasl_die "useNAM '$USE_NAM' must be 1 or 0" ;;
    esac
    [[ "$WIN_SIZE" =~ ^[1-9][0-9]*$ ]] || fasl_die "win-size '$WIN_SIZE' must be a positive integer"
    [[ "$WIN_STRIDE" =~ ^[1-9][0-9]*$ ]] || fasl_die "win-stride '$WIN_STRIDE' must be a positive integer"
    [[ "$WIN_WEIGHT" =~ ^(0(\.[0-9]+)?|1(\.0+)?|\.[0-9]+)$ ]] || fasl_die "win-weight '$WIN_WEIGHT' must be a number in [0, 1]"
    [[ "$SEED" =~ ^[0-9]+$ ]] || fasl_die "seed '$SEED' must be a non-negative integer"
    [[ "$KSHOTS" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || fasl_die "kshots '$KSHOTS' must be a positive number or a comma list like 1,2,4"

    MVTEC_ROOT=${MVTEC_ROOT:-./datasets/mvtec}
    VISA_ROOT=${VISA_ROOT:-./datasets/visa}
    MODEL=${MODEL:-ViT-L-14-336}
    case "$MODEL" in  # the programs' own defaults per model (models/backbone.py default_pretrained / _image_size)
        lite0) PRETRAINED=${PRETRAINED:-default}; IMAGE_SIZE=${IMAGE_SIZE:-224} ;;
        lite2) PRETRAINED=${PRETRAINED:-default}; IMAGE_SIZE=${IMAGE_SIZE:-256} ;;
        *) PRETRAINED=${PRETRAINED:-openai}; IMAGE_SIZE=${IMAGE_SIZE:-518} ;;
    esac
    BLOCKS=${BLOCKS:-}
    EPOCHS_MVTEC=${EPOCHS_MVTEC:-5}
    EPOCHS_VISA=${EPOCHS_VISA:-11}
    TEST_EPOCH_VISA=${TEST_EPOCH_VISA:-5}
    TEST_EPOCH_MVTEC=${TEST_EPOCH_MVTEC:-5}
    TRAIN_K=${TRAIN_K:-10}
    AUG_RATE_MVTEC=${AUG_RATE_MVTEC:-0.3}
    CROP_RATE_VISA=${CROP_RATE_VISA:-0.6}
    CROP_SMALL_RATE=${CROP_SMALL_RATE:-0.6}
    BATCH_SIZE=${BATCH_SIZE:-8}
    ALIGN=${ALIGN:-exhaustive}
    SEARCH_PRECISION=${SEARCH_PRECISION:-auto}
    RESULTS_ROOT=${RESULTS_ROOT:-results}
    CKPT_ROOT=${CKPT_ROOT:-checkpoints}
    PYTHON=${PYTHON:-$(command -v python >/dev/null 2>&1 && echo python || echo python3)}
    EXTRA_TEST_ARGS=${EXTRA_TEST_ARGS:-}
    EXTRA_TRAIN_ARGS=${EXTRA_TRAIN_ARGS:-}
    NPROC=${NPROC:-1}
    SEEDS=${SEEDS:-}
    [[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || fasl_die "NPROC '$NPROC' must be a positive integer"
    [[ -z "$SEEDS" || "$SEEDS" =~ ^[0-9]+([[:space:]]+[0-9]+)*$ ]] || fasl_die "SEEDS '$SEEDS' must be non-negative integers separated by spaces"
    local name
    for name in EPOCHS_MVTEC EPOCHS_VISA TEST_EPOCH_VISA TEST_EPOCH_MVTEC TRAIN_K; do
        [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || fasl_die "$name '${!name}' must be a positive integer"
    done
    COMMON_ARGS=(--model "$MODEL" --pretrained "$PRETRAINED" --image_size "$IMAGE_SIZE"
                 --device "$DEVICE" --seed "$SEED" --align "$ALIGN")
    if [ -n "$BLOCKS" ]; then
        # shellcheck disable=SC2206
        COMMON_ARGS+=(--features_list $BLOCKS)
    fi
    # shellcheck disable=SC2206
    TEST_ARGS=($NAM_FLAG --winmode "$WINMODE" --win_size "$WIN_SIZE" --win_stride "$WIN_STRIDE"
               --win_weight "$WIN_WEIGHT" --search_precision "$SEARCH_PRECISION" $EXTRA_TEST_ARGS)
}

# fasl_run SCRIPT ARGS...: run one of the programs, in NPROC processes through torchrun when NPROC > 1
fasl_run() {
    if [ "$NPROC" -gt 1 ]; then
        "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" "$@"
    else
        "$PYTHON" "$@"
    fi
}

# fasl_explain PROGRAM: a program's error line (stdin) in the script's words: every flag the script
# sets from a positional argument or an environment variable is named as the user gave it
fasl_explain() {
    local k_name="kshots (argument 9)"
    [ "$1" = train.py ] && k_name=TRAIN_K
    sed -E -e 's/^[A-Za-z_]+\.py: error: //' -e 's/^argument //' \
        -e 's/--(no-)?nam\b/useNAM (argument 3)/g' -e 's/--winmode\b/winmode (argument 4)/g' \
        -e 's/(--)?win_size\b/win-size (argument 5)/g' -e 's/(--)?win_stride\b/win-stride (argument 6)/g' \
        -e 's/(--)?win_weight\b/win-weight (argument 7)/g' -e 's/--device\b/device (argument 2)/g' \
        -e 's/--seed\b/seed (argument 8)/g' -e "s/--k_shot\\b/$k_name/g" \
        -e 's/--model\b/MODEL/g' -e 's/--pretrained\b/PRETRAINED/g' -e 's/--image_size\b/IMAGE_SIZE/g' \
        -e 's/--features_list\b/BLOCKS/g' -e 's/--align\b/ALIGN/g' -e 's/--search_precision\b/SEARCH_PRECISION/g' \
        -e 's/--batch_size\b/BATCH_SIZE/g' -e 's/--aug_rate\b/AUG_RATE_MVTEC/g' -e 's/--crop_rate\b/CROP_RATE_VISA/g' \
        -e 's/--crop_small_rate\b/CROP_SMALL_RATE/g' -e 's/--epoch\b/EPOCHS_MVTEC or EPOCHS_VISA/g'
}

# fasl_check_flags: let the programs refuse bad values (winmode, a window larger than the patch grid,
# ALIGN, SEARCH_PRECISION, ...) before any dataset is read or training starts; the choices are stated in
# Python only. Their error is shown in the script's words, with the script's usage.
fasl_check_flags() {
    local err line prog ks
    IFS=, read -r -a ks <<< "$KSHOTS"
    # shellcheck disable=SC2086
    if ! err=$("$PYTHON" scripts/check_flags.py --train_data_path "$MVTEC_ROOT" --save_path "$CKPT_ROOT" \
            "${COMMON_ARGS[@]}" --k_shot "$TRAIN_K" --epoch "$EPOCHS_MVTEC" --batch_size "$BATCH_SIZE" \
            --aug_rate "$AUG_RATE_MVTEC" --crop_rate "$CROP_RATE_VISA" --crop_small_rate "$CROP_SMALL_RATE" \
            $NAM_FLAG $EXTRA_TRAIN_ARGS \
            --then --data_path "$VISA_ROOT" --save_path "$RESULTS_ROOT" --checkpoint_path none \
            "${COMMON_ARGS[@]}" --k_shot "${ks[@]}" "${TEST_ARGS[@]}" 2>&1 >/dev/null); then
        line=$(printf '%s\n' "$err" | grep -E '^[A-Za-z_]+\.py: error: ' | tail -n 1)
        [ -n "$line" ] || fasl_die "$err"
        prog=${line%%:*}
        fasl_die "$(printf '%s\n' "$line" | fasl_explain "$prog")"
    fi
}

# fasl_require_meta NAME ROOT BUILDER: stop with the command that builds a missing meta.json
fasl_require_meta() {
    local name=$1 root=$2 builder=$3
    if [ ! -d "$root" ]; then
        echo "error: $name dataset not found at '$root' (set ${name^^}_ROOT or download it; see README.md)" >&2
        exit 1
    fi
    if [ ! -f "$root/meta.json" ]; then
        echo "error: $root/meta.json not found; build it with:  python $builder --data_root $root" >&2
        exit 1
    fi
}

# fasl_ckpt_dir TRAIN_SET: where the heads trained on TRAIN_SET live (one run serves every k)
fasl_ckpt_dir() { echo "$CKPT_ROOT/$1/$MODEL_NAME/seed$SEED"; }

# fasl_train DATASET ROOT EPOCHS: train the heads on one dataset (resumes an interrupted run)
fasl_train() {
    local dataset=$1 root=$2 epochs=$3 aug=0 crop=0
    [ "$dataset" = mvtec ] && aug=$AUG_RATE_MVTEC
    [ "$dataset" = visa ] && crop=$CROP_RATE_VISA
    local out
    out=$(fasl_ckpt_dir "$dataset")
    echo "== train on $dataset, $epochs epochs, $TRAIN_K references per class -> $out"
    # shellcheck disable=SC2086
    fasl_run train.py --train_data_path "$root" --dataset "$dataset" --save_path "$out" "${COMMON_ARGS[@]}" \
        --k_shot "$TRAIN_K" --epoch "$epochs" --batch_size "$BATCH_SIZE" $NAM_FLAG --aug_rate "$aug" \
        --crop_rate "$crop" --crop_small_rate "$CROP_SMALL_RATE" --resume $EXTRA_TRAIN_ARGS
}

# fasl_tests DATASET ROOT CKPT: few-shot tests of one dataset with one checkpoint, every k; with
# SEEDS, one sweep over every k and seed (results under <k>shot/seed<seed>/, summary in sweep.md)
fasl_tests() {
    local dataset=$1 root=$2 ckpt=$3 k
    local out="$RESULTS_ROOT/$dataset/$MODEL_NAME"
    if [ ! -f "$ckpt" ]; then
        echo "error: checkpoint '$ckpt' not found; train it with trainAndTest.sh (or set CKPT_ROOT)" >&2
        exit 1
    fi
    if [ -n "$SEEDS" ]; then
        echo "== test on $dataset, k=${K_LIST[*]}, seeds $SEEDS -> $out"
        # shellcheck disable=SC2086
        fasl_run test_few_shot.py --data_path "$root" --dataset "$dataset" --save_path "$out" \
            --checkpoint_path "$ckpt" "${COMMON_ARGS[@]}" --k_shot "${K_LIST[@]}" --seeds $SEEDS "${TEST_ARGS[@]}"
        return
    fi
    for k in "${K_LIST[@]}"; do
        echo "== test on $dataset, k=$k -> $out/${k}shot/seed$SEED"
        fasl_run test_few_shot.py --data_path "$root" --dataset "$dataset" --save_path "$out/${k}shot/seed$SEED" \
            --checkpoint_path "$ckpt" "${COMMON_ARGS[@]}" --k_shot "$k" "${TEST_ARGS[@]}"
    done
}

# fasl_setup "$@": parse and check the arguments and both datasets; K_LIST holds the k values
fasl_setup() {
    fasl_parse_args "$@"
    # the reference's VisA test asks for epoch_11.pth of its 5-epoch MVTec run, a file that run
    # never writes; here a test epoch must be one the training run writes
    [ "$TEST_EPOCH_VISA" -le "$EPOCHS_MVTEC" ] || fasl_die "TEST_EPOCH_VISA=$TEST_EPOCH_VISA is after the last epoch of the MVTec-trained heads (EPOCHS_MVTEC=$EPOCHS_MVTEC)"
    [ "$TEST_EPOCH_MVTEC" -le "$EPOCHS_VISA" ] || fasl_die "TEST_EPOCH_MVTEC=$TEST_EPOCH_MVTEC is after the last epoch of the VisA-trained heads (EPOCHS_VISA=$EPOCHS_VISA)"
    fasl_check_flags  # every value first: a bad one is named before the datasets are looked at
    fasl_require_meta mvtec "$MVTEC_ROOT" data/mvtec.py
    fasl_require_meta visa "$VISA_ROOT" data/visa.py
    IFS=, read -r -a K_LIST <<< "$KSHOTS"
}
