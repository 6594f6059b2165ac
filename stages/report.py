"""Stage `report`: gather metrics/*.json into one table (terminal text and Markdown), teacher first, then
students, then random-init references. The teacher-agreement columns (agree10, agree1: fractions, from
`eval --compare-cache`) appear when any row has them; a row without them shows "-"."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.runtime.errors import CompressError

COLUMNS = (("nn", "NN"), ("knn20", "kNN-20"), ("linear", "Linear"), ("ca", "CA"))
AGREEMENT = (("agree10", "agree10"), ("agree1", "agree1"))  # optional: only rows evaluated against a teacher
_ORDER = {"teacher": 0, "student": 1, "random-init": 2}


@dataclass
class ReportConfig:
    metrics: Path = Path("metrics")
    out: Path | None = None  # Markdown file; None: terminal only


def gather(folder: Path) -> list[dict]:
    """Every metrics JSON in `folder` that has the four columns; other JSON files are skipped."""
    if not Path(folder).is_dir():
        raise CompressError(f"metrics folder {str(folder)!r} does not exist; run `compress-cache eval` first")
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            m = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CompressError(f"{path}: not valid JSON ({e}); delete it or re-run its evaluation")
        if isinstance(m, dict) and all(k in m for k, _ in COLUMNS):
            rows.append({"name": m.get("name", path.stem), "kind": m.get("source", {}).get("kind", "?"), **m})
    if not rows:
        raise CompressError(f"no metrics JSON with {', '.join(k for k, _ in COLUMNS)} in {folder}; "
                            f"run `compress-cache eval --out {folder}/NAME.json` first")
    return sorted(rows, key=lambda r: (_ORDER.get(r["kind"], 3), r["name"]))


def _columns(rows: list[dict]) -> tuple:
    return COLUMNS + (AGREEMENT if any("agree10" in r for r in rows) else ())


def _cell(row: dict, key: str) -> str:
    if row.get(key) is None:  # agreement of a model evaluated without its teacher
        return "-"
    return f"{row[key]:.3f}" if key in dict(AGREEMENT) else f"{row[key]:.2f}"


def _cells(rows: list[dict]) -> list[list[str]]:
    cols = _columns(rows)
    return [[r["name"], r["kind"], *(_cell(r, k) for k, _ in cols)] for r in rows]


def markdown(rows: list[dict]) -> str:
    cols = _columns(rows)
    head = ["model", "kind", *(title for _, title in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * len(cols)]
    lines += ["| " + " | ".join(c) + " |" for c in _cells(rows)]
    k = rows[0].get("protocols", {})
    note = (f"\nTop-1 % on val. kNN: k={k.get('knn', {}).get('k')}, tau={k.get('knn', {}).get('tau')}, weighted "
            f"vote. Linear: {k.get('linear', {}).get('protocol', '?')}. CA: Hungarian match, cluster-precision "
            f"score (paper); see each JSON for the count score.\n") if k else "\n"
    if len(cols) > len(COLUMNS):
        note += ("agree10: mean over val of |S & T| / 10, S and T the 10 nearest train images under the model and "
                 "under its teacher; agree1: fraction of val images with the same nearest train image (fractions, "
                 "not %; each JSON's `agreement.against` names the teacher).\n")
    return "\n".join(lines) + "\n" + note


def text(rows: list[dict]) -> str:
    head = ["model", "kind", *(title for _, title in _columns(rows))]
    table = [head] + _cells(rows)
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in table[1:]])


def report(cfg: ReportConfig) -> str:
    """Write the Markdown table (when `out` is set) and return the terminal table."""
    rows = gather(cfg.metrics)
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(markdown(rows))
    return text(rows)
