"""`rig valve ...`: bench tools for the reward valve (calibrate, test pulse, flush).

Each command reaches the board named by the config's [reward] port; with ``port = "emulator"`` it
starts the simulated board on a thread for the duration of the command. Every opening is a single
acknowledged, time-bounded pulse, the host drives them one by one (a crashed host cannot leave the
valve pulsing: the board's watchdog closes it), and the valve is closed on every exit path.

The operator at the bench runs these on purpose: their pulses carry an explicit operator override of the
session's minimum interval and volume cap (a calibration pours litres in 300 ms steps), recorded in every
outcome with the user's name and said on the terminal. The board's own duty-cycle limit still applies:
a pulse it refuses is retried once the board's budget allows it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import getpass
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from reward import protocol as p
from reward.board_model import FirmwareEmulator
from reward.calibration import CalibrationError, CalibrationPoint, ValveCalibration, calibration_path, fit
from reward.config import RewardConfig
from reward.controller import RewardController
from reward.emulator import EmulatorServer
from reward.link import ValveLink
from reward.outcome import DELIVERED, REFUSED, RewardOutcome
from rig.core.clock import now_ns


class ValveToolError(RuntimeError):
    """A bench command could not do its job; the message says why."""


def load_reward_config(path: str | Path) -> tuple[RewardConfig, Path]:
    """The [reward] section of a rig config (the whole file is validated, as ``rig run`` would), and the
    folder relative paths are resolved against."""
    from rig.app.config import ConfigError, load_config  # noqa: PLC0415 - pulls in every package's config

    path = Path(path)
    try:
        return load_config(path).reward, path.resolve().parent
    except ConfigError as exc:
        raise ValveToolError(str(exc)) from None


# ---------------------------------------------------------------- reaching the board


@contextlib.contextmanager
def board_session(
    cfg: RewardConfig, calibration: ValveCalibration | None = None
) -> Iterator[RewardController]:
    """A connected controller for one bench command; an in-process emulator if port = "emulator"."""
    server: EmulatorServer | None = None
    if cfg.uses_emulator:
        server = EmulatorServer(FirmwareEmulator(), cfg.emulator_transport, port=cfg.emulator_tcp_port).start()
        url = server.url
    else:
        url = cfg.port
    controller = RewardController(cfg, calibration, ValveLink.from_config(cfg, url))
    try:
        controller.start()
        _wait_connected(controller, cfg.handshake_timeout_s + 0.5)
        yield controller
    finally:
        controller.close()
        if server is not None:
            server.stop()


def _wait_connected(controller: RewardController, timeout_s: float) -> None:
    deadline = now_ns() + int(timeout_s * 1e9)
    while not controller.link.connected:
        if now_ns() >= deadline:
            raise ValveToolError(
                f"no reward board answered at {controller.link.url} within {timeout_s:.1f} s"
                + (f": {controller.link.last_error}" if controller.link.last_error else "")
            )
        controller.poll(0.05)


def bench_operator(command: str) -> str:
    """Who issues a bench command's pulses (the outcome's ``issued_by``)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in the environment nor the password database
        user = "unknown user"
    return f"rig valve {command} ({user})"


def _pulse_once(controller: RewardController, request_id: str, open_ms: float, source: str,
                issued_by: str) -> RewardOutcome:
    controller.pulse(request_id, open_ms, source, override=True, issued_by=issued_by)
    wait_s = open_ms / 1000 + controller.cfg.reconcile_timeout_s + 10.0  # the controller's own timeouts end it sooner
    limit = now_ns() + int(wait_s * 1e9)
    while now_ns() < limit:
        for event in controller.poll(0.05):
            if isinstance(event, RewardOutcome) and event.request_id == request_id:
                return event
    raise ValveToolError(f"pulse {request_id} produced no outcome within {wait_s:.0f} s")


def dispense(controller: RewardController, request_id: str, open_ms: float, source: str, issued_by: str,
             out: TextIO | None = None) -> RewardOutcome:
    """One acknowledged pulse; blocks until its outcome. A refusal by the board's duty-cycle limit is waited out
    (the pulse is asked again, under a new request id, each tenth of the board's window, for up to two windows)."""
    outcome = _pulse_once(controller, request_id, open_ms, source, issued_by)
    if not (outcome.status == REFUSED and outcome.board_nak == p.NAK_DUTY):
        return outcome
    board = controller.link.board
    window_s = (board.duty_window_ms if board is not None else p.DUTY_WINDOW_MS) / 1000
    if out is not None:
        print(f"  {outcome.reason}: waiting for the board's budget", file=out)
    deadline = now_ns() + int(2 * window_s * 1e9)
    attempt = 1
    while outcome.status == REFUSED and outcome.board_nak == p.NAK_DUTY and now_ns() < deadline:
        _idle(controller, window_s / 10)
        attempt += 1
        outcome = _pulse_once(controller, f"{request_id}-try{attempt}", open_ms, source, issued_by)
    return outcome


