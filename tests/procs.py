"""Small RigProcess subclasses used by the lifecycle tests (importable by spawned children)."""

from __future__ import annotations

from rig.core.process import RigProcess
from rig.core.schema import Control


class TickProcess(RigProcess):
    """Counts steps; ``crash`` makes it raise; ``echo`` control commands are logged."""

    def configure(self) -> None:
        self.ticks = 0
        self.controls: list[str] = []

    def ready_info(self) -> dict[str, str]:
        return {"answer": "42"}

    def step(self) -> None:
        self.ticks += 1
        self._control.poll(5)

    def on_control(self, msg: Control) -> None:
        if msg.command == "crash":
            raise RuntimeError("asked to crash")
        if msg.command == "block":
            with self.busy("blocking"):
                self._control.poll(300)  # stands for seconds of work without heartbeats
        self.controls.append(msg.command)

    def heartbeat_stats(self) -> dict[str, float]:
        return {"ticks": float(self.ticks)}


class BrokenConfigureProcess(RigProcess):
    def configure(self) -> None:
        raise FileNotFoundError("no such scope: /dev/nothing")

    def step(self) -> None:  # pragma: no cover - never reached
        pass
