"""Draft ``RELIABILITY.md`` tables from ``reliability.py``'s results and the catalogue's old verdicts.

    python benchmarks/reliability_report.py CATALOGUE.md [NOTES.json] PROBE/results.jsonl [more .jsonl ...]

Prints one table per catalogue section (same columns, plus the old verdict) to stdout. ``verdict`` is
``good`` when the outcome is the one the case asks for (``reliability.py``'s ``expected``), else ``CHECK``: a
person reads those rows and writes the verdict and the note.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def old_rows(catalogue: Path) -> tuple[dict[str, tuple[str, str]], list[tuple[str, list[str]]]]:
    """{id: (section, old verdict)} and the sections with their ids in the catalogue's order."""
    rows: dict[str, tuple[str, str]] = {}
    sections: list[tuple[str, list[str]]] = []
    for line in catalogue.read_text().splitlines():
        if line.startswith("### "):
            sections.append((line[4:], []))
        match = re.match(r"\| ([A-Z]\d+[a-z]?) \|", line)
        if match and sections:
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[match.group(1)] = (sections[-1][0], cells[5].strip("*") if len(cells) > 5 else "")
            sections[-1][1].append(match.group(1))
    return rows, sections


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:220]


def main() -> None:
    catalogue = Path(sys.argv[1])
    results: dict[str, dict] = {}
    for path in [p for p in sys.argv[2:] if not p.endswith(".json")]:
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            results[row["id"]] = row
    old, sections = old_rows(catalogue)
    notes: dict[str, list[str]] = {}
    if Path(sys.argv[2]).suffix == ".json":  # {id: [verdict, note]}: a person's reading of the rows
        notes = json.loads(Path(sys.argv[2]).read_text())
    extra = [k for k in results if k not in old]
    for title, ids in [*sections, ("Added cases", extra)]:
        print(f"\n### {title}\n")
        print(
            "| # | command | exit | first stderr line / traceback | lost, overwritten, wrong place | verdict | was | note |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for id_ in ids:
            row = results.get(id_)
            was = old.get(id_, ("", "new"))[1]
            if row is None:
                verdict, note = notes.get(id_, ["not run", ""])
                print(f"| {id_} | (not run) |  |  |  | **{verdict}** | {was} | {note} |")
                continue
            ran = "seconds" in row  # a case row (the fault rows describe their own outcome)
            written = (
                "out created" if row.get("out_exists") else "nothing written" if ran and row["exit"] != "0" else ""
            )
            check = row.get("check", "")
            verdict, note = notes.get(id_, ["good" if row["expected"] else "CHECK", ""])
            print(
                f"| {id_} | `{cell(row['cmd'])}` | {row['exit']} | {cell(row['first'])} | "
                f"{cell('; '.join(x for x in (written, check) if x))} | **{verdict}** | {was} | {note} |"
            )


if __name__ == "__main__":
    main()
