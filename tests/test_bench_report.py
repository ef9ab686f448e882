"""The shared output of `grpcstack bench seed000|seed001|stacks`: text, JSON, Markdown, charts.

The benchmarks themselves are not run by the test suite (they take minutes and measure the
machine); this checks that a table renders the seed's number beside ours in every format.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from grpcstack.bench.report import Row, Table, percentile, verdict, write


def _table() -> Table:
    t = Table("Seed 000 section 6.2", ["before", "after, cache"])
    t.add(Row("P99 latency", "ms", {"before": 131.0, "after, cache": 20.5}, {"before": 180.0}))
    t.add(
        Row(
            "throughput",
            "req/s",
            {"before": 238.0, "after, cache": 1400.0},
            {"before": 220.0, "after, cache": 1250.0},
            lower_is_better=False,
        )
    )
    t.target("after-with-cache / before throughput", 1400 / 238, ">= 5", True)
    t.notes.append("a note")
    return t


def test_percentile_is_nearest_rank() -> None:
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile([7.0], 99) == 7.0


def test_write_gives_text_json_and_markdown_with_the_seed_beside_ours(tmp_path: Path) -> None:
    out = tmp_path / "seed000"
    text = write([_table()], out, "seed000", "grpcstack bench seed000 --quick", {"rounds": []})
    assert "131 (seed 180)" in text
    assert "1,400 (seed 1,250)" in text
    assert "5.88 (>= 5) MET" in text
    data = json.loads((out / "result.json").read_text())
    assert data["benchmark"] == "seed000"
    assert data["tables"][0]["rows"][1]["seed"]["after, cache"] == 1250.0
    assert data["machine"]["cores"] >= 1
    md = (out / "report.md").read_text()
    assert "`grpcstack bench seed000 --quick`" in md
    assert "| P99 latency (ms) | 131 (seed 180) | 20.5 |" in md


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="bench extra")
def test_charts_are_png_files_linked_from_the_report(tmp_path: Path) -> None:
    write([_table()], tmp_path, "seed000", "cmd", {})
    for name in ("seed000-latency.png", "seed000-throughput.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in (tmp_path / "report.md").read_text()


def test_a_target_the_rounds_disagree_on_is_within_noise(tmp_path: Path) -> None:
    assert verdict([0.9, 0.95], lambda r: r < 1) is True
    assert verdict([1.1, 1.2], lambda r: r < 1) is False
    assert verdict([0.98, 1.03, 0.99], lambda r: r < 1) is None
    t = _table()
    t.target("gRPC / HTTP mean latency", 1.01, "< 1", None)
    text = write([t], tmp_path, "seed001", "cmd", {})
    assert "1.01 (< 1) WITHIN NOISE" in text
    assert (
        "| gRPC / HTTP mean latency | 1.01 | < 1 | WITHIN NOISE |"
        in (tmp_path / "report.md").read_text()
    )
