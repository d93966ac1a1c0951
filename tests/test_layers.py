"""The package's layering: no module imports from a layer above its own (an ``ast`` walk,
imports inside functions included), so the hub cannot grow back."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nst_onnx"

# Low → high. A module may import from its own layer and those before it.
LAYERS = [
    ["_version", "errors"],
    ["vgg19"],
    ["config"],
    ["io"],
    ["graphs"],
    ["run"],
    ["problem"],
    ["job"],
    ["api", "__init__"],
    ["diagnostics"],
    ["batch"],
    ["video", "serve"],
    ["cli", "__main__"],
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _layer(module: str) -> str:
    """nst_onnx.run.engine → run; nst_onnx.problem → problem; nst_onnx → __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every nst_onnx import in ``path`` (or in ``source`` as if it were
    that file), relative ones resolved."""
    here = "nst_onnx." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = here.rsplit(".", 1)[0] if path.name != "__init__.py" else here
    out = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module or not node.level else \
                [f"{target}.{a.name}" for a in node.names]
            out += [(node.lineno, t) for t in names if t.startswith("nst_onnx")]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("nst_onnx")]
    return out


def test_every_module_has_a_layer():
    missing = {_layer("nst_onnx." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts))
               for p in PACKAGE.rglob("*.py")} - set(RANK)
    assert not missing, f"give these a place in LAYERS: {sorted(missing)}"


def test_no_module_imports_from_a_layer_above_it():
    against = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mine = _layer("nst_onnx." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for line, target in _imports(path):
            if RANK[_layer(target)] > RANK[mine]:
                against.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
    assert not against, "imports against the layers:\n" + "\n".join(against)


def test_the_check_resolves_relative_imports_and_those_inside_functions():
    fake = PACKAGE / "run" / "engine.py"
    got = [t for _, t in _imports(fake, "from ..api import StyleTransfer\n"
                                        "def f():\n    from . import binding\n")]
    assert got == ["nst_onnx.api", "nst_onnx.run.binding"]
    assert RANK[_layer(got[0])] > RANK[_layer("nst_onnx.run.engine")]  # would be reported


def test_no_function_in_the_job_runner_is_over_60_lines():
    """job.py, run/ and batch/ stay in small functions (their complexity is held at 12 by
    ruff's C901 in .ci/run)."""
    files = [PACKAGE / "job.py", *sorted((PACKAGE / "batch").glob("*.py")),
             *sorted((PACKAGE / "run").glob("*.py"))]
    long = [f"{p.relative_to(PACKAGE)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1})"
            for p in files for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 60]
    assert not long, long
