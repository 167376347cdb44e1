"""Project hygiene: ruff clean, README commands in sync with CI, examples run."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install -e '.[test]')")
def test_ruff_clean():
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(["ruff", *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "<!-- test-command -->" in readme and "<!-- main-command -->" in readme
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def _example(name: str):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_quickstart_example_runs_on_real_data():
    gaps = _example("quickstart").main(["--epochs", "1"])
    assert set(gaps) == {"train", "validation", "test"}
    assert all(0.0 <= g <= 1.0 for g in gaps.values())


def test_wrap_optimizer_example_runs():
    values = _example("wrap_optimizer").main(["--epochs", "1"])
    assert set(values) == {"train", "held-out", "test"} and all(0.0 <= v <= 1.0 for v in values.values())


def test_train_images_example_runs(recwarn):
    values = _example("train_images").main(["--epochs", "2", "--width", "1"])
    assert set(values) == {"train", "held-out", "test"} and all(0.0 <= v <= 1.0 for v in values.values())
    # two epochs on 112 validation images cannot settle the game: check() says so rather than staying silent
    assert any("at the end of training" in str(w.message) for w in recwarn)


def test_custom_constraint_example_runs():
    out = _example("custom_constraint").main(["--epochs", "2"])
    assert -1.0 <= out["max_value"] <= 1.0 and out["multipliers"] >= 0.0


def test_heldout_report_example_writes_its_figures(tmp_path):
    values = _example("heldout_report").main(["--epochs", "2", "--every", "20", "--out", str(tmp_path)])
    assert set(values) == {"train", "held-out", "test"}
    for name in ("test_group_rates.png", "violation_vs_step.png", "generalization_gap.png", "test_report.json"):
        assert (tmp_path / name).stat().st_size > 500


def test_import_fairopt_leaves_scipy_and_pandas_for_later():
    """scipy and pandas are imported where first used, so `import fairopt` costs little after torch (issue 11)."""
    import subprocess
    import sys

    code = "import sys, fairopt; print(sorted(m for m in ('scipy', 'pandas', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def _import_graph() -> dict[str, set[str]]:
    """fairopt module -> the fairopt modules it imports (anywhere in its body, not under TYPE_CHECKING)."""
    import ast

    root = ROOT / "fairopt"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        guarded = {
            id(sub)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
            for sub in ast.walk(node)
        }
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in guarded or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                module = ".".join(p for p in (base, node.module or "") if p)
                targets = [f"{module}.{a.name}" for a in node.names] if node.module is None else [module]
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def test_the_package_has_no_import_circle():
    """Modules import one way (issue 11): no module reaches itself through imports, lazy ones included."""
    graph = _import_graph()
    assert "fairopt.constraints.expressions" in graph["fairopt.constraints.evaluation"]  # the graph is real

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return seen

    circles = sorted(m for m in graph if m in reaches(m))
    assert circles == []


def test_the_docs_site_builds_with_warnings_as_errors(tmp_path):
    """mkdocs-material + mkdocstrings: the story, the glossary, the data path, the examples and the API reference
    from the docstrings (issue 11); a docstring griffe cannot read, or a missing page, fails the build."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "glossary" / "index.html").exists() and (site / "api" / "optim" / "index.html").exists()
    assert "ExprVisitor" in (site / "api" / "constraints" / "index.html").read_text()
    # the examples page shows the examples' code (a mangled snippet line would leave the page empty but valid)
    examples = (site / "examples" / "index.html").read_text()
    assert "--8" not in examples and "ConstrainedOptimizer" in examples and "init_process_group" in examples
    # the README's links to docs pages and pictures resolve on the home page (mkdocs_hooks.py)
    assert 'src="assets/sweep-adult.png"' in (site / "index.html").read_text()


def test_subpackages_are_reachable_from_the_top_level_package():
    """``import fairopt; fairopt.datasets.load_adult`` works (the docs write it so) without ``import fairopt`` loading
    torchvision or timm up front."""
    import subprocess
    import sys

    code = (
        "import sys, fairopt; heavy = {'torchvision', 'timm'} & set(sys.modules); "
        "assert not heavy, heavy; "
        "print(fairopt.datasets.load_colored_digits.__name__, fairopt.vision.create_image_model.__name__, "
        "fairopt.samplers.GroupBalancedBatchSampler.__name__, fairopt.bench.BENCH_METHODS[0])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "load_colored_digits",
        "create_image_model",
        "GroupBalancedBatchSampler",
        "unconstrained",
    ]
