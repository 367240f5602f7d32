"""Bad-input, fault and concurrency sweep of the command lines, as a new user would try them.

    .venv/bin/python bench/sweep_reliability.py [--out /tmp/sweep] [--only ID ...]

Builds a tiny world (a generated 48-px dataset, a 2-epoch run validated at area 10, a few
folders and files of the user's), then runs every case of :data:`CASES` as a separate
process on a fresh copy of that world and sorts each outcome into:

- ``clean``: exit code != 0 and exactly one ``<prog>: error: ...`` line on stderr naming the
  expected problem, no traceback;
- ``works``: a case that should work did, with the expected result;
- ``traceback``: a Python traceback;
- ``wrong``: exit 0 where a refusal was due, a refusal where the case should work, or a
  message that does not name the problem (a silent or misleading result);
- ``lost``: a file that existed before the case was changed or deleted (data loss).

The same table drives ``tests/test_reliability.py`` in-process (faster), so the sweep and
the test suite cover the same cases. Prints one line per case and the counts.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE = 48


@dataclass
class Case:
    """One case: ``script`` run with ``argv`` (placeholders filled by :meth:`World.fill`) after
    ``mutate`` changed the copy; ``expect`` is a fragment of the one-line error, or None when
    the case should work (then ``check(world)`` must hold)."""

    id: str
    script: str
    argv: list
    expect: str = None
    mutate: object = None
    check: object = None
    hold_lock: bool = False
    cwd: str = None


@dataclass
class World:
    """A case's copy of the world: the dataset, the run and the user's own files."""

    root: Path
    paths: dict = field(default_factory=dict)

    @property
    def run(self):
        return self.root / "runs" / "run"

    def fill(self, argv):
        names = {
            "run": self.run,
            "data": self.root / "data" / "brick",
            "root": self.root,
            "imgs": self.root / "imgs",
            "imgs2": self.root / "b" / "imgs",
            "notes": self.root / "notes.csv",
            "mine": self.root / "mine",
            "empty": self.root / "empty",
            "bombs": self.root / "bombs",
            "victim": self.root / "victim.keras",
            "detector": self.root / "detector",
        }
        return [a.format(**{k: str(v) for k, v in names.items()}) for a in argv]

    def setup(self):
        return json.loads((self.run / "setup.json").read_text())

    def write_setup(self, setup, raw=None):
        (self.run / "setup.json").write_text(raw if raw is not None else json.dumps(setup, indent=2))

    def model(self):
        return next(self.run.glob("*.keras"))

    def validation_result(self):
        return self.run / "validation" / "ssim" / "a10" / "validation_result.json"


# ---- mutations (each changes the case's own copy before the case runs) ----


def set_setup(**changes):
    def mutate(world):
        setup = world.setup()
        setup.update(changes)
        world.write_setup(setup)

    return mutate


def drop_setup_key(key):
    def mutate(world):
        setup = world.setup()
        del setup[key]
        world.write_setup(setup)

    return mutate


def raw_setup(text):
    return lambda world: world.write_setup(None, raw=text)


def raw_validation(text):
    return lambda world: world.validation_result().write_text(text)


def edit_validation(**changes):
    def mutate(world):
        result = json.loads(world.validation_result().read_text())
        result.update(changes)
        world.validation_result().write_text(json.dumps(result))

    return mutate


def garbage_model(world):
    world.model().write_bytes(b"PK\x03\x04 not really a keras file")


def truncated_model(world):
    path = world.model()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def nan_model(world):
    import keras

    path = world.model()
    model = keras.models.load_model(path, compile=False)
    model.set_weights([w * float("nan") for w in model.get_weights()])
    model.save(path)


def retrained_model(world):
    """Other weights in place of the validated ones (as train.py resume leaves them)."""
    import keras

    path = world.model()
    model = keras.models.load_model(path, compile=False)
    model.set_weights([w * 1.01 for w in model.get_weights()])
    model.save(path)


def empty_run(world):
    """A new run killed before its first epoch: setup.json says training, no model, no backup."""
    world.model().unlink()
    setup = world.setup()
    setup.update(status="training", epochs_run=0, best_val_loss=None)
    world.write_setup(setup)


def validation_list_outside(world):
    (world.run / "validation_files.txt").write_text("../../../../etc/hostname\n")


def chain(*mutations):
    def mutate(world):
        for m in mutations:
            m(world)

    return mutate


def prediction_exists(world, count=3):
    found = list((world.run / "predictions" / "ssim").glob("imgs-*_a5_t0.500000/predictions.csv"))
    return len(found) == 1 and len(found[0].read_text().splitlines()) == count + 1


def two_prediction_folders(world):
    return len(list((world.run / "predictions" / "ssim").glob("imgs-*_a5_t0.500000/predictions.csv"))) == 2


def bomb_skipped(world):
    found = list((world.run / "predictions" / "ssim").glob("bombs-*_a5_t0.500000/predictions.csv"))
    return len(found) == 1 and "bomb.png" not in found[0].read_text() and len(found[0].read_text().splitlines()) == 3


# ---- issue 25: identity by content, inputs of every depth, the deployment path ----


def head_replaced(world):
    """A learned validation result of one head, then another run's head.keras copied in."""
    import runs
    import storage

    head = world.run / runs.HEAD_FILE
    head.write_bytes(b"the head the threshold was chosen with")
    result = json.loads(world.validation_result().read_text())
    result.update(method="learned", baseline=False, scales=1, passes=1, head_sha256=storage.model_id(head))
    folder = world.run / "validation" / "learned" / "a10"
    folder.mkdir(parents=True)
    (folder / "validation_result.json").write_text(json.dumps(result))
    head.write_bytes(b"another run's head")


