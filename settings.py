"""Settings as frozen dataclasses: the scripts build them from argparse and pass them whole.

Library functions take these objects, never an argparse ``Namespace``, so benchmarks and
tests build exactly the settings they mean and nothing travels as a row of positional
values.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MapRequest:
    """How a post-training step is asked to make residual maps; ``None`` means the default.

    ``method``: ``ssim``, ``l2`` or ``learned`` (default: :meth:`runs.Run.method`).
    ``baseline``, ``scales``, ``passes``: see :class:`inference.MapOptions`; for ssim/l2 maps
    the defaults are :meth:`inference.MapOptions.from_args`'s, and where a validation result
    is followed, what it recorded. ``batch``: images per inference batch.
    """

    method: str | None = None
    baseline: bool | None = None
    scales: int | None = None
    passes: int | None = None
    batch: int = 16

    @classmethod
    def from_args(cls, args) -> MapRequest:
        """The request of the options :func:`runs.add_run_arguments` adds to a parser."""
        return cls(args.method, args.baseline, args.scales, args.passes, args.batch)
