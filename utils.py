"""Small pieces every command-line script shares: user errors, the CLI wrapper, the help
formatter, seeding.

A script raises :class:`UserError` for anything the user can fix (a wrong path, an
impossible value); :func:`run_cli` turns it into one line on stderr and exit code 2,
so users never see a traceback for their own mistakes, and ends a finished run with its
elapsed time on stderr (stdout's last line stays the path other scripts read).

Libraries never name command-line flags: an error about a setting is a :class:`SettingError`
(a ValueError) naming the setting, a function's parameter or a config's field, in backticks
(`batch`, `passes=1`); :func:`run_cli` words it with the running script's options
(``--batch``, ``--passes 1``), so a notebook reads parameter names and a shell reads flags.

This module imports nothing heavy: the scripts import it first, parse their options, and
import TensorFlow, OpenVINO and matplotlib only after that (``--help`` and flag errors
answer without them).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import time
import warnings
from collections.abc import Callable

EXIT_USER_ERROR = 2
# File-system refusals that are the user's environment, not a bug: reported in one line.
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


class UserError(Exception):
    """An error caused by the user's input; printed as one line, no traceback."""


# A setting named in a message: `name` or `name=value` (a parameter or config field, and a value).
_SETTING = re.compile(r"`([a-z_][a-z0-9_]*)(?:=([^`]*))?`")
# Library names whose command-line option has another ``dest`` (the same setting in other words).
SETTING_OPTIONS = {"min_area": "area", "max_area": "range", "more_epochs": "epochs"}


class SettingError(UserError, ValueError):
    """A setting's value is wrong, or does not fit the run: the message names the settings in
    backticks, ``SettingError(f"`batch` must be >= 1, got {batch}")`` or "run validate.py again
    with `passes=3`". A Python caller reads the parameter names; :func:`run_cli` shows the
    script's options instead (``--batch``, ``--passes 3``).

    ``setting``: the setting the error is about (default: the first one named).
    """

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.settings = tuple(m.group(1) for m in _SETTING.finditer(message))
        if setting is None and not self.settings:
            raise TypeError(f"a SettingError names its setting in backticks: {message!r}")
        self.setting = setting or self.settings[0]

    def __reduce__(self):  # pickles with the explicit setting too (the default __reduce__ drops it)
        return type(self), (str(self), self.setting)


# The command line run_cli is running: (parser or the function that builds it, argv); None outside.
_COMMAND_LINE: tuple | None = None


def _options(parser, argv) -> list[argparse.Action]:
    """The options of ``parser``: its own, then those of the subcommand in ``argv`` (of every
    subcommand when none is named there)."""
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            named = [action.choices[a] for a in argv if a in action.choices][:1]
            for sub in named or action.choices.values():
                actions += _options(sub, argv)
    return actions


def in_options(message: str, parser: argparse.ArgumentParser, argv=()) -> str:
    """``message`` with each setting in backticks named as ``parser``'s option for it (its
    ``dest``, or :data:`SETTING_OPTIONS`'s alias): a message's subject in full, as argparse
    names an argument (``-b/--batch must be ...``), a setting inside a sentence as its usage
    line does (``-t``, ``--passes 3``; a switch by its flag alone, ``--no-baseline`` for
    `baseline=False`). A setting the parser has no option for is named plainly
    (``min_area``, ``min_area=4``): the library was called for another command."""
    options = {}
    for action in _options(parser, list(argv or ())):
        if action.option_strings and action.dest not in options:
            options[action.dest] = action

    def words(match):
        name, value = match.group(1), match.group(2)
        action = options.get(name) or options.get(SETTING_OPTIONS.get(name, ""))
        if action is not None:
            if value is None:
                return "/".join(action.option_strings) if match.start() == 0 else action.option_strings[0]
            if action.nargs != 0:
                return f"{action.option_strings[0]} {value}"
            if value == str(action.const):  # a switch: named by its flag when that is the value it sets
                return action.option_strings[0]
        return name if value is None else f"{name}={value}"

    return _SETTING.sub(words, message)


