"""The rows every benchmark returns, and the one table that `run_all.py` (and each script) prints.

A row is one figure of ours beside the peer's figure, when there is a peer, against a
target. Times are in seconds and their ratio is peer / ours (above 1: we are faster).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One benchmark figure: ours, the peer's (None: no peer), the target it is held to, and whether it met it."""

    bench: str
    item: str
    ours: float
    peer: float | None = None
    unit: str = ""
    target: str = ""
    ok: bool = True

    @property
    def ratio(self) -> float | None:
        """Peer time / our time, for timings measured against a peer."""
        return self.peer / self.ours if self.unit == "s" and self.peer is not None and self.ours > 0 else None


def timing(bench: str, item: str, ours: float, peer: float | None = None, min_ratio: float | None = None) -> Row:
    """A time in seconds, optionally against the peer's with a minimum speed-up (peer / ours)."""
    row = Row(bench, item, ours, peer, "s")
    if min_ratio is None:
        return row
    return Row(bench, item, ours, peer, "s", f"ratio >= {min_ratio:g}x", row.ratio is not None and row.ratio >= min_ratio)


def agreement(bench: str, item: str, ours: float, peer: float, tol: float) -> Row:
    """The same quantity computed by us and by the peer, which must agree within ``tol``."""
    return Row(bench, item, ours, peer, "", f"|diff| <= {tol:g}", abs(ours - peer) <= tol)


def at_most(bench: str, item: str, ours: float, limit: float, unit: str = "") -> Row:
    """A figure with a budget (time, memory, error): pass when it is at most ``limit``."""
    return Row(bench, item, ours, None, unit, f"<= {limit:g}{' ' + unit if unit else ''}", ours <= limit)


def at_least(bench: str, item: str, ours: float, floor: float) -> Row:
    """A figure with a floor (agreement, correlation, marks): pass when it is at least ``floor``."""
    return Row(bench, item, ours, None, "", f">= {floor:g}", ours >= floor)


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit == "s":
        return f"{value:.3f} s" if value < 1 else f"{value:.2f} s" if value < 100 else f"{value:.0f} s"
    if value != 0 and abs(value) < 0.1:
        return f"{value:#.3g}"  # small differences and errors: three significant digits, zeros kept
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


def format_table(rows: Sequence[Row]) -> str:
    """The rows as one fixed-width table: bench, item, ours, peer, ratio, target, result (blank: no target)."""
    header = ("bench", "item", "ours", "peer", "ratio", "target", "result")
    lines = [
        (r.bench, r.item, _figure(r.ours, r.unit), _figure(r.peer, r.unit), "" if r.ratio is None else f"{r.ratio:.1f}x", r.target, "" if not r.target else "pass" if r.ok else "FAIL")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    right = {2, 3, 4}  # numbers are right-aligned

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def report(rows: Sequence[Row]) -> int:
    """Print the table and return the exit status: 1 when any row missed its target."""
    print("\n" + format_table(rows))
    failed = [r for r in rows if not r.ok]
    if failed:
        print(f"\n{len(failed)} of {len(rows)} rows missed their target: " + "; ".join(f"{r.bench}: {r.item}" for r in failed))
    return int(bool(failed))


def quick_cli(run: Callable[[bool], list[Row]], doc: str, quick_help: str) -> int:
    """The command line of a benchmark whose only option is --quick: run it, print the table, return the exit status."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return report(run(parser.parse_args().quick))
