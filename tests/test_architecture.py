"""The package's shape: imports flow one way, and the plain model is plain.

    model <- fast <- (data, train, generation, interop) <- (tools, play) <- cli

The import graph is read from the source with `ast` (no module is run).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "stagegpt"
LAYERS = {"errors": 0, "fileio": 0, "limits": 0, "values": 0, "model": 1, "fast": 2,
          "data": 3, "train": 4, "generation": 4, "interop": 5, "finetune": 6, "tools": 6,
          "play": 6, "cli": 7, "__main__": 8}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The stagegpt modules a file imports (at any depth, lazily or not)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            if base.split(".")[0] == "stagegpt":
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "stagegpt")
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    return {name: {d for d in imports_of(path) if d in files and d != name
                   and not name.startswith(d + ".")}
            for name, path in files.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else -1  # `stagegpt` itself: lazy, anywhere


def test_the_package_has_no_import_cycle():
    assert cycles(graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_flow_one_way():
    """No module imports from a later layer; the model imports only its error type."""
    backwards = [(m, d) for m, deps in graph().items() for d in deps
                 if layer(m) >= 0 and layer(d) > layer(m)]
    assert backwards == []
    model = {d for m, deps in graph().items() if m.startswith("stagegpt.model") for d in deps}
    assert {d for d in model if not d.startswith("stagegpt.model")} <= {"stagegpt.errors"}


def test_importing_the_model_loads_nothing_else_of_stagegpt():
    code = ("import stagegpt.model, sys; print(sorted(m for m in sys.modules if "
            "m.startswith('stagegpt.') and not m.startswith('stagegpt.model')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['stagegpt.errors']"


def test_the_model_folder_is_plain_and_short():
    """Stages 1-9 in at most 800 lines (stages 1-5 alone were 522), nothing for speed."""
    files = sorted((SRC / "model").glob("*.py"))
    text = "\n".join(p.read_text() for p in files)
    assert len(text.splitlines()) <= 800
    for word in ("mkldnn", "onednn", "chunked", "decode_weight", "workspace"):
        assert word not in text.lower(), word


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: module_name(p))
def test_no_module_is_named_like_the_standard_library(path):
    assert path.stem not in sys.stdlib_module_names


def test_every_module_reads_in_one_sitting():
    long = {module_name(p): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}


def test_starting_a_command_and_loading_a_model_import_no_compiler(tmp_path):
    """torch._dynamo and sympy (PyTorch's compiler and its symbolic shapes) add about 1.6 s
    to a process: the CLI's start and `load_checkpoint` (a size check on the meta device,
    a model built without init) import neither. Only --compile and the optimizer do."""
    from stagegpt import ModelConfig, build_model
    from stagegpt.data.tokenizers import CharTokenizer
    from stagegpt.train.checkpoints import save_checkpoint

    config = ModelConfig(vocab_size=5, block_size=8, n_embd=16, n_layer=1, n_head=2)
    model = build_model(5, config)
    save_checkpoint(tmp_path / "ckpt", model, CharTokenizer("abcde"))
    code = ("import sys, stagegpt.cli; stagegpt.cli.build_parser(); "
            "from stagegpt import load_checkpoint; m = load_checkpoint(sys.argv[1]).model; "
            "print(sorted({'torch._dynamo', 'sympy'} & set(sys.modules)), "
            "sum(p.double().sum().item() for p in m.parameters()))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt")],
                            capture_output=True, text=True, check=True)
    names, total = result.stdout.strip().rsplit(" ", 1)
    assert names == "[]"
    want = sum(p.double().sum().item() for p in model.parameters())
    assert float(total) == pytest.approx(want)  # the weights really were loaded
