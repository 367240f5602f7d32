"""The code's layers (README.md, "Layers"): imports point down only, no circles, no library
module imports a script. Every top-level module is read with ``ast``, imports inside functions
included; nothing is imported, so this runs in well under a second."""

import ast
import re

import pytest
from conftest import ROOT

# Bottom to top. A module may import modules of its own layer or of the layers below it.
# The same table is in README.md ("Layers"); test_readme_table_matches keeps the two equal.
LAYERS = {
    "storage": ("utils", "settings", "storage", "methods", "networks"),
    "blocks": (
        "ssim",
        "custom_loss_functions",
        "models",
        "resmaps",
        "learned",
        "synthetic",
        "metrics",
        "figures",
        "data",
        "regime",
        "distribution",
    ),
    "run": ("runs",),
    "detector": ("detector", "inference"),
    "jobs": ("evaluation", "validation", "finetuning", "exporting", "training", "sharding", "report"),
    "command line": (
        "train",
        "validate",
        "test",
        "finetune",
        "visualize",
        "export",
        "predict_exported",
        "make_dataset",
        "cae_commands",
    ),
}
SCRIPTS = set(LAYERS["command line"]) - {"cae_commands"}  # cae_commands: the installed package's console commands
# Known upward imports still to be removed, each with what removes it. The test fails when one
# is no longer there, so this list only shrinks.
PENDING: dict = {}

RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}
MODULES = {path.stem: path for path in sorted(ROOT.glob("*.py"))}


def imports(module):
    """``{imported suite module: first line}`` of every import in ``module``: module level, inside
    functions and under ``if``; ``importlib.import_module("name")`` with a literal name too."""
    found = {}
    for node in ast.walk(ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        for name in names:
            top = name.split(".")[0]
            if top in MODULES and top != module:
                found.setdefault(top, node.lineno)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def where(module, target):
    return f"{module}.py:{GRAPH[module][target]} imports {target}"


def test_every_module_has_a_layer():
    missing = sorted(set(MODULES) - set(RANK))
    assert not missing, f"modules without a layer (add them to LAYERS here and to README.md's table): {missing}"
    gone = sorted(set(RANK) - set(MODULES))
    assert not gone, f"LAYERS names modules that no longer exist: {gone}"


def test_no_import_cycle():
    """Depth-first search for a back edge; the message names every import of the circle."""
    state = {}  # module -> "open" while on the stack, "done" after

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                circle = stack[stack.index(target) :] + [module, target]
                edges = [where(a, b) for a, b in zip(circle, circle[1:])]
                pytest.fail("import circle: " + " -> ".join(circle) + "\n  " + "\n  ".join(edges))
            if target not in state:
                visit(target, stack + [module])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])


def test_the_scripts_are_the_command_line_layer():
    """A script is a file run as ``python X.py`` (an ``if __name__ == "__main__"`` block)."""
    scripts = set()
    for module, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            if (
                isinstance(node, ast.If)
                and "__main__" in ast.unparse(node.test)
                and "__name__" in ast.unparse(node.test)
            ):
                scripts.add(module)
    assert scripts == SCRIPTS, (
        f"scripts by their __main__ block: {sorted(scripts)}; the command-line layer: {sorted(SCRIPTS)}"
    )


def test_no_module_imports_a_script():
    offending = [where(module, target) for module in GRAPH for target in GRAPH[module] if target in SCRIPTS]
    assert not offending, "a script is imported (move what is shared into a library module):\n  " + "\n  ".join(
        offending
    )


def test_imports_point_down():
    upward = {
        (module, target): f"{where(module, target)} ({LAYER_OF[module]} -> {LAYER_OF[target]})"
        for module in GRAPH
        for target in GRAPH[module]
        if module in RANK and target in RANK and RANK[target] > RANK[module]
    }
    new = [message for edge, message in sorted(upward.items()) if edge not in PENDING]
    assert not new, "imports pointing up a layer:\n  " + "\n  ".join(new)
    fixed = sorted(f"{a} -> {b}" for a, b in PENDING if (a, b) not in upward)
    assert not fixed, f"no longer imported upward: remove from PENDING: {fixed}"


def test_readme_table_matches():
    """README.md's "Layers" table lists the same modules per layer, top to bottom."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Layers\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert section, 'README.md has no "## Layers" section'
    rows = re.findall(r"^\| \*?\*?([a-z ]+?)\*?\*? \| (.*?) \|", section.group(1), flags=re.MULTILINE)
    readme = {layer: set(re.findall(r"`([a-z_]+)(?:\.py)?`", cells)) for layer, cells in rows if layer != "layer"}
    assert list(readme) == list(reversed(LAYERS)), f"README's layers {list(readme)}, expected top to bottom"
    for layer, modules in LAYERS.items():
        assert readme[layer] == set(modules), f"README's {layer!r} row: {sorted(readme[layer] ^ set(modules))} differ"


# What maps a run's images: only the detector (detector.py, over inference.py) opens a run for
# maps, loads its networks and calibrations and computes maps; every job and script asks it.
MAPPING = (
    "Mapper",
    "open_maps",
    "open_for_verdicts",
    "run_maps",
    "inspect",
    "inspect_stream",
    "load_networks",
    "calibrate",
)


def test_every_job_maps_images_through_the_detector():
    offending = []
    for module, path in MODULES.items():
        if module in ("detector", "inference"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "inference"
                and node.attr in MAPPING
            ):
                offending.append(f"{module}.py:{node.lineno} inference.{node.attr}")
    assert not offending, "maps computed around the detector (use detector.Detector):\n  " + "\n  ".join(offending)


def batch_defaults(source):
    """``[(line, parameter, default as source)]`` of every ``batch``/``batch_size`` parameter
    with a default, and every ``parser.add_argument("--batch", default=...)``, in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            positional = node.args.posonlyargs + node.args.args
            pairs = list(zip(positional[len(positional) - len(node.args.defaults) :], node.args.defaults))
            pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
            found += [(d.lineno, a.arg, ast.unparse(d)) for a, d in pairs if a.arg in ("batch", "batch_size")]
        elif isinstance(node, ast.Call) and node.args and ast.unparse(node.args[0]) == "'--batch'":
            found += [(k.value.lineno, "--batch", ast.unparse(k.value)) for k in node.keywords if k.arg == "default"]
    return found


def test_batch_defaults_are_written_as_a_name_not_a_number():
    # Inference's batch size was a bare 16 in sixteen places; it lives in settings.BATCH now, and
    # the learned head's training batch in learned.HEAD_BATCH. A literal default is a new copy.
    assert batch_defaults("def f(x, batch=16, *, batch_size=BATCH): pass") == [
        (1, "batch", "16"),
        (1, "batch_size", "BATCH"),
    ]
    numbers = [
        f"{module}.py:{line} {name}={default}"
        for module, path in MODULES.items()
        for line, name, default in batch_defaults(path.read_text())
        if re.fullmatch(r"[\d.]+", default)
    ]
    assert not numbers, "batch defaults written as numbers (read settings.BATCH):\n  " + "\n  ".join(numbers)
