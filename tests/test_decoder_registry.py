"""The decoder registry: config validation follows it, every entry builds a Decoder, and the engine asks
capabilities rather than names (a decoder added with one registry line runs end to end)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pytest

from decoder import registry
from decoder.config import CalibrationConfig, DecoderConfig, TaskConfig
from decoder.engine import DecoderEngine
from decoder.registry import DECODERS, Decoder, DecoderKind, make_decoder
from rig.core.codes import Mode
from tests.test_decoder_synthetic import synthetic_recording


class SumDecoder:
    """up = Σ dF/F of the up ROIs, down = Σ of the down ROIs: a decoder from outside the package."""

    uses_weights = False

    def __init__(self, kind: str, n_rois: int, *, zscore: bool = False, cell_cap: float = 0.0) -> None:
        self.kind = kind
        self.n_rois = n_rois
        self.up: list[int] = []
        self.down: list[int] = []
        self.weights = np.zeros(n_rois)

    @property
    def ready(self) -> bool:
        return bool(self.up)

    @property
    def rois(self) -> np.ndarray:
        return np.array(sorted(self.up + self.down), dtype=np.intp)

    def set_ensembles(self, up: Sequence[int], down: Sequence[int]) -> None:
        self.up, self.down = [int(i) for i in up], [int(i) for i in down]

    def set_weights(self, weights: Sequence[float] | np.ndarray) -> None:
        raise ValueError("`weights`: the sum decoder has no weights")

    def set_zscore_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        pass

    def decode(self, dff: np.ndarray) -> tuple[float, float]:
        return float(dff[self.up].sum()), float(dff[self.down].sum())

    def decode_frames(self, dff: np.ndarray, *, rois_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        column = {int(r): j for j, r in enumerate(self.rois)}
        up = [column[i] for i in self.up] if rois_only else self.up
        down = [column[i] for i in self.down] if rois_only else self.down
        return dff[:, up].sum(axis=1), dff[:, down].sum(axis=1)

    def clone(self) -> SumDecoder:
        other = SumDecoder(self.kind, self.n_rois)
        other.set_ensembles(self.up, self.down)
        return other

    def warm_up(self) -> None:
        pass


def test_config_accepts_exactly_the_registered_names():
    for name in DECODERS:
        DecoderConfig(decoder=name)
    with pytest.raises(ValueError, match="must be one of " + ", ".join(DECODERS)):
        DecoderConfig(decoder="pca")


def test_config_checks_capabilities():
    with pytest.raises(ValueError, match="`down`: the one_population decoder reads only the up ensemble"):
        DecoderConfig(decoder="one_population", up=[0], down=[1])
    with pytest.raises(ValueError, match="`weights`: only the weighted decoder uses weights"):
        DecoderConfig(decoder="two_population", weights=[1.0])


@pytest.mark.parametrize("name", list(DECODERS))
def test_every_entry_builds_a_decoder_with_its_capabilities(name):
    dec = make_decoder(name, 6, zscore=True, cell_cap=1.0)
    assert isinstance(dec, Decoder)
    assert dec.kind == name and dec.uses_weights == DECODERS[name].uses_weights
    assert not dec.ready
    dec.set_ensembles([0, 2], [4] if DECODERS[name].reads_down else [])
    assert dec.ready
    copy = dec.clone()
    assert copy is not dec and copy.up == dec.up and copy.down == dec.down
    assert np.array_equal(copy.rois, dec.rois)


def test_unknown_names_are_refused_with_the_registered_ones():
    with pytest.raises(ValueError, match="must be one of " + ", ".join(DECODERS)):
        make_decoder("pca", 4)


def test_decoder_config_stays_light():
    """rig --help and config checks import decoder.config: the registry must not pull numpy or numba in."""
    code = "import sys, decoder.config\nprint(','.join(m for m in ('numpy', 'numba') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def _calibrated_engine(dcfg: DecoderConfig, n_rois: int = 8) -> tuple[DecoderEngine, np.ndarray, np.ndarray]:
    F, Fneu = synthetic_recording(1500, n_rois, seed=2, fps=10.0)
    tcfg = TaskConfig(auto_protocol=False, baseline_s=100.0, trial_s=8.0, iti_s=1.0)
    eng = DecoderEngine(dcfg, tcfg, n_rois, 10.0)
    eng.load_baseline(F[:1000], Fneu[:1000])
    eng.calibrate()
    eng.start_bci()
    return eng, F, Fneu


def test_a_decoder_added_with_one_registry_line_runs_in_the_engine(monkeypatch):
    monkeypatch.setitem(registry.DECODERS, "sum", DecoderKind(f"{__name__}:SumDecoder"))
    cal = CalibrationConfig(min_baseline_trials=1.0)
    dcfg = DecoderConfig(decoder="sum", up=[0, 1], down=[2], smoothing_frames=1, f0_window_s=20.0, calibration=cal)
    eng, F, Fneu = _calibrated_engine(dcfg)
    assert eng.calibration is not None and eng.calibration.decoder == "sum" and eng.calibration.weights == []
    for t in range(1000, 1100):
        res = eng.step(t, F[t], Fneu[t])
        assert res.mode == Mode.BCI
        assert res.up == float(res.dff[[0, 1]].sum()) and res.down == float(res.dff[[2]].sum())


def test_the_engine_asks_uses_weights_not_the_name(monkeypatch):
    monkeypatch.setitem(registry.DECODERS, "signed", DecoderKind("decoder.decoders:LinearDecoder", uses_weights=True))
    weights = [0.5, -1.0, 0.0, 2.0, 0.0, 0.0, 0.0, -0.25]
    dcfg = DecoderConfig(decoder="signed", weights=weights, f0_window_s=20.0,
                         calibration=CalibrationConfig(min_baseline_trials=1.0))
    eng, F, Fneu = _calibrated_engine(dcfg)
    cal = eng.calibration
    assert cal is not None and cal.weights == weights and cal.up == [0, 3] and cal.down == [1, 7]
    fresh = DecoderEngine(dcfg, TaskConfig(auto_protocol=False, trial_s=8.0, iti_s=1.0), 8, 10.0)
    fresh.set_weights(np.zeros(8) + 1.0)
    fresh.set_calibration(cal)  # restores the weights, as for "weighted"
    assert fresh.up == [0, 3] and fresh.down == [1, 7]
