"""The lot threshold's rule, chosen leave-one-class-out without scoring again.

bench/decisions.py records every image's score of every lot it decided (decisions.json). This
program decides those lots again with every rule of a grid (models/decision.py ``LotRule``: the
log-score quantiles ``anchor`` > ``base``, the threshold ``c`` lower spreads above the anchor, the
review band ``band`` spreads either side) through the same ``lot_band`` predict.py uses, and reports

* each rule's figures on every class (in sample), the default rule's always among them;
* leave-one-class-out: for each class the rule bench/decisions.py's ``--loco`` criterion prefers
  on the *other* classes (mean balanced accuracy over the full and low-defect lots and every k,
  less twice the false alarms above 0.05 and the review share above 0.10), and its figures on the
  held-out class: what such a rule would transfer.

Only image verdicts are decided again (caught, false alarms, balanced accuracy, review, image
AUROC); masks, regions and pixel figures need the maps (bench/decisions.py) and show as "–".
Known-defect variants are refused (their thresholds moved with images this program does not
have), and so are lots that were not scored lot-aware (a lot rule never decides those).

    python bench/lot_rules.py out/decisions.json --variant lot --anchors 0.5 0.4 0.3 --bases 0.2 0.1 \\
        --c 2 2.5 3 --out out/rules
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.decisions import _cell, cell_mean, decision_metrics, json_safe, loco, loco_score  # noqa: E402
from models.decision import LotRule, Verdicts, lot_band  # noqa: E402
from utils.cli import InputValueError  # noqa: E402
from utils.misc import write_json  # noqa: E402

def rule_name(rule: LotRule) -> str:
    return f"a{rule.anchor:g} b{rule.base:g} c{rule.c:g} band{rule.band:g}"


def decide_again(run: dict, rule: LotRule) -> dict:
    """One recorded lot decided by ``rule`` -> a run record like bench/decisions.py's, image figures only."""
    scores = np.asarray([im["score"] for im in run["images"]], dtype=np.float64)
    labels = [im["label"] for im in run["images"]]
    ok_at_most, image, defect_above, _ = lot_band(scores, rule)
    # the one verdict rule (models/decision.py Verdicts); no pixel threshold: image verdicts only
    decided = Verdicts(ok_at_most, defect_above, image, pixel=math.nan, source="lot", colour=(0.0, 1.0))
    metrics = decision_metrics(labels, scores, [decided.verdict(s) for s in scores],
                               [decided.without_band(s) for s in scores], [None] * len(scores))
    return {"class": run["class"], "lot": run["lot"], "k": run["k"], "seed": run["seed"],
            "variant": rule_name(rule), "metrics": metrics}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("decisions", type=Path, help="a decisions.json of bench/decisions.py")
    p.add_argument("--variant", default="lot", help="its variant whose lots are decided again (default: %(default)s)")
    d = LotRule()
    p.add_argument("--anchors", type=float, nargs="+", default=[d.anchor], help="anchor quantiles (default: %(default)s)")
    p.add_argument("--bases", type=float, nargs="+", default=[d.base], help="base quantiles (default: %(default)s)")
    p.add_argument("--c", type=float, nargs="+", default=[d.c], help="thresholds in lower spreads (default: %(default)s)")
    p.add_argument("--band", type=float, nargs="+", default=[d.band], help="review half widths (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("bench_out/lot_rules"), help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    if not args.decisions.is_file():
        raise InputValueError(f"no decisions.json at {args.decisions}")
    recorded = json.loads(args.decisions.read_text())
    runs = [r for r in recorded.get("runs", []) if r.get("variant") == args.variant]
    if not runs:
        found = sorted({r.get("variant") for r in recorded.get("runs", [])})
        raise InputValueError(f"{args.decisions} holds no run of variant {args.variant!r} (it holds: {', '.join(found)})")
    if any(r.get("fit", {}).get("verdicts", {}).get("stats", {}).get("known_defect_scores") for r in runs):
        raise InputValueError(f"variant {args.variant!r} moved its thresholds with known defects: not decided again here")
    single = [r for r in runs if not r.get("metrics", {}).get("lot_aware", True)]
    if single:
        raise InputValueError(f"{len(single)} lot(s) of variant {args.variant!r} were not scored lot-aware (--lot off, "
                              f"or smaller than --min_lot): a lot rule never decides them")
    rules = [d]
    for a in args.anchors:
        for b in args.bases:
            for c in args.c:
                for band in args.band:
                    try:
                        rule = LotRule(anchor=a, base=b, c=c, band=band)
                    except ValueError:
                        continue  # e.g. base >= anchor: not a rule
                    if rule not in rules:
                        rules.append(rule)
    again = [decide_again(r, rule) for rule in rules for r in runs]
    names = [rule_name(r) for r in rules]
    classes = sorted({r["class"] for r in runs})
    lots = [x for x in ("full", "low", "repeat", "test") if any(r["lot"] == x for r in runs)]
    ks = sorted({r["k"] for r in runs})
    in_sample = sorted(names, key=lambda n: -loco_score(again, n, classes))
    rows = [[n, f"{loco_score(again, n, classes):.3f}",
             *(_cell(cell_mean(again, m, variant=n, lot="full", k=k)) for k in ks for m in ("balanced_accuracy",
                                                                                             "false_alarms"))]
            for n in in_sample]
    headers = ["rule", "criterion (all classes)", *(f"{m} full k={k}" for k in ks for m in ("BA", "FA"))]
    held_md, held = loco(again, names, classes, lots, ks)
    text = (f"Lots of {args.decisions} (variant {args.variant}) decided again by {len(rules)} rules; "
            f"default {rule_name(d)}. ± is the sample standard deviation over seeds of the class mean.\n\n"
            f"## Every rule on every class (in sample), best first\n\n"
            f"{tabulate(rows, headers=headers, tablefmt='github')}\n\n{held_md}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lot_rules.md").write_text(text)
    doc = {"source": str(args.decisions), "variant": args.variant, "rules": names, "default": rule_name(d),
           "in_sample_order": in_sample, "loco": held, "runs": again}
    write_json(args.out / "lot_rules.json", json_safe(doc))
    print(text)
    return doc


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, "bench/lot_rules.py")