def _command_line_words(message: str) -> str:
    """``message`` in the running script's options (:func:`in_options`), unchanged outside run_cli."""
    if _COMMAND_LINE is None:
        return message
    parser, argv = _COMMAND_LINE
    try:
        if callable(parser) and not isinstance(parser, argparse.ArgumentParser):
            parser = parser()
        return in_options(message, parser, sys.argv[1:] if argv is None else argv)
    except Exception:  # noqa: BLE001 - wording must never hide the message itself
        return message


def warn(message: str, *, settings: bool = False) -> None:
    """Print a one-line warning on stderr (not through `warnings`, which adds file/line noise).

    ``settings``: the message names settings in backticks, as a :class:`SettingError` does;
    under :func:`run_cli` they are worded as the script's options.
    Goes through ``tqdm.write`` so it does not break a progress bar on the terminal.
    """
    from tqdm import tqdm

    if settings:
        message = _command_line_words(message)
    tqdm.write(f"warning: {message}", file=sys.stderr)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and shows every option's default: an option whose
    help does not already say its default gets ``(default: VALUE)``, a flag ``(default: off)``.
    An option defaulting to ``None`` must say in its help what happens without it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: off)"
        if action.default is None:
            return text
        return f"{text} (default: %(default)s)"


class _QuietImport:
    """Import finder that imports ``tensorflow`` (whenever something first asks for it) with
    the process's stderr sent to /dev/null: its C++ library prints start-up lines (absl's
    "All log messages before absl::InitializeLog()", oneDNN's notice) that
    ``TF_CPP_MIN_LOG_LEVEL`` does not silence and that would break one-line error messages."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        import importlib
        import importlib.abc
        import importlib.util

        global _REAL_STDERR
        sys.meta_path.remove(self)
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            _REAL_STDERR = saved  # where a Ctrl-C in the meantime is reported (_stop)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
            module = importlib.import_module("tensorflow")
        finally:
            os.dup2(saved, 2)
            _REAL_STDERR = None
            os.close(saved)

        class _Loaded(importlib.abc.Loader):
            def create_module(self, spec):
                return module

            def exec_module(self, mod):
                pass

        return importlib.util.spec_from_loader(name, _Loaded(), origin=getattr(module, "__file__", None))


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter; must run before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process Ctrl-C ended
_REAL_STDERR = None  # stderr's descriptor while _QuietImport sends descriptor 2 to /dev/null


def _stop(signum, frame) -> None:
    """SIGINT outside ``main`` (and the end of a ``main`` Ctrl-C stopped): one line and exit
    code 130 at once, no traceback, without Python's shutdown. Nothing is half-written: before
    ``main`` a script only imports, after it everything is committed or cleaned up."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - interrupted inside a write, or closed: nothing more to save
            pass
    prog = os.path.basename(sys.argv[0]) or "cae"
    try:
        os.write(_REAL_STDERR if _REAL_STDERR is not None else 2, f"{prog}: interrupted\n".encode())
    finally:
        os._exit(EXIT_INTERRUPTED)


_SIGINT_SEEN = False  # set once Ctrl-C reached main (see run_cli)


def _raise_interrupt(signum, frame) -> None:
    """SIGINT while ``main`` runs: KeyboardInterrupt, as Python's own handler, remembered."""
    global _SIGINT_SEEN
    _SIGINT_SEEN = True
    raise KeyboardInterrupt


def _deliver_again(unraisable) -> None:
    """``sys.unraisablehook`` of a script: a Ctrl-C whose KeyboardInterrupt landed where Python
    cannot raise it (a weakref callback run by an import lock, a ``__del__``) would be printed
    as "Exception ignored in ..." with a traceback, and the script would go on. Instead SIGINT's
    handler runs again 1 ms later (an alarm; raised in this hook, it would be ignored too), in
    the code running then: a KeyboardInterrupt in ``main``, or the one line once ``main`` has
    ended. Anything else: Python's own hook."""
    import signal

    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        signal.signal(signal.SIGALRM, lambda signum, frame: signal.getsignal(signal.SIGINT)(signal.SIGINT, frame))
        signal.setitimer(signal.ITIMER_REAL, 0.001)
        return
    sys.__unraisablehook__(unraisable)


