"""Libraries never name command-line flags; the command line names them (issue 24, point 3).

A library raises :class:`utils.SettingError` naming the setting (the parameter or config
field, in backticks); :func:`utils.run_cli` shows it as the running script's option. These
tests keep the rule (no flag in any library message), check the wording on real parsers, and
follow real library errors through real scripts, in-process and fast (no model is trained).
"""

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest
from conftest import ROOT, cli

import train  # noqa: E402
from utils import SettingError, UserError, in_options, run_cli, warn  # noqa: E402

# A long flag (--batch) or a short one (-p, -a/...) as a word of its own; "x-ray" or "1-SSIM" are not.
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z](?=[\s/]|$))")
# Commands of other programs a message may quote whole.
OTHER_PROGRAMS = ("pip install -r",)


def _library_modules() -> list[Path]:
    """The repository's modules without a command line of their own (scripts define get_parser)."""
    return [
        path
        for path in sorted(ROOT.glob("*.py"))
        if path.stem != "cae_commands" and not re.search(r"^def get_parser\(", path.read_text(), re.M)
    ]


def _message_parts(tree: ast.AST):
    """``(line, text)`` of every string piece of a raised exception, an exception built, or a warn() call."""
    seen = set()  # a raised exception is also an exception built: each piece once
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            message = node.exc
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name != "warn" and not name.endswith(("Error", "Exception", "Loss")):
                continue
            message = node
        else:
            continue
        for part in ast.walk(message):
            if isinstance(part, ast.Constant) and isinstance(part.value, str) and id(part) not in seen:
                seen.add(id(part))
                yield part.lineno, part.value


def test_the_scan_sees_scripts_and_libraries_apart():
    names = {p.stem for p in _library_modules()}
    assert {"inference", "training", "storage", "sharding", "utils"} <= names
    assert not names & {"train", "test", "validate", "finetune", "visualize", "export", "make_dataset"}
    assert not names & {"predict_exported", "cae_commands"}


def test_no_library_message_names_a_flag():
    found = []
    for path in _library_modules():
        for line, text in _message_parts(ast.parse(path.read_text(), str(path))):
            for program in OTHER_PROGRAMS:
                text = text.replace(program, "")
            if FLAG.search(text):
                found.append(f"{path.name}:{line}: {FLAG.findall(text)} in {text.strip()[:80]!r}")
    assert not found, "library messages name settings (`batch`), never flags:\n" + "\n".join(found)


def test_the_scan_catches_a_flag():
    tree = ast.parse('raise UserError(f"--batch must be >= 1, got {b}")\nwarn("or pass -t and -a")\n')
    assert [bool(FLAG.search(text)) for _, text in _message_parts(tree)] == [True, True]


# ---- wording on real parsers ----


def test_settings_are_worded_as_the_scripts_options():
    test_parser = _script("test").get_parser()
    # The subject in full (as argparse names an argument), a setting in a sentence as the usage line does.
    assert in_options("`batch` must be >= 1, got 0", test_parser) == "--batch must be >= 1, got 0"
    assert (
        in_options(
            "computed with `passes=2`; run validate.py again with `passes=3`, or pass `threshold` and `min_area`",
            test_parser,
        )
        == "computed with --passes 2; run validate.py again with --passes 3, or pass -t and -a"
    )
    assert in_options("use `baseline=False` `passes=1`", test_parser) == "use --no-baseline --passes 1"
    assert in_options("or pass both `threshold=THRESHOLD` and `min_area=MIN_AREA`", test_parser) == (
        "or pass both -t THRESHOLD and -a MIN_AREA"
    )
    # No option for it in this script: the setting's own name, plainly.
    assert in_options("`lr` too large; `baseline=True` here", test_parser) == "lr too large; baseline=True here"
    train_parser = train.get_parser()
    assert in_options("`batch` must be >= 1", train_parser, ["new"]) == "-b/--batch must be >= 1"
    assert in_options("`more_epochs` must be >= 1", train_parser, ["resume"]) == "-e/--epochs must be >= 1"
    assert in_options("`architecture=resnet` needs `mode=object`", train_parser, ["new"]) == (
        "-a resnet needs --mode object"
    )


def test_run_cli_prints_the_flag_in_one_line_with_exit_code_2(capsys):
    def main(argv):
        raise SettingError("`batch` must be >= 1, got 0")

    assert run_cli(main, ["new", "-d", "x"], parser=train.get_parser) == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(": error: -b/--batch must be >= 1, got 0")

    def noted(argv):
        warn("`patch` only applies to surface runs", settings=True)
        raise UserError("a plain user error keeps its `backticks`")

    assert run_cli(noted, ["new"], parser=train.get_parser()) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: --patch only applies to surface runs", err[1]] and err[1].endswith("keeps its `backticks`")
    # Outside a command line: the setting names as they are.
    warn("`patch` only applies to surface runs", settings=True)
    assert capsys.readouterr().err == "warning: `patch` only applies to surface runs\n"


def test_a_setting_error_is_a_value_error_that_knows_its_setting():
    import pickle

    error = SettingError("the fused map needs weights: run validate.py `path=RUN` first", "method")
    assert isinstance(error, ValueError) and isinstance(error, UserError)
    assert error.setting == "method" and error.settings == ("path",)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.setting == "method"
    assert SettingError("`scales` must be 1 to 3").setting == "scales"
    with pytest.raises(TypeError, match="names its setting"):
        SettingError("no setting named")


# ---- real library errors through real scripts ----


def _script(name):
    """The script ``name``.py as a module of its own (``test`` would be Python's test package)."""
    module_name = f"cae_cli_errors_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def test_library_errors_reach_the_user_as_flags(tmp_path, capsys):
    # evaluation.predict_images checks `smooth` before it opens the run.
    code, _, err = cli(_script("test").main, ["-p", str(tmp_path), "--images", str(tmp_path), "--smooth", "-1"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"{Path(sys.argv[0]).name}: error: --smooth must be a finite number >= 0, got -1.0"
    ]
    # finetuning.finetune's `max_area` is finetune.py's -r/--range.
    code, _, err = cli(_script("finetune").main, ["-p", str(tmp_path), "-r", "0"], capsys)
    assert code == 2 and err.strip().endswith("error: -r/--range must be a positive number of pixels, got 0")
    # training.resume_run's `more_epochs` is train.py resume's -e/--epochs.
    (tmp_path / "setup.json").write_text("{}")
    code, _, err = cli(train.main, ["resume", "-p", str(tmp_path), "-e", "0"], capsys)
    assert code == 2 and err.strip().endswith("error: -e/--epochs must be >= 1, got 0")
