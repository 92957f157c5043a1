"""Evaluation report: a Table-1-style comparison of methods as Markdown and as a self-contained HTML page.

Input is the ``metrics.json`` written by the evaluation step; any value may be null and any key of a method
entry may be missing (shown as "–"). Figures named in ``metrics["figures"]`` are paths relative to the output
folder; in the HTML they are embedded as base64 data URIs, and missing ones are skipped with a note.
"""

from __future__ import annotations

import base64
import html
import mimetypes
from pathlib import Path
from typing import Any

from coinseg.io.files import write_text

MISSING = "–"

# (header, key in the method entry, format); "name" and "text" are not numbers
COLUMNS: list[tuple[str, str, str]] = [
    ("method", "", "name"),
    ("kind", "kind", "text"),
    ("threshold", "threshold", "3f"),
    ("extent", "extent", "text"),
    ("FID (paired)", "fid_paired", "3f"),
    ("FID (realism)", "fid_realism", "3f"),
    ("CV", "cv", "3f"),
    ("pooled IoU", "pooled_iou", "3f"),
    ("mean IoU", "mean_iou", "3f"),
    ("mean Dice", "mean_dice", "3f"),
    ("normal-slice FP rate", "normal_fp_rate", "3f"),
    ("pixel AP", "pixel_ap", "3f"),
    ("lesions found: brighter", "lesion_sensitivity_brighter", "3f"),
    ("darker", "lesion_sensitivity_darker", "3f"),
    ("s/slice", "seconds_per_slice", "3g"),
]

# per-volume scores (evaluate on a `coinseg prepare` store): a summary row per method, one row per scan
VOLUME_COLUMNS: list[tuple[str, str, str]] = [
    ("method", "", "name"),
    ("volumes", "n_volumes", "text"),
    ("with lesion", "n_volumes_with_lesion", "text"),
    ("mean Dice", "mean_dice", "3f"),
    ("mean IoU", "mean_iou", "3f"),
    ("lesion sensitivity", "lesion_sensitivity", "3f"),
    ("FP lesions / volume", "false_positives_per_volume", "3f"),
]
SCAN_COLUMNS: list[tuple[str, str, str]] = [
    ("case", "case", "name"),
    ("Dice", "dice", "3f"),
    ("IoU", "iou", "3f"),
    ("lesions", "n_true", "text"),
    ("found", "n_detected", "text"),
    ("FP lesions", "n_false_positive", "text"),
    ("true ml", "true_ml", "3f"),
    ("predicted ml", "pred_ml", "3f"),
]
VOLUME_RULES = (
    "Per volume: the split's slices pasted back into each scan's voxels; Dice and IoU averaged over volumes with a "
    "lesion; a true lesion (26-connected) is found when any predicted voxel overlaps it; a predicted lesion "
    "overlapping none is a false positive."
)

