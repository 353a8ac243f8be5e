"""Speed and memory benchmark of FASL inference; needs no dataset and no pretrained weights.

Times the inference path per image, split into stages (backbone on the global image, backbone
on the LFE windows, alignment, heads + NAM, window merge, rest), the memory-bank build, the
bank's bytes per class, peak memory and the metric computation of a class, and reports the
*floor*: the backbone calls alone on the same images in the same run, with total / floor.

    python bench/benchmark.py                                  # ViT-L/14 shape, 4 blocks, 518 px, nan, k=1
    python bench/benchmark.py --winmode mul --align image_index --k_shot 4 --agreement

Weights are random (timing does not depend on them); the default model is a 4-block
ViT-L/14-336 shape (bench/configs/ViT-L-14-4blocks.json). Two defaults differ from the programs' on
purpose: --align image_index (the fast search, whose cost docs/performance.md's targets measure;
the programs default to the reference code's exhaustive) and --batch_size 1 (time per image).
Results go to --out as JSON.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.images import normalize_tensor  # noqa: E402
from models import build_fasl_from_args  # noqa: E402
from models.fasl import InferenceConfig, resolved_search_dtype  # noqa: E402
from models.lot import LotScorer  # noqa: E402
from models.lfe import split_windows  # noqa: E402
from models.flags import (BATCH_SIZE, add_backbone_args, add_inference_args, add_retired_flag,  # noqa: E402
                          fill_model_defaults)
from utils.metrics import class_metrics  # noqa: E402
from models.hardware import cpu_summary  # noqa: E402
from utils.misc import peak_rss_bytes, resolve_device, write_json  # noqa: E402

STAGES = ("backbone_global", "backbone_windows", "align", "heads", "merge")
DEFAULT_MODEL = str(ROOT / "bench" / "configs" / "ViT-L-14-4blocks.json")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    add_backbone_args(p)
    add_inference_args(p)
    # the benchmark's own defaults: a 4-block ViT-L/14 shape with random weights, the fast search
    p.set_defaults(model=DEFAULT_MODEL, pretrained="none", features_list=[1, 2, 3, 4], align="image_index")
    p.add_argument("--k_shot", type=int, default=1, help="reference images (default: %(default)s)")
    add_retired_flag(p, "--k", "is now --k_shot")
    p.add_argument("--batch_size", type=int, default=1,
                   help=f"query images per forward (default: %(default)s: time per image; the programs' is {BATCH_SIZE})")
    p.add_argument("--n_images", type=int, default=2, help="timed query images (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up batches (default: %(default)s)")
    p.add_argument("--agreement", action="store_true",
                   help="also measure how often image_index / position pick the same reference patch as "
                        "exhaustive search (costs one exhaustive alignment)")
    p.add_argument("--metric_maps", type=int, default=100, help="maps of 240x240 for the metric timing (0 = skip)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and images (default: %(default)s)")
    p.add_argument("--out", default="bench_out/benchmark.json", help="JSON output (default: %(default)s)")
    return fill_model_defaults(p.parse_args(argv))


class Stopwatch:
    """Accumulates wall time per stage; synchronises CUDA so stage times are real."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[str, float] = defaultdict(float)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, name: str):
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.times[name] += time.perf_counter() - t0


