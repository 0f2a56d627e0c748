"""What the supervisor tells a console that joins late: the :class:`~rig.core.operator.Snapshot`.

The streams carry everything from the moment a console subscribes; :class:`SessionTally` keeps what
happened before (counters, the calibration, the ensembles in force, recent warnings, metadata), folded
from the bus messages the supervisor subscribes to anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from rig.app.config import RigConfig
from rig.app.processes import Child
from rig.core.operator import (
    BaselineProgress,
    Calibration,
    Counts,
    Ensembles,
    LinkStatus,
    ProcessStatus,
    Snapshot,
    SnapshotWarning,
    follow_protocol,
)
from rig.core.schema import CalibrationResult, LinkState, Message, RewardOutcome, RigWarning, TrialEvent
from rig.offline.summary import REWARD_SOURCES

#: Warnings kept by the supervisor, and the newest of them sent in a snapshot.
WARNINGS_KEPT = 50
WARNINGS_SENT = 20


class SessionTally:
    """Counters, calibration, ensembles, warnings, metadata, reward link and baseline of the running session."""

    def __init__(self, cfg: RigConfig) -> None:
        self.counts = Counts()
        self.calibration: Calibration | None = None
        self.ensembles = Ensembles(up=list(cfg.decoder.up), down=list(cfg.decoder.down))
        self.warnings: list[SnapshotWarning] = []
        self.link: LinkStatus | None = None
        self.baseline: BaselineProgress | None = None
        self.calibration_failure = ""
        self.metadata: dict[str, str] = {
            "mouse_id": cfg.session.mouse_id,
            "experimenter": cfg.session.experimenter,
            "notes": cfg.session.notes,
        }

    def ingest(self, msg: Message) -> None:
        """Fold one bus message in (types that carry nothing for the snapshot are ignored)."""
        if isinstance(msg, RigWarning):
            self.warn(msg.process, msg.message, msg.code)
        elif isinstance(msg, TrialEvent):
            self.counts.trials = msg.trials  # cumulative counts from the decoder: authoritative
            self.counts.hits = msg.hits
            self._trial_event(msg)
        elif isinstance(msg, CalibrationResult):
            self.calibration = Calibration.from_result(msg)
        elif isinstance(msg, RewardOutcome):
            self._reward(msg)
        elif isinstance(msg, LinkState):  # published on change only: a late console has no other way to know
            self.link = LinkStatus(state=msg.state, detail=msg.detail)

    def _trial_event(self, msg: TrialEvent) -> None:
        if msg.kind == "ensembles":  # the decoder accepted new ensembles
            self.ensembles = Ensembles(up=[int(i) for i in msg.detail.get("up", [])],
                                       down=[int(i) for i in msg.detail.get("down", [])])
        self.baseline, self.calibration_failure = follow_protocol(msg.kind, msg.frame, msg.detail, self.baseline,
                                                                  self.calibration_failure)

    def _reward(self, msg: RewardOutcome) -> None:
        """Rewards for the mouse apart from test pulses and flushes, as ``summary.json`` counts them."""
        delivered = msg.status == "delivered"
        if msg.source not in REWARD_SOURCES:
            self.counts.other_pulses += 1  # like summary.json's other_pulses: whatever their outcome
            if delivered:
                self.counts.other_volume_ul += msg.volume_ul
        elif delivered:
            self.counts.rewards_delivered += 1
            self.counts.volume_ul += msg.volume_ul
        else:
            self.counts.rewards_failed += 1

    def warn(self, process: str, message: str, code: str = "") -> None:
        """Keep a warning for consoles; ``code`` "" marks the supervisor's own (never published on the bus)."""
        self.warnings.append(SnapshotWarning(process=process, message=message, code=code))
        del self.warnings[:-WARNINGS_KEPT]

    def set_metadata(self, args: dict[str, Any]) -> None:
        self.metadata.update({k: str(v) for k, v in args.items()})

    def snapshot(self, *, session_dir: str, endpoints: dict[str, str], mode: str, children: Iterable[Child],
                 config: dict[str, Any]) -> Snapshot:
        """A copy of the current state (later messages never change a snapshot already built)."""
        return Snapshot(
            session_dir=session_dir,
            endpoints=dict(endpoints),
            mode=mode,
            processes={c.name: ProcessStatus(state=c.state, stats=dict(c.stats), critical=c.critical)
                       for c in children},
            counts=msgspec.structs.replace(self.counts),
            calibration=self.calibration,
            ensembles=self.ensembles,
            warnings=self.warnings[-WARNINGS_SENT:],
            metadata=dict(self.metadata),
            config=config,
            link=self.link,
            baseline=self.baseline,
            calibration_failure=self.calibration_failure,
        )
