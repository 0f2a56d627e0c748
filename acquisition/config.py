"""The [acquisition] section of a rig config. Owned by the acquisition package."""

from __future__ import annotations

import math

import msgspec

from acquisition.sim.config import SimConfig
from acquisition.sources.registry import SOURCE_NAMES
from rig.core.addresses import check_addresses, endpoint_host, is_loopback

REPLAY_SPEEDS = ("recorded", "fast")


def _check_port(name: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"`{name}`: must be a TCP port within 1..65535 (got {port})")


def _allow_list(addresses: list[str]) -> list[str]:
    """An ``allow`` list of IP addresses in normal form (``ValueError`` naming a bad entry)."""
    try:
        return check_addresses(addresses)
    except ValueError as exc:
        raise ValueError(f"`allow`: {exc}") from None


class RoiLink(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A dendrite ROI on another plane linked to its parent soma on the BCI plane (docs/PLANES.md).

    Both are ROI indices as the rig numbers them (after ``only_cells``), like ``decoder.up``/``down``."""

    plane: int  # the dendrite's plane (not the BCI plane)
    roi: int  # the dendrite's ROI index on that plane
    soma: int  # its soma's ROI index on the BCI plane

    def __post_init__(self) -> None:
        if self.plane < 0 or self.roi < 0 or self.soma < 0:
            raise ValueError(f"`links`: plane, roi and soma must be >= 0 (got plane={self.plane}, roi={self.roi}, "
                             f"soma={self.soma})")


class RoiConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where the ROIs come from: a suite2p output folder (``plane0`` or its parent), one per plane."""

    suite2p_dir: str = ""  # the BCI plane's; empty with the sim source: the sim's own ground-truth ROIs
    only_cells: bool = True  # extract iscell == 1 only; the others still shape the neuropil masks
    # multi-plane: one suite2p plane folder per plane, indexed by plane (the BCI plane's entry may be "" to use
    # suite2p_dir); empty with a suite2p_dir holding plane0, plane1...: those folders; with the sim: its truth
    plane_dirs: list[str] = []
    links: list[RoiLink] = []  # dendrite -> soma links, on top of those in the plane folders' roi_parent.npy


class RegistrationConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Online rigid registration (see docs/REGISTRATION.md for why these differ from suite2p's defaults)."""

    enabled: bool = True
    ref_path: str = ""  # .npy/.tif reference image; empty: refImg from the suite2p folder, else built live
    reference_frames: int = 300  # frames collected to build a reference when none is given
    maxregshift: float = 0.1  # max shift, fraction of min(height, width)
    smooth_sigma: float = 1.3  # Gaussian smoothing of the phase correlation, pixels (suite2p: 1.15)
    whitening: str = "matched"  # "matched": reference half-whitened, frame not; "phase": suite2p's phase corr
    spatial_taper: float = 3.45  # slope of the sigmoid edge taper, pixels
    min_corr: float = 0.05  # absolute floor: peak phase correlation (1 = identical to reference) below it: LOW_CORR
    quality_frames: int = 100  # first registered frames that set the session's own corr distribution
    quality_z: float = 5.0  # LOW_CORR also when corr's robust z-score against those frames is below -quality_z
    norm_frames: bool = False  # suite2p's clip to the reference's 1-99th percentile: wrong on another scale
    bin_factor: int = 0  # coarse stage: 0 automatic (4 for frames >= 512 px, 2 for >= 384 px, else 1)
    fine_size: int = 0  # full-resolution crop refining a binned estimate; 0: automatic (<= 384 px), -1: none
    # skip the coarse stage while the last good frame's shift predicts this one (peak inside the fine search
    # window, corr >= track_corr_ratio x the last good frame's); else, and after a flagged frame, the full path
    track: bool = True
    track_corr_ratio: float = 0.85
    fft_backend: str = "ducc0"  # "ducc0" (faster float32 FFTs) or "pocketfft" (scipy.fft's); same numbers
    fft_workers: int = 1  # FFT threads for the fine crop (2 competes with other processes: see the docs)
    dft_band: float = 0.3  # fine stage: peak evaluated from frequencies <= this (cycles/px) only; 0: all
    # register the last frame again (result discarded) this long before the next is due, so that its code and
    # buffers are warm when it comes (acquisition/pacer.py; off by itself when frames come faster than 2x this:
    # 1 kHz, a fast replay); 0: never
    prewarm_ms: float = 2.0
    # a given reference (ref_path or the suite2p refImg) replaced by an aligned average of the first good frames
    # registered against it, in its coordinates: "auto" when it looks motion-blurred (blur ratio below
    # refine_blur_ratio) or noisy (refine_agree_px), "always", or "never" (acquisition/reg_refine.py)
    refine_reference: str = "auto"
    refine_frames: int = 60  # good frames averaged for the refined reference
    refine_blur_ratio: float = 0.75  # auto: refine when the reference keeps less of the detail than this
    refine_agree_px: float = 0.1  # ... or when shifts against it and against the frames' average differ more (RMS)

    def __post_init__(self) -> None:
        if self.reference_frames < 2:
            raise ValueError("`reference_frames`: must be >= 2")
        if not 0 <= self.prewarm_ms <= 20:
            raise ValueError(f"`prewarm_ms`: must be within [0, 20] ms, not {self.prewarm_ms}")
        if not 0 < self.maxregshift <= 0.5:
            raise ValueError("`maxregshift`: must be within (0, 0.5]")
        if not self.smooth_sigma > 0:
            raise ValueError("`smooth_sigma`: must be > 0")
        if not self.spatial_taper >= 0:
            raise ValueError("`spatial_taper`: must be >= 0")
        if not 0 <= self.min_corr < 1:
            raise ValueError("`min_corr`: must be within [0, 1)")
        if self.bin_factor not in (0, 1, 2, 4):
            raise ValueError("`bin_factor`: must be 0 (automatic), 1, 2 or 4")
        if self.whitening not in ("matched", "phase"):
            raise ValueError(f"`whitening`: must be 'matched' or 'phase', not {self.whitening!r}")
        if self.fine_size not in (0, -1) and self.fine_size < 32:
            raise ValueError("`fine_size`: must be 0 (automatic), -1 (none) or >= 32")
        if not 0 <= self.track_corr_ratio <= 1:
            raise ValueError("`track_corr_ratio`: must be within [0, 1]")
        if self.fft_backend not in ("ducc0", "pocketfft"):
            raise ValueError(f"`fft_backend`: must be 'ducc0' or 'pocketfft', not {self.fft_backend!r}")
        if not 0 <= self.dft_band <= 0.5:
            raise ValueError("`dft_band`: must be within [0, 0.5] cycles/px (0: the whole spectrum)")
        if self.fft_workers < 1:
            raise ValueError("`fft_workers`: must be >= 1")
        if self.quality_frames < 10:
            raise ValueError("`quality_frames`: must be >= 10")
        if not self.quality_z > 0:
            raise ValueError("`quality_z`: must be > 0")
        if self.refine_reference not in ("auto", "always", "never"):
            raise ValueError(f"`refine_reference`: must be 'auto', 'always' or 'never', not {self.refine_reference!r}")
        if self.refine_frames < 10:
            raise ValueError("`refine_frames`: must be >= 10")
        if not 0 < self.refine_blur_ratio <= 1:
            raise ValueError("`refine_blur_ratio`: must be within (0, 1]")
        if not self.refine_agree_px > 0:
            raise ValueError("`refine_agree_px`: must be > 0")


class ExtractionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """ROI and neuropil masks, built as suite2p builds them."""

    inner_neuropil_radius: int = 2
    min_neuropil_pixels: int = 350
    allow_overlap: bool = False
    lam_percentile: float = 50.0
    subpixel: bool = True  # cell masks read bilinearly at the subpixel shift; false: nearest pixel (suite2p)
    mask_sigma: float = 0.0  # Gaussian spread of cell mask weights, pixels (0: suite2p's masks as they are)
    # "compiled": kernels reading the frame in place; "sparse": the earlier sparse product (to measure against)
    method: str = "compiled"
    # compiled only: the cells' whole-pixel reads and the neuropil computed in a worker thread while the frame is
    # registered, at the whole shifts the last frame makes likely (extract_ahead.py). "auto": only where it was
    # measured to pay: the loop at real-time priority (rig.priority) or frames back to back (a replay at speed
    # "fast"), and the extraction >= ahead_min_ms; "always"; "never"
    ahead: str = "auto"
    # how many whole shifts per part it tries (the last frame's, then its nearest neighbours); 1-4
    ahead_candidates: int = 3
    # with ahead = "auto": not used when the extraction, timed before the first frame, costs less than this
    # (its hand-offs would cost more than it saves: 64x256 with 50 ROIs at 1 kHz)
    ahead_min_ms: float = 0.15
    # the neuropil masks stay at their whole-pixel shift until the registered shift is more than this far from it
    # (pixels, 0.5-1), then move to the nearest pixel; 0.5: the nearest pixel every frame (sessions recorded before
    # the setting). Fewer moves, fewer frames whose neuropil the worker had not computed (docs/REGISTRATION.md)
    neuropil_hold_px: float = 0.75
    # "ordered": each cell's reads summed pixel by pixel, so the worker reads two neighbouring whole shifts in one
    # pass to the same bits (docs/REGISTRATION.md, "Extraction"); "vectorised": sums the compiler reorders, one
    # whole shift per pass (sessions recorded before the setting; F differs in its last bits)
    cell_sums: str = "ordered"

    def __post_init__(self) -> None:
        if not 0.5 <= self.neuropil_hold_px <= 1.0:
            raise ValueError(f"`neuropil_hold_px`: must be within [0.5, 1], not {self.neuropil_hold_px}")
        if self.cell_sums not in ("ordered", "vectorised"):
            raise ValueError(f"`cell_sums`: must be 'ordered' or 'vectorised', not {self.cell_sums!r}")
        if self.method not in ("compiled", "sparse"):
            raise ValueError(f"`method`: must be 'compiled' or 'sparse', not {self.method!r}")
        if self.ahead not in ("auto", "always", "never"):
            raise ValueError(f"`ahead`: must be 'auto', 'always' or 'never', not {self.ahead!r}")
        if not (self.ahead_min_ms >= 0 and math.isfinite(self.ahead_min_ms)):
            raise ValueError(f"`ahead_min_ms`: must be a number >= 0, not {self.ahead_min_ms}")
        if not 1 <= self.ahead_candidates <= 4:
            raise ValueError(f"`ahead_candidates`: must be 1 to 4, not {self.ahead_candidates}")
        if self.inner_neuropil_radius < 0:
            raise ValueError("`inner_neuropil_radius`: must be >= 0")
        if self.min_neuropil_pixels < 0:
            raise ValueError("`min_neuropil_pixels`: must be >= 0")
        if not self.mask_sigma >= 0:
            raise ValueError("`mask_sigma`: must be >= 0")
        if not 0 <= self.lam_percentile < 100:
            raise ValueError("`lam_percentile`: must be within [0, 100)")


class ValidationConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Per-frame checks that set the SATURATED flag (the others need no settings)."""

    saturation_level: float = 0.0  # 0: the pixel type's maximum (65535 for uint16)
    max_saturated_fraction: float = 0.01

    def __post_init__(self) -> None:
        if self.saturation_level < 0:
            raise ValueError("`saturation_level`: must be >= 0 (0 = the pixel type's maximum)")
        if not 0 <= self.max_saturated_fraction <= 1:
            raise ValueError("`max_saturated_fraction`: must be within [0, 1]")


class ReplayConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Replay a recorded movie: TIFF (incl. ScanImage, BigTIFF), suite2p data.bin, .npy or .h5, or a bci-rig
    session folder (every plane it saved, as it recorded them)."""

    path: str = ""  # a movie file, or a session folder
    speed: str = "recorded"  # recorded: paced at the movie's frame rate; fast: as fast as it is read
    frame_rate_hz: float = 0.0  # 0: from the file (ScanImage, suite2p ops 'fs'), else acquisition.frame_rate_hz
    loop: bool = False
    h5_key: str = ""  # dataset in an .h5 file; empty: the only 3-D dataset
    # interleaved channels / planes in the file (ScanImage saves them frame by frame); both 1: a ScanImage
    # file's own metadata says (channelSave, numSlices, numDiscardFlybackFrames)
    n_channels: int = 1
    channel: int = 0  # 0-based
    n_planes: int = 1
    plane: int = 0  # 0-based: replay this plane alone; -1: every plane, each with its index (docs/PLANES.md)
    flyback_frames: int = -1  # frames per volume after the planes that image none; -1: the ScanImage file's, else 0

    def __post_init__(self) -> None:
        if self.speed not in REPLAY_SPEEDS:
            raise ValueError(f"`speed`: must be one of {', '.join(REPLAY_SPEEDS)} (got {self.speed!r})")
        if self.frame_rate_hz < 0:
            raise ValueError("`frame_rate_hz`: must be >= 0 (0 = from the file)")
        if self.n_channels < 1 or not 0 <= self.channel < self.n_channels:
            raise ValueError("`channel`: must be within 0..n_channels-1")
        if self.n_planes < 1 or not -1 <= self.plane < self.n_planes:
            raise ValueError(f"`plane`: must be within 0..n_planes-1, or -1 for every plane (got {self.plane})")
        if self.flyback_frames < -1:
            raise ValueError(f"`flyback_frames`: must be >= 0, or -1 for the file's own (got {self.flyback_frames})")


class ClooseTcpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """CLOOSE-compatible raw TCP: headerless uint16 column-major frames (docs/FRAME_STREAM.md)."""

    mode: str = "listen"  # listen: the scope connects to us (CLOOSE's MATLAB sender) | connect: we dial the scope
    host: str = "127.0.0.1"  # listen: interface to listen on (another one needs ``allow``); connect: the scope PC
    port: int = 30001
    height_px: int = 512
    width_px: int = 512
    byte_order: str = "little"  # little | big
    invert: bool = False  # 65535 - value (Scanbox stores data inverted; CLOOSE complements every frame)
    replace_connections: bool = False  # a second connection replaces the live one instead of being refused
    handshake_port: int = 0  # 0: none; else serve CLOOSE's frame count (one uint16) here, as its GUI does (50000)
    handshake_frames: int = 65535  # the frame count the handshake sends
    allow: list[str] = []  # IP addresses of the scope PCs that may connect (needed off loopback; docs/SECURITY.md)

    def __post_init__(self) -> None:
        if self.mode not in ("listen", "connect"):
            raise ValueError(f"`mode`: must be 'listen' or 'connect' (got {self.mode!r})")
        _check_port("port", self.port)
        if self.handshake_port:
            _check_port("handshake_port", self.handshake_port)
            if self.mode == "listen" and self.handshake_port == self.port:
                raise ValueError("`handshake_port`: must differ from `port`")
        if not 0 <= self.handshake_frames <= 65535:
            raise ValueError("`handshake_frames`: must fit a uint16 (0..65535)")
        self.allow = _allow_list(self.allow)
        listens_off_loopback = (self.mode == "listen" or self.handshake_port) and not is_loopback(self.host)
        if not self.allow and listens_off_loopback:
            what = "listening on" if self.mode == "listen" else "serving the handshake for"
            raise ValueError(f"`allow`: {what} {self.host!r} lets any machine on the network connect: list "
                             'the scope PC\'s address, allow = ["10.0.0.5"] (or host = "127.0.0.1" for a scope on '
                             "this PC)")
        if self.height_px < 1:
            raise ValueError("`height_px`: must be > 0")
        if self.width_px < 1:
            raise ValueError("`width_px`: must be > 0")
        if self.byte_order not in ("little", "big"):
            raise ValueError("`byte_order`: must be 'little' or 'big'")


class ZmqStreamConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Our framed stream over ZeroMQ (docs/FRAME_STREAM.md): we subscribe to the scope-side publisher."""

    endpoint: str = "tcp://127.0.0.1:5570"
    bind: bool = False  # False: connect to a publisher that binds (the usual); True: bind and let it connect
    topic: str = "frame"
    plane: int = -1  # keep only this plane (delivered as the only one); -1 = every plane, each with its index
    channel: int = -1  # keep only this channel; -1 = all
    height_px: int = 0  # expected frame size; 0 = not set here: the ROI set's size (suite2p Ly x Lx) applies
    width_px: int = 0
    stale_after_s: float = 2.0  # link_state "waiting" when no frame for this long
    allow: list[str] = []  # with bind: IP addresses of the publishers let in (needed off loopback; docs/SECURITY.md)

    def __post_init__(self) -> None:
        self.allow = _allow_list(self.allow)
        if self.allow and not self.bind:
            raise ValueError("`allow`: only for bind = true (connecting, the rig chooses whom it listens to)")
        if self.bind and not self.allow and self.endpoint.startswith("tcp://") \
                and not is_loopback(endpoint_host(self.endpoint)):
            raise ValueError(f"`allow`: binding {self.endpoint!r} lets any machine on the network send frames: list "
                             'the publisher PC\'s address, allow = ["10.0.0.5"] (or bind on tcp://127.0.0.1:PORT)')
        if self.height_px < 0 or self.width_px < 0 or (self.height_px == 0) != (self.width_px == 0):
            raise ValueError("`height_px`: height_px and width_px must both be > 0, or both 0 (from the stream)")
        if "://" not in self.endpoint:
            raise ValueError(f"`endpoint`: must look like tcp://host:port (got {self.endpoint!r})")
        if not self.stale_after_s > 0:
            raise ValueError("`stale_after_s`: must be > 0")


class ScanboxMmapConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Scanbox's memory-mapped frames, the rig on the scope PC (docs/SCOPES.md)."""

    path: str = "scanbox.mmap"  # Scanbox's memory-mapped file (in its mmap folder)
    tagname: str = ""  # Windows only: a named mapping instead of the file (then map_bytes is needed)
    map_bytes: int = 0  # 0: the whole file
    height_px: int = 512  # lines per frame
    width_px: int = 796  # pixels per line
    stale_after_s: float = 2.0  # no frame for this long without a stop from Scanbox: a stall is warned about
    poll_s: float = 0.0005  # how often the semaphore word is looked at

    def __post_init__(self) -> None:
        if self.height_px < 1 or self.width_px < 1:
            raise ValueError("`height_px`: height_px and width_px must be > 0")
        if self.map_bytes < 0:
            raise ValueError("`map_bytes`: must be >= 0 (0 = the whole file)")
        if not self.stale_after_s > 0:
            raise ValueError("`stale_after_s`: must be > 0")
        if not 0 <= self.poll_s <= 0.05:
            raise ValueError("`poll_s`: must be within 0..0.05 s")


class ScanImageTcpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Frames from the bciRigStream ScanImage user function over TCP (docs/FRAME_STREAM.md, "framed TCP")."""

    host: str = "127.0.0.1"  # listen: interface to listen on; connect: the scope PC
    port: int = 30002
    connect: bool = False  # False: we listen and MATLAB connects (the usual); True: we connect to MATLAB's server
    height_px: int = 0  # expected frame size; 0 = not set here: the ROI set's size applies
    width_px: int = 0
    channel: int = -1  # keep only this channel (as numbered in the header); -1 = all
    stale_after_s: float = 2.0
    allow: list[str] = []  # listening off loopback: the scope PCs' addresses (docs/SECURITY.md)

    def __post_init__(self) -> None:
        _check_port("port", self.port)
        self.allow = _allow_list(self.allow)
        if self.allow and self.connect:
            raise ValueError("`allow`: only when listening (connecting, the rig chooses whom it listens to)")
        if not self.connect and not self.allow and not is_loopback(self.host):
            raise ValueError(f"`allow`: listening on {self.host!r} lets any machine on the network send frames: "
                             'list the scope PC\'s address, allow = ["10.0.0.5"]')
        if self.height_px < 0 or self.width_px < 0 or (self.height_px == 0) != (self.width_px == 0):
            raise ValueError("`height_px`: height_px and width_px must both be > 0, or both 0")
        if not self.stale_after_s > 0:
            raise ValueError("`stale_after_s`: must be > 0")


class PrairieViewConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Bruker PrairieView's raw data stream (PrairieLink ``-srd``), assembled into frames here."""

    transport: str = "tcp"  # tcp: int16 samples from a relay on the PrairieView PC | prairielink: COM (Windows)
    host: str = "127.0.0.1"  # tcp: the relay's address
    port: int = 30003
    height_px: int = 512  # lines per frame
    width_px: int = 512  # pixels per line
    samples_per_pixel: int = 1  # PrairieView's "samples per pixel" (averaged here)
    bidirectional: bool = True  # resonant scans: every other line arrives reversed
    offset: int = 8192  # subtracted from every sample
    max_queued_frames: int = 8  # frames assembled but not yet read beyond this: the oldest are dropped

    def __post_init__(self) -> None:
        if self.transport not in ("tcp", "prairielink"):
            raise ValueError(f"`transport`: must be 'tcp' or 'prairielink' (got {self.transport!r})")
        _check_port("port", self.port)
        if self.height_px < 1 or self.width_px < 1:
            raise ValueError("`height_px`: height_px and width_px must be > 0")
        if self.samples_per_pixel < 1:
            raise ValueError("`samples_per_pixel`: must be >= 1")
        if self.max_queued_frames < 1:
            raise ValueError("`max_queued_frames`: must be >= 1")


class ZTrackConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Live z-tracking against a z-stack (acquisition.ztrack; docs/ZTRACKING.md). Off while ``stack_path`` is empty."""

    stack_path: str = ""  # multi-page TIFF centred on the imaging plane
    step_um: float = 0.0  # plane step; 0 = the TIFF's ImageJ spacing
    every: int = 1  # estimate every Nth frame
    window: int = 10  # running mean of this many registered frames
    warn_um: float = 3.0  # warn when |z| exceeds this
    min_corr: float = 0.5  # the stack must match the reference at least this well

    def __post_init__(self) -> None:
        if self.step_um < 0 or not self.warn_um > 0 or not 0 < self.min_corr < 1:
            raise ValueError(f"`step_um` >= 0, `warn_um` > 0 and 0 < `min_corr` < 1 are needed (got {self.step_um}, "
                             f"{self.warn_um}, {self.min_corr})")
        if self.every < 1 or self.window < 1:
            raise ValueError(f"`every` and `window` must be >= 1 (got {self.every}, {self.window})")


class AcquisitionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    source: str = "sim"  # a name in acquisition.sources.registry: sim | replay | cloose_tcp | zmq_stream
    frame_rate_hz: float = 30.0  # of one plane: with several planes, the volume rate (docs/PLANES.md)
    n_planes: int = 1  # planes per volume the scope images (fast-z / volscan); every plane is registered and recorded
    bci_plane: int = 0  # the plane whose ROIs drive the decoder (its somata)
    pixel_size_um: float = 0.0  # field-of-view pixel size; 0 = not given (rig align's stage move, z-stack check)
    rois: RoiConfig = msgspec.field(default_factory=RoiConfig)
    registration: RegistrationConfig = msgspec.field(default_factory=RegistrationConfig)
    extraction: ExtractionConfig = msgspec.field(default_factory=ExtractionConfig)
    validation: ValidationConfig = msgspec.field(default_factory=ValidationConfig)
    replay: ReplayConfig = msgspec.field(default_factory=ReplayConfig)
    cloose_tcp: ClooseTcpConfig = msgspec.field(default_factory=ClooseTcpConfig)
    zmq_stream: ZmqStreamConfig = msgspec.field(default_factory=ZmqStreamConfig)
    scanbox_mmap: ScanboxMmapConfig = msgspec.field(default_factory=ScanboxMmapConfig)
    scanimage_tcp: ScanImageTcpConfig = msgspec.field(default_factory=ScanImageTcpConfig)
    prairieview: PrairieViewConfig = msgspec.field(default_factory=PrairieViewConfig)
    sim: SimConfig = msgspec.field(default_factory=SimConfig)
    ztrack: ZTrackConfig = msgspec.field(default_factory=ZTrackConfig)

    def __post_init__(self) -> None:
        if self.source not in SOURCE_NAMES:
            raise ValueError(f"`source`: must be one of {', '.join(SOURCE_NAMES)} (got {self.source!r})")
        if not self.frame_rate_hz > 0:
            raise ValueError("`frame_rate_hz`: must be > 0")
        if not 1 <= self.n_planes <= 16:
            raise ValueError(f"`n_planes`: must be within 1..16 (got {self.n_planes})")
        if self.source == "sim":
            self._match_sim_planes()
        self._check_source_planes()
        if not 0 <= self.bci_plane < self.n_planes:
            raise ValueError(f"`bci_plane`: must be a plane index below n_planes = {self.n_planes} "
                             f"(got {self.bci_plane})")
        if len(self.rois.plane_dirs) not in (0, self.n_planes):
            raise ValueError(f"`rois.plane_dirs`: one folder per plane is needed, {self.n_planes} "
                             f"(got {len(self.rois.plane_dirs)})")
        for i, link in enumerate(self.rois.links):
            if not link.plane < self.n_planes or link.plane == self.bci_plane:
                raise ValueError(f"`rois.links[{i}]`: plane {link.plane} is out of range: a dendrite's plane must "
                                 f"be below n_planes = {self.n_planes} and not the BCI plane ({self.bci_plane})")
        if not self.pixel_size_um >= 0:
            raise ValueError(f"`pixel_size_um`: must be >= 0, 0 meaning not given (got {self.pixel_size_um})")

    def _check_source_planes(self) -> None:
        """A source set to deliver one plane cannot feed a rig recording several (docs/PLANES.md)."""
        selected = {"replay": self.replay.plane, "zmq_stream": self.zmq_stream.plane}.get(self.source, -1)
        if selected >= 0 and self.n_planes > 1:
            raise ValueError(f"`{self.source}.plane`: = {selected} delivers that plane alone, but n_planes = "
                             f"{self.n_planes}: set {self.source}.plane = -1 to deliver every plane")
        if self.source == "replay" and self.replay.plane == -1 and self.replay.n_planes not in (1, self.n_planes):
            raise ValueError(f"`replay.n_planes`: the movie interleaves {self.replay.n_planes} planes but n_planes = "
                             f"{self.n_planes}; they must agree")

    def _match_sim_planes(self) -> None:
        """The sim's ``[acquisition.sim] n_planes`` and ``n_planes`` name one thing: where one is 1 (the default)
        the other is taken; different values above 1 are an error (docs/SIMULATOR.md, "Dendrites")."""
        sim_planes = self.sim.n_planes
        if sim_planes == self.n_planes:
            pass
        elif self.n_planes == 1:
            self.n_planes = sim_planes
        elif sim_planes == 1 and self.n_planes == 2:
            self.sim.n_planes = 2
        else:
            raise ValueError(f"`n_planes`: the simulator images 1 or 2 planes, and [acquisition.sim] n_planes = "
                             f"{sim_planes} disagrees with [acquisition] n_planes = {self.n_planes}")
        if self.n_planes > 1 and self.bci_plane != 0:
            raise ValueError(f"`bci_plane`: the simulator's somata are on plane 0 (plane 1 holds their dendrites), "
                             f"so bci_plane must be 0 with source = \"sim\" (got {self.bci_plane})")
