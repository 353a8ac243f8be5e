"""Compare the two anomaly sources of train.py on one target dataset.

1. ``masks``: train the heads on the *auxiliary* dataset's test split with its ground-truth
   masks (the paper's cross-dataset protocol, e.g. MVTec AD -> VisA);
2. ``synthetic``: train the heads on the *target's own* good images (its meta.json ``train``
   split) with synthesised defects, no mask at all;

then test both checkpoints with ``test_few_shot.py --mode fasl`` on the target's test split
(same references, same settings) and print the two results side by side, plus a JSON summary
(also written to ``<out>/comparison.json``). The programs run in this process, through
their ``main()`` functions.

Without --data_root / --aux_root both datasets are generated first with
``data/synthetic.py`` (target: VisA layout, auxiliary: MVTec layout; --swap turns
that round), and the tiny random-weight backbone is used, so the whole run takes a few
minutes on two CPU cores. On real data::

    python bench/compare_sources.py --data_root datasets/visa --target_name visa \\
        --aux_root datasets/mvtec --aux_name mvtec --model ViT-L-14-336 --pretrained openai \\
        --image_size 518 --features_list 6 12 18 24 --epoch 5 --learning_rate 0.001 --device 0 \
        --test_args "--winmode mul"
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.anomaly_synthesis import KINDS  # noqa: E402
from data.synthetic_train import CLEAN_RATE  # noqa: E402
from models.flags import BATCH_SIZE, SEED  # noqa: E402
from utils.cli import add_retired_flag, run_cli  # noqa: E402
from utils.metrics import CLASS_KEYS, mean_metrics  # noqa: E402

SOURCES = ("masks", "synthetic")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--out", default="bench_out/compare_sources",
                   help="generated data, checkpoints and results go here (default: %(default)s)")
    add_retired_flag(p, "--workdir", "is now --out")
    g = p.add_argument_group("datasets (omit both roots to generate them)")
    g.add_argument("--data_root", default=None, help="dataset to test on (meta.json with train and test splits)")
    add_retired_flag(p, "--target_root", "is now --data_root")
    g.add_argument("--target_name", default=None, help="its name in logs (default: its layout / folder name)")
    g.add_argument("--aux_root", default=None, help="dataset with masks for the 'masks' source")
    g.add_argument("--aux_name", default=None, help="its name in logs (default: its layout / folder name)")
    g.add_argument("--swap", action="store_true", help="generated data: target MVTec layout, auxiliary VisA layout")
    g.add_argument("--gen_seed", type=int, default=0, help="seed of the generated datasets (default: %(default)s)")
    g.add_argument("--gen_classes", type=int, default=4, help="classes per generated dataset (default: %(default)s)")
    g.add_argument("--gen_n_train", type=int, default=12, help="good train images per class (default: %(default)s)")
    g.add_argument("--gen_n_test", type=int, default=18, help="test images per class (default: %(default)s)")
    g = p.add_argument_group("model and training (defaults: the tiny test config)")
    g.add_argument("--model", default="fasl-tiny-vit")
    g.add_argument("--pretrained", default="none")
    g.add_argument("--image_size", type=int, default=224)
    g.add_argument("--features_list", type=int, nargs="+", default=[1, 2, 3, 4])
    g.add_argument("--device", default="cpu")
    g.add_argument("--epoch", type=int, default=10, help="training epochs of both sources (default: %(default)s)")
    g.add_argument("--learning_rate", type=float, default=0.01,
                   help="0.01 suits the tiny random backbone; use 0.001 (the paper's) with CLIP weights "
                        "(default: %(default)s)")
    g.add_argument("--k_shot", type=int, default=1, help="references for training and testing (default: %(default)s)")
    g.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="(default: %(default)s)")
    g.add_argument("--seed", type=int, default=SEED, help="training and reference seed (default: %(default)s)")
    g.add_argument("--clean_rate", type=float, default=CLEAN_RATE, help="synthetic source only (default: %(default)s)")
    g.add_argument("--synth_kinds", default=",".join(KINDS), help="synthetic source only (default: %(default)s)")
    g.add_argument("--train_args", default="", help="extra train.py flags for both runs, one quoted string")
    g.add_argument("--test_args", default="", help="extra test_few_shot.py flags, one quoted string")
    g.add_argument("--fd_baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also test the training-free --mode fd, as a reference column (default: on)")
    args = p.parse_args(argv)
    if (args.data_root is None) != (args.aux_root is None):
        p.error("give both --data_root and --aux_root, or neither (to generate both)")
    return args


def run(name: str, argv: list[str]) -> None:
    """Run one of the repo's programs as the program it is (bench/ imports library modules only),
    printing the command a user would type; a failure stops the comparison with its exit status."""
    print("$ python", name, " ".join(shlex.quote(c) for c in argv), flush=True)
    subprocess.run([sys.executable, str(ROOT / name), *argv], check=True, cwd=ROOT)


def test_results(folder: Path) -> dict:
    """test_few_shot.py's per-class metrics, as its results.json holds them."""
    return json.loads((folder / "results.json").read_text(encoding="utf-8"))["per_class"]


def generate_datasets(args, out: Path) -> tuple[Path, str, Path, str]:
    """Write the two generated datasets with data/synthetic.py; returns (target, name, aux, name)."""
    target_layout, aux_layout = ("mvtec", "visa") if args.swap else ("visa", "mvtec")
    roots = {}
    for layout in (target_layout, aux_layout):
        roots[layout] = out / layout
        run("data/synthetic.py", ["--out", str(roots[layout]), "--layout", layout, "--seed",
                                             str(args.gen_seed), "--classes", str(args.gen_classes), "--n_train",
                                             str(args.gen_n_train), "--n_test", str(args.gen_n_test)])
    return roots[target_layout], target_layout, roots[aux_layout], aux_layout


