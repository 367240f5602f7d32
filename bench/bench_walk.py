"""The walk of one image through ``test.py --images``: which of the project's modules it enters,
in what order, and how often control climbs back to a higher layer (issue 24).

    .venv/bin/python bench/bench_walk.py RUN IMAGE     # a finished run and one image file
    .venv/bin/python bench/bench_walk.py               # trains a tiny run on generated data first

Runs ``test.py -p RUN --images FOLDER`` in this process (FOLDER holds only IMAGE) under
``sys.setprofile`` and records every call from one project module into another. It prints the
modules in the order they are first entered with their layer (the README's layer table), how
many times each was entered from another module, and the calls that climb from a lower layer to
a higher one (a library calling back up), and how often the things the detector should load
once are loaded: networks, calibrations, the image file, its regions. A walk that visits each
module once, in layer order, has no climbs: control goes down the layers and comes back only by
returning.
"""

import argparse
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils import quiet_tensorflow  # noqa: E402

quiet_tensorflow()


def get_parser():
    """Command-line options of the walk benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", type=Path, help="a finished run folder (default: train a tiny one)")
    p.add_argument("image", nargs="?", type=Path, help="one image file (default: the run's first test image)")
    return p


def layers() -> dict[str, int]:
    """Module name → layer depth (0: command line) from the README's layer table."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| layer | modules |") :].split("\n\n")[0].splitlines()[2:]
    depth = {}
    for i, row in enumerate(table):
        cells = row.split("|")[2]
        for name in re.findall(r"`([a-z_]+)(?:\.py)?`", cells):
            depth.setdefault(name, i)
    return depth


def _tiny_run(root: Path) -> Path:
    import make_dataset
    import training
    from settings import TrainConfig

    (class_dir,) = make_dataset.generate(root / "data", classes=("brick",), size=64, n_train=12, seed=0)
    config = TrainConfig(directory=str(class_dir), out=str(root / "runs"), size=64, epochs=1, head_steps=20)
    run_dir, _ = training.new_run(config)
    import validation

    validation.validate(run_dir, 4)
    return run_dir


# What the detector should do once per opened run or per image: (module, function) -> label.
ONCE = {
    ("networks", "load"): "networks loaded (model, head)",
    ("inference", "cached_calibration"): "calibration files read",
    ("resmaps", "regions"): "region labellings of the image",
}


def walk(run: Path, image: Path) -> tuple[list[tuple[str, str]], Counter]:
    """The calls from one project module into another while ``test.py`` predicts ``image``, and
    the counts of :data:`ONCE`'s functions and of the image file's openings."""
    import test as test_script

    own = {p.stem for p in ROOT.glob("*.py")}
    calls = []
    loads = Counter()

    def profile(frame, event, arg):
        if event != "call":
            return
        callee = Path(frame.f_code.co_filename)
        if callee.name == "Image.py" and frame.f_code.co_name == "open" and callee.parent.name == "PIL":
            if Path(str(frame.f_locals.get("fp", ""))).name == image.name:
                loads["openings of the image file"] += 1
            return
        if (callee.stem, frame.f_code.co_name) in ONCE and callee.parent == ROOT:
            loads[ONCE[callee.stem, frame.f_code.co_name]] += 1
        caller = frame.f_back
        if callee.parent != ROOT or caller is None:
            return
        # The nearest project frame below: calls through a library (e.g. a tqdm or NumPy callback) count too.
        while caller is not None and Path(caller.f_code.co_filename).parent != ROOT:
            caller = caller.f_back
        if caller is None:
            return
        a, b = Path(caller.f_code.co_filename).stem, callee.stem
        if a != b and a in own and b in own:
            calls.append((a, b))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        shutil.copy2(image, folder / image.name)
        sys.setprofile(profile)
        try:
            test_script.main(["-p", str(run), "--images", str(folder), "--out", str(Path(tmp) / "out")])
        finally:
            sys.setprofile(None)
    return calls, loads


def main(argv=None):
    """Train (if needed), walk one image through test.py, print the modules and the climbs."""
    args = get_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or _tiny_run(Path(tmp))
        image = args.image
        if image is None:
            import runs

            image = sorted((runs.find_run(run).class_dir / "test").rglob("*.png"))[0]
        calls, loads = walk(run, image)
    depth = layers()
    entered = Counter(b for _, b in calls)
    order = list(dict.fromkeys(["test", *(b for _, b in calls)]))
    climbs = [(a, b) for a, b in calls if depth.get(b, 99) < depth.get(a, 99)]
    print(f"one image through test.py --images: {len(calls)} calls between {len(order)} modules")
    print("module (layer): times entered from another module, in first-entry order")
    for name in order:
        print(f"  {name} ({depth.get(name, '?')}): {entered.get(name, 0)}")
    print(f"climbs to a higher layer: {len(climbs)}")
    for (a, b), n in Counter(climbs).most_common():
        print(f"  {a} ({depth.get(a)}) -> {b} ({depth.get(b)}): {n}")
    print("loaded or done per walk:")
    for label in [*ONCE.values(), "openings of the image file"]:
        print(f"  {label}: {loads.get(label, 0)}")


if __name__ == "__main__":
    main()
