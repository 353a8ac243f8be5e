"""The checks of bench/gpu_check.sh that are not a program run: CPU vs CUDA maps of the tiny model,
one NCCL process group, and the table that sums the whole check up. Needs no dataset, no weights
and no network.

    python bench/gpu_check.py agreement --out gpu_check_out/agreement.json     # --device cpu: a dry run
    torchrun --standalone --nproc_per_node 1 bench/gpu_check.py nccl --out gpu_check_out/nccl.json
    python bench/gpu_check.py table gpu_check_out
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import build_fasl  # noqa: E402
from models.fasl import InferenceConfig  # noqa: E402
from utils.misc import write_json  # noqa: E402

TINY = dict(model="fasl-tiny-vit", pretrained=None, blocks=[1, 2, 3, 4], image_size=112)
MODES = ("fd", "fasl", "merged")


def _images(n: int, seed: int) -> torch.Tensor:
    """(n, 3, 112, 112) smooth random images with a bright blob, normalised roughly as CLIP's."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 14, 14, generator=g)
    images = torch.nn.functional.interpolate(low, size=112, mode="bilinear", align_corners=False)
    images[:, :, 40:60, 50:70] += torch.rand(n, 1, 1, 1, generator=g)
    return (images - 0.45) / 0.27


def _scores(model, refs, queries, cfg):
    bank = model.build_memory(refs.to(model.device), model.windows_for(cfg))
    pred = model.predict(queries.to(model.device), bank, cfg)
    feats = model.backbone(queries.to(model.device), with_embedding=False)
    sims = bank.align_global(feats.tokens, None, mode="exhaustive", gather=False).similarity
    fd = torch.cat([(1 - s.float()).flatten() for s in sims]).cpu()
    return pred.score_map.float().cpu(), pred.image_score.float().cpu(), fd


def agreement(device: str) -> dict:
    """The tiny model on the CPU in fp32 against ``device`` in fp32 and under --precision auto
    (fp16 on CUDA), built on the CPU and then moved (``.to``) as well as built there: the largest
    map and image-score differences per mode, and how many distinct FD values the patches get."""
    torch.manual_seed(0)
    reference = build_fasl(**TINY, device="cpu", precision="fp32").eval()
    state = reference.state_dict()
    refs, queries = _images(2, 1), _images(4, 2)
    out = {"device": device, "name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
           "runs": {}}
    cfgs = {mode: InferenceConfig(mode=mode, winmode="mul", win_size=4, win_stride=2, align="exhaustive",
                                  search_precision="exact", out_size=64) for mode in MODES}
    expected = {mode: _scores(reference, refs, queries, cfg) for mode, cfg in cfgs.items()}  # once per mode
    for precision in ("fp32", "auto"):
        for how in ("moved", "built"):
            if how == "moved":
                model = build_fasl(**TINY, device="cpu", precision=precision)
                model.load_state_dict(state)
                model.to(device)
            else:
                model = build_fasl(**TINY, device=device, precision=precision)
                model.load_state_dict(state)
            model.eval()
            run = {"encoder_dtype": str(model.backbone.feature_dtype).replace("torch.", ""), "modes": {}}
            for mode, cfg in cfgs.items():
                a_map, a_score, a_fd = expected[mode]
                b_map, b_score, b_fd = _scores(model, refs, queries, cfg)
                run["modes"][mode] = {"map_max_abs_diff": float((a_map - b_map).abs().max()),
                                      "score_max_abs_diff": float((a_score - b_score).abs().max()),
                                      "fd_distinct_share": float(len(torch.unique(b_fd)) / b_fd.numel()),
                                      "fd_distinct_share_cpu_fp32": float(len(torch.unique(a_fd)) / a_fd.numel())}
            out["runs"][f"{precision} {how}"] = run
    return out


