"""The simulated tissue: where the cells are, their footprints, the neuropil and the blood vessels.

Why its own module: the scene is a model of the brain, not of the microscope. It is built once per
session from the geometry seed and never changes; the renderer (:mod:`acquisition.sim.scope`) images it
and the ground-truth export (:mod:`acquisition.sim.export`) writes it out as suite2p ROIs, so both read
it and neither owns it. Coordinates are field-of-view pixels at zero motion; the canvas is a margin wider
on every side so that motion brings real tissue in at the edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.special import expit

from acquisition.align import Similarity, warp_image, warp_roi
from acquisition.sim.config import SimConfig


@dataclass
class Cell:
    """One simulated neuron's footprint, in field-of-view coordinates (zero motion)."""

    ypix: np.ndarray
    xpix: np.ndarray
    lam: np.ndarray  # footprint weight (cytoplasm = 1, dark nucleus, soft edges, dimmer processes)
    soma: np.ndarray  # bool per pixel: part of the soma (not a process)
    center: tuple[float, float]
    radius: float
    brightness: float  # baseline photons/pixel/frame where lam == 1
    has_processes: bool


@dataclass
class Anatomy:
    """The static scene: cells, neuropil and vessels on a canvas of (Ly + 2m) x (Lx + 2m) pixels."""

    cells: list[Cell]
    neuropil: np.ndarray  # canvas float32, relative neuropil brightness (mean ~1)
    margin: int
    shape: tuple[int, int]  # field of view (Ly, Lx)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-12)


def _vessel_map(rng: np.random.Generator, shape: tuple[int, int], n_vessels: int) -> np.ndarray:
    """0..1 map of blood vessels: smooth curves crossing the field, 4-10 px wide (dark in GCaMP images)."""
    H, W = shape
    out = np.zeros(shape)
    for _ in range(n_vessels):
        line = np.zeros(shape, bool)
        y, x = rng.uniform(0, H), rng.uniform(0, W)
        heading = rng.uniform(0, 2 * math.pi)
        for direction in (1.0, -1.0):  # grow both ways from a random interior point
            py, px, ph = y, x, heading
            for _step in range(4 * (H + W)):
                ph += rng.normal(0, 0.03)
                py += direction * math.sin(ph)
                px += direction * math.cos(ph)
                iy, ix = int(py), int(px)
                if not (0 <= iy < H and 0 <= ix < W):
                    break
                line[iy, ix] = True
        width = rng.uniform(4.0, 10.0)
        dist = ndimage.distance_transform_edt(~line)
        out = np.maximum(out, expit((width / 2 - dist) / 0.8))
    return out


def _soma_patch(
    rng: np.random.Generator, radius: float, cfg: SimConfig, sub_y: float, sub_x: float, half: int
) -> np.ndarray:
    """Soma weights on a (2h+1)^2 patch: elliptic body, soft edge, dark (GCaMP-free) nucleus."""
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    yy -= sub_y
    xx -= sub_x
    aspect = rng.uniform(1.0, 1.3)
    theta = rng.uniform(0, math.pi)
    c, s = math.cos(theta), math.sin(theta)
    u = (yy * c + xx * s) / (radius * math.sqrt(aspect))
    v = (-yy * s + xx * c) / (radius / math.sqrt(aspect))
    rho = np.hypot(u, v)
    edge = 0.7 / radius
    body = expit((1.0 - rho) / edge)
    ny, nx = rng.normal(0, 0.12 * radius, 2)
    nf = cfg.nucleus_radius_fraction
    rho_n = np.hypot(yy - ny, xx - nx) / max(nf * radius, 1e-6)
    nucleus = expit((1.0 - rho_n) / (0.7 / max(nf * radius, 1e-6)))
    return body * (1.0 - (1.0 - cfg.nucleus_brightness) * nucleus)


def _process_points(rng: np.random.Generator, radius: float) -> list[tuple[float, float, float, float]]:
    """Sample points (dy, dx, width sigma, amplitude) of 1-3 dendrite-like processes leaving the soma."""
    points: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, 4))):
        heading = rng.uniform(0, 2 * math.pi)
        y, x = 0.9 * radius * math.sin(heading), 0.9 * radius * math.cos(heading)
        length = rng.uniform(12.0, 40.0)
        n = int(length / 0.7)
        for k in range(n):
            frac = k / max(n - 1, 1)
            heading += rng.normal(0, 0.08)
            y += 0.7 * math.sin(heading)
            x += 0.7 * math.cos(heading)
            points.append((y, x, 1.1 - 0.5 * frac, 0.6 - 0.35 * frac))
    return points


