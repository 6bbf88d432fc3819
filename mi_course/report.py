"""The class report of a grading run: what to re-teach, and which students need help.

``mi-course grade SUBMISSIONS --out DIR`` writes, beside the gradebook:

- ``DIR/class_report.html``: one self-contained page (figures inline as base64 PNG, no
  scripts, no fonts or styles from the network), and ``DIR/class_report.md`` (the same
  tables; its figures are ``DIR/figures/*.png``);
- ``DIR/exercise_stats.csv``: per exercise, how the class's submissions ended (passed, stub
  left in, a mistake the checks know, only the generic hint, no result);
- ``DIR/mistakes.csv``: per exercise, each hint that fired, by its stable mistake id, with
  how many students got it.

Every share is over the students whose submission of that notebook was graded (the
gradebook's; a second submission of the same notebook is not counted). See ``docs/grading.md``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from mi_course.grade import Course, CourseNotebook, Outcome, Result

# How an exercise ended, in the order of the report's columns, with the words the report uses.
KINDS = {
    "passed": "passed",
    "not-attempted": "not attempted (stub left in)",
    "mistake": "a mistake the checks know",
    "generic": "only the generic hint (a mistake the checks do not know)",
    "no-result": "no result (crash, timeout, points withheld, did not run)",
}
COLOURS = {"passed": "#4c9a2a", "not-attempted": "#b0b0b0", "mistake": "#e69f00", "generic": "#d55e00", "no-result": "#404040"}
LOW_SCORE = 0.5  # students below this fraction of the maximum are listed


@dataclass
class ExerciseStats:
    notebook: str
    exercise: str
    concept: str
    points: int
    students: int
    counts: Counter = field(default_factory=Counter)  # kind -> students

    def share(self, kind: str) -> float:
        return self.counts[kind] / self.students if self.students else 0.0


@dataclass
class Mistake:
    notebook: str
    exercise: str
    mistake: str  # the stable id printed by the check (a typical mistake's name, "generic", or a digest of the hint)
    kind: str  # "mistake" or "generic"
    hint: str  # the most frequent wording among the students who got it
    students: list[str]
    graded: int  # students whose submission of the notebook was graded
    concept: str

    @property
    def share(self) -> float:
        return len(self.students) / self.graded


@dataclass
class Student:
    student: str
    total: int
    maximum: int
    reasons: list[str]


@dataclass
class ClassReport:
    scores: dict[str, list[int]]  # notebook -> each graded student's total on it
    maxima: dict[str, int]
    exercises: list[ExerciseStats]
    mistakes: list[Mistake]
    students: list[Student]
    graded: int  # students in the gradebook


def counted(results: list[Result]) -> list[Result]:
    """The results the gradebook counts: the first submission of each notebook per student."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for r in results:
        if r.notebook is not None and (r.student, r.notebook) not in seen:
            seen.add((r.student, r.notebook))
            kept.append(r)
    return kept


def exercise_concept(cnb: CourseNotebook, exercise: str) -> str:
    """What an exercise is about: its title, the text after "Exercise NN.N" in the markdown above
    its cell (``### Exercise 01.1 · DLA of one head`` -> ``DLA of one head``); else the nearest
    heading above it, without section numbers."""
    ex = next(e for e in cnb.exercises if e.id == exercise)
    cells = cnb.nb.cells
    at = next((i for i, c in enumerate(cells) if c.get("id") == ex.exercise_cell), len(cells))
    lines = [line.strip() for c in cells[:at] if c.cell_type == "markdown" for line in c.source.splitlines() if line.strip()]
    named = re.compile(rf"Exercise\s+{re.escape(exercise)}\b(.*)", re.IGNORECASE)
    for line in reversed(lines):
        found = named.search(line)
        if found:
            return found[1].replace("**", "").lstrip(" .:·-—\t").rstrip() or line.strip("#* ")
    heading = next((line for line in reversed(lines) if line.startswith("#")), "")
    return re.sub(r"^\d+(\.\d+)*\.?\s*(·\s*)?", "", heading.lstrip("#").strip()).strip()


def build_report(results: list[Result], course: Course) -> ClassReport:
    """The figures of the report, from the grader's results (nothing is re-run)."""
    kept = counted(results)
    names = sorted({r.notebook for r in kept})
    exercises, mistakes, scores, maxima = [], [], {}, {}
    for name in names:
        cnb = course.notebooks[name]
        mine = [r for r in kept if r.notebook == name]
        scores[name] = [sum(r.points.values()) for r in mine]
        maxima[name] = sum(e.points for e in cnb.exercises)
        for ex in cnb.exercises:
            concept = exercise_concept(cnb, ex.id)
            stats = ExerciseStats(name, ex.id, concept, ex.points, len(mine))
            fired: dict[tuple[str, str], list[tuple[str, str]]] = {}
            for r in mine:
                outcome = r.outcomes.get(ex.id) or Outcome("no-result", "not-run", "; ".join(r.status))
                stats.counts[outcome.kind] += 1
                if outcome.kind in ("mistake", "generic"):
                    fired.setdefault((outcome.kind, outcome.mistake), []).append((r.student, outcome.hint))
            exercises.append(stats)
            for (kind, mistake), got in fired.items():
                hint = Counter(h for _, h in got).most_common(1)[0][0]
                mistakes.append(Mistake(name, ex.id, mistake, kind, hint, sorted(s for s, _ in got), len(mine), concept))
    order = {(e.notebook, e.exercise): i for i, e in enumerate(exercises)}
    mistakes.sort(key=lambda m: (order[m.notebook, m.exercise], m.kind == "generic", -len(m.students), m.mistake))
    return ClassReport(scores, maxima, exercises, mistakes, _students(results, sum(maxima.values())), len({r.student for r in results}))


