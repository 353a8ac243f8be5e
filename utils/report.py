"""report.html: one self-contained page an engineer reviews a predict.py batch on by looking.

No server, no network, no script: plain HTML and CSS, the overlays linked by their file names
(they sit beside the page in ``--out``, so the folder can be moved or zipped as a whole). Images
are sorted by score, highest first, with the image threshold drawn across the list where the
verdict changes; every card shows the overlay, the score (and its ratio to the threshold), the
verdict and the regions; images that could not be scored are listed at the top with the reason.
"""
from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

REPORT_NAME = "report.html"

_STYLE = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} .sub{color:#555;margin:0 0 16px}
table.facts{border-collapse:collapse;margin:0 0 16px} table.facts td{padding:2px 12px 2px 0}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:236px}
.card img{width:220px;height:220px;object-fit:contain;background:#000;display:block;margin:0 auto 6px}
.card .name{font-weight:600;word-break:break-all} .small{font-size:12px;color:#555}
.defect{border-left:6px solid #c62828} .ok{border-left:6px solid #2e7d32}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
.badge.defect{background:#c62828;border:0} .badge.ok{background:#2e7d32;border:0}
.threshold{width:100%;border-top:3px dashed #c62828;margin:8px 0;padding-top:4px;color:#c62828;font-weight:600}
.failed{background:#fff3e0;border:1px solid #ffb74d;border-radius:6px;padding:8px 12px;margin:0 0 16px}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _card(rec: dict, image_threshold: float) -> str:
    verdict = rec["verdict"]
    ratio = rec["score"] / image_threshold if image_threshold > 0 else float("inf")
    regions = rec.get("regions") or []
    lines = [f"{len(regions)} region(s), {rec.get('defect_area', 0)} px"] if regions else ["no region"]
    for r in regions[:3]:
        x, y, w, h = r["bbox"]
        lines.append(f"[x {x}, y {y}, {w}&times;{h}] {r['area']} px, max {r['max_score']:.4g}")
    if len(regions) > 3:
        lines.append(f"&hellip; and {len(regions) - 3} more (predictions.json)")
    return (f'<div class="card {verdict}"><a href="{quote(rec["overlay"])}"><img src="{quote(rec["overlay"])}" '
            f'alt="overlay of {_e(rec["name"])}"></a>'
            f'<div class="name">{_e(rec["name"])}</div>'
            f'<div><span class="badge {verdict}">{verdict}</span> score {rec["score"]:.4f} '
            f'<span class="small">({ratio:.2f}&times; threshold)</span></div>'
            f'<div class="small">{"<br>".join(lines)}</div>'
            f'<div class="small" title="{_e(rec["path"])}">{_e(Path(rec["path"]).name)} &middot; '
            f'{rec.get("width")}&times;{rec.get("height")} &middot; <a href="{quote(rec["mask"])}">mask</a></div></div>')


def render_report(records: list[dict], thresholds: dict, facts: dict[str, str]) -> str:
    """The page's HTML. records: predict.py's per-image records (read_status ``scored`` ones carry
    score, verdict, regions, overlay and mask file names); thresholds: ``Thresholds.to_dict()``;
    facts: extra lines for the header table (label -> text)."""
    scored = sorted((r for r in records if r["read_status"] == "scored"), key=lambda r: -r["score"])
    failed = [r for r in records if r["read_status"] != "scored"]
    t_img = float(thresholds["image"])
    n_defect = sum(r["verdict"] == "defect" for r in scored)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>FASL inspection report</title>", f"<style>{_STYLE}</style></head><body>",
             "<h1>FASL inspection report</h1>",
             f'<p class="sub">{len(records)} image(s): <b>{n_defect} defect</b>, {len(scored) - n_defect} ok'
             f'{f", <b>{len(failed)} not scored</b>" if failed else ""}. Sorted by score, highest first; the dashed '
             f"line is the image threshold.</p>",
             '<table class="facts">',
             f"<tr><td>image threshold</td><td>{t_img:.4f} ({_e(thresholds.get('image_source', ''))})</td></tr>",
             f"<tr><td>pixel threshold</td><td>{float(thresholds['pixel']):.4f} "
             f"({_e(thresholds.get('pixel_source', ''))})</td></tr>"]
    parts += [f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in facts.items()]
    parts.append("</table>")
    if failed:
        parts.append('<div class="failed"><b>Not scored</b><ul>')
        parts += [f"<li>{_e(r['path'])}: {_e(r.get('error'))}</li>" for r in failed]
        parts.append("</ul></div>")
    parts.append('<div class="grid">')
    marked = False
    for rec in scored:
        if not marked and rec["score"] <= t_img:
            parts.append(f'<div class="threshold">image threshold {t_img:.4f}: above defect, below ok</div>')
            marked = True
        parts.append(_card(rec, t_img))
    if not marked:
        parts.append(f'<div class="threshold">image threshold {t_img:.4f}: every image above it</div>')
    parts += ["</div>", "</body></html>"]
    return "\n".join(parts) + "\n"


def write_report(out: Path, records: list[dict], thresholds: dict, facts: dict[str, str]) -> Path:
    path = Path(out) / REPORT_NAME
    path.write_text(render_report(records, thresholds, facts), encoding="utf-8")
    return path