def stop_on_ctrl_c(name: str) -> None:
    """In a script run as a program (``name`` is its ``__name__``, ``"__main__"``): from now
    until :func:`run_cli` calls ``main``, and again once ``main`` has ended, Ctrl-C stops the
    process with ``PROG: interrupted`` and exit code 130, instead of a KeyboardInterrupt
    traceback from whatever import (TensorFlow's take seconds) or shutdown it lands in.
    While ``main`` runs, Ctrl-C stays a KeyboardInterrupt, so staged results are cleaned up.

    Called first thing in each script, right after importing this module; Python's own
    start-up before that (a few ms) is outside any script's reach. Does nothing when the
    script is imported (tests) or when SIGINT is ignored (a job started in the background).
    """
    import signal

    if name == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _stop)
        sys.unraisablehook = _deliver_again


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None, parser=None) -> int:
    """Run ``main(argv)``; map user errors and Ctrl-C to a one-line message and exit code.

    ``parser``: the script's :class:`argparse.ArgumentParser`, or the function that builds it
    (built only when a message needs it; default: the ``get_parser`` beside ``main``); a
    :class:`SettingError`'s settings are worded as its options (:func:`in_options`).
    Returns the process exit code (0 on success) so ``__main__`` can ``sys.exit`` it.
    """
    global _COMMAND_LINE
    if parser is None:
        parser = getattr(main, "__globals__", {}).get("get_parser")
    outer, _COMMAND_LINE = _COMMAND_LINE, (parser, argv) if parser is not None else None
    try:
        return _run_main(main, argv)
    finally:
        _COMMAND_LINE = outer


def _run_main(main, argv) -> int:
    """:func:`run_cli`'s work, while :data:`_COMMAND_LINE` says which script runs."""
    import signal

    prog = os.path.basename(sys.argv[0]) or "cae"
    started = time.perf_counter()
    ours = signal.getsignal(signal.SIGINT) is _stop  # stop_on_ctrl_c ran: a script's own process
    try:
        try:
            if ours:
                signal.signal(signal.SIGINT, _raise_interrupt)  # main cleans up after itself
            try:
                main(argv)
                sys.stdout.flush()  # the summary before the time, also when both go to one log
            finally:
                if ours:
                    signal.signal(signal.SIGINT, _stop)  # main has ended: nothing left to clean up
        except Exception:
            # Some code turns a KeyboardInterrupt into another error: a compiled module's
            # import (pybind11: "ImportError: initialization failed", TensorFlow's and
            # onnxruntime's), a conversion of "any error" into a message. After Ctrl-C,
            # the interruption is the cause.
            if _SIGINT_SEEN:
                raise KeyboardInterrupt from None
            raise
    except SettingError as exc:
        print(f"{prog}: error: {_command_line_words(str(exc))}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if ours:
            # main has cleaned up after itself; Python's own shutdown has not. A Ctrl-C that cut
            # TensorFlow's import short leaves its native threads half made, and finalising beside
            # them aborts now and then ("Fatal Python error: PyThreadState_Get", exit -6, about 1
            # in 60 under load). Nothing is left to save, so the process ends here.
            _stop(signal.SIGINT, None)
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head -n 1`): stop quietly like other Unix
        # tools, with the SIGPIPE exit status; send further output nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        # The file system refused (permission, read-only, full): the user's to fix, one line.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{prog}: error: cannot write or read{where}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    try:
        print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    except OSError:
        pass  # stderr closed: the work is done all the same
    return 0


STOP_AT = "CAE_STOP_AT"  # environment variable: a named point where the process stops itself (tests)


def stop_point(name: str) -> None:
    """A barrier for fault-injection tests: when ``$CAE_STOP_AT`` is ``name``, the process stops
    itself (SIGSTOP) right here, so a test can kill it at exactly this point instead of racing
    a polling loop against it. Does nothing otherwise."""
    if os.environ.get(STOP_AT) == name:
        import signal

        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGSTOP)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow (through Keras) for reproducible runs."""
    import keras

    keras.utils.set_random_seed(int(seed))


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers (for setup.json)."""
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0]}
    for name in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "scikit-image", "scikit-learn"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions
