"""Put a ``harness mutants`` report's table into the README, and keep the report.

    python scripts/readme_mutants.py runs/mutants-YYYYMMDD-HHMMSS.json

Keeps the report as ``docs/mutants-report.json`` (each rerun command with the
scenario's path relative to the checkout) and rewrites the README's
block between the mutants-table markers from it. ``tests/unit/test_mutants_table.py``
fails when the README's table and the kept report disagree, so the table is
never typed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness.mutants import readme_with_table, rows_from_report
from harness.options import portable_rerun

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "docs" / "mutants-report.json"


def _portable(node: object) -> object:
    """Every ``rerun`` of the report, relative to the checkout."""
    if isinstance(node, dict):
        return {k: portable_rerun(v) if k == "rerun" and isinstance(v, str) else _portable(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_portable(v) for v in node]
    return node


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/readme_mutants.py REPORT.json", file=sys.stderr)
        return 2
    src = Path(argv[0])
    try:
        data = json.loads(src.read_text())
        rows = rows_from_report(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"readme_mutants: {src} is not a harness mutants report: {exc}", file=sys.stderr)
        return 2
    readme = ROOT / "README.md"
    try:
        text = readme_with_table(readme.read_text(), rows)
    except ValueError as exc:
        print(f"readme_mutants: {exc}", file=sys.stderr)
        return 2
    KEPT.write_text(json.dumps(_portable(data), indent=2) + "\n")
    readme.write_text(text)
    print(f"README table: {len(rows)} rows from {src} (kept as {KEPT.relative_to(ROOT)}); "
          f"backend {data.get('backend')}, caught {data.get('caught')} of "
          f"{data.get('mutants')}, false alarms {data.get('false_alarms')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