def _idle(controller: RewardController, seconds: float) -> None:
    """Keep the link serviced (heartbeats) for ``seconds``."""
    end = now_ns() + int(seconds * 1e9)
    while (remaining := end - now_ns()) > 0:
        controller.poll(remaining / 1e9)


class _LinkPump:
    """Services the link on a thread while the main thread waits for the operator (input()).

    Without it the board's watchdog would fire during every prompt. The main thread must not touch
    the controller until the pump is stopped.
    """

    def __init__(self, controller: RewardController) -> None:
        self._controller = controller
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="valve-link-pump", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._controller.poll(0.05)
        except BaseException as exc:  # handed to the main thread by __exit__
            self.error = exc

    def __enter__(self) -> _LinkPump:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error


def _ask(prompt: str, controller: RewardController, read: Callable[[str], str]) -> str:
    with _LinkPump(controller):
        try:
            return read(prompt)
        except EOFError:
            raise ValveToolError("input ended before the calibration was complete; nothing was saved") from None


def _ask_weight(prompt: str, controller: RewardController, read: Callable[[str], str], out: TextIO) -> float:
    for _ in range(5):
        text = _ask(prompt, controller, read).strip()
        try:
            value = float(text)
        except ValueError:
            print(f"  {text!r} is not a number; type the weight in mg, e.g. 412.5", file=out)
            continue
        if value > 0:
            return value
        print("  the weight must be > 0 mg", file=out)
    raise ValveToolError("no valid weight after 5 tries; nothing was saved")


# ---------------------------------------------------------------- commands


def calibrate(
    cfg: RewardConfig,
    base_dir: Path,
    *,
    open_ms: list[float],
    pulses: int,
    interval_ms: float,
    out_path: Path | None = None,
    plot: bool = True,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
) -> tuple[ValveCalibration, Path]:
    """Dispense ``pulses`` at each open time, ask for the weights, fit, save; return the calibration."""
    out = out if out is not None else sys.stdout
    if len(open_ms) < 2:
        raise ValveToolError("give at least 2 open times, e.g. --open-ms 20,40,60,80")
    if pulses < 1:
        raise ValveToolError("--pulses must be >= 1")
    target = out_path or calibration_path(cfg, base_dir)
    if target is None:
        raise ValveToolError("nowhere to save: set [reward] calibration_file in the config or pass --out")
    points: list[CalibrationPoint] = []
    issued_by = bench_operator("calibrate")
    with board_session(cfg) as controller:
        _say_override(issued_by, out)
        for index, ms in enumerate(open_ms, 1):
            _ask(
                f"[{index}/{len(open_ms)}] Put an empty, tared container under valve {cfg.valve}, "
                f"then press Enter to dispense {pulses} x {ms:g} ms: ",
                controller, read,
            )
            _wait_connected(controller, cfg.handshake_timeout_s + 0.5)
            for k in range(pulses):
                outcome = dispense(controller, f"calibration-{ms:g}ms-{k + 1}", ms, "calibration", issued_by, out)
                if outcome.status != DELIVERED:
                    raise ValveToolError(
                        f"pulse {k + 1}/{pulses} of {ms:g} ms was {outcome.status}: {outcome.reason}; "
                        "calibration stopped, nothing was saved"
                    )
                if k + 1 < pulses:
                    _idle(controller, interval_ms / 1000)
            weight = _ask_weight(
                f"  Weight of the water from {pulses} pulses of {ms:g} ms, in mg (1 mg = 1 uL): ",
                controller, read, out,
            )
            points.append(CalibrationPoint(open_ms=ms, pulses=pulses, total_mg=weight))
    try:
        calibration = ValveCalibration.from_points(cfg.valve, points)
    except CalibrationError as exc:
        raise ValveToolError(f"{exc}; nothing was saved") from exc
    saved = calibration.save(target)
    stamp = dt.datetime.fromisoformat(calibration.date).strftime("%Y%m%dT%H%M%S")
    archive = calibration.save(saved.with_name(f"{saved.stem}.{stamp}{saved.suffix}"))
    print(format_fit(calibration), file=out)
    print(f"saved {saved} (copy: {archive})", file=out)
    if plot:
        png = plot_fit(calibration, saved.with_suffix(".png"))
        print(f"plot: {png}", file=out)
    return calibration, saved


