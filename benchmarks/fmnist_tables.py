"""The Fashion-MNIST study's tables and verdicts, from per-run result rows alone (no training, no data).

Pure functions: `benchmarks/fmnist.py tables` feeds them the committed files under
benchmarks/results/fmnist_runs/ and writes what they return. Paired differences match runs by seed: for a claim
"A beats B" each seed that has both gives d = A - B; the estimate is mean(d) with standard error
stdev(d) / sqrt(n) (none for one seed). A claim's verdict reads the point estimate; its qualifier says whether
the margin is beyond 2 standard errors ("clear") or not ("within 2 SE, unresolved"), or that one seed gives no
standard error.
"""
from __future__ import annotations

import math
import statistics

METRICS = ("nn", "knn20", "linear", "ca")
MAIN_KEYS = ("teacher", "method", "student", "seed", "nn", "knn20", "linear", "ca", "agree10", "agree1")
ABLATION_KEYS = ("ablation", "setting", "seed", "nn", "knn20", "linear", "ca", "agree10")
COMPRESS = ("compress-2q", "compress-1q")
BASELINES = ("reg", "reg-bn", "crd", "cc", "seed")


# ---------------------------------------------------------------- statistics

def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def paired(a: list[dict], b: list[dict], key: str) -> dict:
    """d = a - b over the seeds both lists have: {"n", "mean", "se", "seeds"}; mean None when none is shared."""
    by_seed = {r["seed"]: r[key] for r in b if r.get(key) is not None}
    d = {r["seed"]: r[key] - by_seed[r["seed"]] for r in a if r.get(key) is not None and r["seed"] in by_seed}
    seeds = sorted(d)
    if not seeds:
        return {"n": 0, "mean": None, "se": None, "seeds": []}
    diffs = [d[s] for s in seeds]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return {"n": len(diffs), "mean": statistics.mean(diffs), "se": se, "seeds": seeds}


def judge(diff: dict, threshold: float = 0.0, at_most: bool = False, strict: bool = False) -> dict:
    """Does the paired difference satisfy mean >= threshold (> with `strict`: "beats", "helps"; <= with
    `at_most`: "costs at most")? With its qualifier."""
    m, se = diff["mean"], diff["se"]
    if m is None:
        return {"holds": None, "qualifier": "not measured yet"}
    holds = m <= threshold if at_most else (m > threshold if strict else m >= threshold)
    if se is None:
        return {"holds": holds, "qualifier": "one seed, no standard error"}
    margin = (threshold - m) if at_most else (m - threshold)
    clear = abs(margin) > 2 * se
    return {"holds": holds, "qualifier": "clear (beyond 2 SE)" if clear else "within 2 SE, unresolved"}


def _fmt(diff: dict) -> str:
    if diff["mean"] is None:
        return "n/a"
    se = f" ± {diff['se']:.2f}" if diff["se"] is not None else ""
    return f"{diff['mean']:+.2f}{se} (n={diff['n']})"


# ---------------------------------------------------------------- selections

def select(rows: list[dict], **want) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in want.items())]


def best_compress(rows: list[dict], teacher: str, student: str) -> str | None:
    """The better of compress-2q / compress-1q by mean NN (the claim says "2q or 1q")."""
    scored = [(statistics.mean(r["nn"] for r in got), m) for m in COMPRESS
              if (got := select(rows, teacher=teacher, student=student, method=m))]
    return max(scored)[1] if scored else None


# ---------------------------------------------------------------- the seven claims

def claims(main: list[dict], ablations: list[dict], students: list[str]) -> list[dict]:
    """Each claim of the issue as {"claim", "scope", "comparisons": [{"what", "metric", diff, holds, qualifier}],
    "holds", "verdict"}; `holds` is None while a comparison is missing."""
    out = []

    def claim(number: int, text: str, scope: str, comparisons: list[dict]) -> None:
        out.append({"claim": number, "text": text, "scope": scope, "comparisons": comparisons,
                    **verdict(comparisons)})

    def compare(what: str, a: list[dict], b: list[dict], metric: str, threshold=0.0, at_most=False,
                strict=False) -> dict:
        d = paired(a, b, metric)
        return {"what": what, "metric": metric, **d, **judge(d, threshold, at_most, strict)}

    teachers = sorted({r["teacher"] for r in main if r["method"] in COMPRESS})
    for teacher in teachers:
        for student in students:
            best = best_compress(main, teacher, student)
            if best is None:
                continue
            ours = select(main, teacher=teacher, student=student, method=best)
            comps = [compare(f"{best} - {b}", ours, select(main, teacher=teacher, student=student, method=b), m,
                             strict=True) for b in BASELINES for m in ("nn", "ca")]
            claim(1, "CompRess (2q or 1q) beats every other distillation method on NN and CA",
                  f"{teacher} teacher, {student}", comps)
            scratch = select(main, teacher=teacher, student=student, method="moco")
            claim(2, "CompRess beats the same student trained by MoCo v2 from scratch",
                  f"{teacher} teacher, {student}",
                  [compare(f"{best} - moco", ours, scratch, m, strict=True) for m in ("nn", "linear")])

    def group(name: str, setting) -> list[dict]:
        return [r for r in ablations if r["ablation"] == name and r["setting"] == setting]

    claim(3, "the cached teacher costs at most 0.5 points against the live one", "ablation: teacher source",
          [compare("live - cached", group("source", "live"), group("source", "cached"), "nn", 0.5, at_most=True)])
    claim(4, "the multi-view cache is at least as good as live", "ablation: teacher source",
          [compare("multiview - live", group("source", "multiview"), group("source", "live"), "nn")])
    out += _best_setting_claims(ablations, compare)
    claim(7, "the momentum student helps 2q", "ablation: momentum",
          [compare("with - without", group("momentum", "with"), group("momentum", "without"), "nn", strict=True)])
    return sorted(out, key=lambda c: c["claim"])


