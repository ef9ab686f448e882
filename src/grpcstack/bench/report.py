"""The output every seed/stacks benchmark shares: a table with the seed's number beside ours.

A :class:`Table` holds rows of one metric each, one value per column (a server variant), and the
seed's published value for that cell where the seed has one. It renders as a plain-text table
(stdout), JSON (``result.json``) and a Markdown report (``report.md``) with two PNG charts: latency
percentiles per column and throughput bars, ours next to the seed's. matplotlib (the ``bench``
extra) is imported only when charts are written; without it the report says so and skips them.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    metric: str
    unit: str  # "ms", "req/s", "%", "MB", "KB", "B" ...: charts pick rows by unit
    values: dict[str, float | None]
    seed: dict[str, float | None] = field(default_factory=dict)
    lower_is_better: bool = True


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)  # {"name", "value", "goal", "met"}

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def target(self, name: str, value: float, goal: str, met: bool | None) -> None:
        """``met`` None: the rounds disagree (some meet the goal, some miss it), so the run
        cannot tell: reported as WITHIN NOISE, not as met or missed."""
        self.targets.append({"name": name, "value": value, "goal": goal, "met": met})


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample list."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict[str, Any]:
    """What ran the benchmark, for the report header."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {
        "load_average": os.getloadavg(),
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("%",):
        return f"{value:.1f}%"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(row: Row, column: str) -> str:
    ours = _fmt(row.values.get(column), row.unit)
    seed = row.seed.get(column)
    return ours if seed is None else f"{ours} (seed {_fmt(seed, row.unit)})"


def text(table: Table) -> str:
    header = ["metric", *table.columns]
    body = [[f"{r.metric} [{r.unit}]", *(_cell(r, c) for c in table.columns)] for r in table.rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    out = [table.title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in body]
    out += [f"- {n}" for n in table.notes]
    for t in table.targets:
        out.append(f"target {t['name']}: {t['value']:.2f} ({t['goal']}) {_met(t['met'])}")
    return "\n".join(out)


def _met(met: bool | None) -> str:
    return "WITHIN NOISE" if met is None else "MET" if met else "MISSED"


def verdict(per_round: list[float], meets: Callable[[float], bool]) -> bool | None:
    """A goal met (missed) by every round's ratio is met (missed); rounds that disagree: None."""
    results = {meets(r) for r in per_round}
    return None if len(results) > 1 else results.pop()


def markdown(table: Table, charts: list[str], command: str, meta: dict[str, Any]) -> str:
    lines = [f"## {table.title}", "", f"`{command}`", ""]
    m = meta.get("machine", {})
    lines.append(
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
        f"Python {m.get('python', '?')}, "
        f"load average {m.get('load_average', ['?'])[0]:.1f} at the end, "
        f"{meta.get('when', '')}. Cells read `ours (seed <the seed's number>)`."
    )
    lines += ["", "| metric | " + " | ".join(table.columns) + " |"]
    lines.append("|---|" + "---|" * len(table.columns))
    for r in table.rows:
        lines.append(
            f"| {r.metric} ({r.unit}) | " + " | ".join(_cell(r, c) for c in table.columns) + " |"
        )
    if table.targets:
        lines += ["", "| target | value | goal | |", "|---|---|---|---|"]
        for t in table.targets:
            lines.append(f"| {t['name']} | {t['value']:.2f} | {t['goal']} | {_met(t['met'])} |")
    if table.notes:
        lines += [""] + [f"- {n}" for n in table.notes]
    if charts:
        lines.append("")
        lines += [f"![{Path(c).stem}]({Path(c).name})" for c in charts]
    return "\n".join(lines) + "\n"


def _charts(table: Table, out: Path, name: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        table.notes.append("charts skipped: matplotlib is not installed (pip install '.[bench]')")
        return []
    written = []
    latency = [r for r in table.rows if r.unit == "ms"]
    if latency:
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / max(1, len(latency))
        for i, r in enumerate(latency):
            xs = [j + i * width for j in range(len(table.columns))]
            ax.bar(xs, [r.values.get(c) or 0 for c in table.columns], width, label=r.metric)
            seeds = [r.seed.get(c) for c in table.columns]
            pts = [(x, s) for x, s in zip(xs, seeds, strict=True) if s is not None]
            if pts:
                ax.scatter(*zip(*pts, strict=True), marker="_", s=400, color="black", zorder=3)
        ax.set_xticks([j + width * (len(latency) - 1) / 2 for j in range(len(table.columns))])
        ax.set_xticklabels(table.columns, fontsize=8)
        ax.set_ylabel("ms")
        ax.set_title(
            textwrap.fill(f"{table.title}: latency (black dash = the seed's number)", 90),
            fontsize=8,
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{name}-latency.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(str(path))
    rates = [r for r in table.rows if r.unit == "req/s"]
    if rates:
        fig, ax = plt.subplots(figsize=(8, 4))
        r = rates[0]
        xs = list(range(len(table.columns)))
        ax.bar(
            [x - 0.2 for x in xs], [r.values.get(c) or 0 for c in table.columns], 0.4, label="ours"
        )
        seeds = [r.seed.get(c) for c in table.columns]
        if any(s is not None for s in seeds):
            ax.bar([x + 0.2 for x in xs], [s or 0 for s in seeds], 0.4, label="seed", color="grey")
        ax.set_xticks(xs)
        ax.set_xticklabels(table.columns, fontsize=8)
        ax.set_ylabel("req/s")
        ax.set_title(textwrap.fill(f"{table.title}: {r.metric}", 90), fontsize=8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{name}-throughput.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(str(path))
    return written


def write(tables: list[Table], out: Path, name: str, command: str, extra: dict[str, Any]) -> str:
    """Write result.json, report.md and the charts under ``out``; return the text tables."""
    import time

    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "benchmark": name,
        "command": command,
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    md = [f"# grpcstack bench {name}", ""]
    for i, table in enumerate(tables):
        charts = _charts(table, out, f"{name}-{i}" if len(tables) > 1 else name)
        md.append(markdown(table, charts, command, meta))
    payload = {**meta, "tables": [asdict(t) for t in tables], **extra}
    (out / "result.json").write_text(json.dumps(payload, indent=1, default=str))
    (out / "report.md").write_text("\n".join(md))
    return "\n\n".join(text(t) for t in tables) + f"\n(wrote {out}/report.md, result.json)"
