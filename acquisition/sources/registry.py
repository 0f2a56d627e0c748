"""Every frame source the rig knows: its name in the config, how it is built, and what it can do.

Why a registry: the acquisition process asks a source's *capabilities* (does it have ground truth? does
it want the rig's rewards?) instead of comparing its name, and ``acquisition.config`` validates the
``source`` key against the same list, so the names live in one place. Adding a scope adapter is one
module in ``acquisition/sources/`` (a :class:`~acquisition.sources.base.FrameSource` with a
``from_config`` classmethod) plus one line in ``_REGISTRATIONS`` below.

The list is static on purpose: every rig process is spawned and re-imports it, so a source registered at
run time would be unknown to the child that validates the config. This module imports neither numpy nor
any source (factories are imported at their first call): ``acquisition.config`` imports it, and loading
a config must stay light (no scipy, zmq or tifffile).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from acquisition.config import AcquisitionConfig
    from acquisition.sources.base import FrameSource


@dataclass(frozen=True)
class SourceContext:
    """What a factory may use besides the ``[acquisition]`` section: facts other sections own."""

    up: tuple[int, ...] = ()  # the decoder's configured ensembles (the simulated mouse must know them)
    down: tuple[int, ...] = ()


#: Builds (does not open) a source from the ``[acquisition]`` config and the context.
SourceFactory = Callable[["AcquisitionConfig", SourceContext], "FrameSource"]


@dataclass(frozen=True)
class Lazy:
    """A factory named ``"package.module:attr.path"``, imported at its first call, so that the registry
    (and so the config) does not import every source's dependencies."""

    target: str

    def __call__(self, cfg: AcquisitionConfig, ctx: SourceContext) -> FrameSource:
        module_name, _, path = self.target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for attr in path.split("."):
            obj = getattr(obj, attr)
        return obj(cfg, ctx)


@runtime_checkable
class HasGroundTruth(Protocol):
    """A source with ``has_ground_truth``: it knows the truth behind its frames (a simulation)."""

    def write_ground_truth(self, folder: str | Path) -> Path:
        """Write its ROIs (suite2p layout, under ``folder/suite2p/plane0``) and the truth of every frame so
        far; return the ``plane0`` folder."""
        ...


@runtime_checkable
class FollowsEnsembles(Protocol):
    """A source with ``follows_ensembles``: it must know which ROIs the decoder reads (a simulated mouse)."""

    def set_ensembles(self, up: list[int], down: list[int]) -> None:
        """The decoder now reads these ensembles. Never raises for bad indices: warns instead."""
        ...


@dataclass(frozen=True)
class SourceRegistration:
    """One frame source: its config name, its factory, and what it can do beyond ``FrameSource``."""

    name: str
    factory: SourceFactory
    #: implements :class:`HasGroundTruth`: with ``rois.suite2p_dir`` empty its own ROIs are used, and the
    #: truth of every frame is saved at the end of the session
    has_ground_truth: bool = False
    #: wants the rig's reward outcomes (``rwd.out``) and decisions (``dec.decision``) relayed to
    #: :meth:`~acquisition.sources.base.FrameSource.on_bus_message` (a simulated mouse learns from them)
    hears_outcomes: bool = False
    #: implements :class:`FollowsEnsembles`: told whenever the decoder applied new ensembles
    #: (``dec.trial`` events of kind ``"ensembles"``)
    follows_ensembles: bool = False


_REGISTRATIONS: tuple[SourceRegistration, ...] = (
    SourceRegistration("sim", Lazy("acquisition.sim.source:SimSource.from_config"),
                       has_ground_truth=True, hears_outcomes=True, follows_ensembles=True),
    SourceRegistration("replay", Lazy("acquisition.sources.replay:ReplaySource.from_config")),
    SourceRegistration("cloose_tcp", Lazy("acquisition.sources.cloose_tcp:ClooseTcpSource.from_config")),
    SourceRegistration("zmq_stream", Lazy("acquisition.sources.zmq_stream:ZmqStreamSource.from_config")),
    SourceRegistration("scanbox_mmap", Lazy("acquisition.sources.scanbox_mmap:ScanboxMmapSource.from_config")),
    SourceRegistration("scanimage_tcp", Lazy("acquisition.sources.scanimage_tcp:ScanImageTcpSource.from_config")),
    SourceRegistration("prairieview", Lazy("acquisition.sources.prairieview:PrairieViewSource.from_config")),
)

#: name -> registration, in registration order (read-only)
SOURCES: Mapping[str, SourceRegistration] = MappingProxyType({r.name: r for r in _REGISTRATIONS})
if len(SOURCES) != len(_REGISTRATIONS):
    raise RuntimeError("acquisition.sources.registry: two frame sources are registered under the same name")

#: the valid values of ``acquisition.source``
SOURCE_NAMES: tuple[str, ...] = tuple(SOURCES)


def registration(name: str) -> SourceRegistration:
    """The registration of source ``name`` (ValueError, worded for the config, if there is none)."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"`source`: must be one of {', '.join(SOURCE_NAMES)} (got {name!r})") from None


def make_source(cfg: AcquisitionConfig, *, up: Sequence[int] = (), down: Sequence[int] = ()) -> FrameSource:
    """Build (not open) the source ``cfg.source`` names. ``up``/``down`` are the decoder's configured
    ensembles, for sources that follow them. A source lacking a method its capabilities promise is a
    programming error, reported here rather than mid-session."""
    reg = registration(cfg.source)
    source = reg.factory(cfg, SourceContext(up=tuple(int(i) for i in up), down=tuple(int(i) for i in down)))
    for promised, protocol in ((reg.has_ground_truth, HasGroundTruth), (reg.follows_ensembles, FollowsEnsembles)):
        if promised and not isinstance(source, protocol):
            raise TypeError(f"frame source {reg.name!r} is registered as {protocol.__name__} but "
                            f"{type(source).__name__} does not implement it")
    return source
