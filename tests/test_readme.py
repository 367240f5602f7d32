"""The README is a manual: every command it shows still parses with that script's own parser,
every option it names exists, and every relative link points to a file that exists (in the
README and in the docs/ pages it links)."""

import importlib.util
import re
import shlex
import sys

import pytest
from conftest import ROOT

SCRIPTS = ("train", "validate", "test", "finetune", "visualize", "export", "predict_exported")
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDERS = {"RUN": "/tmp/dummy_run"}  # stand-ins the README uses for paths a user fills in
MAX_LINES = 210  # "a manual of about 200 lines"


def load(script):
    """The script as a module, by its path (``test`` would otherwise be Python's own package)."""
    name = f"cli_{script}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def code_blocks(text):
    """The contents of every fenced code block."""
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def commands(text):
    """``(script, argv, line)`` of every ``python ... SCRIPT.py ...`` line in the code blocks."""
    found = []
    pattern = re.compile(rf"(?:^|/)({'|'.join(SCRIPTS)})\.py$")
    for block in code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            if not words or not re.search(r"(^|/)python3?$", words[0]):
                continue
            match = next(((i, m) for i, w in enumerate(words[1:], 1) if (m := pattern.search(w))), None)
            if match is None:
                continue
            i, m = match
            argv = [PLACEHOLDERS.get(w, w) for w in words[i + 1 :]]
            argv = [re.sub(r"^RUN/", PLACEHOLDERS["RUN"] + "/", w) for w in argv]
            found.append((m.group(1), argv, line.strip()))
    return found


README_COMMANDS = commands(README.read_text())


def test_readme_shows_every_step_as_a_command():
    shown = {script for script, _, _ in README_COMMANDS}
    assert {"train", "validate", "test", "export", "predict_exported"} <= shown, shown


@pytest.mark.parametrize("script,argv,line", README_COMMANDS, ids=[c[2] for c in README_COMMANDS])
def test_readme_command_parses(script, argv, line, capsys):
    parser = load(script).get_parser()
    try:
        parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"README command does not parse: {line}\n{capsys.readouterr().err}")


def _options():
    """Every option string of every script's parser (and train.py's subcommands)."""
    import argparse

    options = set()
    stack = [load(script).get_parser() for script in SCRIPTS]
    while stack:
        parser = stack.pop()
        for action in parser._actions:
            options.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return options


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_option_named_exists(page):
    """A ``--flag`` in backticks (or a ``-a/--area`` pair) must be an option of some script."""
    known = _options()
    named = set()
    for code in re.findall(r"`([^`\n]+)`", page.read_text()):
        for word in code.split():
            for flag in re.findall(r"(?:^|/)(--?[a-z][a-z-]*)", word):
                named.add(flag)
    unknown = sorted(named - known - {"-X", "--help"})
    assert not unknown, unknown


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_point_to_files(page):
    text = page.read_text()
    links = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)
    assert links or page != README
    for link in links:
        if re.match(r"[a-z]+:", link) or link.startswith("#"):
            continue
        target = (page.parent / link.split("#", 1)[0]).resolve()
        assert target.exists(), f"{page.name}: {link} -> {target}"


def test_readme_is_a_manual_not_a_lab_notebook():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_LINES
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "dated notes belong in docs/measurements.md"
