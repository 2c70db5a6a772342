"""The research package beside the product: its command, its scripts, and the line between
them (``hrnn_core`` imports neither ``research`` nor its own CLI module)."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
RESEARCH = ROOT / "research"
SCRIPTS = sorted((RESEARCH / "tuning").glob("*.py")) + sorted((RESEARCH / "leaderboards").glob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_hrnn_research_lists_every_experiment_and_hrnn_has_none() -> None:
    from hrnn_core.cli.main import app as product
    from research.cli import app

    out = CliRunner().invoke(app, ["--help"]).output
    for command in ("ablation", "cold-start", "time-deltas", "rating", "trend", "warm-start", "exploration"):
        assert command in out
    assert "experiments" not in CliRunner().invoke(product, ["--help"]).output


def test_product_modules_import_neither_research_nor_the_cli_module() -> None:
    for path in (ROOT / "hrnn_core").rglob("*.py"):
        if path.name == "cli.py":
            continue
        bad = {m for m in _imports(path) if m == "research" or m.startswith("research.")
               or m in ("hrnn_core.cli.main", "hrnn_core.cli.main.app")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_scripts_import(script: Path) -> None:
    """Each tuning and leaderboard script loads (its imports resolve after the move); main() not run."""
    spec = importlib.util.spec_from_file_location(f"research_script_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def test_leaderboards_sh_parses() -> None:
    subprocess.run(["bash", "-n", str(RESEARCH / "leaderboards" / "leaderboards.sh")], check=True)


def test_leaderboard_table_reads_the_recorded_reports() -> None:
    """The tables of docs/evaluation/leaderboards.md come from the reports in bench/results."""
    spec = importlib.util.spec_from_file_location("leaderboard_table", RESEARCH / "leaderboards" / "leaderboard_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = ROOT / "bench" / "results"
    report = json.loads((results / "leaderboard_ml-100k_temporal.json").read_text())
    assert "| hrnn |" in module.table(report)
    seeds = json.loads((results / "leaderboard_ml-100k_temporal.seed_mean.json").read_text())
    assert "gru" in module.seed_table(seeds)


def test_tune_hrnn_refuses_candidates_the_configs_no_longer_fit(monkeypatch) -> None:
    """Every candidate of the tuning grid builds its configs, except the recorded ones that set a
    retired field (s8_trend_auto: model.trend_auto), which the driver refuses by name, clearly."""
    spec = importlib.util.spec_from_file_location("tune_hrnn_grid", RESEARCH / "tuning" / "tune_hrnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    retired = {name: module.retired_fields(name) for name in module.GRID}
    assert {n: f for n, f in retired.items() if f} == {"s8_trend_auto": ["model.trend_auto"]}
    for name in module.GRID:
        if not retired[name]:
            module._configs(name)
    with pytest.raises(ValueError, match="model.trend_auto"):
        module._configs("s8_trend_auto")
    monkeypatch.setattr("sys.argv", ["tune_hrnn.py", "--snapshot", "/nonexistent", "--only", "gru:s8_trend_auto"])
    with pytest.raises(SystemExit, match=r"gru:s8_trend_auto sets model\.trend_auto.*bench/results"):
        module.main()