def format_fit(calibration: ValveCalibration) -> str:
    """The points, their fitted open times and the line, as a text table."""
    line = fit(calibration.points)
    rows = [
        f"valve {calibration.valve}, {calibration.date}: duration_ms = {calibration.intercept_ms:.3f} "
        f"+ {calibration.slope_ms_per_ul:.4f} * uL  (R^2 {line.r_squared:.4f})",
        f"{'open ms':>9} {'pulses':>7} {'total mg':>10} {'uL/pulse':>9} {'fit ms':>8} {'resid ms':>9}",
    ]
    for pt, resid in zip(calibration.points, line.residuals_ms, strict=True):
        rows.append(
            f"{pt.open_ms:9.2f} {pt.pulses:7d} {pt.total_mg:10.2f} {pt.ul_per_pulse:9.3f} "
            f"{pt.open_ms - resid:8.2f} {resid:9.3f}"
        )
    return "\n".join(rows)


def plot_fit(calibration: ValveCalibration, path: Path) -> Path:
    """PNG of the weighed points and the fitted line (matplotlib, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ul = [pt.ul_per_pulse for pt in calibration.points]
    ms = [pt.open_ms for pt in calibration.points]
    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(ul, ms, "o", label="weighed")
    xs = [0.0, max(ul) * 1.1]
    ax.plot(xs, [calibration.intercept_ms + calibration.slope_ms_per_ul * x for x in xs], "-", label="fit")
    ax.set_xlabel("volume per pulse (uL)")
    ax.set_ylabel("open time (ms)")
    ax.set_title(f"valve {calibration.valve}, {calibration.date}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def pulse(cfg: RewardConfig, open_ms: float | None = None, out: TextIO | None = None) -> RewardOutcome:
    """One test pulse (default ``test_pulse_ms``)."""
    out = out if out is not None else sys.stdout
    ms = cfg.test_pulse_ms if open_ms is None else open_ms
    issued_by = bench_operator("pulse")
    with board_session(cfg) as controller:
        _say_override(issued_by, out)
        outcome = dispense(controller, "test-pulse", ms, "test_pulse", issued_by, out)
    print(_describe(outcome), file=out)
    if outcome.status != DELIVERED:
        raise ValveToolError(f"test pulse {outcome.status}: {outcome.reason}")
    return outcome


def flush(cfg: RewardConfig, total_ms: float, out: TextIO | None = None) -> list[RewardOutcome]:
    """Open the valve for ``total_ms`` in pulses no longer than the board's maximum open time or its duty-cycle
    budget, paced by that budget (with the real board's 2 s per 10 s, a 60 s flush takes about 5 minutes)."""
    out = out if out is not None else sys.stdout
    if not 0 < total_ms <= 60_000:
        raise ValveToolError("--ms must be in (0, 60000]")
    outcomes: list[RewardOutcome] = []
    issued_by = bench_operator("flush")
    with board_session(cfg) as controller:
        _say_override(issued_by, out)
        board = controller.link.board
        step = float(min(board.max_open_ms, board.duty_max_ms) if board is not None else 1000)
        remaining, n = total_ms, 0
        while remaining > 0:
            n += 1
            ms = min(step, remaining)
            outcome = dispense(controller, f"flush-{n}", ms, "flush", issued_by, out)
            outcomes.append(outcome)
            print(_describe(outcome), file=out)
            if outcome.status != DELIVERED:
                raise ValveToolError(f"flush stopped: pulse {n} {outcome.status}: {outcome.reason}")
            remaining -= ms
    return outcomes


def _say_override(issued_by: str, out: TextIO) -> None:
    print(f"operator override by {issued_by}: the session's minimum interval and volume cap do not apply here; "
          "the board's duty-cycle limit does", file=out)


def _describe(o: RewardOutcome) -> str:
    if o.status == DELIVERED:
        return (
            f"{o.request_id}: delivered, board measured {o.open_us / 1000:.2f} ms open "
            f"(asked {o.open_ms:g} ms), write->ack {(o.t_ack - o.t_written) / 1e6:.2f} ms"
            if o.t_ack else f"{o.request_id}: delivered, {o.open_us / 1000:.2f} ms open"
        )
    return f"{o.request_id}: {o.status}: {o.reason}"


# ---------------------------------------------------------------- argparse


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError("open times must be numbers > 0")
    return values


def _run(func: Callable[[argparse.Namespace], object]) -> Callable[[argparse.Namespace], int]:
    def runner(args: argparse.Namespace) -> int:
        try:
            func(args)
        except (ValveToolError, CalibrationError) as exc:
            print(f"rig valve {args.valve_command}: error: {exc}", file=sys.stderr)
            return 1
        return 0

    return runner


def _cmd_calibrate(args: argparse.Namespace) -> None:
    cfg, base_dir = load_reward_config(args.config)
    calibrate(
        cfg, base_dir, open_ms=args.open_ms, pulses=args.pulses, interval_ms=args.interval_ms,
        out_path=Path(args.out) if args.out else None, plot=not args.no_plot,
    )


def _cmd_pulse(args: argparse.Namespace) -> None:
    cfg, _ = load_reward_config(args.config)
    pulse(cfg, args.ms)


def _cmd_flush(args: argparse.Namespace) -> None:
    cfg, _ = load_reward_config(args.config)
    flush(cfg, args.ms)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``valve {calibrate,pulse,flush}``; each sets ``func(args) -> exit code``."""
    valve = subparsers.add_parser(
        "valve", help="reward valve bench tools: calibrate, test pulse, flush",
        description="Bench tools for the reward valve, run before a session (not while `rig run` holds the port). "
                    "With [reward] port = \"emulator\" they talk to an in-process emulated board.\n\n"
                    "  rig valve pulse CONFIG            one test drop: is the line primed?\n"
                    "  rig valve flush CONFIG --ms 3000  open for 3 s in bounded pulses to flush the line\n"
                    "Their pulses override the session's minimum interval and volume cap (logged with your user "
                    "name); the board's duty-cycle limit (20 % of any 10 s) paces them.\n"
                    "  rig valve calibrate CONFIG        weigh drops at several open times, fit, save",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = valve.add_subparsers(dest="valve_command", required=True, metavar="{calibrate,pulse,flush}")

    cal = commands.add_parser(
        "calibrate", help="dispense pulses at several open times, enter the weights, fit and save",
        description="For each open time: dispense --pulses drops into a weighed tube, then type the weight "
                    "of water (mg = µL). The fit duration_ms = intercept + slope x µL is saved with today's "
                    "date to [reward] calibration_file (or --out), with a table and a PNG of the fit; sessions "
                    "record which calibration they used.")
    cal.add_argument("config", help="rig config TOML ([reward] section)")
    cal.add_argument("--open-ms", type=_float_list, default=[20.0, 40.0, 60.0, 80.0],
                     help="comma-separated open times in ms (default 20,40,60,80)")
    cal.add_argument("--pulses", type=int, default=100, help="pulses per open time (default 100)")
    cal.add_argument("--interval-ms", type=float, default=300.0,
                     help="pause between pulses so drops detach (default 300)")
    cal.add_argument("--out", help="file to save to (default: [reward] calibration_file)")
    cal.add_argument("--no-plot", action="store_true", help="do not write the PNG of the fit")
    cal.set_defaults(func=_run(_cmd_calibrate))

    pls = commands.add_parser("pulse", help="one test pulse",
                              description="Open the valve once for --ms (default [reward] test_pulse_ms).")
    pls.add_argument("config", help="rig config TOML ([reward] section)")
    pls.add_argument("--ms", type=float, default=None, help="open time (default [reward] test_pulse_ms)")
    pls.set_defaults(func=_run(_cmd_pulse))

    fl = commands.add_parser("flush", help="open the valve for a bounded time to flush the line",
                             description="Open the valve for --ms in total, as pulses no longer than the board's "
                                         "hard maximum, paced by its duty-cycle limit (2 s per 10 s: a 60 s flush "
                                         "takes about 5 minutes); at most 60 s.")
    fl.add_argument("config", help="rig config TOML ([reward] section)")
    fl.add_argument("--ms", type=float, required=True, help="total open time, split into pulses <= the board's max")
    fl.set_defaults(func=_run(_cmd_flush))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rig")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