def _students(results: list[Result], maximum: int) -> list[Student]:
    """The students to look at: integrity flags, a status other than ok (timeouts, crashes), scores below half the maximum."""
    kept = {id(r) for r in counted(results)}
    by_student: dict[str, list[Result]] = {}
    for r in results:
        by_student.setdefault(r.student, []).append(r)
    found = []
    for student, rs in sorted(by_student.items()):
        total = sum(sum(r.points.values()) for r in rs if id(r) in kept)
        flags = [f"flag: {flag}" for r in rs for flag in r.flags]
        status = [f"{r.notebook or r.path.name}: {s}" for r in rs for s in r.status if s != "ok"]
        low = [f"low score: {total}/{maximum}"] if total < LOW_SCORE * maximum else []
        if flags or status or low:
            found.append((0 if flags else 1 if status else 2, Student(student, total, maximum, flags + status + low)))
    return [s for _, s in sorted(found, key=lambda f: (f[0], f[1].total, f[1].student))]  # flags, then crashes and timeouts, then scores


def _rank(exercises: list[ExerciseStats]) -> list[ExerciseStats]:
    """Hardest first: lowest pass rate, then the most unknown mistakes."""
    return sorted(exercises, key=lambda e: (e.share("passed"), -e.share("generic"), e.notebook, e.exercise))


def _fraction(count: int, total: int) -> str:
    return f"{count}/{total} ({100 * count / total:.0f}%)" if total else "0/0"


# ---------------------------------------------------------------- figures


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})  # fixed margins: a "tight" box costs a second drawing
    return buffer.getvalue()


def histogram(scores: list[int], maximum: int, name: str) -> bytes:
    """The class's total scores on one notebook."""
    fig = Figure(figsize=(5, 2.8))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.18, top=0.88)
    bins = [b - 0.5 for b in range(maximum + 2)] if maximum <= 40 else 20
    ax.hist(scores, bins=bins, range=None if maximum <= 40 else (0, maximum), color="#4a78b5", edgecolor="white")
    ax.set_xlabel(f"total score (of {maximum})")
    ax.set_ylabel("students")
    ax.set_title(f"{name}: scores of {len(scores)} students")
    ax.yaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


def difficulty_chart(exercises: list[ExerciseStats], name: str) -> bytes:
    """One bar per exercise, hardest at the top: how the class's submissions ended."""
    ranked = _rank(exercises)[::-1]
    height = 0.4 * len(ranked) + 1.6
    fig = Figure(figsize=(8, height))
    ax = fig.subplots()
    labels = [f"{e.exercise} {e.concept[:40]}" for e in ranked]
    fig.subplots_adjust(left=0.04 + 0.0095 * max(map(len, labels)), right=0.97, bottom=1.1 / height, top=1 - 0.4 / height)
    left = [0.0] * len(ranked)
    for kind, words in KINDS.items():
        widths = [100 * e.share(kind) for e in ranked]
        ax.barh(labels, widths, left=left, color=COLOURS[kind], label=words.split(" (")[0])
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the class")
    ax.set_title(f"{name}: exercises, hardest at the top")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45 / (height - 1.5)), ncol=3, fontsize=7, frameon=False)
    return _png(fig)


# ---------------------------------------------------------------- outputs


