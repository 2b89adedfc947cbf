"""The control-plane benchmark runs on a tiny grid and writes its table and its section of the results file
(timings are never asserted: they depend on the machine and its load)."""

from __future__ import annotations

from pathlib import Path

from bench.control_plane import ROWS, parse_args, run, section, table, write_section

REPO = Path(__file__).resolve().parent.parent


def test_control_plane_bench_runs_on_a_tiny_grid(tmp_path):
    results = run(parse_args(["--runs", "10", "--dry-run-runs", "3", "--repeats", "1", "--code", f"here={REPO}"]),
                  log=lambda _line: None)
    assert results["runs"] == 10 and set(results["codes"]) == {"here"}
    assert set(results["codes"]["here"]) == {key for key, _, _ in ROWS}
    assert all(seconds > 0 for seconds in results["codes"]["here"].values())
    text = table(results)
    assert text.count("\n") == len(ROWS) + 1 and "10 finished records" in text

    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n## Other section\n\nkept\n")
    write_section(md, section(results))
    write_section(md, section(results))  # replaced, not appended twice
    content = md.read_text()
    assert content.count("## Control plane") == 1 and "kept" in content