def build_anatomy(cfg: SimConfig, rng: np.random.Generator) -> Anatomy:
    """Place ``cfg.n_cells`` cells (never on vessels, little overlap) and draw neuropil and vessels."""
    Ly, Lx = cfg.height_px, cfg.width_px
    margin = int(math.ceil(cfg.motion_max_px + abs(cfg.bidi_offset_px))) + 2
    H, W = Ly + 2 * margin, Lx + 2 * margin

    neuropil = 1.0 + 0.22 * _smooth_noise(rng, (H, W), 1.2) + 0.18 * _smooth_noise(rng, (H, W), 5.0)
    neuropil += 0.15 * _smooth_noise(rng, (H, W), 40.0)
    vessels = _vessel_map(rng, (H, W), cfg.n_vessels)
    neuropil *= 1.0 - 0.75 * vessels
    np.maximum(neuropil, 0.1, out=neuropil)

    r0 = cfg.cell_radius_px
    radii = np.clip(r0 * (1.0 + cfg.cell_radius_cv * rng.standard_normal(cfg.n_cells)), 0.6 * r0, 1.6 * r0)
    packing = cfg.n_cells * math.pi * (0.9 * r0) ** 2 / (Ly * Lx)
    if packing > 0.35:
        raise ValueError(
            f"`n_cells`: could not place {cfg.n_cells} cells of radius ~{r0} px in a {Ly}x{Lx} field of view "
            f"without piling them up (they would cover {packing:.0%} of it; keep it under 35%)"
        )
    cy_arr = np.zeros(cfg.n_cells)
    cx_arr = np.zeros(cfg.n_cells)
    cells: list[Cell] = []
    attempts = 0
    max_attempts = 200 * cfg.n_cells
    for i in range(cfg.n_cells):
        r = float(radii[i])
        pad = int(math.ceil(1.6 * r)) + 2
        while True:
            attempts += 1
            if attempts > max_attempts:
                raise ValueError(
                    f"`n_cells`: could not place {cfg.n_cells} cells of radius ~{r0} px in a {Ly}x{Lx} "
                    f"field of view without piling them up (placed {i}); use fewer or smaller cells"
                )
            cy, cx = rng.uniform(pad, Ly - pad), rng.uniform(pad, Lx - pad)
            if vessels[int(cy) + margin, int(cx) + margin] > 0.2:
                continue
            d2 = (cy_arr[:i] - cy) ** 2 + (cx_arr[:i] - cx) ** 2
            if np.all(d2 >= (0.9 * (r + radii[:i])) ** 2):
                break
        cy_arr[i], cx_arr[i] = cy, cx
        iy, ix = int(round(cy)), int(round(cx))
        half = int(math.ceil(1.5 * r)) + 2
        soma = _soma_patch(rng, r, cfg, cy - iy, cx - ix, half)
        with_processes = rng.random() < cfg.dendrite_fraction
        if with_processes:
            pts = _process_points(rng, r)
            ext = int(math.ceil(max(max(abs(p[0]), abs(p[1])) for p in pts))) + 3
            half_p = max(half, ext)
            grown = np.zeros((2 * half_p + 1, 2 * half_p + 1))
            o = half_p - half
            grown[o : o + soma.shape[0], o : o + soma.shape[1]] = soma
            soma_big = grown
            proc = np.zeros_like(grown)
            for py, px, sig, amp in pts:
                gy, gx = py + (cy - iy) + half_p, px + (cx - ix) + half_p
                y0, y1 = max(int(gy) - 3, 0), min(int(gy) + 4, proc.shape[0])
                x0, x1 = max(int(gx) - 3, 0), min(int(gx) + 4, proc.shape[1])
                yy, xx = np.mgrid[y0:y1, x0:x1]
                blob = amp * np.exp(-((yy - gy) ** 2 + (xx - gx) ** 2) / (2 * sig**2))
                np.maximum(proc[y0:y1, x0:x1], blob, out=proc[y0:y1, x0:x1])
            weights = np.maximum(soma_big, proc)
            is_soma = soma_big >= proc
            half = half_p
        else:
            weights = soma
            is_soma = np.ones_like(soma, bool)
        keep = weights > 0.05
        ly, lx = np.nonzero(keep)
        ypix, xpix = ly + iy - half, lx + ix - half
        inside = (ypix >= 0) & (ypix < Ly) & (xpix >= 0) & (xpix < Lx)
        brightness = cfg.cell_photons * math.exp(cfg.brightness_log_sd * rng.standard_normal())
        cells.append(
            Cell(
                ypix=ypix[inside].astype(np.int32),
                xpix=xpix[inside].astype(np.int32),
                lam=weights[keep][inside].astype(np.float32),
                soma=is_soma[keep][inside],
                center=(cy, cx),
                radius=r,
                brightness=brightness,
                has_processes=with_processes,
            )
        )
    return Anatomy(cells=cells, neuropil=neuropil.astype(np.float32), margin=margin, shape=(Ly, Lx))



def move_anatomy(anatomy: Anatomy, tf: Similarity) -> Anatomy:
    """The same tissue seen on another day: every cell and the neuropil moved by ``tf`` (field-of-view pixels).

    Cells keep their index (ROI i == cell i); a cell moved partly out of the field keeps only its pixels inside.
    """
    Ly, Lx = anatomy.shape
    cells: list[Cell] = []
    for c in anatomy.cells:
        moved = warp_roi(c.ypix, c.xpix, c.lam, tf, (Ly, Lx), soma=c.soma)
        cy, cx = tf.forward(np.array([c.center[0]]), np.array([c.center[1]]))
        assert moved.soma is not None
        cells.append(replace(c, ypix=moved.ypix, xpix=moved.xpix, lam=moved.lam, soma=moved.soma,
                             center=(float(cy[0]), float(cx[0])), radius=c.radius * tf.scale))
    canvas_tf = tf.shifted_origin(anatomy.margin)
    neuropil = warp_image(anatomy.neuropil, canvas_tf, mode="reflect").astype(np.float32)
    return Anatomy(cells=cells, neuropil=neuropil, margin=anatomy.margin, shape=anatomy.shape)
