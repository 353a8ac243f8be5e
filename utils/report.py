"""report.html: one self-contained page an inspector decides a predict.py lot on.

No server, no network, no script: plain HTML and CSS beside the files it shows (the overlays and
masks sit in --out with it; the originals are linked by their path relative to --out, so keep the
inputs where they are or the first picture of each card will be missing). What an inspector looks
for first comes first: the lot-level warnings, the counts, the lot's score histogram with the
references, the threshold and the review band (report_histogram.png), then the images sent to
review, then the defects, then the good parts, each card the original | the heat map | the mask,
with the lot's colour bar (report_colourbar.png: one scale for every image, red only above the
review threshold). Images that could not be used are listed at the top with the reason.
"""
from __future__ import annotations

import html
import math
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from utils.visualize import colour_bar

REPORT_NAME = "report.html"
HISTOGRAM_NAME = "report_histogram.png"
COLOURBAR_NAME = "report_colourbar.png"
COLOURS = {"ok": (46, 125, 50), "review": (239, 108, 0), "defect": (198, 40, 40)}

_STYLE = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:24px 0 8px} .sub{color:#555;margin:0 0 16px}
table.facts{border-collapse:collapse;margin:0 0 16px} table.facts td{padding:2px 12px 2px 0;vertical-align:top}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:492px}
.card .pics{display:flex;gap:4px} .card img.pic{width:160px;height:160px;object-fit:contain;background:#000}
.card .name{font-weight:600;word-break:break-all} .small{font-size:12px;color:#555}
.defect{border-left:6px solid #c62828} .ok{border-left:6px solid #2e7d32} .review{border-left:6px solid #ef6c00}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
.badge.defect{background:#c62828;border:0} .badge.ok{background:#2e7d32;border:0} .badge.review{background:#ef6c00;border:0}
.warn{background:#fff8e1;border:1px solid #ffca28;border-radius:6px;padding:8px 12px;margin:0 0 16px}
.failed{background:#fff3e0;border:1px solid #ffb74d;border-radius:6px;padding:8px 12px;margin:0 0 16px}
.figs{display:flex;gap:16px;align-items:flex-start;margin:0 0 8px}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _link(out: Path, path: str) -> str:
    """A path as the page links it: relative to --out where it can be, quoted for a URL."""
    try:
        rel = os.path.relpath(Path(path).resolve(), Path(out).resolve())
    except ValueError:  # another drive (Windows)
        rel = str(Path(path).resolve())
    return quote(Path(rel).as_posix())


def _card(rec: dict, out: Path, threshold: float) -> str:
    verdict = rec["verdict"]
    ratio = rec["score"] / threshold if threshold > 0 else float("inf")
    regions = rec.get("regions") or []
    lines = [f"{len(regions)} region(s), {rec.get('defect_area', 0)} px"] if regions else ["no region"]
    if rec.get("like_known_defect"):
        lines.insert(0, f"<b>looks like a known defect</b> (a patch {rec['known_match']:.3g} closer to one than to "
                        f"the good parts)")
    for r in regions[:3]:
        x, y, w, h = r["bbox"]
        lines.append(f"[x {x}, y {y}, {w}&times;{h}] {r['area']} px, max {r['max_score']:.4g}")
    if len(regions) > 3:
        lines.append(f"&hellip; and {len(regions) - 3} more (predictions.json)")
    pics = "".join(f'<a href="{src}"><img class="pic" src="{src}" alt="{what} of {_e(rec["name"])}"></a>'
                   for src, what in ((_link(out, rec["path"]), "image"), (quote(rec["overlay"]), "heat map"),
                                     (quote(rec["mask"]), "mask")))
    return (f'<div class="card {verdict}"><div class="pics">{pics}</div>'
            f'<div class="name">{_e(rec["name"])}</div>'
            f'<div><span class="badge {verdict}">{verdict}</span> score {rec["score"]:.4f} '
            f'<span class="small">({ratio:.2f}&times; the review threshold)</span></div>'
            f'<div class="small">{"<br>".join(lines)}</div>'
            f'<div class="small" title="{_e(rec["path"])}">{_e(Path(rec["path"]).name)} &middot; '
            f'{rec.get("width")}&times;{rec.get("height")}</div></div>')


def histogram_png(scores: dict[str, list[float]], reference_scores: list[float], verdicts, path: Path,
                  width: int = 640, height: int = 260) -> Path:
    """The lot's image scores as a histogram, bars coloured by verdict, the references' scores as
    blue ticks, the band shaded and the thresholds drawn. scores: verdict -> scores."""
    values = [s for v in scores.values() for s in v] + list(reference_scores)
    t_lo, t_hi = verdicts.ok_at_most, verdicts.defect_above
    lo = min(values + [t_lo]) if values else t_lo
    hi = max(values + [t_hi]) if values else t_hi
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    left, right, top, bottom = 48, 16, 28, 40
    bins = 40
    edges = np.linspace(lo, hi, bins + 1)
    counts = {v: np.histogram(s, bins=edges)[0] for v, s in scores.items()}
    peak = max(1, int(sum(counts.values()).max())) if counts else 1
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    x_of = lambda s: left + (s - lo) / (hi - lo) * (width - left - right)  # noqa: E731
    base = height - bottom
    d.rectangle([x_of(t_lo), top, x_of(t_hi), base], fill=(255, 236, 214))  # the review band
    bar_w = (width - left - right) / bins
    stack = np.zeros(bins)
    for verdict in ("ok", "review", "defect"):
        for b, n in enumerate(counts.get(verdict, [])):
            if n:
                y0 = base - (stack[b] + n) / peak * (base - top)
                y1 = base - stack[b] / peak * (base - top)
                d.rectangle([left + b * bar_w + 1, y0, left + (b + 1) * bar_w - 1, y1], fill=COLOURS[verdict])
        stack += counts.get(verdict, np.zeros(bins))
    for s in reference_scores:
        d.line([(x_of(s), base + 2), (x_of(s), base + 12)], fill=(21, 101, 192), width=2)
    for t, label in ((t_lo, "review"), (t_hi, "defect")):
        d.line([(x_of(t), top - 4), (x_of(t), base)], fill=(60, 60, 60), width=1)
        d.text((x_of(t) + 3, top - 14), f"{label} > {t:.4g}", fill="black", font=font)
    d.line([(left, base), (width - right, base)], fill="black")
    for frac in (0.0, 0.5, 1.0):
        s = lo + frac * (hi - lo)
        d.text((x_of(s) - 12, base + 16), f"{s:.3g}", fill="black", font=font)
    d.text((4, top), f"{peak}", fill="black", font=font)
    d.text((left, height - 14), "image score (bars: lot images by verdict; blue ticks: references as lot images)",
           fill="black", font=font)
    img.save(path)
    return path


def render_report(records: list[dict], verdicts, facts: dict[str, str], out: Path) -> str:
    """The page's HTML. records: predict.py's per-image records; verdicts: the run's
    models.decision.Verdicts; facts: header lines (label -> text)."""
    scored = [r for r in records if r["read_status"] == "scored"]
    failed = [r for r in records if r["read_status"] != "scored"]
    by = {v: sorted((r for r in scored if r["verdict"] == v), key=lambda r: -r["score"])
          for v in ("review", "defect", "ok")}
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>FASL inspection report</title>", f"<style>{_STYLE}</style></head><body>",
             "<h1>FASL inspection report</h1>",
             f'<p class="sub">{len(records)} image(s): <b>{len(by["defect"])} defect</b>, '
             f'<b>{len(by["review"])} to review</b>, {len(by["ok"])} ok'
             f'{f", <b>{len(failed)} left out</b>" if failed else ""}.</p>']
    if verdicts.warnings:
        parts.append('<div class="warn"><b>Warnings</b><ul>' +
                     "".join(f"<li>{_e(w)}</li>" for w in verdicts.warnings) + "</ul></div>")
    if failed:
        parts.append('<div class="failed"><b>Left out (could not be used)</b><ul>' +
                     "".join(f"<li>{_e(r['path'])}: {_e(r.get('error'))}</li>" for r in failed) + "</ul></div>")
    parts += ['<table class="facts">',
              f"<tr><td>verdict</td><td>ok at or below {verdicts.ok_at_most:.4g}; review up to "
              f"{verdicts.defect_above:.4g}; defect above it ({_e(verdicts.source)})</td></tr>",
              f"<tr><td>pixel threshold</td><td>{verdicts.pixel:.4g}</td></tr>"]
    parts += [f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in facts.items()]
    parts += ["</table>", '<div class="figs">',
              f'<img src="{HISTOGRAM_NAME}" alt="histogram of the lot\'s image scores">',
              f'<img src="{COLOURBAR_NAME}" alt="colour bar of the heat maps" title="heat-map colours: one scale '
              f'for the whole lot">', "</div>"]
    titles = {"review": "To review: the evidence is ambiguous", "defect": "Defects", "ok": "Good parts"}
    for verdict in ("review", "defect", "ok"):
        if by[verdict]:
            parts.append(f"<h2>{titles[verdict]} ({len(by[verdict])})</h2>")
            parts.append('<div class="grid">' + "".join(_card(r, out, verdicts.ok_at_most) for r in by[verdict])
                         + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(out: Path, records: list[dict], verdicts, facts: dict[str, str],
                 reference_scores: list[float] = ()) -> Path:
    """report.html with its histogram and colour bar, in ``out``; returns the page's path."""
    out = Path(out)
    scores = {v: [r["score"] for r in records if r["read_status"] == "scored" and r["verdict"] == v]
              for v in ("ok", "review", "defect")}
    histogram_png(scores, [s for s in reference_scores if math.isfinite(s)], verdicts, out / HISTOGRAM_NAME)
    lo, hi = verdicts.colour
    Image.fromarray(colour_bar(240, lo, hi)).save(out / COLOURBAR_NAME)
    path = out / REPORT_NAME
    path.write_text(render_report(records, verdicts, facts, out), encoding="utf-8")
    return path