def _best_setting_claims(ablations: list[dict], compare) -> list[dict]:
    """Claims 5 (best tau <= 0.07) and 6 (the largest bank not worse than the smaller ones)."""
    out = []
    for number, name, text in ((5, "tau", "the best tau is at most 0.07"),
                               (6, "bank", "the largest bank is not worse than the smaller ones")):
        rows = [r for r in ablations if r["ablation"] == name]
        means = {s: statistics.mean(r["nn"] for r in rows if r["setting"] == s) for s in {r["setting"] for r in rows}}
        if not means:
            out.append({"claim": number, "text": text, "scope": f"ablation: {name}", "comparisons": [],
                        "holds": None, "verdict": "not measured yet"})
            continue
        if name == "tau":
            low = [s for s in means if s <= 0.07]
            high = [s for s in means if s > 0.07]
            a = max(low, key=means.get) if low else None
            b = max(high, key=means.get) if high else None
            what = f"best tau <= 0.07 ({a}) - best tau > 0.07 ({b})"
        else:
            a = max(means)
            smaller = [s for s in means if s < a]
            b = max(smaller, key=means.get) if smaller else None
            what = f"largest bank ({a}) - best smaller bank ({b})"
        rows_of = lambda s: [r for r in rows if r["setting"] == s]  # noqa: E731
        c = compare(what, rows_of(a) if a is not None else [], rows_of(b) if b is not None else [], "nn")
        out.append({"claim": number, "text": text, "scope": f"ablation: {name}", "comparisons": [c],
                    "means_nn": {str(k): round(v, 2) for k, v in sorted(means.items())}, **verdict([c])})
    return out


def verdict(comparisons: list[dict]) -> dict:
    """A claim holds when every comparison goes the claimed way. One comparison: its qualifier. Several: how
    many go the claimed way, how many of those beyond 2 SE, and how many go clearly the other way."""
    votes = [c["holds"] for c in comparisons]
    if not votes or None in votes:
        return {"holds": None, "verdict": "not measured yet"}
    holds = all(votes)
    word = "held" if holds else "did not hold"
    if len(comparisons) == 1:
        return {"holds": holds, "verdict": f"{word} ({comparisons[0]['qualifier']})"}
    if any(c["se"] is None for c in comparisons):
        return {"holds": holds, "verdict": f"{word}: {sum(votes)} of {len(votes)} comparisons go the claimed way "
                                           f"(one seed, no standard error)"}
    clear_yes = sum(1 for c in comparisons if c["holds"] and c["qualifier"].startswith("clear"))
    clear_no = sum(1 for c in comparisons if not c["holds"] and c["qualifier"].startswith("clear"))
    return {"holds": holds, "verdict": f"{word}: {sum(votes)} of {len(votes)} comparisons go the claimed way, "
                                       f"{clear_yes} of them beyond 2 SE; {clear_no} go the other way beyond 2 SE"}


# ---------------------------------------------------------------- markdown

