"""``pip install .`` gives the card's modules and a console command per script: the wheel is
built (without dependencies, without network) and its contents checked."""

import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

SCRIPTS = ("train", "validate", "test", "finetune", "visualize", "export", "predict_exported", "make_dataset")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of a copy of the sources (building in the repository would leave build/ there)."""
    pytest.importorskip("setuptools", reason="setuptools builds the wheel (requirements.txt)")
    pytest.importorskip("wheel", reason="wheel builds the wheel for setuptools < 70.1 (requirements.txt)")
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for path in [ROOT / "pyproject.toml", ROOT / "README.md", *ROOT.glob("*.py")]:
        shutil.copy2(path, src)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("*.whl")
    return zipfile.ZipFile(built)


def test_every_module_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    modules = {path.name for path in ROOT.glob("*.py")}
    assert {f"{s}.py" for s in SCRIPTS} <= names
    assert not modules - names, f"modules missing from [tool.setuptools] py-modules: {sorted(modules - names)}"


def test_every_script_has_a_console_command(wheel):
    (entry,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry).decode()
    declared = dict(
        re.findall(r'^(cae-[a-z-]+) = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE)
    )
    for script in SCRIPTS:
        command = f"cae-{script.replace('_', '-')}"
        assert f"{command} = {declared[command]}" in text, command
        module, function = declared[command].split(":")
        assert f"{module}.py" in wheel.namelist()
        assert callable(getattr(__import__(module), function))