def nccl() -> dict:
    """One NCCL process group (started by torchrun): an all-reduce on the GPU and an object
    broadcast through a gloo group beside it, as utils/distributed.py sets them up."""
    import torch.distributed as dist

    from utils.distributed import TIMEOUT, _takes_device_id

    t0 = time.time()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    extra = {"device_id": device} if _takes_device_id() else {}
    dist.init_process_group(backend="nccl", timeout=TIMEOUT, **extra)
    group = dist.new_group(backend="gloo", timeout=TIMEOUT)
    value = torch.full((4,), float(dist.get_rank() + 1), device=device)
    dist.all_reduce(value)
    box = [{"rank": dist.get_rank()}] if dist.get_rank() == 0 else [None]
    dist.broadcast_object_list(box, src=0, group=group)
    world = dist.get_world_size()
    dist.destroy_process_group()
    expected = world * (world + 1) / 2
    return {"world_size": world, "all_reduce_ok": bool(torch.allclose(value.cpu(), torch.full((4,), expected))),
            "broadcast_ok": box[0] == {"rank": 0}, "seconds": time.time() - t0}


def table(folder: str) -> str:
    """One table of every result bench/gpu_check.sh wrote into ``folder``."""
    from tabulate import tabulate

    folder = Path(folder)
    rows = []

    def read(name):
        path = folder / name
        return json.loads(path.read_text()) if path.is_file() else None

    agree = read("agreement.json")
    if agree is None:
        rows.append(["CPU vs CUDA maps (tiny model)", "not run / failed"])
    else:
        for run, r in agree["runs"].items():
            worst = max(r["modes"].values(), key=lambda m: m["map_max_abs_diff"])
            fd = r["modes"]["fd"]
            rows.append([f"CPU fp32 vs {agree['device']} {run} (encoder {r['encoder_dtype']})",
                         f"max |map diff| {worst['map_max_abs_diff']:.2e}, max |score diff| "
                         f"{max(m['score_max_abs_diff'] for m in r['modes'].values()):.2e}, distinct FD values "
                         f"{100 * fd['fd_distinct_share']:.0f}% (CPU fp32 {100 * fd['fd_distinct_share_cpu_fp32']:.0f}%)"])
    nc = read("nccl.json")
    rows.append(["torchrun, 1 process, NCCL", "not run / failed" if nc is None else
                 f"all_reduce {'ok' if nc['all_reduce_ok'] else 'WRONG'}, broadcast "
                 f"{'ok' if nc['broadcast_ok'] else 'WRONG'}, {nc['seconds']:.1f} s"])
    tfs = folder / "torchrun_test" / "results.json"
    rows.append(["torchrun test_few_shot.py --device cuda (tiny, synthetic)",
                 f"ok, mean pixel AUROC {json.loads(tfs.read_text())['mean']['pixel_auroc']:.3f}" if tfs.is_file()
                 else "not run / failed"])
    for winmode in ("nan", "mul"):
        b = read(f"vitl_{winmode}.json")
        if b is None:
            rows.append([f"ViT-L-14-336 @ 518, {winmode}, batch 8", "not run / failed"])
            continue
        peak = b.get("cuda_max_allocated_bytes")
        rows.append([f"ViT-L-14-336 @ 518, {winmode}, batch 8, {b['settings']['align']}, encoder {b['encoder_dtype']}",
                     f"{1000 * b['total_s']:.1f} ms/img (backbone alone {1000 * b['floor_s']:.1f}), peak GPU memory "
                     + (f"{peak / 2**30:.2f} GiB" if peak else "n/a")])
    text = tabulate(rows, headers=["check", "result"], tablefmt="github", disable_numparse=True)
    print(text)
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("agreement", help="CPU vs --device maps of the tiny model", allow_abbrev=False)
    a.add_argument("--device", default="cuda")
    a.add_argument("--out", required=True)
    n = sub.add_parser("nccl", help="one NCCL process group (run under torchrun)", allow_abbrev=False)
    n.add_argument("--out", required=True)
    t = sub.add_parser("table", help="the summary table of a gpu_check.sh folder", allow_abbrev=False)
    t.add_argument("folder")
    args = p.parse_args(argv)
    if args.what == "agreement":
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            p.error("CUDA is not available here: --device cpu runs the same check on the CPU")
        write_json(args.out, agreement(args.device))
    elif args.what == "nccl":
        write_json(args.out, nccl())
    else:
        table(args.folder)


if __name__ == "__main__":
    main()