def synthetic_images(n: int, size: int, seed: int, mean, std) -> torch.Tensor:
    """n smooth random RGB images (n, 3, size, size), normalised like the backbone expects."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    img = (img + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return normalize_tensor(img, mean, std)


def metric_time(n: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    size = 240
    maps = rng.random((n, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n // 2, n):
        cy, cx, r = rng.integers(30, 210), rng.integers(30, 210), rng.integers(4, 25)
        masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        maps[i][masks[i] > 0] += 0.3
    labels = masks.reshape(n, -1).max(1)
    scores = maps.reshape(n, -1).max(1)
    t0 = time.perf_counter()
    class_metrics(labels, scores, masks, maps)
    return time.perf_counter() - t0


def agreement(model, bank, images, cfg: InferenceConfig) -> dict:
    """Fraction of query patches whose aligned reference patch equals exhaustive search's."""
    out = {}
    bb = model.backbone
    feats = bb(images)
    ref = bank.align_global(feats.tokens, feats.embedding, mode="exhaustive", gather=False)
    fast = bank.align_global(feats.tokens, feats.embedding, mode="image_index", gather=False)
    out["global image_index"] = float(np.mean([(a == b).float().mean().item() for a, b in zip(ref.index, fast.index)]))
    bf16 = bank.align_global(feats.tokens, feats.embedding, mode="exhaustive", gather=False, search_dtype=torch.bfloat16)
    out["global exhaustive bf16 search"] = float(np.mean([(a == b).float().mean().item() for a, b in zip(ref.index, bf16.index)]))
    out["global exhaustive bf16 search similarity loss"] = float(
        np.mean([(a.float() - b.float()).mean().item() for a, b in zip(ref.similarity, bf16.similarity)]))
    if bank.windows is not None:
        crops = split_windows(images, bank.windows, bb.patch_size)
        wf = bb(crops, chunk=cfg.window_batch)
        ref = bank.align_windows(wf.tokens, wf.embedding, mode="exhaustive", gather=False, max_bytes=cfg.max_bytes)
        for mode in ("image_index", "position"):
            fast = bank.align_windows(wf.tokens, wf.embedding, mode=mode, radius=cfg.win_radius, topk=cfg.win_topk,
                                      gather=False, max_bytes=cfg.max_bytes)
            same = [(a == b).float().mean().item() for a, b in zip(ref.index, fast.index)]
            # how much similarity the fast mode gives up, on average (exhaustive is the maximum)
            loss = [(a.float() - b.float()).mean().item() for a, b in zip(ref.similarity, fast.similarity)]
            out[f"window {mode}"] = float(np.mean(same))
            out[f"window {mode} similarity loss"] = float(np.mean(loss))
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)  # random weights, the same in every run: comparable figures
    model = build_fasl_from_args(args, device).eval()
    bb = model.backbone
    cfg = InferenceConfig.from_args(args, out_size=InferenceConfig.out_size)
    windows = model.window_grid(args.win_size, args.win_stride) if cfg.uses_windows else None
    refs = synthetic_images(args.k_shot, args.image_size, 0, bb.mean, bb.std).to(device)
    n_batches = -(-args.n_images // args.batch_size)
    queries = synthetic_images((args.warmup + n_batches) * args.batch_size, args.image_size, 1, bb.mean, bb.std)
    batches = list(queries.to(device).split(args.batch_size))

    watch = Stopwatch(device)
    with watch("bank_build"):
        bank = model.build_memory(refs, windows, window_batch=cfg.window_batch)
    scorer = LotScorer(model, cfg).fit(bank=bank)  # the one scoring path of every program (models/lot.py)

    for batch in batches[:args.warmup]:
        scorer.score(batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed = batches[args.warmup:]
    stages = Stopwatch(device)
    # total and floor (the same images through the backbone alone) alternate image by image, so
    # drifts of the machine's speed hit both alike
    for batch in timed:
        with watch("total"):
            scorer.score(batch, timer=stages)
        with watch("floor"):
            bb(batch, with_embedding=cfg.align != "exhaustive")
            if windows is not None:
                bb(split_windows(batch, windows, bb.patch_size), with_embedding=cfg.align != "exhaustive",
                   chunk=cfg.window_batch)
    bank_bytes = bank.nbytes()  # after the runs: includes a bf16 search copy if the search made one
    n = sum(len(b) for b in timed)
    per_image = {k: v / n for k, v in stages.times.items()}
    per_image["rest"] = watch.times["total"] / n - sum(per_image.get(s, 0.0) for s in STAGES)
    total, floor = watch.times["total"] / n, watch.times["floor"] / n

    result = {
        "machine": {"platform": platform.platform(), "cpu": cpu_summary(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": str(device),
                    "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "encoder_dtype": str(bb.feature_dtype).replace("torch.", ""),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "search_dtype": resolved_search_dtype(model, cfg),
        "window_search_dtype": None if windows is None else resolved_search_dtype(model, cfg, windows=True),
        "per_image_s": {s: per_image.get(s, 0.0) for s in (*STAGES, "rest")},
        "total_s": total,
        "floor_s": floor,
        "total_over_floor": total / floor,
        "bank_build_s": watch.times["bank_build"],
        "bank_bytes": bank_bytes,
        "peak_rss_bytes": peak_rss_bytes(),
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }
    if args.metric_maps:
        result["metrics_s"] = metric_time(args.metric_maps)
    if args.agreement:
        result["agreement"] = agreement(model, bank, timed[0], cfg)

    rows = [[f"{s} (s/img)", f"{per_image.get(s, 0.0):.3f}"] for s in (*STAGES, "rest")]
    rows += [["total (s/img)", f"{total:.3f}"], ["floor: backbone only (s/img)", f"{floor:.3f}"],
             ["total / floor", f"{total / floor:.3f}"], ["bank build (s)", f"{result['bank_build_s']:.2f}"],
             ["bank MB global / window", f"{bank_bytes['global'] / 2**20:.1f} / {bank_bytes['window'] / 2**20:.1f}"],
             ["peak RSS (MB)", f"{result['peak_rss_bytes'] / 2**20:.0f}"]]
    if result["cuda_max_allocated_bytes"] is not None:
        rows.append(["CUDA max allocated (MB)", f"{result['cuda_max_allocated_bytes'] / 2**20:.0f}"])
    if "metrics_s" in result:
        rows.append([f"metrics, {args.metric_maps} maps 240x240 (s)", f"{result['metrics_s']:.2f}"])
    for key, value in result.get("agreement", {}).items():
        rows.append([f"agreement: {key}", f"{value:.3f}"])
    cpu = result["machine"]["cpu"]
    title = (f"{bb.model_name} @ {args.image_size}px, k={args.k_shot}, mode {args.mode}, winmode {args.winmode}, "
             f"align {args.align} (search {result['search_dtype']}"
             + (f"; windows {result['window_search_dtype']}" if windows is not None else "")
             + f"), batch {args.batch_size}, precision {args.precision} (encoder {result['encoder_dtype']}), "
             f"{device} ({cpu['name']}; AMX {'yes' if cpu['amx'] else 'no'}, AVX-512 BF16 "
             f"{'yes' if cpu['avx512_bf16'] else 'no'}), {n} images")
    print(title)
    print(tabulate(rows, headers=["measure", "value"], tablefmt="github", disable_numparse=True))
    write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
