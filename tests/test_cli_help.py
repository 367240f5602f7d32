"""The command lines answer ``--help`` and wrong flags before TensorFlow, Keras or OpenVINO
load (they take seconds to import), every option's help shows its default, and long steps
report progress a person can follow in a log.

Which modules a command imported is read from ``python -X importtime`` (one line per module
imported), not from the clock: timings depend on the machine's load.
"""

import argparse
import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

HEAVY = ("tensorflow", "keras", "openvino")  # seconds to import; the scripts load them after parsing
# The card's scripts and the argv whose --help is checked (train.py's subcommands each have one).
HELP = {
    "train": [["--help"], ["new", "--help"], ["resume", "--help"]],
    "validate": [["--help"]],
    "finetune": [["--help"]],
    "visualize": [["--help"]],
    "export": [["--help"]],
    "predict_exported": [["--help"]],
    "test": [["--help"]],
}
OWN = ("train", "validate", "finetune", "visualize", "export", "predict_exported")  # HelpFormatter's scripts
LIGHT = {s: HEAVY + ("matplotlib",) for s in OWN}  # these also leave matplotlib (0.8 s) until after parsing


def _imports(script, argv):
    """``(exit code, stdout, stderr without the import lines, set of top-level modules imported)``."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / f"{script}.py"), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    imported, other = set(), []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            imported.add(name.split(".")[0])
        else:
            other.append(line)
    return proc.returncode, proc.stdout, "\n".join(other), imported


@pytest.mark.parametrize("script,argv", [(s, a) for s, argvs in HELP.items() for a in argvs])
def test_help_answers_without_tensorflow(script, argv):
    code, out, err, imported = _imports(script, argv)
    assert code == 0, err
    assert "usage:" in out and "Traceback" not in err
    heavy = set(LIGHT.get(script, HEAVY))
    assert not imported & heavy, sorted(imported & heavy)


@pytest.mark.parametrize(
    "script,argv,message",
    [
        ("train", ["new", "-d", "no/such/class"], "directory not found: no/such/class"),
        ("train", ["new", "-d", "."], "no train/good folder in ."),
        ("train", ["new", "-d", ".", "--bogus"], "unrecognized arguments: --bogus"),
        ("train", ["new", "-d", ".", "-a", "vgg"], "invalid choice: 'vgg'"),
        ("train", ["resume"], "the following arguments are required: -p/--path"),
        ("validate", ["-p", "x", "-a", "many"], "invalid int value: 'many'"),
        ("finetune", ["-p", "x", "--bogus"], "unrecognized arguments: --bogus"),
        ("visualize", ["-p", "x"], "the following arguments are required: -i/--images"),
        ("export", ["-p", "x", "--smooth", "much"], "invalid float value: 'much'"),
        ("predict_exported", [], "the following arguments are required"),
    ],
)
def test_argument_errors_answer_without_tensorflow(script, argv, message):
    code, _, err, imported = _imports(script, argv)
    assert code == 2 and message in err and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{script}.py") and ": error: " in last, err
    heavy = set(LIGHT.get(script, HEAVY))
    assert not imported & heavy, sorted(imported & heavy)


def load(script):
    """The script as a module, by its path (``test`` would otherwise be Python's own package)."""
    name = f"cli_{script}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _parsers(parser):
    """``parser`` and every subcommand's parser."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("script", OWN)
def test_every_option_shows_its_default(script):
    for parser in _parsers(load(script).get_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.required or isinstance(action, argparse._HelpAction):
                continue
            shown = formatter._get_help_string(action) if hasattr(formatter, "_get_help_string") else action.help
            assert "default" in (shown or ""), (script, parser.prog, action.option_strings, shown)


def test_help_states_the_defaults_the_code_uses():
    # The defaults that are None on the command line (they follow a validation result) are stated
    # in the help text; these numbers come from settings, where inference reads them.
    sys.path.insert(0, str(ROOT))
    import inference  # noqa: PLC0415
    import settings  # noqa: PLC0415

    helps = {a.dest: a.help for a in load("validate").get_parser()._actions}
    assert inference.MapOptions.from_args() == inference.MapOptions(True, 2, 4)
    assert f"default for validate.py: {inference.MapOptions.from_args().scales};" in helps["scales"]
    assert f"default for validate.py: {inference.MapOptions.from_args().passes};" in helps["passes"]
    assert settings.default_min_area((128, 128)) == 20 and settings.default_min_area((40, 40)) == 4
    assert "1/800 of the whole image's pixels, at least 4: 20 px for a 128-px square" in " ".join(helps["area"].split())
    assert load("test").get_parser().get_default("batch") == settings.BATCH == 16


def test_advanced_training_options_are_grouped():
    (new,) = [p for p in _parsers(load("train").get_parser()) if p.prog.endswith(" new")]
    groups = {g.title: {s for a in g._group_actions for s in a.option_strings} for g in new._action_groups}
    assert {"--strategy", "--precision", "--jit"} <= groups["advanced"]
    assert "--architecture" not in groups["advanced"]


def test_short_flags_have_long_forms():
    """-a and -t mean different things in different scripts: each has a spelled-out long form."""
    expected = {
        "train": {"-a": "--architecture", "-t": "--tag"},
        "validate": {"-a": "--area"},
        "test": {"-a": "--area", "-t": "--threshold"},
        "visualize": {"-a": "--area", "-t": "--threshold"},
        "finetune": {"-t": "--test-image"},
        "export": {"-a": "--area"},
    }
    for script, flags in expected.items():
        found = {}
        for parser in _parsers(load(script).get_parser()):
            for action in parser._actions:
                for short in set(action.option_strings) & {"-a", "-t"}:
                    found[short] = [o for o in action.option_strings if o.startswith("--")]
        assert found == {short: [long] for short, long in flags.items()}, (script, found)


def test_finished_commands_end_with_their_time_on_stderr(capsys):
    """stdout's last line stays the path scripts read; the elapsed time goes to stderr."""
    from utils import run_cli

    assert run_cli(lambda argv: print("some/result/folder")) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "some/result/folder"
    assert re.fullmatch(r"done in \d+\.\d s", err.strip().splitlines()[-1]), err


def test_head_training_reports_progress_in_a_log(tmp_path, capsys, monkeypatch):
    """Not a terminal (pytest captures stderr): a plain line about every tenth of the steps."""
    import keras

    import learned

    monkeypatch.setattr(learned, "settle_batch_norm", lambda head, draw: None)  # 64 more batches, not progress

    inp = keras.Input((None, None, 1))
    identity = keras.Model(inp, keras.layers.Identity()(inp))
    rng = np.random.default_rng(0)
    images = rng.uniform(0.3, 0.7, (4, 64, 64, 1)).astype(np.float32)
    learned.train_head(identity, images, tmp_path / "head.keras", steps=20, patch=32, seed=0, eager=True)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("head step ")]
    assert [line.split()[2] for line in lines] == [f"{k}/20" for k in range(2, 21, 2)], err
    assert all(re.fullmatch(r"head step \d+/20 loss \d+\.\d{4}", line) for line in lines), lines
    assert "\r" not in err  # no bar in a log
    learned.train_head(identity, images, tmp_path / "quiet.keras", steps=2, patch=32, progress=False)
    assert "head step" not in capsys.readouterr().err
