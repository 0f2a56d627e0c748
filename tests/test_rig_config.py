"""Config validation: the shipped configs load, and every bad config in the corpus fails with its message."""

from pathlib import Path

import pytest

from rig.app.config import ConfigError, load_config

HERE = Path(__file__).resolve().parent
BAD = sorted((HERE / "bad_configs").glob("*.toml"))
SHIPPED = sorted((HERE.parent / "hardware_configs").glob("*.toml"))


def _expected(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message fragment>'"
    return first[len("# expect: "):]


def test_the_corpus_is_not_empty():
    assert len(BAD) >= 10


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config_is_rejected_with_its_message(path):
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)), message  # names the file
    assert _expected(path) in message


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_configs_are_valid(path):
    load_config(path)


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml.*cannot read"):
        load_config(missing)


def test_overrides_are_typed_and_validated(tmp_path):
    from rig.app.config import apply_overrides, config_from_dict

    data = apply_overrides({}, ["bus.base_port=20000", "rig.name=left-scope", "session.save_frames=false"])
    cfg = config_from_dict(data)
    assert cfg.bus.base_port == 20000 and cfg.rig.name == "left-scope" and cfg.session.save_frames is False
    with pytest.raises(ConfigError, match=r"\[bus.base_port\]: must be 0"):
        config_from_dict(apply_overrides({}, ["bus.base_port=5"]), "--set")
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        apply_overrides({}, ["nonsense"])


def test_relative_paths_are_relative_to_the_config_file_and_set_paths_to_the_cwd(tmp_path, monkeypatch):
    rig_dir = tmp_path / "rigs"
    rig_dir.mkdir()
    (rig_dir / "a.toml").write_text('[acquisition.rois]\nsuite2p_dir = "s2p/plane0"\n'
                                    '[reward]\ncalibration_file = "cal.toml"\n')
    cfg = load_config(rig_dir / "a.toml")
    assert cfg.acquisition.rois.suite2p_dir == str((rig_dir / "s2p" / "plane0").resolve())
    assert cfg.reward.calibration_file == str((rig_dir / "cal.toml").resolve())
    monkeypatch.chdir(tmp_path)
    cfg = load_config(rig_dir / "a.toml", ['acquisition.replay.path="movie.tif"'])
    assert cfg.acquisition.replay.path == str((tmp_path / "movie.tif").resolve())
