"""Console entry points of the installed package (``pip install .``): ``cae-train`` runs
``train.py``'s ``main`` exactly as ``python train.py`` does (one-line errors, exit code), and so
on for each of the card's scripts.

Each script is loaded from its file beside this one, under a name of its own: installed as a
top-level module, ``test`` would otherwise be Python's own ``test`` package.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from utils import run_cli, stop_on_ctrl_c

stop_on_ctrl_c("__main__")  # an installed command is a program: Ctrl-C gives one line, never a traceback


def _script(name: str):
    """The script ``name``.py beside this file, loaded once as the module ``cae_<name>``."""
    module_name = f"cae_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def _run(name: str) -> int:
    """Run the script ``name``'s ``main`` as its ``__main__`` does: its errors in its own options."""
    script = _script(name)
    return run_cli(script.main, parser=script.get_parser)


def train() -> int:
    return _run("train")


def validate() -> int:
    return _run("validate")


def test() -> int:
    return _run("test")


def finetune() -> int:
    return _run("finetune")


def visualize() -> int:
    return _run("visualize")


def export() -> int:
    return _run("export")


def make_dataset() -> int:
    return _run("make_dataset")


def predict_exported() -> int:
    return _script("predict_exported").main()  # its own error handling and exit code