def write_csvs(report: ClassReport, out: Path) -> None:
    with (out / "exercise_stats.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        header = ["notebook", "exercise", "concept", "points", "students"]
        for kind in KINDS:
            column = kind.replace("-", "_").replace("mistake", "known_mistake")
            header += [column, "pass_rate" if kind == "passed" else f"{column}_share"]
        writer.writerow([*header, "difficulty_rank"])
        rank = {id(e): i + 1 for i, e in enumerate(_rank(report.exercises))}
        for e in report.exercises:
            shares = [x for kind in KINDS for x in (e.counts[kind], f"{e.share(kind):.4f}")]
            writer.writerow([e.notebook, e.exercise, e.concept, e.points, e.students, *shares, rank[id(e)]])
    with (out / "mistakes.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["notebook", "exercise", "mistake_id", "kind", "hint", "count", "share", "concept", "students"])
        for m in report.mistakes:
            writer.writerow([m.notebook, m.exercise, m.mistake, m.kind, m.hint, len(m.students), f"{m.share:.4f}", m.concept, " ".join(m.students)])


def _sections(report: ClassReport) -> list[tuple[str, object]]:
    """The report as a list of blocks: ("h1"/"h2"/"h3"/"p", text), ("table", (header, rows)), ("figure", (name, png, alt))."""
    blocks: list[tuple[str, object]] = [("h1", "Class report"), ("p", f"{report.graded} students in the gradebook. Shares are over the students whose submission of the notebook was graded.")]
    blocks.append(("h2", "What to re-teach"))
    for name, scores in report.scores.items():
        exercises = [e for e in report.exercises if e.notebook == name]
        mean = sum(scores) / len(scores)
        blocks += [("h3", f"Notebook {name}"), ("p", f"{len(scores)} submissions graded; mean score {mean:.1f} of {report.maxima[name]}.")]
        blocks.append(("figure", (f"{name}_scores", histogram(scores, report.maxima[name], name), f"Histogram of the scores on {name}")))
        blocks.append(("figure", (f"{name}_difficulty", difficulty_chart(exercises, name), f"Exercises of {name} by difficulty")))
        rows = [[e.exercise, e.concept, *[_fraction(e.counts[k], e.students) for k in KINDS]] for e in _rank(exercises)]
        blocks.append(("p", "Exercises, hardest first:"))
        blocks.append(("table", (["exercise", "concept", "passed", "not attempted", "known mistake", "generic hint only", "no result"], rows)))
        for e in exercises:
            fired = [m for m in report.mistakes if (m.notebook, m.exercise) == (name, e.exercise)]
            if not fired:
                continue
            blocks.append(("p", f"Exercise {e.exercise} ({e.concept}): the hints that fired, most frequent first."))
            rows = [[m.mistake, m.hint, _fraction(len(m.students), m.graded), " ".join(m.students)] for m in fired]
            blocks.append(("table", (["mistake id", "hint (what the student was told)", "students", "who"], rows)))
    unknown = [m for m in report.mistakes if m.kind == "generic"]
    blocks.append(("h2", "Mistakes the checks do not know yet"))
    if unknown:
        blocks.append(("p", "These students got only the generic hint: read their exercise cells; a mistake several of them share is the next typical mistake to add to the check."))
        blocks.append(("table", (["exercise", "concept", "students", "who"], [[m.exercise, m.concept, _fraction(len(m.students), m.graded), " ".join(m.students)] for m in unknown])))
    else:
        blocks.append(("p", "None: every wrong answer matched a mistake the checks know."))
    blocks.append(("h2", "Students to look at"))
    if report.students:
        blocks.append(("p", f"Integrity flags first, then a status other than ok (timeouts, crashed kernels), then scores below {LOW_SCORE:.0%} of the maximum; lowest scores first within each."))
        blocks.append(("table", (["student", "score", "why"], [[s.student, f"{s.total}/{s.maximum}", "; ".join(s.reasons)] for s in report.students])))
    else:
        blocks.append(("p", "None."))
    blocks.append(("p", "The same figures as CSV: exercise_stats.csv and mistakes.csv (beside this file)."))
    return blocks


STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2}img{max-width:100%;display:block;margin:.5em 0}"
)


def to_html(blocks: list[tuple[str, object]]) -> str:
    """One page with nothing to fetch: no scripts, no links, images as data URIs."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>Class report</title>', f"<style>{STYLE}</style></head><body>"]
    for kind, body in blocks:
        if kind == "table":
            header, rows = body
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        elif kind == "figure":
            _, png, alt = body
            parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
        else:
            parts.append(f"<{kind}>{html.escape(str(body))}</{kind}>")
    return "\n".join(parts + ["</body></html>", ""])


def _md_cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def to_markdown(blocks: list[tuple[str, object]], figures: str = "figures") -> str:
    lines: list[str] = []
    for kind, body in blocks:
        if kind == "table":
            header, rows = body
            lines += ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + " --- |" * len(header)]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
        elif kind == "figure":
            name, _, alt = body
            lines.append(f"![{alt}]({figures}/{name}.png)")
        else:
            lines.append({"h1": "# ", "h2": "## ", "h3": "### ", "p": ""}[kind] + str(body))
        lines.append("")
    return "\n".join(lines)


def write_report(results: list[Result], course: Course, out: Path) -> Path:
    """Write the class report and its CSVs to ``out``; returns the HTML file's path."""
    report = build_report(results, course)
    out.mkdir(parents=True, exist_ok=True)
    write_csvs(report, out)
    blocks = _sections(report)
    (out / "figures").mkdir(exist_ok=True)
    for kind, body in blocks:
        if kind == "figure":
            (out / "figures" / f"{body[0]}.png").write_bytes(body[1])
    (out / "class_report.md").write_text(to_markdown(blocks))
    page = out / "class_report.html"
    page.write_text(to_html(blocks))
    return page