def _cell(rows: list[dict], key: str, digits: int) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def main_markdown(rows: list[dict]) -> str:
    """One line per (teacher, student, method): mean ± std over its seeds; teacher and pixel rows first."""
    order = {"teacher": 0, "pixels": 1, "supervised": 9, "moco": 8}
    groups: dict[tuple, list] = {}
    for r in sorted(rows, key=lambda r: (r["teacher"], order.get(r["method"], 2), r["student"], r["method"])):
        groups.setdefault((r["teacher"], r["student"], r["method"]), []).append(r)
    lines = ["| teacher | student | method | seeds | NN | kNN-20 | linear | CA | agree10 | agree1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (teacher, student, method), got in groups.items():
        cells = [_cell(got, k, 1) for k in METRICS] + [_cell(got, k, 3) for k in ("agree10", "agree1")]
        lines.append(f"| {teacher} | {student} | {method} | {len(got)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def setting_order(setting) -> tuple:
    """Numbers by value (bank 1024 before 16384), words in the order of the issue's groups."""
    words = ("cached", "live", "multiview", "with", "without")
    if isinstance(setting, (int, float)):
        return (0, setting, "")
    return (1, words.index(setting) if setting in words else len(words), str(setting))


def ablations_markdown(rows: list[dict]) -> str:
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["ablation"], r["setting"]), []).append(r)
    lines = ["| ablation | setting | seeds | NN | kNN-20 | linear | CA | agree10 |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, setting), got in sorted(groups.items(), key=lambda kv: (kv[0][0], setting_order(kv[0][1]))):
        cells = [_cell(got, k, 1) for k in METRICS] + [_cell(got, "agree10", 3)]
        lines.append(f"| {name} | {setting} | {len(got)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def claims_markdown(found: list[dict]) -> str:
    lines = []
    for c in found:
        lines.append(f"- **({c['claim']}) {c['text']}** — {c['scope']}: **{c['verdict']}**.")
        for comp in c["comparisons"]:
            mark = {None: "?", True: "yes", False: "no"}[comp["holds"]]
            lines.append(f"  - {comp['what']}, {comp['metric']}: {_fmt(comp)} — {mark}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the README's section

README_BEGIN = ("<!-- fmnist-study:begin. Generated by `python benchmarks/fmnist.py tables` from "
                "benchmarks/results/fmnist_main.json and fmnist_ablations.json: change the generator "
                "(benchmarks/fmnist_tables.py), not this text -->")
README_END = "<!-- fmnist-study:end -->"


def _teachers_markdown(main: dict) -> str:
    """The teachers' own rows against raw pixels, with how each teacher's training stopped."""
    rows = main["rows"]
    pixels = next((r for r in rows if r["method"] == "pixels"), None)
    lines = ["| teacher | network | NN | kNN-20 | linear | CA | passes raw pixels on NN and kNN-20 | training |",
             "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["method"] == "teacher"):
        past = "-" if pixels is None else ("yes" if r["nn"] > pixels["nn"] and r["knn20"] > pixels["knn20"] else "no")
        stopped = main.get("teachers", {}).get(r["teacher"], {}).get("stopped", "-")
        lines.append(f"| {r['teacher']} | {r['student']} | " + " | ".join(f"{r[k]:.2f}" for k in METRICS)
                     + f" | {past} | {stopped} |")
    if pixels is not None:
        lines.append("| raw pixels | - | " + " | ".join(f"{pixels[k]:.2f}" for k in METRICS) + " | - | - |")
    return "\n".join(lines) + "\n"


def verdict_summary(found: list[dict]) -> str:
    """One line each for the claims that held, did not hold, and are not measured yet, by claim and scope."""
    groups = {True: [], False: [], None: []}
    for c in found:
        groups[c["holds"]].append(f"({c['claim']}) {c['scope']}")
    words = {True: "Held", False: "Did not hold", None: "Not measured yet"}
    return "\n".join(f"- **{words[k]}:** " + ("; ".join(v) if v else "none") for k, v in groups.items()) + "\n"


def readme_section(main: dict, ablations: dict) -> str:
    """The README's study section, between its markers, from the two result files' contents alone."""
    st = main["status"]
    state = ("complete" if st["complete"] else
             "**INCOMPLETE: the study is still running; every verdict below is provisional**")
    students = [r for r in main["rows"] if r["method"] not in ("teacher", "pixels")]
    return "\n".join([
        README_BEGIN, "",
        f"Status: {st['runs_done']} of {st['runs_planned']} planned runs, {state}; {st['train_hours']} h of "
        f"training and {st['eval_hours']} h of evaluation on {main.get('machine', 'this machine')}, code "
        f"version(s) {', '.join(st['code_digests']) or '-'} (`pipeline.runtime.code_digest`). Accuracies in % on "
        f"the 10k test images; agree10 / agree1 as fractions, against the row's teacher; mean ± std over seeds.",
        "", "**The teachers against raw pixels:**", "", _teachers_markdown(main),
        "**Students** (`benchmarks/results/fmnist_main.json`):", "", main_markdown(students),
        "**The claims**, each a paired difference over the seeds both sides ran (mean ± standard error; `n` seeds):",
        "", claims_markdown(main["claims"]),
        "**Verdict (at 2 epochs" + ("" if st["complete"] else "; provisional: the study is incomplete") + "):**", "",
        verdict_summary(main["claims"]),
        "**Ablations** (SSL teacher, first student, compress-2q; `benchmarks/results/fmnist_ablations.json`):", "",
        ablations_markdown(ablations["rows"]),
        "**Has the training loss flattened?** Its relative fall over the last quarter of training, seed 0, per run "
        "(curves: `benchmarks/results/fmnist_loss_curves.png`):", "",
        flatness_markdown(main.get("loss_last_quarter_drop", [])),
        README_END])


def splice(text: str, section: str) -> str:
    """`text` with everything from README_BEGIN to README_END replaced by `section` (which carries both)."""
    a, b = text.find(README_BEGIN), text.find(README_END)
    if a < 0 or b < a:
        raise ValueError(f"the README has no study section between {README_BEGIN[:24]}... and {README_END}")
    return text[:a] + section.rstrip("\n") + text[b + len(README_END):]


def flatness_markdown(drops: list[dict]) -> str:
    return "\n".join(f"- {d['teacher']} / {d['student']} / {d['method']}: {100 * d['last_quarter_drop']:+.1f} %"
                     for d in drops) + "\n"