def damaged_twin_weights(world):
    """Half of the twin's largest kernel zeroed; its metadata (model hash, verdict) intact."""
    import onnx
    from onnx import numpy_helper

    (twin,) = world.run.glob("CAE_*.onnx")
    proto = onnx.load(str(twin))
    big = max(proto.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    damaged = numpy_helper.to_array(big).copy()
    damaged.flat[: damaged.size // 2] = 0
    big.CopyFrom(numpy_helper.from_array(damaged, big.name))
    onnx.save(proto, str(twin))


def twin_made_again(world):
    import networks

    (twin,) = world.run.glob("CAE_*.onnx")
    read, meta = networks._read(twin)
    return meta.get(networks._WEIGHTS_KEY) == networks.weights_hash(read) and bool(list(world.run.glob("test/*/a5_*")))


def float_tiff(world):
    """{root}/floats: an 8-bit PNG and the same image as a float32 TIFF in [0, 1]."""
    import numpy as np
    import tifffile
    from PIL import Image

    folder = world.root / "floats"
    folder.mkdir()
    pixels = np.asarray(Image.open(world.root / "imgs" / "0.png").convert("L"))
    Image.fromarray(pixels).save(folder / "a.png")
    tifffile.imwrite(folder / "b.tif", pixels.astype(np.float32) / 255.0)


def float_tiff_read_as_its_png(world):
    import pandas as pd

    (found,) = (world.run / "predictions" / "ssim").glob("floats-*/predictions.csv")
    frame = pd.read_csv(found)
    return len(frame) == 2 and frame["score"].nunique() == 1 and frame["verdict"].nunique() == 1


def links_and_hidden(world):
    """{root}/links: one image, a broken symbolic link and a hidden image."""
    folder = world.root / "links"
    folder.mkdir()
    shutil.copy(world.root / "imgs" / "0.png", folder / "0.png")
    os.symlink(world.root / "gone.png", folder / "1.png")
    shutil.copy(world.root / "imgs" / "1.png", folder / ".2.png")


def one_prediction_of_links(world):
    found = list((world.run / "predictions" / "ssim").glob("links-*/predictions.csv"))
    return len(found) == 1 and len(found[0].read_text().splitlines()) == 2


def other_runs_export(world):
    """{mine}: what export.py wrote for another run (its marker), with the user's notes beside it."""
    marker = {"tool": "cae", "kind": "export", "run": "/elsewhere/run", "model_sha256": "0" * 64}
    (world.root / "mine" / ".cae-result.json").write_text(json.dumps(marker))


def write_tiny_detector(folder, **changes):
    """A stand-in export (made without TensorFlow): detector.json (with ``changes``) and a
    detector.onnx whose anomaly map is the grayscale image itself in [0, 1], score its
    maximum, defect pixels those above 0.5; predict_exported.py runs it as it runs a real one."""
    threshold = 0.5
    import onnx
    from onnx import TensorProto, helper

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    maps = ["N", "H", "W"]
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x", "scale"], ["unit"]),
        helper.make_node("ReduceMean", ["unit"], ["residual_map"], axes=[3], keepdims=0),
        helper.make_node("Identity", ["residual_map"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["residual_map"], ["score"], axes=[1, 2], keepdims=0),
        helper.make_node("Greater", ["residual_map", "threshold"], ["above"]),
        helper.make_node("Cast", ["above"], ["defect_pixels"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_detector",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", "H", "W", 1])],
        [
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, maps),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("residual_map", TensorProto.FLOAT, maps),
            helper.make_tensor_value_info("defect_pixels", TensorProto.UINT8, maps),
        ],
        [
            helper.make_tensor("scale", TensorProto.FLOAT, [], [255.0]),
            helper.make_tensor("threshold", TensorProto.FLOAT, [], [threshold]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "detector.onnx"))
    meta = {
        "format": "onnx",
        "artefact": "detector.onnx",
        "input": {"color": "grayscale"},
        "threshold": threshold,
        "min_area": 4,
        "resize_inside": True,
        **changes,
    }
    (folder / "detector.json").write_text(json.dumps(meta))
    return folder


def tiny_detector(**changes):
    return lambda world: write_tiny_detector(world.root / "detector", **changes)


def truncated_detector(world):
    onnx_file = write_tiny_detector(world.root / "detector") / "detector.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])


def exported_predictions(world):
    frame = (world.root / "pred" / "predictions.csv").read_text().splitlines()
    return len(frame) == 4 and len(list((world.root / "pred").glob("*_mask.png"))) == 3


T = ["-t", "0.5", "-a", "5"]
CASES = [
    # --out of test.py --images: never into or over the input, the run, or a folder not ours
    Case(
        "out_is_input",
        "test",
        ["-p", "{run}", "--images", "{imgs}", "--out", "{imgs}", *T],
        "overlaps the input folder",
    ),
    Case(
        "out_inside_input",
        "test",
        ["-p", "{run}", "--images", "{imgs}", "--out", "{imgs}/res", *T],
        "overlaps the input folder",
    ),
    Case(
        "out_parent_of_input",
        "test",
        ["-p", "{run}", "--images", "{imgs}", "--out", "{root}", *T],
        "overlaps the input folder",
    ),
    Case("out_is_run", "test", ["-p", "{run}", "--images", "{imgs}", "--out", "{run}", *T], "would replace"),
    Case(
        "out_parent_of_run", "test", ["-p", "{run}", "--images", "{imgs}", "--out", "{root}/runs", *T], "would replace"
    ),
    Case(
        "out_is_dataset",
        "test",
        ["-p", "{run}", "--images", "{imgs}", "--out", "{data}/test", *T],
        "overlaps the input folder",
    ),
    Case(
        "out_is_file",
        "test",
        ["-p", "{run}", "--images", "{imgs}", "--out", "{notes}", *T],
        "exists and is not a folder",
    ),
    Case(
        "out_is_user_folder",
        "test",
        ["-p", "{run}", "--images", "{imgs}", "--out", "{mine}", *T],
        "not a result folder of this tool",
    ),
    Case(
        "out_is_cwd",
        "test",
        ["-p", "{run}", "--images", "{imgs}", "--out", ".", *T],
        "not a result folder of this tool",
        cwd="{mine}",
    ),
    Case("out_under_file", "test", ["-p", "{run}", "--images", "{imgs}", "--out", "{notes}/res", *T], "cannot write"),
    Case(
        "out_holds_validation",
        "test",
        ["-p", "{run}", "--images", "{imgs}", "--out", "{run}/validation/ssim/a10", *T],
        "holds a validation result",
    ),
    Case("out_without_images", "test", ["-p", "{run}", "--out", "{root}/x", *T], "--out only applies with --images"),
    Case("images_missing", "test", ["-p", "{run}", "--images", "{root}/nope", *T], "folder not found"),
    Case("images_empty", "test", ["-p", "{run}", "--images", "{empty}", *T], "no images under"),
    # numbers
    Case("threshold_inf", "test", ["-p", "{run}", "-t", "inf", "-a", "5"], "threshold must be a finite number"),
    Case("threshold_nan", "test", ["-p", "{run}", "-t", "nan", "-a", "5"], "threshold must be a finite number"),
    Case("threshold_negative", "test", ["-p", "{run}", "-t", "-1", "-a", "5"], "threshold must be a finite number"),
    Case("area_zero", "test", ["-p", "{run}", "-t", "0.5", "-a", "0"], "minimum area must be a positive"),
    Case("smooth_inf", "test", ["-p", "{run}", "--smooth", "inf", *T], "--smooth must be a finite number"),
    Case("smooth_nan", "test", ["-p", "{run}", "--smooth", "nan", *T], "--smooth must be a finite number"),
    Case(
        "smooth_negative",
        "test",
        ["-p", "{run}", "--images", "{imgs}", "--smooth", "-1", *T],
        "--smooth must be a finite",
    ),
    Case("batch_zero", "test", ["-p", "{run}", "--batch", "0", *T], "--batch must be >= 1"),
    Case("passes_zero", "validate", ["-p", "{run}", "-a", "5", "--passes", "0"], "--passes must be >= 1"),
    Case("scales_too_many", "validate", ["-p", "{run}", "-a", "5", "--scales", "9"], "--scales must be 1 to"),
    Case("validate_area_zero", "validate", ["-p", "{run}", "-a", "0"], "minimum area must be a positive"),
    Case("finetune_range_zero", "finetune", ["-p", "{run}", "-r", "0"], "-r/--range must be a positive"),
    Case("run_missing", "test", ["-p", "{root}/nope", *T], "run not found"),
    Case("run_not_a_run", "validate", ["-p", "{mine}", "-a", "5"], "is not a run folder"),
    # hand-edited or damaged run files
    Case("setup_size_text", "test", ["-p", "{run}", *T], "'size' must be a whole number", set_setup(size="sixtyfour")),
    Case(
        "setup_size_null", "validate", ["-p", "{run}", "-a", "5"], "'size' must be a whole number", set_setup(size=None)
    ),
    Case("setup_null", "test", ["-p", "{run}", *T], "holds null instead of a JSON object", raw_setup("null")),
    Case("setup_broken_json", "finetune", ["-p", "{run}"], "is not valid JSON", raw_setup('{"size": 48,')),
    Case("setup_no_color", "test", ["-p", "{run}", *T], "lacks 'color'", drop_setup_key("color")),
    Case(
        "setup_loss_unknown", "validate", ["-p", "{run}", "-a", "5"], "'loss' must be one of", set_setup(loss="ssim2")
    ),
    Case(
        "setup_model_outside",
        "validate",
        ["-p", "{run}", "-a", "5"],
        "points outside",
        set_setup(model_file="../../victim.keras"),
    ),
    Case("setup_best_nan", "test", ["-p", "{run}", *T], "diverged", set_setup(best_val_loss=float("nan"))),
    Case("validation_list_outside", "validate", ["-p", "{run}", "-a", "5"], "points outside", validation_list_outside),
    Case("validation_result_empty", "test", ["-p", "{run}"], "is damaged", raw_validation("{}")),
    Case(
        "validation_result_text",
        "test",
        ["-p", "{run}"],
        "threshold 'abc' is not a finite number",
        edit_validation(threshold="abc"),
    ),
    Case(
        "validation_result_inf",
        "test",
        ["-p", "{run}"],
        "is damaged",
        raw_validation('{"threshold": Infinity, "min_area": 10}'),
    ),
    Case("validation_result_null", "test", ["-p", "{run}"], "instead of a JSON object", raw_validation("null")),
    Case("validation_other_weights", "test", ["-p", "{run}"], "computed on other weights", retrained_model),
    Case("model_garbage", "validate", ["-p", "{run}", "-a", "5"], "is damaged", garbage_model),
    Case("model_truncated", "test", ["-p", "{run}", *T], "is damaged", truncated_model),
    Case("model_nan", "test", ["-p", "{run}", *T], "non-finite weights", nan_model),
    Case("empty_run_test", "test", ["-p", "{run}", *T], "stopped before finishing its first epoch", empty_run),
    Case("empty_run_resume", "train", ["resume", "-p", "{run}"], "stopped before finishing its first epoch", empty_run),
    Case(
        "resume_model_outside",
        "train",
        ["resume", "-p", "{run}", "-e", "1"],
        "points outside",
        set_setup(model_file="../../victim.keras"),
    ),
    Case("resume_done_without_e", "train", ["resume", "-p", "{run}"], "already finished"),
    Case("resume_e_zero", "train", ["resume", "-p", "{run}", "-e", "0"], "-e/--epochs must be >= 1"),
    Case(
        "resume_setup_text", "train", ["resume", "-p", "{run}", "-e", "1"], "'epochs' must be", set_setup(epochs="many")
    ),
    # concurrency: the run is being trained by another process
    Case("test_while_training", "test", ["-p", "{run}", *T], "being trained by another process", hold_lock=True),
    Case(
        "resume_while_in_use",
        "train",
        ["resume", "-p", "{run}", "-e", "1"],
        "in use by another process",
        hold_lock=True,
    ),
    # train.py new
    Case(
        "train_out_is_file",
        "train",
        ["new", "-d", "{data}", "--size", "32", "--epochs", "1", "--out", "{notes}"],
        "is a file",
    ),
    Case(
        "train_out_under_file",
        "train",
        ["new", "-d", "{data}", "-a", "mvtec", "--size", "32", "--epochs", "1", "--out", "{notes}/runs"],
        "cannot write a run folder under",
    ),
    Case(
        "train_out_in_dataset",
        "train",
        ["new", "-d", "{data}", "--size", "32", "--epochs", "1", "--out", "{data}/runs"],
        "inside the dataset",
    ),
    Case(
        "train_lr_nan",
        "train",
        ["new", "-d", "{data}", "--size", "32", "--epochs", "1", "--out", "{root}/out", "--lr", "nan"],
        "--lr must be a finite number",
    ),
    Case(
        "train_lr_inf",
        "train",
        ["new", "-d", "{data}", "--size", "32", "--epochs", "1", "--out", "{root}/out", "--lr", "inf"],
        "--lr must be a finite number",
    ),
    # cases that must simply work (and lose nothing)
    Case("predict_default_out", "test", ["-p", "{run}", "--images", "{imgs}", *T], None, check=prediction_exists),
    Case(
        "predict_same_name_two_folders",
        "test",
        ["-p", "{run}", "--images", "{imgs2}", *T],
        None,
        check=two_prediction_folders,
    ),
    Case("predict_skips_bomb", "test", ["-p", "{run}", "--images", "{bombs}", *T], None, check=bomb_skipped),
    # issue 25: a run's identity covers its head and its twins by content
    Case(
        "head_replaced_learned_threshold",
        "test",
        ["-p", "{run}", "--method", "learned"],
        "computed with another learned head",
        head_replaced,
    ),
    Case(
        "twin_weights_damaged",
        "test",
        ["-p", "{run}", *T, "--passes", "1", "--scales", "1"],
        None,
        damaged_twin_weights,
        check=twin_made_again,
    ),
    # issue 25: inputs of every depth read one way, nothing skipped without a note
    Case(
        "images_float_tiff",
        "test",
        ["-p", "{run}", "--images", "{root}/floats", *T],
        None,
        float_tiff,
        check=float_tiff_read_as_its_png,
    ),  # fmt: skip
    Case(
        "images_broken_link_and_hidden",
        "test",
        ["-p", "{run}", "--images", "{root}/links", *T],
        None,
        links_and_hidden,
        check=one_prediction_of_links,
    ),  # fmt: skip
    # issue 25: the deployment path as safe as test.py
    Case(
        "export_out_other_runs_export",
        "export",
        ["-p", "{run}", "--format", "onnx", "--out", "{mine}"],
        "another run's result",
        other_runs_export,
    ),
    Case(
        "export_out_user_folder",
        "export",
        ["-p", "{run}", "--format", "onnx", "--out", "{mine}"],
        "not a result folder of this tool",
    ),
    Case(
        "exported_out_user_folder",
        "predict_exported",
        ["{detector}", "{imgs}", "--out", "{mine}"],
        "not an output of predict_exported.py",
        tiny_detector(),
    ),
    Case(
        "exported_out_is_input",
        "predict_exported",
        ["{detector}", "{imgs}", "--out", "{imgs}"],
        "overlaps the input folder",
        tiny_detector(),
    ),
    Case(
        "exported_out_inside_input",
        "predict_exported",
        ["{detector}", "{imgs}", "--out", "{imgs}/res"],
        "overlaps the input folder",
        tiny_detector(),
    ),
    Case(
        "exported_out_is_detector",
        "predict_exported",
        ["{detector}", "{imgs}", "--out", "{detector}"],
        "overlaps the detector folder",
        tiny_detector(),
    ),
    Case(
        "exported_threshold_null",
        "predict_exported",
        ["{detector}", "{imgs}"],
        "threshold must be a finite number >= 0, got None",
        tiny_detector(threshold=None),
    ),
    Case(
        "exported_threshold_text",
        "predict_exported",
        ["{detector}", "{imgs}"],
        "threshold must be a finite number >= 0, got 'high'",
        tiny_detector(threshold="high"),
    ),
    Case(
        "exported_onnx_truncated",
        "predict_exported",
        ["{detector}", "{imgs}"],
        "is damaged or truncated",
        truncated_detector,
    ),
    Case(
        "exported_new_out_works",
        "predict_exported",
        ["{detector}", "{imgs}", "--out", "{root}/pred"],
        None,
        tiny_detector(),
        check=exported_predictions,
    ),
]
# predict_same_name_two_folders first writes a result for {imgs} (another folder named imgs), see FIRST.
FIRST = {"predict_same_name_two_folders": ["-p", "{run}", "--images", "{imgs}", *T]}


def file_hashes(root):
    """{relative path: sha256} of every file under ``root`` (symlinks not followed)."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def write_bomb(path, width=20000, height=20000):
    """A PNG whose header claims ``width``×``height`` pixels (a decompression bomb) in a few bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def build_template(root, class_dir, run_dir):
    """The world every case copies: dataset, run (validated at area 10), the user's files."""
    from PIL import Image

    root = Path(root)
    shutil.copytree(class_dir, root / "data" / "brick")
    shutil.copytree(
        run_dir,
        root / "runs" / "run",
        ignore=shutil.ignore_patterns("validation", "test", "predictions", "finetune", "visualize"),
    )
    setup = json.loads((root / "runs" / "run" / "setup.json").read_text())
    setup["directory"] = str(root / "data" / "brick")
    (root / "runs" / "run" / "setup.json").write_text(json.dumps(setup, indent=2))
    samples = sorted((root / "data" / "brick" / "test").glob("*/*.png"))[:3]
    for folder in (root / "imgs", root / "b" / "imgs", root / "bombs"):
        folder.mkdir(parents=True)
        for i, p in enumerate(samples):
            Image.open(p).save(folder / f"{i}.png")
    write_bomb(root / "bombs" / "bomb.png")
    (root / "bombs" / "2.png").unlink()  # two readable images and the bomb
    (root / "notes.csv").write_text("a,b\n1,2\n")
    (root / "mine").mkdir()
    (root / "mine" / "keep.txt").write_text("the user's own file\n")
    (root / "empty").mkdir()
    (root / "victim.keras").write_bytes(b"the user's own file, not a model\n")
    return root


def relocate(world_root):
    """After copying a template, point the run's setup.json at the copy's dataset."""
    setup_path = Path(world_root) / "runs" / "run" / "setup.json"
    setup = json.loads(setup_path.read_text())
    setup["directory"] = str(Path(world_root) / "data" / "brick")
    setup_path.write_text(json.dumps(setup, indent=2))


def hold_lock_process(run_dir):
    """A helper process holding the run's lock exclusively (as training does) until killed."""
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(Path(run_dir) / ".lock")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


DERIVED = ("runs/run/CAE_", "runs/run/head.onnx")  # the run's twins: made again when they do not match


def classify(case, code, err, before, after, world):
    """The outcome of a case: clean / works / traceback / wrong / lost, with a reason. A twin
    made again (``.onnx`` beside its model) is derived from the run, not lost."""
    derived = [k for k in before if k.startswith(DERIVED) and k.endswith(".onnx")]
    changed = [k for k, v in before.items() if after.get(k) != v and k not in derived]
    if changed:
        return "lost", f"changed or deleted: {changed[:3]}"
    if "Traceback" in err:
        return "traceback", err.strip().splitlines()[-1][:160]
    lines = [line.split("\r")[-1] for line in err.splitlines()]
    lines = [line for line in lines if line.strip() and not line.startswith("warning:")]
    if case.expect is None:
        if code != 0:
            return "wrong", f"refused a case that should work: {lines[-1] if lines else code}"
        if case.check is not None and not case.check(world):
            return "wrong", "exit 0 but the result is not what it should be"
        return "works", ""
    if code == 0:
        return "wrong", "exit 0 where a refusal was due"
    if len(lines) != 1 or ": error: " not in lines[0]:
        return "wrong", f"not one error line: {lines[:3]}"
    if case.expect not in lines[0]:
        return "wrong", f"message does not name the problem: {lines[0][:160]}"
    return "clean", lines[0]


SCRIPTS = {
    "test": "test.py",
    "validate": "validate.py",
    "train": "train.py",
    "finetune": "finetune.py",
    "export": "export.py",
    "predict_exported": "predict_exported.py",
}


def prepare_case(case, template, dest):
    """A fresh copy of the template world for ``case``, mutated as the case says."""
    shutil.copytree(template, dest, symlinks=True)
    relocate(dest)
    world = World(Path(dest))
    if case.mutate is not None:
        case.mutate(world)
    return world


def run_case_subprocess(case, template, dest):
    """Run one case as a user would (a new process); returns ``(outcome, reason)``."""
    world = prepare_case(case, template, dest)
    if case.id in FIRST:
        first = subprocess.run(
            [sys.executable, str(ROOT / "test.py"), *world.fill(FIRST[case.id])], capture_output=True, text=True
        )
        assert first.returncode == 0, first.stderr[-500:]
    before = file_hashes(world.root)
    holder = hold_lock_process(world.run) if case.hold_lock else None
    try:
        cwd = world.fill([case.cwd])[0] if case.cwd else str(ROOT)
        proc = subprocess.run(
            [sys.executable, str(ROOT / SCRIPTS[case.script]), *world.fill(case.argv)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"},
        )
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    return classify(case, proc.returncode, proc.stderr, before, file_hashes(world.root), world)


# ---- scenarios: several processes, kills, changed weights (sweep only; tests/test_reliability.py
# has its own versions of these) ----


def _run(script, *argv, cwd=ROOT):
    return subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"},
    )


def _start(script, *argv):
    # SIGINT back to its default: a sweep started in the background inherits it ignored, and
    # Python then never turns Ctrl-C into KeyboardInterrupt.
    return subprocess.Popen(
        [sys.executable, str(ROOT / script), *map(str, argv)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _one_error_line(stderr, fragment):
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    return len(lines) == 1 and ": error: " in lines[0] and fragment in lines[0] and "Traceback" not in stderr


def _wait_for(condition, proc, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.01)
    return proc.poll() is None


def _state_epoch(run):
    try:
        return json.loads((run / "backup" / "state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return -1


FAST = ["--passes", "1", "--scales", "1"]


def scenario_concurrent_tests(world):
    """Two test.py on one run, other --smooth: both work, one complete, consistent result."""
    procs = [_start("test.py", "-p", world.run, "-t", "0.5", "-a", "5", *FAST, "--smooth", s) for s in (1, 6)]
    outs = [p.communicate(timeout=900) for p in procs]
    if any(p.returncode for p in procs):
        return "traceback" if any("Traceback" in o[1] for o in outs) else "wrong", outs[0][1][-200:] + outs[1][1][-200:]
    import pandas as pd
    import tifffile

    method_dir = world.run / "test" / "ssim"
    frame = pd.read_csv(method_dir / "a5_t0.500000" / "classification.csv")
    for _, row in frame.iterrows():
        tiff = tifffile.imread(
            method_dir / "a5_t0.500000" / "anomaly_maps" / row["defect_type"] / f"{Path(row['path']).stem}.tiff"
        )
        if abs(float(tiff.max()) - row["score"]) > 1e-5 * max(1.0, abs(row["score"])):
            return "wrong", "scores and anomaly maps come from different processes"
    if [p for p in method_dir.iterdir() if ".partial" in p.name]:
        return "wrong", "a staging folder was left"
    return "works", f"{len(frame)} images, one consistent result"


def scenario_concurrent_resumes(world):
    """Two resume of one run: the second refuses with one line; the first finishes."""
    first = _start("train.py", "resume", "-p", world.run, "-e", "3")
    first.stdout.readline()
    second = _run("train.py", "resume", "-p", world.run, "-e", "1")
    out, err = first.communicate(timeout=900)
    if first.returncode:
        return "wrong", f"the first resume failed: {err[-200:]}"
    if second.returncode != 2 or not _one_error_line(second.stderr, "in use by another process"):
        return "traceback" if "Traceback" in second.stderr else "wrong", second.stderr[-200:]
    return "clean", second.stderr.strip()


def scenario_kill_at_resume_start(world):
    """kill -9 the moment resume -e 2 has written its backup: resume and resume -e continue."""
    proc = _start("train.py", "resume", "-p", world.run, "-e", "2")
    alive = _wait_for(lambda: (world.run / "backup" / "state.json").is_file(), proc)
    proc.kill()
    proc.communicate()
    if not alive:
        return "wrong", "resume ended before it could be killed"
    done = _run("train.py", "resume", "-p", world.run, "-e", "1")
    setup = world.setup()
    if done.returncode or setup["status"] != "done" or setup["epochs_run"] != 5:
        return "wrong", f"not resumable: {done.stderr[-200:]} {setup.get('status')} {setup.get('epochs_run')}"
    return "works", "killed at start, resumed to 5 epochs"


def scenario_kill_mid_training(world):
    """kill -9 during the second new epoch: resume continues from the last finished one."""
    proc = _start("train.py", "resume", "-p", world.run, "-e", "4")
    alive = _wait_for(lambda: _state_epoch(world.run) >= 3, proc)
    proc.kill()
    proc.communicate()
    if not alive:
        return "wrong", "resume ended before it could be killed"
    done = _run("train.py", "resume", "-p", world.run)
    setup = world.setup()
    import pandas as pd

    epochs = list(pd.read_csv(world.run / "history.csv")["epoch"])
    if done.returncode or setup["epochs_run"] != 6 or epochs != list(range(6)):
        return "wrong", f"{done.stderr[-200:]} epochs {epochs}"
    return "works", "killed mid-training, resumed, history 0-5"


def scenario_stale_threshold(world):
    """validate; the weights change (resume -e 1); test.py refuses the old threshold;
    validate again keeps the old result in other_weights/; test.py works."""
    before = file_hashes(world.run / "validation" / "ssim" / "a10")
    if _run("train.py", "resume", "-p", world.run, "-e", "1").returncode:
        return "wrong", "resume failed"
    refused = _run("test.py", "-p", world.run)
    if refused.returncode != 2 or not _one_error_line(refused.stderr, "computed on other weights"):
        return "traceback" if "Traceback" in refused.stderr else "wrong", refused.stderr[-200:]
    if (
        _run("validate.py", "-p", world.run, "-a", "10", *FAST).returncode
        or _run("test.py", "-p", world.run).returncode
    ):
        return "wrong", "validate/test after re-validation failed"
    kept = [p for p in (world.run / "validation" / "ssim" / OTHER).glob("*/a10")]
    if len(kept) != 1 or file_hashes(kept[0]) != before:
        return "lost", "the old validation result was not kept"
    return "clean", refused.stderr.strip()


def scenario_kill_during_test(world):
    """kill -9 test.py while it writes: the earlier result stays whole; the next run cleans up."""
    argv = ["-p", world.run, "-t", "0.5", "-a", "5", *FAST, "--save"]
    if _run("test.py", *argv).returncode:
        return "wrong", "first test failed"
    folder = world.run / "test" / "ssim" / "a5_t0.500000"
    before = file_hashes(folder)
    proc = _start("test.py", *argv)
    _wait_for(lambda: any(".partial" in p.name for p in folder.parent.iterdir()), proc)
    proc.kill()
    proc.communicate()
    if file_hashes(folder) != before:
        return "lost", "the earlier result changed"
    if _run("test.py", *argv).returncode or [p for p in folder.parent.iterdir() if ".partial" in p.name]:
        return "wrong", "the next run failed or left the killed run's staging folder"
    return "works", "earlier result intact, staging of the killed process removed"


def scenario_ctrl_c_new_run(world):
    """Ctrl-C during a new run's second epoch: one line, the run resumes."""
    out = world.root / "ctrlc"
    proc = _start(
        "train.py",
        "new",
        "-d",
        world.root / "data" / "brick",
        "--size",
        "32",
        "-a",
        "mvtec",
        "--epochs",
        "12",
        "--out",
        out,
        *EXTRA_TRAIN,
    )
    alive = _wait_for(lambda: any(_state_epoch(r) >= 1 for r in out.glob("*/*/*/*/*")), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    if "Traceback" in err:
        return "traceback", err[-200:]
    if not alive or proc.returncode != 130 or "interrupted" not in err:
        return "wrong", f"not interrupted (exit {proc.returncode})"
    (run,) = list(out.glob("*/*/*/*/*"))
    done = _run("train.py", "resume", "-p", run)
    if done.returncode or json.loads((run / "setup.json").read_text())["epochs_run"] != 12:
        return "wrong", done.stderr[-200:]
    return "works", "Ctrl-C after the first epoch, resumed to 12 epochs"


OTHER = "other_weights"
EXTRA_TRAIN = []
SCENARIOS = [
    scenario_concurrent_tests,
    scenario_concurrent_resumes,
    scenario_kill_at_resume_start,
    scenario_kill_mid_training,
    scenario_stale_threshold,
    scenario_kill_during_test,
    scenario_ctrl_c_new_run,
]


def run_scenario(scenario, template, dest):
    """A scenario on a fresh copy of the world; files that existed before must survive
    (the run's own model, history, setup and backup may change: training rewrites them)."""
    world = prepare_case(Case(scenario.__name__, "", []), template, dest)
    own = (
        "runs/run/CAE_",
        "runs/run/setup.json",
        "runs/run/history.csv",
        "runs/run/loss_curve.png",
        "runs/run/backup",
        "runs/run/calibration_",
        "runs/run/test/",
        "runs/run/validation/",
    )
    before = {k: v for k, v in file_hashes(world.root).items() if not k.startswith(own)}
    try:
        outcome, reason = scenario(world)
    except Exception as exc:  # noqa: BLE001 - a scenario that breaks is reported, not fatal to the sweep
        outcome, reason = "wrong", f"{exc.__class__.__name__}: {exc}"
    after = file_hashes(world.root)
    changed = [k for k, v in before.items() if after.get(k) != v]
    return ("lost", f"changed or deleted: {changed[:3]}") if changed else (outcome, reason)


def make_template(out):
    """Generate a dataset, train a 2-epoch run and validate it: the sweep's template world."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import make_dataset

    out = Path(out)
    (class_dir,) = make_dataset.generate(
        out / "gen", classes=("brick",), size=SIZE, n_train=14, n_test_good=3, n_test_defect=2, seed=0
    )
    extra = []
    helped = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "new", "--help"], capture_output=True, text=True
    ).stdout
    for flag, value in (("--mode", "object"), ("--head-steps", "0"), ("--color", "grayscale")):
        if flag in helped:  # the plain object-mode CAE the cases are written for
            extra += [flag, value]
    EXTRA_TRAIN[:] = extra
    train = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "new",
            "-d",
            str(class_dir),
            "--size",
            str(SIZE),
            "--epochs",
            "2",
            "-b",
            "4",
            "--val-split",
            "0.2",
            "--out",
            str(out / "gen_runs"),
            *extra,
        ],
        capture_output=True,
        text=True,
    )
    if train.returncode:
        raise SystemExit(f"training the sweep's run failed: {train.stderr[-800:]}")
    run_dir = Path(train.stdout.strip().splitlines()[-1])
    template = build_template(out / "template", class_dir, run_dir)
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "validate.py"),
            "-p",
            str(template / "runs" / "run"),
            "-a",
            "10",
            "--passes",
            "1",
            "--scales",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return template


def main(argv=None):
    """Build the world, run every case in its own process, print outcomes and counts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/cae_sweep", help="scratch folder (emptied first)")
    parser.add_argument("--only", nargs="*", default=None, help="case ids to run (default: all)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.time()
    template = make_template(out)
    counts = {"clean": 0, "works": 0, "traceback": 0, "wrong": 0, "lost": 0}
    cases = [c for c in CASES if args.only is None or c.id in args.only]
    scenarios = [s for s in SCENARIOS if args.only is None or s.__name__ in args.only]
    for i, case in enumerate(cases):
        outcome, reason = run_case_subprocess(case, template, out / "cases" / case.id)
        counts[outcome] += 1
        print(f"{i + 1:3d} {case.id:32s} {outcome:9s} {reason[:150]}", flush=True)
    for i, scenario in enumerate(scenarios):
        outcome, reason = run_scenario(scenario, template, out / "scenarios" / scenario.__name__)
        counts[outcome] += 1
        print(f"{len(cases) + i + 1:3d} {scenario.__name__:32s} {outcome:9s} {reason[:150]}", flush=True)
    cases = cases + scenarios
    print(
        f"{len(cases)} cases in {time.time() - started:.0f} s: {counts['clean']} clean refusals, {counts['works']} worked, "
        f"{counts['traceback']} tracebacks, {counts['wrong']} silent wrong results, {counts['lost']} data lost"
    )
    return 0 if counts["traceback"] == counts["wrong"] == counts["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
