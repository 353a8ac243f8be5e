"""The shape of the code the design asks for (DESIGN.md, issue 28): bench/ measures through library
modules only, every program scores through one path, models/ never reads data files."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = {"train", "test_few_shot", "predict"}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_bench_imports_library_modules_only():
    offenders = {p.name: sorted(imported(p) & PROGRAMS) for p in (REPO / "bench").glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_models_never_import_data():
    offenders = [p.name for p in (REPO / "models").glob("*.py") if "data" in imported(p)]
    assert offenders == []


def test_every_program_scores_through_the_lot_scorer():
    """test_few_shot.py, predict.py and the benchmarks call models/lot.py's LotScorer, none FASL.predict."""
    for name in ("test_few_shot.py", "predict.py", "bench/decisions.py", "bench/real_eval.py", "bench/benchmark.py"):
        text = (REPO / name).read_text(encoding="utf-8")
        assert "LotScorer" in text, name
        assert ".predict_all(" not in text and "model.predict(" not in text, name
