"""A simulated two-photon microscope: a field of view of GCaMP neurons imaged through a noisy PMT.

Why this module holds only the renderer (and the per-frame ground truth it produces): the tissue it images
is :mod:`acquisition.sim.anatomy` and writing the truth to disk in suite2p layout is
:mod:`acquisition.sim.export`; the real-time path (:class:`acquisition.sim.source.SimSource`) and the
benchmarks need only this.

What a frame is made of (DOMAIN.md section 4)::

    expected photons  = bleach(t) * [neuropil * level(x, y, t) + sum_i F0_i * (1 + dF/F_i(t)) * footprint_i]
                        moved by the brain's motion (subpixel) + dark counts
    ADC counts        = PMT gain * (photon count with PMT excess noise) + read noise + offset  -> uint16

The scene lives on a canvas a few pixels larger than the field of view so motion brings real tissue in
at the edges. Everything that does not change per frame is precomputed:

* cell footprints are sparse (pixel index, weight) lists; per frame only their ~20k pixels are updated;
* the static image (baseline cells + neuropil) is rescaled for bleaching only every few seconds;
* motion is a separable bilinear shift (six full-frame ufunc passes on float32);
* photon noise uses two banks of standard-normal frames, reused at random offsets, flips and signs,
  and a square-root (Anscombe-like) transform ``n = (sqrt(lam - e/8) + z*sqrt(e)/2)^2 - e/8`` with the
  excess noise factor ``e = 1 + var_gain/gain^2``: exactly the mean ``lam`` and variance ``e*lam`` of
  Poisson photons with a noisy PMT gain, skewed like real low-count data, without ``rng.poisson``
  (which costs ~19 ms on a 512x512 frame here).

Motion convention: ``shifts[t] = (dy, dx)`` is where the content of the reference image appears in frame
``t`` (moved down by ``dy`` rows, right by ``dx`` columns); registering the frame means shifting it by
``(-dy, -dx)``. This is suite2p's ``yoff``/``xoff`` sign.

Two planes (``n_planes = 2``): one step of biology and motion per *volume*; ``render`` draws plane 0 (the
somata, exactly as with one plane) and ``render_dendrites`` then draws plane 1 of the same volume
(:mod:`acquisition.sim.dendrite_plane`); ``truth(plane=1)`` is the dendrites' ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse

from acquisition.align import Similarity
from acquisition.sim.anatomy import build_anatomy, move_anatomy
from acquisition.sim.calcium import CalciumModel, indicator_preset
from acquisition.sim.config import SimConfig
from acquisition.sim.dendrite_plane import DendritePlane
from acquisition.sim.dendrites import DendriteActivity, build_layout
from acquisition.sim.depth import DepthModel
from acquisition.sim.mouse import SimMouse
from acquisition.sim.neuropil import NeuropilField

_NOISE_PAD = 32  # noise bank frames are this much larger than the field of view (random offsets)
_MOTION_BLOCK = 512  # frames of motion/timing random numbers drawn at once
_HISTORY_CHUNK = 9000  # ground-truth history grows in chunks of this many frames
_BLEACH_RESCALE = 2e-4  # relative bleaching change that triggers a rescale of the static image


@dataclass
class FrameInfo:
    """What the scope knows about the frame it just produced."""

    number: int
    scope_time_s: float
    dy: float
    dx: float


class SimScope:
    """Renders frames of a simulated session into caller buffers; keeps the ground truth.

    ``up``/``down`` tell the simulated mouse which cells the decoder reads (ROI i == cell i).
    """

    def __init__(
        self,
        cfg: SimConfig,
        frame_rate_hz: float = 30.0,
        up: list[int] | tuple[int, ...] = (),
        down: list[int] | tuple[int, ...] = (),
    ) -> None:
        if frame_rate_hz <= 0:
            raise ValueError(f"frame_rate_hz must be > 0 (got {frame_rate_hz})")
        self.cfg = cfg
        self.frame_rate_hz = float(frame_rate_hz)
        self.shape = (cfg.height_px, cfg.width_px)
        self.dtype = np.dtype(np.uint16)
        root = np.random.SeedSequence(cfg.seed)
        # same spawn order as TraceSim: geometry, mouse, noise; then motion and timing
        geometry_seq, mouse_seq, noise_seq, motion_seq = root.spawn(4)
        if cfg.day:  # another day of the same tissue: new activity, noise and motion
            _, mouse_seq, noise_seq, motion_seq = np.random.SeedSequence([cfg.seed, cfg.day]).spawn(4)
        self.anatomy = build_anatomy(cfg, np.random.default_rng(geometry_seq))
        self.day_transform = Similarity.about_center(self.shape, cfg.day_dy_px, cfg.day_dx_px, cfg.day_rotation_deg)
        if self.day_transform != Similarity.about_center(self.shape):  # another day: the same tissue, moved
            self.anatomy = move_anatomy(self.anatomy, self.day_transform)
        n = cfg.n_cells
        self.n_cells = n
        self.mouse = SimMouse(cfg.mouse, n, frame_rate_hz, seed=mouse_seq, up=up, down=down)
        self.calcium = CalciumModel(indicator_preset(cfg.indicator), n, frame_rate_hz)
        self._noise_rng = np.random.default_rng(noise_seq)
        self._motion_rng = np.random.default_rng(motion_seq)
        self._build_static()
        # neuropil follows the cells near each place (acquisition.sim.neuropil), on the canvas
        self.neuropil_field = NeuropilField(np.array([c.center for c in self.anatomy.cells]).reshape(-1, 2),
                                            self._canvas_shape, cfg.neuropil_coupling, cfg.neuropil_sigma_px,
                                            origin=self.anatomy.margin)
        # focal-plane (z) motion: only when asked for, so a 2-D session renders exactly as before
        self.depth = DepthModel(self) if cfg.z_drift_um > 0 or cfg.z_jump_rate_hz > 0 else None
        self._build_noise_banks()
        self._init_motion()
        self.frames_generated = 0
        self._history: dict[str, np.ndarray] = {}
        self._history_len = 0
        self.history_truncated = False
        self._last_info = FrameInfo(number=-1, scope_time_s=0.0, dy=0.0, dx=0.0)
        # plane 1 (n_planes = 2): the apical dendrites, from their own random streams
        self.dendrites: DendriteActivity | None = None
        self.plane1: DendritePlane | None = None
        self._dend_history: dict[str, np.ndarray] = {}
        if cfg.n_planes == 2:
            centers = np.array([c.center for c in self.anatomy.cells], float).reshape(-1, 2)
            layout = build_layout(cfg, centers, self.brightness, up, down)
            self.dendrites = DendriteActivity(cfg, layout, self.mouse, frame_rate_hz)
            self.plane1 = DendritePlane(self, layout, self.dendrites)

    # ------------------------------------------------------------ precomputation

    def _build_static(self) -> None:
        cfg, an = self.cfg, self.anatomy
        m = an.margin
        H, W = an.neuropil.shape
        self._canvas_shape = (H, W)
        rows, cols, vals = [], [], []
        for i, c in enumerate(an.cells):
            rows.append((c.ypix + m).astype(np.int64) * W + (c.xpix + m))
            cols.append(np.full(c.ypix.size, i, np.int64))
            vals.append(c.lam)
        flat = np.concatenate(rows)
        active, local = np.unique(flat, return_inverse=True)
        self._active = active  # canvas flat indices touched by any cell
        self._W = scipy.sparse.csr_matrix(
            (np.concatenate(vals).astype(np.float32), (local, np.concatenate(cols))),
            shape=(active.size, self.n_cells),
        )
        self.brightness = np.array([c.brightness for c in an.cells])
        cell_base = np.zeros(H * W, np.float64)
        np.add.at(cell_base, flat, np.concatenate(vals) * np.repeat(self.brightness, [c.ypix.size for c in an.cells]))
        self._neuropil_photons = (cfg.neuropil_photons * an.neuropil).astype(np.float32)
        self._static_raw = (cell_base.reshape(H, W) + self._neuropil_photons).astype(np.float32)
        self._enf = 1.0 + cfg.pmt_gain_var / cfg.pmt_gain**2
        # constant folded into the static image: dark counts and the shot-noise transform's shift;
        # bilinear interpolation preserves constants, so it survives the motion step unchanged
        self._static_const = np.float32(cfg.dark_photons - self._enf / 8.0)
        self._static = np.empty((H, W), np.float32)
        self._np_scaled = np.empty((H, W), np.float32)
        self._bleach_applied = -1.0
        self._apply_bleach(1.0)
        self._work = np.empty((H, W), np.float32)
        self._work_flat = self._work.reshape(-1)
        Ly, Lx = self.shape
        self._tmp_y = np.empty((Ly, Lx + 1), np.float32)
        self._lam = np.empty((Ly, Lx), np.float32)
        self._amp = np.zeros(self.n_cells, np.float32)
        self._F_true = np.zeros(self.n_cells)

    def _apply_bleach(self, b: float) -> None:
        np.multiply(self._static_raw, np.float32(b), out=self._static)
        self._static += self._static_const
        np.multiply(self._neuropil_photons, np.float32(b), out=self._np_scaled)
        self._bleach_applied = b

    def _build_noise_banks(self) -> None:
        cfg = self.cfg
        Ly, Lx = self.shape
        k = cfg.noise_bank_frames
        self.noise_pad = _NOISE_PAD
        shape = (k, Ly + _NOISE_PAD, Lx + _NOISE_PAD)
        rng = self._noise_rng
        self._shot_bank = rng.standard_normal(shape, dtype=np.float32)
        self._shot_bank *= np.float32(math.sqrt(self._enf) / 2.0)
        self._read_bank = rng.standard_normal(shape, dtype=np.float32)
        self._read_bank *= np.float32(cfg.electronics_noise)
        # ADC offset, minus the transform's e/8 shift (in counts), plus 0.5 so truncation rounds
        self._read_bank += np.float32(cfg.adc_offset - cfg.pmt_gain * self._enf / 8.0 + 0.5)
        self._noise_choice = np.zeros((_MOTION_BLOCK, 8), np.int64)

    def _init_motion(self) -> None:
        cfg = self.cfg
        dt = 1.0 / self.frame_rate_hz
        rng = self._motion_rng
        self._a_walk = math.exp(-dt / cfg.motion_walk_tau_s)
        self._a_jump = math.exp(-dt / cfg.jump_tau_s)
        self._p_jump = 1.0 - math.exp(-cfg.jump_rate_hz * dt)
        # the direction licks push the brain (its own stream: the other motion draws stay as they were)
        lick_angle = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(8,))).uniform(0, 2 * math.pi)
        self._lick_dir = np.array([math.cos(lick_angle), math.sin(lick_angle)])
        self._walk = cfg.motion_walk_sd_px * rng.standard_normal(2)
        self._jump = np.zeros(2)
        self._drift = np.zeros(2)
        angle = rng.uniform(0, 2 * math.pi)
        speed = cfg.drift_px_per_min / 60.0 * dt
        self._drift_v = speed * np.array([math.sin(angle), math.cos(angle)])
        self._shift = np.zeros(2)
        self._block_i = _MOTION_BLOCK
        self._z_motion = np.zeros((_MOTION_BLOCK, 5))

    def _refill_random(self) -> None:
        rng = self._motion_rng
        self._z_motion[:] = rng.standard_normal(self._z_motion.shape)
        self._z_motion[:, 4] = rng.random(_MOTION_BLOCK)  # jump coin
        k = self.cfg.noise_bank_frames
        ch = self._noise_choice
        ch[:, 0] = rng.integers(0, k, _MOTION_BLOCK)  # shot bank frame
        ch[:, 1:3] = rng.integers(0, _NOISE_PAD + 1, (_MOTION_BLOCK, 2))  # its offset
        ch[:, 3] = rng.integers(0, 8, _MOTION_BLOCK)  # flips (y, x) and sign
        ch[:, 4] = rng.integers(0, k, _MOTION_BLOCK)  # read-noise bank frame
        ch[:, 5:7] = rng.integers(0, _NOISE_PAD + 1, (_MOTION_BLOCK, 2))
        ch[:, 7] = rng.integers(0, 4, _MOTION_BLOCK)
        self._block_i = 0

    # ------------------------------------------------------------ per frame

    def _step_motion(self, z: np.ndarray) -> None:
        cfg = self.cfg
        self._walk *= self._a_walk
        self._walk += cfg.motion_walk_sd_px * math.sqrt(1 - self._a_walk**2) * z[0:2]
        self._jump *= self._a_jump
        if z[4] < self._p_jump:
            self._jump += cfg.jump_sd_px * z[2:4]
        self._drift += self._drift_v
        half = cfg.motion_max_px / 2.0
        for d in range(2):  # drift reflects inside half the motion bound
            if abs(self._drift[d]) > half:
                self._drift[d] = math.copysign(half, self._drift[d])
                self._drift_v[d] = -self._drift_v[d]
        np.add(self._walk, self._jump, out=self._shift)
        self._shift += self._drift
        # licks (after rewards) push the brain along one direction, once per lick
        self._shift += (cfg.lick_motion_px * self.mouse.lick_displacement) * self._lick_dir
        np.clip(self._shift, -cfg.motion_max_px, cfg.motion_max_px, out=self._shift)

    def bleach_factor(self, frame: int) -> float:
        cfg = self.cfg
        t = frame / self.frame_rate_hz
        return 1.0 - cfg.bleach_fraction * (1.0 - math.exp(-t / cfg.bleach_tau_s))

    def _advance(self) -> tuple[np.ndarray, float, float]:
        """Simulate one frame of biology and motion (no image). Returns (dF/F, neuropil level, bleach)."""
        if self._block_i >= _MOTION_BLOCK:
            self._refill_random()
        spikes = self.mouse.step()
        dff = self.calcium.step(spikes)
        if self.dendrites is not None:
            self.dendrites.step(spikes)
        level = self.neuropil_field.step(dff)  # the field's mean level; render() uses it per pixel
        b = self.bleach_factor(self.frames_generated)
        self._step_motion(self._z_motion[self._block_i])
        if self.depth is not None:
            self.depth.step()
        np.multiply(dff, self.brightness, out=self._F_true)
        self._F_true += self.brightness
        self._F_true *= b
        self._record(spikes, b)
        if self.dendrites is not None and not self.history_truncated:
            self._record_dendrites(self._history_len - 1, b)
        return dff, level, b

    def skip(self) -> FrameInfo:
        """Advance one frame without rendering it (a frame the rig lost); its ground truth is kept."""
        self._advance()
        return self._finish_frame()

    def render(self, out: np.ndarray) -> FrameInfo:
        """Render the next frame into ``out`` (uint16, shape ``self.shape``); return its number and truth."""
        if out.shape != self.shape or out.dtype != np.uint16:
            raise ValueError(f"out must be uint16 of shape {self.shape} (got {out.dtype} {out.shape})")
        dff, level, b = self._advance()
        if abs(b - self._bleach_applied) > _BLEACH_RESCALE * self._bleach_applied:
            self._apply_bleach(b)
        work = self._work
        # neuropil modulation + static scene, then the cells' changing part on their pixels only
        self.neuropil_field.modulate(self._np_scaled, out=work)
        work += self._static
        np.multiply(dff, self.brightness * b, out=self._amp, casting="unsafe")
        if self.depth is not None:
            self.depth.apply(work, self._amp, dff, self.brightness * b, self._np_scaled, level)
        self._work_flat[self._active] += self._W @ self._amp
        self._shift_into(work, self._lam)
        self._add_noise(self._lam, out)
        return self._finish_frame()

    def _finish_frame(self) -> FrameInfo:
        z = self._z_motion[self._block_i]
        number = self.frames_generated
        t = number / self.frame_rate_hz + self.cfg.timestamp_jitter_s * float(z[0]) * 0.5
        self._block_i += 1
        self.frames_generated += 1
        self._last_info = FrameInfo(number=number, scope_time_s=t, dy=float(self._shift[0]), dx=float(self._shift[1]))
        return self._last_info

    def render_dendrites(self, out: np.ndarray) -> FrameInfo:
        """Plane 1 (the dendrites) of the volume the last ``render``/``skip`` advanced, into ``out``; its
        number is that volume's, its time half a volume later (scanned after plane 0)."""
        if self.plane1 is None:
            raise ValueError("render_dendrites: this simulated scope images one plane (set n_planes = 2)")
        if out.shape != self.shape or out.dtype != np.uint16:
            raise ValueError(f"out must be uint16 of shape {self.shape} (got {out.dtype} {out.shape})")
        if self._last_info.number < 0:
            raise ValueError("render_dendrites: render plane 0 of a volume first")
        self.plane1.render(out, self.bleach_factor(self._last_info.number))
        info = self._last_info
        return FrameInfo(number=info.number, scope_time_s=info.scope_time_s + 0.5 / self.frame_rate_hz,
                         dy=info.dy, dx=info.dx)

    def _shift_into(self, canvas: np.ndarray, out: np.ndarray) -> None:
        """out[y, x] = canvas[y + m - dy, x + m - dx] by separable bilinear interpolation."""
        Ly, Lx = self.shape
        m = self.anatomy.margin
        sy = m - float(self._shift[0])
        sx = m - float(self._shift[1])
        iy = int(math.floor(sy))
        fy = np.float32(sy - iy)
        bidi = self.cfg.bidi_offset_px
        if bidi == 0.0:
            self._lerp(canvas[iy : iy + Ly], canvas[iy + 1 : iy + 1 + Ly], fy, sx, self._tmp_y, out)
            return
        # bidirectional scanning: odd lines come from the return sweep, displaced in x by the offset
        self._lerp(canvas[iy : iy + Ly : 2], canvas[iy + 1 : iy + 1 + Ly : 2], fy, sx, self._tmp_y[0::2], out[0::2])
        self._lerp(
            canvas[iy + 1 : iy + Ly : 2], canvas[iy + 2 : iy + 1 + Ly : 2], fy, sx - bidi, self._tmp_y[1::2], out[1::2]
        )

    @staticmethod
    def _lerp(
        top_rows: np.ndarray, bottom_rows: np.ndarray, fy: np.float32, sx: float, tmp: np.ndarray, out: np.ndarray
    ) -> None:
        ix = int(math.floor(sx))
        fx = np.float32(sx - ix)
        Lx = out.shape[1]
        top = top_rows[:, ix : ix + Lx + 1]
        np.subtract(bottom_rows[:, ix : ix + Lx + 1], top, out=tmp)
        tmp *= fy
        tmp += top
        np.subtract(tmp[:, 1:], tmp[:, :-1], out=out)
        out *= fx
        out += tmp[:, :-1]

    def _add_noise(self, lam: np.ndarray, out: np.ndarray, ch: np.ndarray | None = None) -> None:
        """Expected photons (already minus e/8, plus dark counts) -> noisy uint16 ADC counts; ``ch`` the noise
        draws (bank frames, offsets, flips), by default this frame's."""
        Ly, Lx = self.shape
        if ch is None:
            ch = self._noise_choice[self._block_i]
        shot = self._shot_bank[ch[0], ch[1] : ch[1] + Ly, ch[2] : ch[2] + Lx]
        flips = int(ch[3])
        if flips & 1:
            shot = shot[::-1]
        if flips & 2:
            shot = shot[:, ::-1]
        read = self._read_bank[ch[4], ch[5] : ch[5] + Ly, ch[6] : ch[6] + Lx]
        if ch[7] & 1:
            read = read[::-1]
        if ch[7] & 2:
            read = read[:, ::-1]
        np.maximum(lam, 0.0, out=lam)
        np.sqrt(lam, out=lam)
        if flips & 4:
            lam -= shot
        else:
            lam += shot
        np.square(lam, out=lam)
        lam *= np.float32(self.cfg.pmt_gain)
        lam += read
        np.clip(lam, 0.0, 65535.0, out=lam)
        np.copyto(out, lam, casting="unsafe")

    # ------------------------------------------------------------ ground truth

    def _record(self, spikes: np.ndarray, bleach: float) -> None:
        n = self._history_len
        if n >= self.cfg.history_max_frames:
            self.history_truncated = True
            return
        h = self._history
        if not h or n >= h["shifts"].shape[0]:
            cap = min(n + _HISTORY_CHUNK, self.cfg.history_max_frames)
            new = {
                "shifts": np.zeros((cap, 2), np.float32),
                "F_true": np.zeros((cap, self.n_cells), np.float32),
                "spikes": np.zeros((cap, self.n_cells), np.uint8),
                "bout": np.zeros(cap, np.uint8),
                "bleach": np.zeros(cap, np.float32),
                "z_um": np.zeros(cap, np.float32),
            }
            for key, arr in h.items():
                new[key][:n] = arr[:n]
            self._history = h = new
        h["shifts"][n] = self._shift
        h["F_true"][n] = self._F_true
        np.minimum(spikes, 255, out=h["spikes"][n], casting="unsafe")
        h["bout"][n] = self.mouse.bout
        h["bleach"][n] = bleach
        h["z_um"][n] = self.depth.z_um if self.depth is not None else 0.0
        self._history_len = n + 1

    def _record_dendrites(self, n: int, bleach: float) -> None:
        """Plane 1's truth of volume ``n``: F, the bAP component, events, instructive signal and event rate."""
        d = self.dendrites
        assert d is not None
        h = self._dend_history
        nd = d.layout.n
        if not h or n >= h["F_true"].shape[0]:
            cap = min(n + _HISTORY_CHUNK, self.cfg.history_max_frames)
            new = {
                "F_true": np.zeros((cap, nd), np.float32),
                "dff_bap": np.zeros((cap, nd), np.float32),
                "events": np.zeros((cap, nd), np.uint8),
                "instructive": np.zeros((cap, nd), np.float32),
                "event_rate_hz": np.zeros((cap, nd), np.float32),
            }
            for key, arr in h.items():
                new[key][:n] = arr[:n]
            self._dend_history = h = new
        np.multiply(d.dff, d.layout.brightness * bleach, out=h["F_true"][n], casting="unsafe")
        h["F_true"][n] += d.layout.brightness * bleach
        h["dff_bap"][n] = d.dff_bap
        h["events"][n] = d.events
        h["instructive"][n] = d.instructive
        h["event_rate_hz"][n] = d.rate_hz

    @property
    def frames_recorded(self) -> int:
        """Frames with ground truth kept: all generated, up to ``history_max_frames``."""
        return self._history_len

    def truth(self, n_frames: int | None = None, plane: int = 0) -> dict[str, np.ndarray]:
        """Ground truth of the first ``n_frames`` frames (volumes) generated (all so far by default).

        Plane 0: ``shifts`` (n, 2) true (dy, dx); ``F_true`` (n, cells) photons/pixel where lam == 1, bleached;
        ``dff_true`` the indicator's dF/F; ``spikes`` counts per frame; ``bout`` 1 while the mouse makes
        an attempt; ``bleach`` the brightness factor; ``z_um`` the focal plane's depth (0 without z motion).
        Plane 1 (:meth:`dendrite_truth`): the dendrites.
        """
        if plane == 1:
            return self.dendrite_truth(n_frames)
        if plane != 0:
            raise ValueError(f"ground truth for plane {plane} requested; this simulated scope images "
                             f"planes 0..{self.cfg.n_planes - 1}")
        have = self._history_len
        n = have if n_frames is None else int(n_frames)
        if not 0 <= n <= have:
            raise ValueError(
                f"ground truth for {n} frames requested, but {have} frames are recorded "
                f"({self.frames_generated} generated, history_max_frames={self.cfg.history_max_frames})"
            )
        h = self._history
        if not h:
            return {
                "shifts": np.zeros((0, 2), np.float32),
                "F_true": np.zeros((0, self.n_cells), np.float32),
                "dff_true": np.zeros((0, self.n_cells), np.float32),
                "spikes": np.zeros((0, self.n_cells), np.uint8),
                "bout": np.zeros(0, np.uint8),
                "bleach": np.zeros(0, np.float32),
                "z_um": np.zeros(0, np.float32),
            }
        out = {key: arr[:n].copy() for key, arr in h.items()}
        # dF/F is not stored (memory): F_true = brightness * bleach * (1 + dF/F)
        scale = out["bleach"][:, None] * self.brightness[None, :].astype(np.float32)
        out["dff_true"] = out["F_true"] / scale - np.float32(1.0)
        return out

    def dendrite_truth(self, n_frames: int | None = None) -> dict[str, np.ndarray]:
        """Plane 1's truth per volume and dendrite ROI: ``F_true`` and ``dff_true`` (as plane 0's), ``dff_bap``
        the dF/F the back-propagated spikes alone give, ``events`` the dendrite-specific events, ``instructive``
        the parent cell's instructive signal (per second, as its rule computed it), ``event_rate_hz`` the
        modulated event rate; and ``shifts``, ``bleach``, ``bout`` of the volume."""
        if self.dendrites is None:
            raise ValueError("ground truth for plane 1 requested, but this simulated scope images one plane "
                             "(set [acquisition.sim] n_planes = 2)")
        base = self.truth(n_frames)
        n = base["shifts"].shape[0]
        nd = self.dendrites.layout.n
        h = self._dend_history
        if h:
            out = {key: arr[:n].copy() for key, arr in h.items()}
        else:
            out = {key: np.zeros((0, nd), np.uint8 if key == "events" else np.float32)
                   for key in ("F_true", "dff_bap", "events", "instructive", "event_rate_hz")}
        scale = base["bleach"][:, None] * self.dendrites.layout.brightness[None, :].astype(np.float32)
        out["dff_true"] = out["F_true"] / scale - np.float32(1.0)
        out.update(shifts=base["shifts"], bleach=base["bleach"], bout=base["bout"])
        return out

    def expected_image(self) -> np.ndarray:
        """Noise-free mean image at zero motion and baseline activity, in ADC counts (float32)."""
        m = self.anatomy.margin
        Ly, Lx = self.shape
        photons = self._static_raw[m : m + Ly, m : m + Lx] + self.cfg.dark_photons
        return (photons * self.cfg.pmt_gain + self.cfg.adc_offset).astype(np.float32)
