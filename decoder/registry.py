"""The cursor decoders a config can name: what each is able to do, and how to build it.

Adding a decoder is one module implementing :class:`Decoder` plus one line in :data:`DECODERS`. The
engine only talks to the :class:`Decoder` protocol and asks a decoder's capabilities (``uses_weights``,
``reads_down``) instead of comparing names.

This module is imported by :mod:`decoder.config` (so config validation derives from the registry), which
``rig --help`` and config checks load: it must stay free of numpy and numba. A factory is therefore named
as ``"module:callable"`` and imported only when a decoder is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np


@runtime_checkable
class Decoder(Protocol):
    """What the engine needs of a decoder: per-ROI dF/F (all ROIs) in, "up" and "down" drives out.

    cursor = up - down. ``decode`` runs every frame, so it must not allocate; ``decode_frames`` must use
    the same arithmetic (calibration decodes the baseline with it and the live cursor has to match it).
    """

    @property
    def kind(self) -> str:
        """The registry name it was built for (stored in calibrations)."""

    @property
    def uses_weights(self) -> bool:
        """Set by one weight per ROI (:meth:`set_weights`; a calibration stores its weights)."""

    @property
    def up(self) -> list[int]:
        """The ROIs driving the cursor up."""

    @property
    def down(self) -> list[int]:
        """The ROIs driving the cursor down."""

    @property
    def weights(self) -> np.ndarray:
        """One weight per ROI when :attr:`uses_weights`, else unused."""

    @property
    def ready(self) -> bool:
        """Has the ensembles (or weights) it needs to decode."""

    @property
    def rois(self) -> np.ndarray:
        """The ROIs the cursor reads, ascending (the only ones whose dF/F it needs)."""

    def set_ensembles(self, up: Sequence[int], down: Sequence[int]) -> None:
        """Choose the ensembles (:func:`check_ensembles` validates them; ValueError names a bad one)."""

    def set_weights(self, weights: Sequence[float] | np.ndarray) -> None:
        """One weight per ROI; ValueError when the decoder does not use weights."""

    def set_zscore_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Baseline dF/F mean and standard deviation of every ROI (for z-scoring, when configured)."""

    def decode(self, dff: np.ndarray) -> tuple[float, float]:
        """(up, down) for one frame of dF/F of every ROI."""

    def decode_frames(self, dff: np.ndarray, *, rois_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(up, down) for every row of ``dff``; ``rois_only``: its columns are :attr:`rois` alone."""

    def clone(self) -> Decoder:
        """A copy with the same ensembles/weights and settings, that shares no state (calibration decodes
        the baseline with new z-score statistics without touching the live decoder)."""

    def warm_up(self) -> None:
        """Compile (or load from cache) whatever ``decode`` runs, so the first live frame does not."""


@dataclass(frozen=True)
class DecoderKind:
    """A registry entry: how to build the decoder, and what config validation must know before building it."""

    factory: str  # "module:callable", called as (kind, n_rois, *, zscore, cell_cap) -> Decoder
    uses_weights: bool = False  # set from one weight per ROI (config `weights`)
    reads_down: bool = True  # reads a "down" ensemble (False: config `down` must stay empty)


#: name (config ``[decoder] decoder``) -> entry; the order is the one error messages list them in
DECODERS: dict[str, DecoderKind] = {
    "one_population": DecoderKind("decoder.decoders:LinearDecoder", reads_down=False),
    "two_population": DecoderKind("decoder.decoders:LinearDecoder"),
    "weighted": DecoderKind("decoder.decoders:LinearDecoder", uses_weights=True),
}


def decoder_kind(name: str) -> DecoderKind:
    """The registry entry of ``name``; ValueError lists the registered names."""
    kind = DECODERS.get(name)
    if kind is None:
        raise ValueError(f"`decoder`: must be one of {', '.join(DECODERS)}, got {name!r}")
    return kind


def check_ensembles(kind: str, n_rois: int, up: Sequence[int], down: Sequence[int]) -> tuple[list[int], list[int]]:
    """Validated copies of the ensembles for decoder ``kind`` (ValueError names the problem)."""
    up = [int(i) for i in up]
    down = [int(i) for i in down]
    for name, rois in (("up", up), ("down", down)):
        bad = [i for i in rois if not 0 <= i < n_rois]
        if bad:
            raise ValueError(f"`{name}`: ROI indices {bad} are outside 0..{n_rois - 1}")
        if len(set(rois)) != len(rois):
            raise ValueError(f"`{name}`: ROI indices must not repeat")
    both = sorted(set(up) & set(down))
    if both:
        raise ValueError(f"`down`: ROIs {both} are in both ensembles")
    if down and not decoder_kind(kind).reads_down:
        raise ValueError(f"`down`: the {kind} decoder reads only the up ensemble; leave down empty")
    return up, down


def make_decoder(name: str, n_rois: int, *, zscore: bool = False, cell_cap: float = 0.0) -> Decoder:
    """Build the decoder registered as ``name`` for ``n_rois`` ROIs (no ensembles yet)."""
    module, _, attr = decoder_kind(name).factory.partition(":")
    factory = getattr(importlib.import_module(module), attr)
    return factory(name, n_rois, zscore=zscore, cell_cap=cell_cap)
