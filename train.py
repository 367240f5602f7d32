"""Train a convolutional autoencoder on defect-free images (``train/good``).

    python3 train.py new -d mvtec/capsule -a mvtec -b 12 -l ssim -c grayscale -t "first try"
    python3 train.py resume -p saved_models/<...run folder...> [-e MORE_EPOCHS]

The last line printed is the run folder's path.
Short flags here: -a is --architecture and -t is --tag (in the other scripts -a is --area, and -t
is --threshold, or --test-image in finetune.py).
"""

import argparse
import sys

from utils import HelpFormatter, quiet_tensorflow, run_cli, stop_on_ctrl_c

stop_on_ctrl_c(__name__)  # Ctrl-C from here on: one line and exit code 130, never a traceback
quiet_tensorflow()  # before anything imports TensorFlow; the heavy imports wait until main has parsed

import data  # noqa: E402  (light: numpy and Pillow only)
import distribution  # noqa: E402  (no TensorFlow at import)
import regime  # noqa: E402  (numpy only)
import runs  # noqa: E402  (the run record; no TensorFlow at import)
import settings  # noqa: E402
import training  # noqa: E402  (no TensorFlow at import)

D = settings.TrainConfig.default  # every default of `new` is the config's (one place)


def get_parser():
    """Command-line options of ``train.py``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{new,resume}")
    new = sub.add_parser("new", help="train a new model", formatter_class=HelpFormatter)
    new.add_argument("-d", "--directory", required=True, help="class folder holding train/good (MVTec AD layout)")
    new.add_argument(
        "-a",
        "--architecture",
        choices=settings.ARCHITECTURES,
        default=D("architecture"),
        help="mvtec: Bergmann's CAE (1x1x100 code); mvtec2: same with a spatial 8x8xk code; "
        "resnet: InceptionResNetV2 encoder",
    )
    new.add_argument("-b", "--batch", type=int, default=D("batch"), help="batch size (per device, see --strategy)")
    new.add_argument(
        "-l",
        "--loss",
        choices=settings.LOSSES,
        default=D("loss"),
        help="training loss (1-SSIM, 1-MS-SSIM, summed or mean squared error)",
    )
    new.add_argument(
        "-c",
        "--color",
        choices=("auto", "grayscale", "rgb"),
        default=D("color"),
        help="colour mode images are read in; auto: rgb when the training images have colour",
    )
    new.add_argument(
        "-i",
        "--instances",
        type=int,
        default=D("instances"),
        help="images (surface runs: patches) to show the model; epochs = max(1, instances // training "
        "images); default: " + ", ".join(f"{n} for {mode} runs" for mode, n in regime.DEFAULT_INSTANCES.items()),
    )
    new.add_argument("--epochs", type=int, default=D("epochs"), help="number of epochs (default: from -i)")
    new.add_argument("-t", "--tag", default=D("tag"), help="free text stored in setup.json (default: none)")
    new.add_argument(
        "--mode",
        choices=regime.MODES,
        default=D("mode"),
        help="object: aligned parts, whole images squeezed to a square, per-pixel baseline; surface: "
        "textures and unaligned parts, aspect ratio kept, training on random patches, fully "
        "convolutional maps; auto: object when the mean good image explains >= "
        f"{regime.ALIGNMENT_THRESHOLD:g} of the good images' variance (recorded in setup.json)",
    )
    new.add_argument(
        "--size",
        type=int,
        default=D("size"),
        help=f"object runs: square side images are resized to (default {training.DEFAULT_OBJECT_SIZE}); "
        f"surface runs: shorter side, aspect ratio kept (default: native, at most {regime.MAX_SURFACE_SIDE})",
    )
    new.add_argument(
        "--patch",
        type=int,
        default=D("patch"),
        help=f"surface runs: side of the random training crops, a multiple of 16 (default {regime.DEFAULT_PATCH}, "
        "or the shorter side of smaller images)",
    )
    new.add_argument(
        "--head-steps",
        type=int,
        default=D("head_steps"),
        help="after the autoencoder, train the learned residual's segmentation head for this many steps "
        "on simulated defects (map method 'learned'); 0: none",
    )
    new.add_argument("--lr", type=float, default=D("lr"), help="Adam learning rate")
    new.add_argument(
        "--seed", type=int, default=D("seed"), help="random seed (split, shuffling, augmentation, weights)"
    )
    new.add_argument(
        "--patience",
        type=int,
        default=D("patience"),
        help="early stopping after this many epochs without a better validation loss (0: off); the learning "
        "rate halves after half as many",
    )
    new.add_argument(
        "--no-augment", action="store_true", help="train without augmentation (rotation, shift, brightness)"
    )
    new.add_argument(
        "--rotation",
        type=float,
        default=D("rotation"),
        help="largest random rotation in degrees (0-180; 180 for round parts seen from above, such as bottle tops)",
    )
    new.add_argument(
        "--flip", action="store_true", help="add mirror augmentation (for textures, not for oriented objects)"
    )
    new.add_argument(
        "--denoise",
        type=float,
        nargs="?",
        const=settings.DEFAULT_DENOISE,
        default=D("denoise"),
        metavar="SHARE",
        help="train as a denoising autoencoder: paste a random patch into this share of the inputs "
        "(bare --denoise: %(const)s; 0: off) and learn to output the clean image, so defects "
        "are repaired instead of copied (default: %(default)s)",
    )
    new.add_argument("--out", default=D("out"), help="root folder for run folders")
    advanced = new.add_argument_group("advanced", "rarely changed: devices, numerics, data split, resnet weights")
    advanced.add_argument(
        "--strategy",
        choices=distribution.STRATEGIES,
        default=D("strategy"),
        help="devices to train on: one; mirrored (every local GPU, else every logical CPU device); "
        "multiworker (the machines in TF_CONFIG); auto: mirrored when there are several GPUs, else one. "
        "-b is per replica: the global batch is -b x replicas (recorded in setup.json)",
    )
    advanced.add_argument(
        "--precision",
        choices=training.PRECISIONS,
        default=D("precision"),
        help="mixed: the autoencoder's layers compute in bfloat16 on CPUs (float16 on GPUs; weights, loss "
        "and SSIM stay float32); the saved model maps in float32",
    )
    advanced.add_argument(
        "--jit",
        action="store_true",
        help="compile training steps with XLA (default: off, Keras's choice: XLA on GPUs only; "
        "measured 3-4x slower on a 2-core CPU)",
    )
    advanced.add_argument(
        "--val-split",
        type=float,
        default=D("val_split"),
        help="share of train/good held back for validation and thresholds",
    )
    advanced.add_argument(
        "--weights",
        default=D("weights"),
        help="resnet encoder weights: imagenet (from Keras's cache only, no download here), none, or a weights file",
    )
    resume = sub.add_parser(
        "resume", help="continue an interrupted run, or extend a finished one", formatter_class=HelpFormatter
    )
    resume.add_argument("-p", "--path", required=True, help="run folder (or the .keras model file inside it)")
    resume.add_argument(
        "-e",
        "--epochs",
        type=int,
        default=None,
        help="epochs to add to a finished (or interrupted) run (default: none; an interrupted run finishes its own)",
    )
    resume_advanced = resume.add_argument_group("advanced")
    resume_advanced.add_argument(
        "--strategy",
        choices=distribution.STRATEGIES,
        default=None,
        help="devices to train on (see train.py new --help); default: the run's own, from setup.json",
    )
    return parser


def main(argv=None):
    """Parse arguments, train, print a one-line summary and the run folder."""
    args = get_parser().parse_args(argv)
    if args.command == "new":
        # The class folder first: a wrong -d is one line before TensorFlow starts (several seconds).
        data.check_class_dir(args.directory)
        run_dir, record = training.new_run(settings.TrainConfig.from_args(args))
    else:
        run_dir, record = training.resume_run(args.path, args.epochs, args.strategy)
    setup = runs.RunSetup.from_record(record)
    summary = (
        f"trained {setup.epochs_run} epochs, best validation loss {setup.best_val_loss:.5f} "
        f"(epoch {setup.best_epoch}), {setup.training_seconds:.0f} s"
    )
    how = "chosen by --mode auto" if setup.mode_requested == "auto" else "as --mode asked"
    if setup.alignment is not None:
        how += f", alignment {setup.alignment:.2f}"
    print(f"{setup.mode} run ({how}): {summary}")
    print(run_dir)


if __name__ == "__main__":
    sys.exit(run_cli(main, parser=get_parser))