def side_by_side(results: dict[str, dict], keys=CLASS_KEYS) -> str:
    """One table: a row per class (and the mean), each cell 'masks / synthetic' in percent."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}"

    masks, synth = results["masks"], results["synthetic"]
    rows = [[c] + [f"{pct(masks[c].get(k))} / {pct(synth[c].get(k))}" for k in keys] for c in masks]
    means = {s: mean_metrics(results[s].values()) for s in SOURCES}
    rows.append(["mean"] + [f"{pct(means['masks'].get(k))} / {pct(means['synthetic'].get(k))}" for k in keys])
    return tabulate(rows, headers=["class (masks / synthetic)", *keys], tablefmt="github", disable_numparse=True,
                    colalign=("left",) + ("right",) * len(keys))


def mean_table(means: dict[str, dict], labels: dict[str, str], keys=CLASS_KEYS) -> str:
    """Rows = metrics; columns = masks, synthetic, their difference (and fd when present)."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}"

    extra = [s for s in means if s not in SOURCES]
    rows = []
    for k in keys:
        a, b = means["masks"].get(k), means["synthetic"].get(k)
        delta = "n/a" if a is None or b is None else f"{100 * (b - a):+.1f}"
        rows.append([k, pct(a), pct(b), delta, *[pct(means[s].get(k)) for s in extra]])
    headers = ["mean over classes", labels["masks"], labels["synthetic"], "synthetic - masks",
               *[labels[s] for s in extra]]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True,
                    colalign=("left",) + ("right",) * (len(headers) - 1))


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    if args.data_root is None:
        target, target_name, aux, aux_name = generate_datasets(args, work / "data")
        generated = True
    else:
        target, aux = Path(args.data_root), Path(args.aux_root)
        target_name, aux_name = args.target_name or target.name, args.aux_name or aux.name
        generated = False
    backbone = ["--model", args.model, "--pretrained", args.pretrained, "--image_size", str(args.image_size),
                "--features_list", *map(str, args.features_list), "--device", args.device]
    common = [*backbone, "--k_shot", str(args.k_shot), "--seed", str(args.seed)]
    train_common = [*common, "--epoch", str(args.epoch), "--batch_size", str(args.batch_size),
                    "--learning_rate", str(args.learning_rate),
                    *shlex.split(args.train_args)]
    runs = {
        "masks": ["--anomaly_source", "masks", "--train_data_path", str(aux), "--dataset", aux_name],
        "synthetic": ["--anomaly_source", "synthetic", "--train_data_path", str(target), "--dataset", target_name,
                      "--clean_rate", str(args.clean_rate), "--synth_kinds", args.synth_kinds],
    }
    labels = {"masks": f"masks ({aux_name} test split)", "synthetic": f"synthetic ({target_name} good images)"}
    results, timings = {}, {}
    for source in SOURCES:
        print(f"\n== {source}: train on {labels[source]}, test on {target_name}", flush=True)
        t0 = time.time()
        ckpt_dir, res_dir = work / "ckpt" / source, work / "results" / source
        run("train.py", [*runs[source], "--save_path", str(ckpt_dir), *train_common])
        ckpt = max(ckpt_dir.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))  # the last epoch's
        t1 = time.time()
        run("test_few_shot.py", [
            "--data_path", str(target), "--dataset", target_name, "--save_path", str(res_dir),
            "--checkpoint_path", str(ckpt), "--mode", "fasl", *common, "--batch_size", str(args.batch_size),
            *shlex.split(args.test_args)])
        results[source] = test_results(res_dir)
        timings[source] = {"train_s": round(t1 - t0, 1), "test_s": round(time.time() - t1, 1)}

    means = {s: mean_metrics(results[s].values()) for s in SOURCES}
    if args.fd_baseline:
        res_dir = work / "results" / "fd"
        print(f"\n== reference: training-free FD scores on {target_name}", flush=True)
        run("test_few_shot.py", [
            "--data_path", str(target), "--dataset", target_name, "--save_path", str(res_dir), "--mode", "fd",
            *common, "--batch_size", str(args.batch_size), *shlex.split(args.test_args)])
        means["fd"] = mean_metrics(test_results(res_dir).values())
        labels["fd"] = "fd (no training)"
    header = (f"target {target_name} ({target}){' [generated]' if generated else ''}; masks from {aux_name}; "
              f"model {args.model} ({args.pretrained}) @ {args.image_size}, blocks {args.features_list}, "
              f"k={args.k_shot}, {args.epoch} epochs, lr {args.learning_rate}, seed {args.seed}")
    print(f"\n== comparison: {header}\n")
    print(mean_table(means, labels))
    print()
    print(side_by_side(results))
    summary = {
        "target": {"name": target_name, "root": str(target), "generated": generated},
        "aux": {"name": aux_name, "root": str(aux)},
        "settings": {k: getattr(args, k) for k in ("model", "pretrained", "image_size", "features_list", "epoch",
                                                     "learning_rate",
                                                     "k_shot", "batch_size", "seed", "clean_rate", "synth_kinds",
                                                     "train_args", "test_args")},
        "mean": {s: {k: means[s].get(k) for k in CLASS_KEYS} for s in means},
        "per_class": {s: {c: {k: m.get(k) for k in CLASS_KEYS} for c, m in results[s].items()}
                      for s in SOURCES},
        "timings": timings,
        "total_s": round(time.time() - t_start, 1),
    }
    (work / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n" + json.dumps({"mean": summary["mean"], "timings": timings}, indent=2))
    print(f"\nwritten: {work / 'comparison.json'}")
    return summary


if __name__ == "__main__":
    run_cli(main, "bench/compare_sources.py")
