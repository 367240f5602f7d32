"""Bad-input, fault and concurrency sweep of the command lines, as a new user would try them.

    .venv/bin/python bench/sweep_reliability.py [--out /tmp/sweep] [--only ID ...] [--jobs 2]

Builds a tiny world (a generated 48-px dataset, a 2-epoch run validated at area 10, a
1-epoch run with an 8-step learned head validated with the learned method, a 1-epoch
surface run, a few folders and files of the user's), then runs every case of :data:`CASES`
as a separate process on a fresh copy of that world (``--jobs`` at once) and every
scenario of :data:`SCENARIOS` one after the other, and sorts each outcome into:

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
import re
import shutil
import signal
import subprocess
import sys
import threading
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
    rewrites: tuple = ()  # files (prefixes under the world) the case may rewrite: a resume's model and history


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
            "hrun": self.root / "runs" / "hrun",
            "srun": self.root / "runs" / "srun",
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


def _zero_half_of_largest_kernel(twin):
    """Half of an ONNX twin's largest kernel zeroed; its metadata (model hash, verdict) intact."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(twin))
    big = max(proto.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    damaged = numpy_helper.to_array(big).copy()
    damaged.flat[: damaged.size // 2] = 0
    big.CopyFrom(numpy_helper.from_array(damaged, big.name))
    onnx.save(proto, str(twin))


def damaged_twin_weights(world):
    """Half of the twin's largest kernel zeroed; its metadata (model hash, verdict) intact."""
    (twin,) = world.run.glob("CAE_*.onnx")
    _zero_half_of_largest_kernel(twin)


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


# ---- issue 25, second half: every scenario the issue names, in each script it applies to ----

DEAD_PID = 4194304 + 17  # above Linux's largest pid: never a live process


def resumed(run="run"):
    """What ``train.py resume`` of ``run`` rewrites: its model, twins, head, setup and history."""
    return tuple(f"runs/{run}/{name}" for name in ("CAE_", "head.", "setup.json", "history.csv", "loss_curve.png"))


def _one_file(world, pattern, run="run"):
    found = sorted((world.root / "runs" / run).glob(pattern))
    assert len(found) == 1, f"{pattern} in {run}: {found}"
    return found[0]


def other_head(world, run="hrun"):
    """Another head in place of the validated one: the same architecture, other weights."""
    import keras

    path = world.root / "runs" / run / "head.keras"
    head = keras.models.load_model(path, compile=False)
    head.set_weights([w * 1.5 + 0.01 for w in head.get_weights()])
    head.save(path)


def head_is_recorded(kind):
    """The newest result of ``kind`` (validation / test) of {hrun} records the current head."""

    def check(world):
        import storage

        head = storage.model_id(world.root / "runs" / "hrun" / "head.keras")
        name = "validation_result.json" if kind == "validation" else storage.MARKER
        found = sorted((world.root / "runs" / "hrun" / kind).rglob(name), key=lambda p: p.stat().st_mtime)
        found = [p for p in found if storage.OTHER_WEIGHTS not in p.parts]
        return bool(found) and json.loads(found[-1].read_text()).get("head_sha256") == head

    return check


def head_maps_recomputed(world):
    """validate --method learned after the head changed: its maps cache is of the new head."""
    import numpy as np

    import storage

    cache = _one_file(world, "validation_maps_learned*.npz", "hrun")
    with np.load(cache) as stored:
        key = str(stored["key"])
    return storage.model_id(world.root / "runs" / "hrun" / "head.keras") in key and head_is_recorded("validation")(
        world
    )


def damage_head(how):
    def mutate(world):
        path = world.root / "runs" / "hrun" / "head.keras"
        if how == "garbage":
            path.write_bytes(b"PK\x03\x04 not really a keras file")
        elif how == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:
            path.unlink()

    return mutate


def damaged_twin(run="run", pattern="CAE_*.onnx", how="weights"):
    """The twin's weights damaged under intact metadata, truncated, or garbage."""

    def mutate(world):
        twin = _one_file(world, pattern, run)
        if how == "weights":
            _zero_half_of_largest_kernel(twin)
        elif how == "truncated":
            twin.write_bytes(twin.read_bytes()[: twin.stat().st_size // 2])
        elif how == "garbage":
            twin.write_bytes(b"not an onnx file")
        elif how == "other":  # another run's twin (its metadata names the other model)
            other = _one_file(world, "CAE_*.onnx", "hrun" if run == "run" else "run")
            shutil.copy(other, twin)

    return mutate


def twin_sound(run="run", pattern="CAE_*.onnx"):
    """The twin records the hash of its own weights and of the model it was made from."""

    def check(world):
        import networks
        import storage

        twin = _one_file(world, pattern, run)
        read, meta = networks._read(twin)
        source = twin.with_suffix(".keras")
        return meta.get(networks._WEIGHTS_KEY) == networks.weights_hash(read) and meta.get(
            networks._SOURCE_KEY
        ) == storage.model_id(source)

    return check


def damage_npz(pattern, how, run="run"):
    """A cache this tool wrote, damaged: truncated, not a zip, empty, an array missing, the
    main array reshaped, fewer paths than maps, another model's hash, or NaN values."""

    def mutate(world):
        import numpy as np

        path = _one_file(world, pattern, run)
        if how == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            return
        if how == "garbage":
            path.write_bytes(b"not a zip file at all")
            return
        if how == "empty":
            path.write_bytes(b"")
            return
        with np.load(path) as stored:
            arrays = {k: stored[k] for k in stored.files}
        main = "baselines" if "baselines" in arrays else "maps"
        if how == "nokey":
            del arrays[main]
        elif how == "reshaped":
            arrays[main] = arrays[main][..., :-1]
        elif how == "short_paths":
            arrays["paths"] = arrays["paths"][:-1]
        elif how == "other_model":
            arrays["model_sha256"] = np.array("0" * 64)
        elif how == "nan":
            arrays[main] = np.full_like(arrays[main], np.nan)
        np.savez(path, **arrays)

    return mutate


def cache_sound(pattern, run="run"):
    """The cache loads in full and its main array is finite and of the run's shape."""

    def check(world):
        import numpy as np

        path = _one_file(world, pattern, run)
        with np.load(path) as stored:
            main = stored["baselines"] if "baselines" in stored.files else stored["maps"]
            shape = tuple(json.loads((path.parent / "setup.json").read_text())["shape"])
            paths = stored["paths"] if "paths" in stored.files else main
            return np.isfinite(main).all() and tuple(main.shape[-2:]) == shape and len(paths) == len(main)

    return check


def keep_threshold(world):
    """Stash the template's a10 threshold beside the world (checked by :func:`same_threshold`)."""
    (world.root / "expected.json").write_text(world.validation_result().read_text())


def same_threshold(world):
    expected = json.loads((world.root / "expected.json").read_text())["threshold"]
    got = json.loads(world.validation_result().read_text())["threshold"]
    return abs(got - expected) <= 1e-6 * max(1.0, abs(expected)) and cache_sound("validation_maps_ssim*.npz")(world)


def stale_temporary(name, run="run"):
    """A 0-byte temporary a killed process left beside ``name`` (storage.atomic_path's naming)."""

    def mutate(world):
        stem, suffix = name.rsplit(".", 1)
        (world.root / "runs" / run / f".{stem}.{DEAD_PID}.tmp.{suffix}").write_bytes(b"")

    return mutate


def stale_partial(folder):
    """A staging folder a killed process left (StagedFolder's naming) under the run."""

    def mutate(world):
        target = world.run / folder
        partial = target.parent / f".{target.name}.partial-{DEAD_PID}-dead"
        partial.mkdir(parents=True)
        (partial / "classification.csv").write_text("half,written\n")

    return mutate


def no_temporaries(world):
    left = [p for p in world.root.rglob("*") if f".{DEAD_PID}." in p.name or f"partial-{DEAD_PID}" in p.name]
    return not left


def remove(pattern, run="run"):
    def mutate(world):
        for p in (world.root / "runs" / run).glob(pattern):
            p.unlink()

    return mutate


def set_run_setup(run, **changes):
    def mutate(world):
        path = world.root / "runs" / run / "setup.json"
        setup = json.loads(path.read_text())
        setup.update(changes)
        path.write_text(json.dumps(setup, indent=2))

    return mutate


def moved_run(keep_cache=True):
    """The run moved to another place, without its dataset (a run is one folder)."""

    def mutate(world):
        target = world.root / "moved" / "run"
        target.parent.mkdir()
        shutil.move(str(world.run), str(target))
        shutil.rmtree(world.root / "data")
        if not keep_cache:
            for p in target.glob("calibration_*.npz"):
                p.unlink()

    return mutate


def moved_prediction(world):
    found = list((world.root / "moved" / "run" / "predictions" / "ssim").glob("imgs-*/predictions.csv"))
    return len(found) == 1 and len(found[0].read_text().splitlines()) == 4


def training_images_added(world):
    from PIL import Image

    good = world.root / "data" / "brick" / "train" / "good"
    for i, p in enumerate(sorted(good.glob("*.png"))[:3]):
        Image.open(p).transpose(Image.FLIP_LEFT_RIGHT).save(good / f"added_{i}.png")


def training_images_removed(world):
    held = {n.strip() for n in (world.run / "validation_files.txt").read_text().splitlines()}
    good = world.root / "data" / "brick" / "train" / "good"
    removed = [p for p in sorted(good.glob("*.png")) if not any(h.endswith(p.name) for h in held)][:3]
    for p in removed:
        p.unlink()


def validation_image_removed(world):
    name = (world.run / "validation_files.txt").read_text().split()[0]
    (world.root / "data" / "brick" / name.split("brick/")[-1]).unlink(missing_ok=True)
    for p in (world.root / "data" / "brick").rglob(Path(name).name):
        p.unlink()


def counts_current(world):
    import runs

    setup = world.setup()
    run = runs.Run(world.run, runs.read_setup(world.run), world.model())
    return setup["n_train"] == len(run.training_paths()) and setup["n_validation"] == len(run.validation_list())


def head_retrained(world):
    """resume -e on the head run: the head now belongs to the new autoencoder."""
    import storage

    setup = json.loads((world.root / "runs" / "hrun" / "setup.json").read_text())
    head = setup.get("head") or {}
    return head.get("model_sha256") == storage.model_id(_one_file(world, "CAE_*.keras", "hrun"))


def exported_first(world):
    return (world.root / "exp" / "detector.json").is_file()


def exported_method(method):
    """The export's detector.json records ``method`` and its validated threshold (every map
    method exports since issue 24; the learned one was refused before)."""

    def check(world):
        meta = json.loads((world.root / "exp" / "detector.json").read_text())
        validated = json.loads(
            (world.root / "runs" / "hrun" / "validation" / method / "a10" / "validation_result.json").read_text()
        )
        return meta["method"] == method and meta["threshold"] == validated["threshold"]

    return check


def user_predictions(world):
    """{mine} holds a predictions.csv of the user's (and a mask)."""
    (world.root / "mine" / "predictions.csv").write_text("path,verdict\nmine.png,good\n")
    (world.root / "mine" / "0_mask.png").write_bytes(b"the user's mask")


def detector_with_identity(**changes):
    """The stand-in export with its artefact's SHA-256 recorded, as export.py records it."""

    def mutate(world):
        import hashlib

        folder = write_tiny_detector(world.root / "detector", **changes)
        meta = json.loads((folder / "detector.json").read_text())
        meta["artefact_sha256"] = hashlib.sha256((folder / "detector.onnx").read_bytes()).hexdigest()
        (folder / "detector.json").write_text(json.dumps(meta))

    return mutate


def detector_other_artefact(world):
    """detector.json of one export beside the detector.onnx of another (copied over it)."""
    detector_with_identity()(world)
    other = write_tiny_detector(world.root / "other_export", input={"color": "rgb"})
    shutil.copy(other / "detector.onnx", world.root / "detector" / "detector.onnx")
    import onnx

    proto = onnx.load(str(world.root / "detector" / "detector.onnx"))
    proto.producer_name = "another export"
    onnx.save(proto, str(world.root / "detector" / "detector.onnx"))


def detector_raw(text):
    def mutate(world):
        write_tiny_detector(world.root / "detector")
        (world.root / "detector" / "detector.json").write_text(text)

    return mutate


def detector_drop(key):
    def mutate(world):
        folder = write_tiny_detector(world.root / "detector")
        meta = json.loads((folder / "detector.json").read_text())
        del meta[key]
        (folder / "detector.json").write_text(json.dumps(meta))

    return mutate


def detector_missing_onnx(world):
    (write_tiny_detector(world.root / "detector") / "detector.onnx").unlink()


def verdicts_follow_threshold(world):
    """With threshold 2 (above every value of the stand-in's [0, 1] map) every image is good."""
    import csv

    rows = list(csv.DictReader((world.root / "pred" / "predictions.csv").open()))
    return len(rows) == 3 and all(r["verdict"] == "good" for r in rows)


def with_tiny_detector(*mutations):
    return chain(tiny_detector(), *mutations)


def images_16bit_palette_rgba(world):
    """{root}/depths: the same image as 8-bit, 16-bit grayscale, palette and RGBA PNGs."""
    import numpy as np
    from PIL import Image

    folder = world.root / "depths"
    folder.mkdir()
    pixels = np.asarray(Image.open(world.root / "imgs" / "0.png").convert("L"))
    Image.fromarray(pixels).save(folder / "a.png")
    Image.fromarray(pixels.astype(np.uint16) * 257).save(folder / "b.png")
    Image.fromarray(pixels).convert("P").save(folder / "c.png")
    Image.fromarray(pixels).convert("RGBA").save(folder / "d.png")


def depths_read_alike(script):
    def check(world):
        import pandas as pd

        if script == "test":
            (found,) = (world.run / "predictions" / "ssim").glob("depths-*/predictions.csv")
        else:
            found = world.root / "pred" / "predictions.csv"
        frame = pd.read_csv(found)
        return len(frame) == 4 and frame["score"].max() - frame["score"].min() <= 1e-4 * max(
            1.0, abs(frame["score"].max())
        )

    return check


def exported_rows(count, *, folder="pred"):
    def check(world):
        lines = (world.root / folder / "predictions.csv").read_text().splitlines()
        return len(lines) == count + 1

    return check


def overlays_match_csv(world):
    """test.py --save: each image's score in classification.csv is the one its Detector
    computes (the number the overlay's title shows, evaluation.score_test_images)."""
    import numpy as np
    import pandas as pd

    import detector as detector_module

    (csv_path,) = (world.run / "test" / "ssim").glob("a5_t0.500000/classification.csv")
    frame = pd.read_csv(csv_path)
    from settings import MapRequest

    found = detector_module.Detector.open(world.run, MapRequest(passes=1, scales=1), threshold=0.5, min_area=5)
    scores = [p.score for p in found.predict(list(frame["path"]))]
    overlays = list(csv_path.parent.rglob("*_overlay.png"))
    return np.allclose(scores, frame["score"], rtol=1e-4, atol=1e-6) and len(overlays) == len(frame)


FT = [*T, "--passes", "1", "--scales", "1"]
AGAIN = ("runs/run/validation/ssim/a10/",)  # validate -a 10 again: the same result, computed again
FIRST_ROUND = len(CASES)  # the cases before this second half of issue 25 (all in tests/test_reliability.py)
CASES += [
    # a replaced head.keras (learned and fused methods): never the old threshold, nor old maps
    Case("head_replaced_test_learned", "test", ["-p", "{hrun}", "--method", "learned"], "another learned head", other_head),
    Case("head_replaced_test_learned_a10", "test", ["-p", "{hrun}", "--method", "learned", "-a", "10"], "another learned head", other_head),
    Case("head_replaced_images_learned", "test", ["-p", "{hrun}", "--images", "{imgs}", "--method", "learned"], "another learned head", other_head),
    Case("export_learned_method", "export", ["-p", "{hrun}", "--method", "learned", "--format", "onnx", "--out", "{root}/exp"], None, check=exported_method("learned")),
    Case("head_replaced_validate_learned", "validate", ["-p", "{hrun}", "--method", "learned", "-a", "10"], None, other_head, check=head_maps_recomputed),
    Case("head_replaced_validate_fused", "validate", ["-p", "{hrun}", "--method", "fused", "-a", "10", "--passes", "1", "--scales", "1"], None, other_head, check=head_is_recorded("validation")),
    Case("head_replaced_test_learned_explicit", "test", ["-p", "{hrun}", "--method", "learned", *T], None, other_head, check=head_is_recorded("test")),
    Case("head_replaced_test_fused", "test", ["-p", "{hrun}", "--method", "fused"], "another learned head", other_head),
    Case("head_garbage_test", "test", ["-p", "{hrun}", "--method", "learned", *T], "is damaged", damage_head("garbage")),
    Case("head_truncated_validate", "validate", ["-p", "{hrun}", "--method", "learned", "-a", "5"], "is damaged", damage_head("truncated")),
    Case("head_missing_test", "test", ["-p", "{hrun}", "--method", "learned", *T], "has no learned residual head", damage_head("missing")),
    Case("head_missing_validate", "validate", ["-p", "{hrun}", "--method", "learned", "-a", "5"], "has no learned residual head", damage_head("missing")),
    Case("head_twin_weights_damaged", "test", ["-p", "{hrun}", "--method", "learned", *T], None, damaged_twin("hrun", "head.onnx"), check=twin_sound("hrun", "head.onnx")),
    Case("head_twin_truncated", "test", ["-p", "{hrun}", "--method", "learned", *T], None, damaged_twin("hrun", "head.onnx", "truncated"), check=twin_sound("hrun", "head.onnx")),
    # -p naming a file of the run that is not its model
    Case("test_p_head_keras", "test", ["-p", "{hrun}/head.keras", *T], "is the run's learned head"),
    Case("validate_p_head_keras", "validate", ["-p", "{hrun}/head.keras", "-a", "5"], "is the run's learned head"),
    Case("export_p_head_keras", "export", ["-p", "{hrun}/head.keras", "--format", "onnx", "--out", "{root}/exp"], "is the run's learned head"),
    Case("test_p_twin_onnx", "test", ["-p", "{run}/CAE_mvtec2_b4.onnx", *T], "CAE_mvtec2_b4.onnx"),
    Case("test_p_setup_json", "test", ["-p", "{run}/setup.json", *T], "setup.json"),
    # a twin with damaged weights but intact metadata, truncated, garbage, another run's
    Case("twin_damaged_validate", "validate", ["-p", "{run}", "-a", "5", "--passes", "1", "--scales", "1"], None, chain(damaged_twin(), remove("validation_maps_*.npz")), check=twin_sound()),
    Case("twin_damaged_images", "test", ["-p", "{run}", "--images", "{imgs}", *T], None, damaged_twin(), check=twin_sound()),
    Case("twin_truncated_test", "test", ["-p", "{run}", *FT], None, damaged_twin(how="truncated"), check=twin_sound()),
    Case("twin_garbage_images", "test", ["-p", "{run}", "--images", "{imgs}", *T], None, damaged_twin(how="garbage"), check=twin_sound()),
    Case("twin_of_other_run_test", "test", ["-p", "{run}", *FT], None, damaged_twin(how="other"), check=twin_sound()),
    # truncated or reshaped calibration caches (test, test --images)
    *[
        Case(f"calibration_{how}_{script}", "test", argv, None, damage_npz("calibration_ssim_s1_p1.npz", how), check=cache_sound("calibration_ssim_s1_p1.npz"))
        for how in ("truncated", "garbage", "empty", "nokey", "reshaped", "other_model")
        for script, argv in (("test", ["-p", "{run}", *FT]), ("images", ["-p", "{run}", "--images", "{imgs}", *FT]))
    ],
    # truncated or reshaped validation-maps caches: validate gives the threshold a clean run gives
    *[
        Case(f"validation_maps_{how}", "validate", ["-p", "{run}", "-a", "10", "--passes", "1", "--scales", "1"], None, chain(keep_threshold, damage_npz("validation_maps_ssim_s1_p1.npz", how)), check=same_threshold, rewrites=AGAIN)
        for how in ("truncated", "garbage", "empty", "nokey", "reshaped", "short_paths", "nan")
    ],
    Case("validation_maps_learned_reshaped", "validate", ["-p", "{hrun}", "--method", "learned", "-a", "5"], None, damage_npz("validation_maps_learned*.npz", "reshaped", "hrun"), check=cache_sound("validation_maps_learned*.npz", "hrun")),
    Case("validation_maps_learned_truncated", "validate", ["-p", "{hrun}", "--method", "learned", "-a", "5"], None, damage_npz("validation_maps_learned*.npz", "truncated", "hrun"), check=cache_sound("validation_maps_learned*.npz", "hrun")),
    # 0-byte temporaries and staging folders that killed processes left
    Case("stale_tmp_calibration_test", "test", ["-p", "{run}", *FT], None, chain(remove("calibration_*.npz"), stale_temporary("calibration_ssim_s1_p1.npz")), check=no_temporaries),
    Case("stale_tmp_validation_maps", "validate", ["-p", "{run}", "-a", "5", "--passes", "1", "--scales", "1"], None, chain(remove("validation_maps_*.npz"), stale_temporary("validation_maps_ssim_s1_p1.npz")), check=no_temporaries),
    Case("stale_tmp_setup_resume", "train", ["resume", "-p", "{run}", "-e", "1"], None, stale_temporary("setup.json"), check=no_temporaries, rewrites=resumed("run")),
    Case("stale_partial_test", "test", ["-p", "{run}", *FT], None, stale_partial("test/ssim/a5_t0.500000"), check=no_temporaries),
    Case("stale_partial_validate", "validate", ["-p", "{run}", "-a", "10", "--passes", "1", "--scales", "1"], None, stale_partial("validation/ssim/a10"), check=no_temporaries, rewrites=AGAIN),
    # setup.json 'shape' edited: on the surface run, and added to an object run
    Case("surface_shape_edited_test", "test", ["-p", "{srun}"], "validate", set_run_setup("srun", shape=[32, 64])),
    Case("surface_shape_edited_images", "test", ["-p", "{srun}", "--images", "{imgs}"], "validate", set_run_setup("srun", shape=[32, 64])),
    Case("surface_shape_edited_validate", "validate", ["-p", "{srun}", "-a", "10", "--passes", "1", "--scales", "1"], None, set_run_setup("srun", shape=[32, 64]), check=lambda w: cache_sound("validation_maps_ssim*.npz", "srun")(w), rewrites=("runs/srun/validation/ssim/a10/",)),
    Case("surface_shape_not_multiple", "test", ["-p", "{srun}", *FT], "'shape' must be", set_run_setup("srun", shape=[40, 50])),
    Case("surface_shape_text", "validate", ["-p", "{srun}", "-a", "5"], "'shape' must be", set_run_setup("srun", shape="wide")),
    Case("surface_shape_three", "test", ["-p", "{srun}", *FT], "'shape' must be", set_run_setup("srun", shape=[48, 48, 1])),
    Case("surface_shape_zero", "test", ["-p", "{srun}", "--images", "{imgs}", *FT], "'shape' must be", set_run_setup("srun", shape=[0, 0])),
    Case("object_shape_edited", "test", ["-p", "{run}", *FT], "'shape' must be", set_setup(shape=[32, 32])),
    Case("surface_works", "test", ["-p", "{srun}", "--images", "{imgs}"], None, check=lambda w: bool(list((w.root / "runs" / "srun" / "predictions").rglob("predictions.csv")))),
    # a run moved to another place without its dataset
    Case("moved_run_images_cached", "test", ["-p", "{root}/moved/run", "--images", "{imgs}", *FT], None, moved_run(), check=moved_prediction),
    Case("moved_run_images_no_cache", "test", ["-p", "{root}/moved/run", "--images", "{imgs}", *FT], "training images", moved_run(keep_cache=False)),
    Case("moved_run_images_validated", "test", ["-p", "{root}/moved/run", "--images", "{imgs}"], None, moved_run(), check=moved_prediction),
    Case("moved_run_test", "test", ["-p", "{root}/moved/run", *FT], "no test folder in", moved_run()),
    Case("moved_run_validate", "validate", ["-p", "{root}/moved/run", "-a", "5"], "not found", moved_run()),
    Case("moved_run_resume", "train", ["resume", "-p", "{root}/moved/run", "-e", "1"], "not found", moved_run()),
    Case("moved_run_export", "export", ["-p", "{root}/moved/run", "--format", "onnx", "--out", "{root}/exp"], "not found", moved_run()),
    # train.py resume after the training folder changed
    Case("resume_training_images_added", "train", ["resume", "-p", "{run}", "-e", "1"], None, training_images_added, check=counts_current, rewrites=resumed("run")),
    Case("resume_training_images_removed", "train", ["resume", "-p", "{run}", "-e", "1"], None, training_images_removed, check=counts_current, rewrites=resumed("run")),
    Case("resume_validation_image_removed", "train", ["resume", "-p", "{run}", "-e", "1"], "validation image", validation_image_removed),
    Case("validate_validation_image_removed", "validate", ["-p", "{run}", "-a", "5", "--passes", "1", "--scales", "1"], "validation image", chain(validation_image_removed, remove("validation_maps_*.npz"))),
    # resume -e retrains the head on the new autoencoder
    Case("resume_e_retrains_head", "train", ["resume", "-p", "{hrun}", "-e", "1"], None, check=head_retrained, rewrites=resumed("hrun")),
    # export.py --out
    Case("export_out_is_run", "export", ["-p", "{run}", "--format", "onnx", "--out", "{run}"], "would replace"),
    Case("export_out_in_dataset", "export", ["-p", "{run}", "--format", "onnx", "--out", "{data}/exp"], "dataset"),
    Case("export_out_is_file", "export", ["-p", "{run}", "--format", "onnx", "--out", "{notes}"], "not a folder"),
    Case("export_out_onto_other_runs_export", "export", ["-p", "{run}", "--format", "onnx", "--out", "{root}/exp"], "another run's result"),
    Case("export_out_own_export_again", "export", ["-p", "{run}", "--format", "onnx", "--out", "{root}/exp"], None, check=exported_first, rewrites=("exp/",)),
    # predict_exported.py --out, detector.json, the artefact
    Case("exported_out_user_predictions", "predict_exported", ["{detector}", "{imgs}", "--out", "{mine}"], "not an output of predict_exported.py", with_tiny_detector(user_predictions)),
    Case("exported_out_parent_of_input", "predict_exported", ["{detector}", "{imgs}", "--out", "{root}"], "overlaps the input folder", tiny_detector()),
    Case("exported_out_is_file", "predict_exported", ["{detector}", "{imgs}", "--out", "{notes}"], "not an output of predict_exported.py", tiny_detector()),
    Case("exported_out_folder_of_input_file", "predict_exported", ["{detector}", "{imgs}/0.png", "--out", "{imgs}"], "input", tiny_detector()),
    Case("exported_out_other_images", "predict_exported", ["{detector}", "{imgs2}", "--out", "{root}/pred"], "other images"),
    Case("exported_out_again_same", "predict_exported", ["{detector}", "{imgs}", "--out", "{root}/pred"], None, None, check=exported_predictions),
    Case("exported_threshold_edited", "predict_exported", ["{detector}", "{imgs}", "--out", "{root}/pred"], None, tiny_detector(threshold=2.0), check=verdicts_follow_threshold),
    Case("exported_threshold_negative", "predict_exported", ["{detector}", "{imgs}"], "threshold must be a finite number >= 0", tiny_detector(threshold=-1)),
    Case("exported_threshold_missing", "predict_exported", ["{detector}", "{imgs}"], "lacks 'threshold'", detector_drop("threshold")),
    Case("exported_min_area_text", "predict_exported", ["{detector}", "{imgs}"], "min", tiny_detector(min_area="big")),
    Case("exported_min_area_zero", "predict_exported", ["{detector}", "{imgs}"], "min", tiny_detector(min_area=0)),
    Case("exported_color_wrong", "predict_exported", ["{detector}", "{imgs}"], "input color must be grayscale or rgb", tiny_detector(input={"color": "purple"})),
    Case("exported_color_rgb_on_gray", "predict_exported", ["{detector}", "{imgs}"], "color", tiny_detector(input={"color": "rgb"})),
    Case("exported_input_missing", "predict_exported", ["{detector}", "{imgs}"], "lacks 'input'", detector_drop("input")),
    Case("exported_format_unknown", "predict_exported", ["{detector}", "{imgs}"], "unknown format", tiny_detector(format="pytorch")),
    Case("exported_artefact_outside", "predict_exported", ["{detector}", "{imgs}"], "outside", tiny_detector(artefact="../victim.keras")),
    Case("exported_json_broken", "predict_exported", ["{detector}", "{imgs}"], "is not valid JSON", detector_raw('{"format": "onnx",')),
    Case("exported_json_null", "predict_exported", ["{detector}", "{imgs}"], "instead of a JSON object", detector_raw("null")),
    Case("exported_json_missing", "predict_exported", ["{mine}", "{imgs}"], "detector.json"),
    Case("exported_onnx_missing", "predict_exported", ["{detector}", "{imgs}"], "is missing", detector_missing_onnx),
    Case("exported_onnx_garbage", "predict_exported", ["{detector}", "{imgs}"], "is damaged or truncated", chain(tiny_detector(), lambda w: (w.root / "detector" / "detector.onnx").write_bytes(b"garbage"))),
    Case("exported_artefact_of_other_export", "predict_exported", ["{detector}", "{imgs}"], "another export's", detector_other_artefact),
    Case("exported_artefact_identity_ok", "predict_exported", ["{detector}", "{imgs}", "--out", "{root}/pred"], None, detector_with_identity(), check=exported_predictions),
    Case("exported_images_missing", "predict_exported", ["{detector}", "{root}/nope"], "no image could be read", tiny_detector()),
    Case("exported_images_empty", "predict_exported", ["{detector}", "{empty}"], "no image could be read", tiny_detector()),
    # --images with float TIFFs, 16-bit, palette, RGBA, broken links and hidden files (both scripts)
    Case("exported_float_tiff", "predict_exported", ["{detector}", "{root}/floats", "--out", "{root}/pred"], None, with_tiny_detector(float_tiff), check=lambda w: (lambda rows: len(rows) == 3 and rows[1].split(",")[1:3] == rows[2].split(",")[1:3])((w.root / "pred" / "predictions.csv").read_text().splitlines())),
    Case("exported_links_and_hidden", "predict_exported", ["{detector}", "{root}/links", "--out", "{root}/pred"], None, with_tiny_detector(links_and_hidden), check=exported_rows(1)),
    Case("exported_depths", "predict_exported", ["{detector}", "{root}/depths", "--out", "{root}/pred"], None, with_tiny_detector(images_16bit_palette_rgba), check=depths_read_alike("exported")),
    Case("images_depths", "test", ["-p", "{run}", "--images", "{root}/depths", *T], None, images_16bit_palette_rgba, check=depths_read_alike("test")),
    Case("images_float_tiff_surface", "test", ["-p", "{srun}", "--images", "{root}/floats", *T], None, float_tiff, check=lambda w: bool(list((w.root / "runs" / "srun" / "predictions").rglob("predictions.csv")))),
    Case("images_links_and_hidden_learned", "test", ["-p", "{hrun}", "--method", "learned", "--images", "{root}/links", *T], None, links_and_hidden, check=lambda w: len(next((w.root / "runs" / "hrun" / "predictions").rglob("predictions.csv")).read_text().splitlines()) == 2),
    # overlay titles: every image's own score (the CSV against the Detector of the same settings)
    Case("overlays_show_own_scores", "test", ["-p", "{run}", *FT, "--save"], None, check=overlays_match_csv),
    # a plain rerun after a --save result: the earlier masks and overlays are kept (moved aside)
    Case("rerun_without_save_keeps_masks", "test", ["-p", "{run}", *FT], None),
    # the same result again: replaced in place (its report is written after the commit), nothing moved aside
    Case("rerun_same_result_in_place", "test", ["-p", "{run}", *FT], None, check=lambda w: not list(w.run.rglob(OTHER)), rewrites=("runs/run/test/",)),
]  # fmt: skip

# Cases that need an earlier result: (script, argv) run on the fresh copy before the case's
# mutation, e.g. a result for {imgs} before another folder named imgs is predicted.
FIRST = {
    "predict_same_name_two_folders": ("test", ["-p", "{run}", "--images", "{imgs}", *T]),
    "head_replaced_test_learned_explicit": ("test", ["-p", "{hrun}", "--method", "learned", *T]),
    "export_out_onto_other_runs_export": (
        "export",
        ["-p", "{hrun}", "--method", "ssim", "--format", "onnx", "--out", "{root}/exp"],
        lambda world: _first_subprocess("validate", world.fill(["-p", "{hrun}", "--method", "ssim", "-a", "10", "--passes", "1", "--scales", "1"])),
    ),
    "export_out_own_export_again": ("export", ["-p", "{run}", "--format", "onnx", "--out", "{root}/exp"]),
    "exported_out_other_images": ("predict_exported", ["{detector}", "{imgs}", "--out", "{root}/pred"], tiny_detector()),
    "exported_out_again_same": ("predict_exported", ["{detector}", "{imgs}", "--out", "{root}/pred"], tiny_detector()),
    "head_replaced_test_fused": ("validate", ["-p", "{hrun}", "--method", "fused", "-a", "10", "--passes", "1", "--scales", "1"]),
    "rerun_without_save_keeps_masks": ("test", ["-p", "{run}", *FT, "--save"]),
    "rerun_same_result_in_place": ("test", ["-p", "{run}", *FT]),
}  # fmt: skip


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


def build_template(root, class_dir, run_dir, head_dir=None, surface_dir=None):
    """The world every case copies: dataset, run (validated at area 10), the user's files, and
    where given the head run ({hrun}) and the surface run ({srun})."""
    from PIL import Image

    root = Path(root)
    shutil.copytree(class_dir, root / "data" / "brick")
    for name, source in (("run", run_dir), ("hrun", head_dir), ("srun", surface_dir)):
        if source is not None:
            shutil.copytree(
                source,
                root / "runs" / name,
                ignore=shutil.ignore_patterns("validation", "test", "predictions", "finetune", "visualize"),
            )
    relocate(root)
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
    """After copying a template, point the runs' setup.json at the copy's dataset."""
    for setup_path in sorted((Path(world_root) / "runs").glob("*/setup.json")):
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


# What killed processes leave: temporaries (storage.atomic_path) and staging folders; removed by the next run.
STALE = re.compile(r"(.*/)?\.[^/]+\.\d+\.tmp\.[^/]+|(.*/)?\.[^/]+\.partial-\d+-[^/]+(/.*)?")
# Files derived from a run, made again when they do not match (twins) or do not load (caches).
DERIVED = re.compile(r"runs/[^/]+/(CAE_[^/]*\.onnx|head\.onnx|calibration_[^/]*\.npz|validation_maps_[^/]*\.npz)")


def classify(case, code, err, before, after, world):
    """The outcome of a case: clean / works / traceback / wrong / lost, with a reason. A twin
    made again (``.onnx`` beside its model) is derived from the run, not lost."""
    derived = [
        k for k in before if DERIVED.fullmatch(k) or STALE.fullmatch(k) or k.startswith(case.rewrites or ("\0",))
    ]
    kept_aside = {v for k, v in after.items() if "/other_weights/" in k or "/earlier/" in k}  # moved aside, a note
    changed = [k for k, v in before.items() if after.get(k) != v and k not in derived and v not in kept_aside]
    if changed:
        return "lost", f"changed or deleted: {changed[:3]}"
    if "Traceback" in err:
        return "traceback", err.strip().splitlines()[-1][:160]
    lines = [line.split("\r")[-1] for line in err.splitlines()]
    lines = [line for line in lines if line.strip() and not re.match(r"(\S+: )?warning:", line)]
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


def prepare_case(case, template, dest, run_first=None):
    """A fresh copy of the template world for ``case``: its earlier result (:data:`FIRST`, by
    ``run_first(script, argv)``), then mutated as the case says."""
    shutil.copytree(template, dest, symlinks=True)
    relocate(dest)
    world = World(Path(dest))
    if case.id in FIRST and run_first is not None:
        script, argv, *before = FIRST[case.id]  # before: what the earlier result needs (a detector)
        for mutate in before:
            mutate(world)
        run_first(script, world.fill(argv))
    if case.mutate is not None:
        with _MUTATING:  # mutations load Keras models: one at a time when cases run side by side
            case.mutate(world)
    return world


_MUTATING = threading.Lock()


def _first_subprocess(script, argv):
    first = subprocess.run(
        [sys.executable, str(ROOT / SCRIPTS[script]), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"},
    )
    assert first.returncode == 0, first.stderr[-500:]


def run_case_subprocess(case, template, dest):
    """Run one case as a user would (a new process); returns ``(outcome, reason)``."""
    world = prepare_case(case, template, dest, _first_subprocess)
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
    method_dir = world.run / "test" / "ssim"
    mixed = _consistent_test_result(method_dir)  # scores are not the maps' maxima: AUROCs recomputed
    if mixed:
        return "wrong", mixed
    if [p for p in method_dir.rglob("*") if ".partial" in p.name or p.name == OTHER]:
        return "wrong", "a staging folder was left, or the other process's result was moved aside"
    return "works", "13 images, one consistent result"


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
    model = hashlib.sha256(world.model().read_bytes()).hexdigest()
    if _run("train.py", "resume", "-p", world.run, "-e", "1").returncode:
        return "wrong", "resume failed"
    if hashlib.sha256(world.model().read_bytes()).hexdigest() == model:
        retrained_model(world)  # the extra epoch was no better, so the best model stayed: change it as one would
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
        "--patience",
        "0",  # no early stopping: the resumed run reaches its 12 epochs whatever the losses
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


def _consistent_test_result(method_dir):
    """None when the labelled result under ``method_dir`` is one whole result, else what is
    mixed: metrics.json's pixel AUROC must be the one the anomaly maps give against the ground
    truth (scikit-learn), and its image AUROC the one of classification.csv's scores. Works with
    metrics.json and the maps beside the result folder or inside it."""
    import numpy as np
    import pandas as pd
    import tifffile
    from sklearn.metrics import roc_auc_score

    import data

    (csv_path,) = method_dir.glob("a5_t0.500000/classification.csv")
    folder = csv_path.parent if (csv_path.parent / "metrics.json").is_file() else method_dir
    metrics = json.loads((folder / "metrics.json").read_text())
    frame = pd.read_csv(csv_path)
    values, truth = [], []
    for _, row in frame.iterrows():
        path = Path(row["path"])
        values.append(tifffile.imread(folder / "anomaly_maps" / row["defect_type"] / f"{path.stem}.tiff").ravel())
        mask = data.ground_truth_path(path.parents[2], row["defect_type"], path)
        truth.append(data.load_mask(mask, data.image_size(path)).ravel() if mask else np.zeros(values[-1].size, bool))
    pixel = roc_auc_score(np.concatenate(truth), np.concatenate(values))
    if abs(pixel - metrics["pixel_auroc"]) > 1e-6:
        return f"metrics.json (pixel AUROC {metrics['pixel_auroc']:.6f}) and the anomaly maps ({pixel:.6f}) differ"
    image = roc_auc_score(frame["truth"] == "defective", frame["score"])
    if abs(image - metrics["image_auroc"]) > 1e-9:
        return "metrics.json and classification.csv come from different runs"
    return None


def _killed_after_first_commit(world, how):
    """test.py --save at the default smoothing; test.py --smooth 1 stopped (``how``: SIGKILL or
    SIGINT) right after its first commit; then a plain rerun. Never a mixed result; the
    earlier --save masks are kept (in place or moved aside with a note)."""
    argv = ["-p", world.run, "-t", "0.5", "-a", "5", *FAST]
    if _run("test.py", *argv, "--save").returncode:
        return "wrong", "first test failed"
    method_dir = world.run / "test" / "ssim"
    masks = {k: v for k, v in file_hashes(method_dir).items() if "mask" in k or "overlay" in k}
    folder = method_dir / "a5_t0.500000"
    before = folder.stat().st_ino

    def committed():  # the result folder was renamed into place
        try:
            return folder.stat().st_ino != before
        except OSError:
            return False

    proc = _start("test.py", *argv, "--smooth", "1")
    alive = _wait_for(committed, proc, seconds=600)
    proc.send_signal(how)
    _, err = proc.communicate(timeout=300)
    if "Traceback" in err:
        return "traceback", err.strip().splitlines()[-1][:160]
    if not alive:
        return "wrong", "test.py ended before it could be stopped after its first commit"
    mixed = _consistent_test_result(method_dir)
    if mixed:
        return "wrong", f"after the stop: {mixed}"
    rerun = _run("test.py", *argv)
    if rerun.returncode:
        return "wrong", f"the plain rerun failed: {rerun.stderr[-200:]}"
    mixed = _consistent_test_result(method_dir)
    if mixed:
        return "wrong", f"after the rerun: {mixed}"
    kept = set(file_hashes(world.run).values())
    if not masks or any(v not in kept for v in masks.values()):
        return "lost", f"the earlier --save masks and overlays are gone ({len(masks)} before)"
    return "works", "one whole result after the stop and after the rerun; earlier masks kept"


def scenario_test_kill_9_after_first_commit(world):
    return _killed_after_first_commit(world, signal.SIGKILL)


def scenario_test_ctrl_c_after_first_commit(world):
    return _killed_after_first_commit(world, signal.SIGINT)


def _ctrl_c_early(world, script, *argv, after=1.0):
    """Ctrl-C ``after`` seconds into ``script`` (importing TensorFlow, loading the run): one
    line, exit 130, no traceback, nothing half-written."""
    proc = _start(script, *argv)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    if "Traceback" in err:
        return "traceback", err.strip().splitlines()[-1][:160]
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"(\S+: )?warning:", line)]
    if proc.returncode == 0:
        return "wrong", "finished before the Ctrl-C: not a test of it"
    if proc.returncode != 130 or len(lines) != 1 or "interrupted" not in lines[0]:
        return "wrong", f"exit {proc.returncode}, stderr {lines[:3]}"
    left = [p for p in world.root.rglob("*") if ".partial-" in p.name or ".tmp." in p.name]
    if left:
        return "wrong", f"left behind: {left[:2]}"
    return "clean", lines[0]


def scenario_ctrl_c_early_validate(world):
    return _ctrl_c_early(world, "validate.py", "-p", world.run, "-a", "5", *FAST)


def scenario_ctrl_c_early_finetune(world):
    return _ctrl_c_early(world, "finetune.py", "-p", world.run)


def scenario_ctrl_c_early_test(world):
    return _ctrl_c_early(world, "test.py", "-p", world.run, "-t", "0.5", "-a", "5", *FAST)


def scenario_ctrl_c_early_export(world):
    return _ctrl_c_early(world, "export.py", "-p", world.run, "--format", "onnx", "--out", world.root / "exp")


def scenario_ctrl_c_early_resume(world):
    return _ctrl_c_early(world, "train.py", "resume", "-p", world.run, "-e", "1")


def scenario_ctrl_c_early_predict_exported(world):
    write_tiny_detector(world.root / "detector")
    for i in range(1, 2000):  # seconds of work on an idle machine, so the Ctrl-C never comes after the end
        shutil.copy(world.root / "imgs" / "0.png", world.root / "imgs" / f"copy{i}.png")
    return _ctrl_c_early(
        world,
        "predict_exported.py",
        world.root / "detector",
        world.root / "imgs",
        "--out",
        world.root / "pred",
        after=0.3,
    )


def scenario_ctrl_c_validate_learned(world):
    """Ctrl-C half a second into validate --method learned of the head run (its imports: it
    can finish in about a second when its maps are cached)."""
    return _ctrl_c_early(
        world, "validate.py", "-p", world.root / "runs" / "hrun", "-a", "5", "--method", "learned", after=0.5
    )


OTHER = "other_weights"
EXTRA_TRAIN = ["--mode", "object", "--head-steps", "0", "--color", "grayscale"]  # make_template checks them
SCENARIOS = [
    scenario_concurrent_tests,
    scenario_concurrent_resumes,
    scenario_kill_at_resume_start,
    scenario_kill_mid_training,
    scenario_stale_threshold,
    scenario_kill_during_test,
    scenario_ctrl_c_new_run,
    # issue 25, second half
    scenario_test_kill_9_after_first_commit,
    scenario_test_ctrl_c_after_first_commit,
    scenario_ctrl_c_early_validate,
    scenario_ctrl_c_early_finetune,
    scenario_ctrl_c_early_test,
    scenario_ctrl_c_early_export,
    scenario_ctrl_c_early_resume,
    scenario_ctrl_c_early_predict_exported,
    scenario_ctrl_c_validate_learned,
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
        "runs/run/validation_maps_",
        "runs/run/test/",
        "runs/run/validation/",
    )
    before = {k: v for k, v in file_hashes(world.root).items() if not k.startswith(own)}
    try:
        outcome, reason = scenario(world)
    except Exception as exc:  # noqa: BLE001 - a scenario that breaks is reported, not fatal to the sweep
        outcome, reason = "wrong", f"{exc.__class__.__name__}: {exc}"
    after = file_hashes(world.root)
    changed = [k for k, v in before.items() if after.get(k) != v and not (DERIVED.fullmatch(k) or STALE.fullmatch(k))]
    return ("lost", f"changed or deleted: {changed[:3]}") if changed else (outcome, reason)


def _train_run(class_dir, out, *extra):
    """``train.py new`` on the sweep's dataset (48 px, batch 4); returns the run folder."""
    train = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "new", "-d", str(class_dir), "--size", str(SIZE), "-b", "4",
         "--val-split", "0.2", "--color", "grayscale", "--out", str(out), *extra],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if train.returncode:
        raise SystemExit(f"training the sweep's run failed: {train.stderr[-800:]}")
    return Path(train.stdout.strip().splitlines()[-1])


def _validate(run, *extra):
    subprocess.run(
        [sys.executable, str(ROOT / "validate.py"), "-p", str(run), "-a", "10", *extra],
        capture_output=True,
        text=True,
        check=True,
    )


# The extra runs of the world: a run with a small learned head ({hrun}, validated with the
# learned method) and a surface run ({srun}); cases that use them name these placeholders.
HEAD_STEPS = "8"
HEAD_RUN = ["--mode", "object", "--head-steps", HEAD_STEPS, "--epochs", "1", "--no-augment"]
SURFACE_RUN = ["--mode", "surface", "--patch", "32", "--head-steps", "0", "--epochs", "1", "--no-augment"]


def make_template(out):
    """Generate a dataset, train a 2-epoch run and validate it, and the head and surface runs:
    the sweep's template world."""
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
    for flag, value in (("--mode", "object"), ("--head-steps", "0")):
        if flag in helped:  # the plain object-mode CAE the cases are written for
            extra += [flag, value]
    EXTRA_TRAIN[:] = extra + ["--color", "grayscale"]
    run_dir = _train_run(class_dir, out / "gen_runs", "--epochs", "2", *extra)
    head_dir = _train_run(class_dir, out / "gen_head", *HEAD_RUN)
    surface_dir = _train_run(class_dir, out / "gen_surface", *SURFACE_RUN)
    template = build_template(out / "template", class_dir, run_dir, head_dir, surface_dir)
    _validate(template / "runs" / "run", "--passes", "1", "--scales", "1")
    _validate(template / "runs" / "hrun", "--method", "learned")
    _validate(template / "runs" / "srun", "--passes", "1", "--scales", "1")
    return template


def main(argv=None):
    """Build the world, run every case in its own process, print outcomes and counts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/cae_sweep", help="scratch folder (emptied first)")
    parser.add_argument("--only", nargs="*", default=None, help="case ids to run (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="single-command cases run at once (default: 2)")
    parser.add_argument("--template", default=None, help="reuse the template world of an earlier sweep (develop)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.time()
    template = Path(args.template) if args.template else make_template(out)
    counts = {"clean": 0, "works": 0, "traceback": 0, "wrong": 0, "lost": 0}
    cases = [c for c in CASES if args.only is None or c.id in args.only]
    scenarios = [s for s in SCENARIOS if args.only is None or s.__name__ in args.only]
    from concurrent.futures import ThreadPoolExecutor

    def one(case):  # every case its own copy and process: independent of the others
        try:
            return run_case_subprocess(case, template, out / "cases" / case.id)
        except Exception as exc:  # noqa: BLE001 - a case whose set-up breaks is reported, not fatal to the sweep
            return "wrong", f"the case's set-up failed: {exc.__class__.__name__}: {str(exc)[-300:]}"

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for i, (case, (outcome, reason)) in enumerate(zip(cases, pool.map(one, cases))):
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