LEGEND = "TP green, FP red, FN yellow, ground truth outlined cyan."
DIRECTIONS = (
    "Better is: FID (paired and realism) lower; CV, IoU, Dice, pixel AP and lesions found higher; "
    "normal-slice FP rate lower; s/slice lower. Lesions found: the fraction of the lesions brighter (darker) than "
    "the pixels around them that any predicted pixel touches."
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.summary dt { font-weight: bold; } dl.summary dd { margin: 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
p.legend { font-size: 0.9em; color: #444; }
"""


def _format(value: Any, fmt: str) -> str:
    if value is None:
        return MISSING
    if fmt in ("3f", "3g") and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.3f}" if fmt == "3f" else f"{value:.3g}"
    return str(value)


def _table_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """One row of formatted cells per method, in the order of ``metrics["methods"]``."""
    methods = metrics.get("methods") or {}
    rows = []
    for name, entry in methods.items():
        entry = entry if isinstance(entry, dict) else {}
        row = [str(name)]
        for _, key, fmt in COLUMNS[1:]:
            row.append(_format(entry.get(key), fmt))
        rows.append(row)
    return rows


def _volume_tables(metrics: dict[str, Any]) -> list[tuple[str, list[tuple[str, str, str]], list[list[str]]]]:
    """(title, columns, rows) of the per-volume tables: a summary per method, then the first method's scans;
    none when the evaluation was not per volume."""
    volumes = metrics.get("volumes")
    if not isinstance(volumes, dict) or not volumes:
        return []
    methods = metrics.get("methods") or {}
    summary = [
        [str(name)] + [_format((entry.get("volumes") or {}).get(key), fmt) for _, key, fmt in VOLUME_COLUMNS[1:]]
        for name, entry in methods.items()
        if isinstance(entry, dict)
    ]
    first = next(iter(volumes))
    scans = [[_format(row.get(key), fmt) for _, key, fmt in SCAN_COLUMNS] for row in volumes[first]]
    return [("Volumes", VOLUME_COLUMNS, summary), (f"Volumes: {first}, per scan", SCAN_COLUMNS, scans)]


def _md_table(columns: list[tuple[str, str, str]], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header for header, _, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if fmt in ("name", "text") else "---:" for _, _, fmt in columns) + "|")
    lines += ["| " + " | ".join(_md_text(cell) for cell in row) + " |" for row in rows]
    return lines


def _html_table(columns: list[tuple[str, str, str]], rows: list[list[str]]) -> list[str]:
    e = html.escape
    parts = ["<table>", "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h, _, _ in columns) + "</tr></thead>"]
    parts.append("<tbody>")
    for row in rows:
        cells = [
            f"<td>{e(cell)}</td>" if fmt in ("name", "text") else f'<td class="num">{e(cell)}</td>'
            for cell, (_, _, fmt) in zip(row, columns, strict=True)
        ]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    return [*parts, "</tbody>", "</table>"]


def _summary(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    classifier = metrics.get("classifier") or {}
    if not isinstance(classifier, dict):
        classifier = {}
    return [
        ("split", _format(metrics.get("split"), "text")),
        ("slices", _format(metrics.get("n_slices"), "text")),
        ("abnormal slices", _format(metrics.get("n_abnormal"), "text")),
        ("normal slices", _format(metrics.get("n_normal"), "text")),
        ("classifier accuracy", _format(classifier.get("accuracy"), "3f")),
        ("classifier AUROC", _format(classifier.get("auroc"), "3f")),
        ("masks gated by the classifier (none where f(x) < 0.5)", _format(_yes_no(metrics.get("gate")), "text")),
        ("maps resized back to the slices", _format(metrics.get("upsample"), "text")),
        ("model run", _format(metrics.get("model_run"), "text")),
        ("manifest", _format(metrics.get("manifest"), "text")),
        ("coinseg version", _format(metrics.get("coinseg_version"), "text")),
    ]


def _yes_no(value: Any) -> str | None:
    return None if value is None else ("yes" if value else "no")


def _figures(metrics: dict[str, Any], out_dir: Path) -> tuple[list[tuple[str, str, Path]], list[str]]:
    """Existing figures as (name, relative path, file) and a note for each missing one."""
    found: list[tuple[str, str, Path]] = []
    missing: list[str] = []
    figures = metrics.get("figures") or {}
    if not isinstance(figures, dict):
        figures = {}
    for name, rel in figures.items():
        if rel is None:
            continue
        file = out_dir / str(rel)
        if file.is_file():
            found.append((str(name), str(rel), file))
        else:
            missing.append(f"Figure '{name}' skipped: {rel} not found in the report folder.")
    return found, missing


def _notes(metrics: dict[str, Any]) -> list[str]:
    notes = metrics.get("notes") or []
    if isinstance(notes, str):
        notes = [notes]
    return [str(note) for note in notes]


def _md_text(text: str) -> str:
    """Keep text literal in Markdown: no raw HTML, no table breaks."""
    return text.replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")


def _markdown(
    metrics: dict[str, Any], rows: list[list[str]], figures: list[tuple[str, str, Path]], notes: list[str]
) -> str:
    lines = ["# coinseg evaluation report", "", "## Data", ""]
    lines += [f"- {key}: {_md_text(value)}" for key, value in _summary(metrics)]
    lines += ["", "## Methods", ""]
    lines += _md_table(COLUMNS, rows)
    if not rows:
        lines.append("")
        lines.append("No methods were evaluated.")
    lines += ["", DIRECTIONS, ""]
    volume_tables = _volume_tables(metrics)
    for title, columns, table in volume_tables:
        lines += [f"## {_md_text(title)}", "", *_md_table(columns, table), ""]
    if volume_tables:
        lines += [VOLUME_RULES, ""]
    if notes:
        lines += ["## Notes", ""]
        lines += [f"- {_md_text(note)}" for note in notes]
        lines.append("")
    if figures:
        lines += ["## Figures", "", LEGEND, ""]
        for name, rel, _ in figures:
            lines += [f"![{_md_text(name)}]({Path(rel).as_posix()})", ""]
    return "\n".join(lines)


def _data_uri(file: Path) -> str:
    mime = mimetypes.guess_type(file.name)[0] or "image/png"
    return f"data:{mime};base64," + base64.b64encode(file.read_bytes()).decode("ascii")


def _html(
    metrics: dict[str, Any], rows: list[list[str]], figures: list[tuple[str, str, Path]], notes: list[str]
) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>coinseg evaluation report</title>",
        f"<style>{CSS}</style>",
        "</head><body>",
        "<h1>coinseg evaluation report</h1>",
        "<h2>Data</h2>",
        '<dl class="summary">',
    ]
    parts += [f"<dt>{e(key)}</dt><dd>{e(value)}</dd>" for key, value in _summary(metrics)]
    parts += ["</dl>", "<h2>Methods</h2>"]
    if rows:
        parts += _html_table(COLUMNS, rows)
    else:
        parts.append("<p>No methods were evaluated.</p>")
    parts.append(f'<p class="legend">{e(DIRECTIONS)}</p>')
    volume_tables = _volume_tables(metrics)
    for title, columns, table in volume_tables:
        parts += [f"<h2>{e(title)}</h2>", *_html_table(columns, table)]
    if volume_tables:
        parts.append(f'<p class="legend">{e(VOLUME_RULES)}</p>')
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>"]
        parts += [f"<li>{e(note)}</li>" for note in notes]
        parts.append("</ul>")
    if figures:
        parts += ["<h2>Figures</h2>", f'<p class="legend">{e(LEGEND)}</p>']
        for name, _, file in figures:
            img = f'<img src="{_data_uri(file)}" alt="{e(name)}">'
            parts.append(f"<figure>{img}<figcaption>{e(name)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(metrics: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.md`` and a self-contained ``report.html`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = _table_rows(metrics)
    figures, missing = _figures(metrics, out_dir)
    notes = _notes(metrics) + missing
    md_path = out_dir / "report.md"
    html_path = out_dir / "report.html"
    write_text(md_path, _markdown(metrics, rows, figures, notes))
    write_text(html_path, _html(metrics, rows, figures, notes))
    return md_path, html_path
