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


def train() -> int:
    return run_cli(_script("train").main)


def validate() -> int:
    return run_cli(_script("validate").main)


def test() -> int:
    return run_cli(_script("test").main)


def finetune() -> int:
    return run_cli(_script("finetune").main)


def visualize() -> int:
    return run_cli(_script("visualize").main)


def export() -> int:
    return run_cli(_script("export").main)


def make_dataset() -> int:
    return run_cli(_script("make_dataset").main)


def predict_exported() -> int:
    return _script("predict_exported").main()  # its own error handling and exit code
