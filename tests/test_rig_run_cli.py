"""`rig run` around the supervisor: the mouse ID asked before a live session, the session kept open for review."""

from __future__ import annotations

import argparse

import pytest

from rig.app import cli

LIVE = """
[acquisition]
source = "cloose_tcp"
[reward]
port = "emulator"
"""


@pytest.fixture
def live_config(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text(LIVE, encoding="utf-8")
    return path


def run_args(config, headless=False):
    return argparse.Namespace(config=str(config), set=[], headless=headless)


def test_the_console_asks_for_the_mouse_and_the_answer_names_the_session(live_config, monkeypatch):
    asked = []
    monkeypatch.setattr("gui.mouse_id.ask_mouse_id", lambda rig: asked.append(rig) or "0042")
    args = run_args(live_config)
    assert cli._mouse_id_given(args) is True
    assert asked == ["unnamed-rig"]
    assert args.set == ['session.mouse_id="0042"']
    from rig.app.config import load_config

    assert load_config(args.config, args.set).session.mouse_id == "0042"  # a string, leading zeros kept


def test_cancelling_the_question_starts_nothing(live_config, monkeypatch, capsys):
    monkeypatch.setattr("gui.mouse_id.ask_mouse_id", lambda rig: None)
    assert cli._mouse_id_given(run_args(live_config)) is False
    assert "no mouse ID given" in capsys.readouterr().err


def test_a_config_that_names_its_mouse_or_a_simulation_is_not_asked(live_config, monkeypatch, tmp_path):
    monkeypatch.setattr("gui.mouse_id.ask_mouse_id", lambda rig: pytest.fail("asked"))
    named = run_args(live_config)
    named.set = ["session.mouse_id=M1"]
    assert cli._mouse_id_given(named) is True
    sim = tmp_path / "sim.toml"
    sim.write_text('[acquisition]\nsource = "sim"\n', encoding="utf-8")
    assert cli._mouse_id_given(run_args(sim)) is True


def test_headless_without_a_terminal_leaves_it_to_the_start_check(live_config, monkeypatch):
    monkeypatch.setattr("sys.stdin", None)
    args = run_args(live_config, headless=True)
    assert cli._mouse_id_given(args) is True and args.set == []  # the supervisor refuses with its one line


def test_the_dialog_accepts_an_id_and_refuses_one_that_cannot_name_a_folder(qtbot, monkeypatch):
    from PyQt6 import QtWidgets

    from gui.mouse_id import ask_mouse_id

    answers = iter([("bad/id", True), ("M7", True)])
    prompts = []

    def fake_get_text(parent, title, prompt):
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(QtWidgets.QInputDialog, "getText", staticmethod(fake_get_text))
    assert ask_mouse_id("left") == "M7"
    assert "cannot name a session folder" in prompts[1]


class _FakeSupervisor:
    """Stands in for the supervisor: a finished session with (or without) the console."""

    def __init__(self, config, *, headless, duration_s, sessions_root, overrides, console=True):
        from types import SimpleNamespace

        self.session_dir = "/sessions/x"
        self.children = [SimpleNamespace(name=n) for n in ("acquisition", "decoder") + (("gui",) if not headless
                                                                                          else ())]

    def run(self):
        return {"ok": True}


@pytest.mark.parametrize(("argv", "reviewed"), [
    ([], ["/sessions/x"]),  # the console's session stays on screen, read from its files
    (["--no-review"], []),
    (["--headless"], []),
])
def test_after_a_session_with_the_console_the_finished_session_stays_open_for_review(argv, reviewed, monkeypatch,
                                                                                      capsys):
    from tests.conftest import REPO

    reviews = []
    monkeypatch.setattr("rig.app.supervisor.Supervisor", _FakeSupervisor)
    monkeypatch.setattr("rig.app.supervisor.has_display", lambda: True)
    monkeypatch.setattr("rig.app.console_cli.run_review", lambda folder: reviews.append(folder) or 0)
    assert cli.main(["run", str(REPO / "hardware_configs" / "sim.toml"), *argv]) == 0
    assert reviews == reviewed
