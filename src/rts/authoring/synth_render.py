"""Rendering of one synthetic scene canvas: terrain, vegetation, RTS, hard negatives, sensors.

A canvas is a block of ``B x B`` tiles of one region, rendered at 3 m on a fixed grid and cut into
tiles afterwards, so tiles of one block are true neighbours. Everything is physically linked so
that the cues agree across modalities:

* a DEM (metres) is carved by every RTS (a depression whose upslope rim is the headwall scarp),
  and by cliffs, ridges, river valleys; ``re`` (relative elevation) and ``sr`` (shaded relief)
  are derived from it, and the same hillshade lights the RGB and NIR radiance;
* surface reflectance (R, G, B, NIR) is painted by materials (vegetation, barren slump floor,
  gravel, water, snow, burnt tundra); NDVI is computed from the painted red and NIR, at the
  10 m Sentinel-2 resolution, so barren surfaces have low NDVI wherever they are.

The RTS headwall is placed on the sun-facing side of the slump (its face then points away from
the sun and lies in self-shadow), so in every region the dark arc sits on the side of the floor
toward that region's sun azimuth. Hard negatives reproduce one of the two cues only.

All randomness comes from the ``np.random.Generator`` passed in; numpy, scipy.ndimage and cv2
are deterministic, so a canvas is a pure function of its generator state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

PIXEL_M = 3.0
# Minimal visible part of an RTS in a tile: fewer pixels of floor (or headwall) than this count
# as "not inside" for the partial-target rule (a 2-pixel sliver of scarp is not a visible headwall).
MIN_PART_PX = 4
FLOOR, HEADWALL = 1, 2

# Hard negatives: each looks like one half of an RTS (barren floor without headwall, or a dark
# scarp arc without floor), or is a common bright/dark Arctic surface.
HARD_NEGATIVE_KINDS: tuple[str, ...] = (
    "bare_patch",  # lobate barren soil, floor-like spectrum, no headwall, no depression
    "river_bar",  # gravel bars along a channel, in a gentle valley (RE depression, no scarp)
    "lake_shore",  # lake with a barren mud/sand rim
    "road",  # gravel road on a low embankment
    "burn_scar",  # low-NDVI burnt tundra, no relief
    "cliff",  # shadowed scarp with vegetation on both sides
    "ridge",  # esker-like ridge: one flank in shadow
    "stabilized_scar",  # revegetated old slump: scarp arc and depression, no barren floor
    "lake",  # thermokarst lake
    "snow",  # late-lying snow patch
)
_KIND_WEIGHTS = np.array([0.18, 0.07, 0.11, 0.05, 0.09, 0.10, 0.07, 0.11, 0.12, 0.10])

# Reflectance spectra (R, G, B, NIR), 0-1, of the materials (typical tundra values).
SPECTRA = {
    "veg": np.array([0.055, 0.085, 0.050, 0.33]),
    "lichen": np.array([0.130, 0.130, 0.100, 0.28]),
    "floor": np.array([0.210, 0.200, 0.180, 0.26]),
    "headwall": np.array([0.060, 0.058, 0.055, 0.10]),  # wet dark organic soil
    "gravel": np.array([0.270, 0.260, 0.240, 0.30]),
    "sand": np.array([0.290, 0.270, 0.210, 0.33]),
    "water": np.array([0.030, 0.040, 0.050, 0.02]),
    "snow": np.array([0.820, 0.850, 0.880, 0.74]),
    "burnt": np.array([0.090, 0.080, 0.065, 0.16]),
    "shrub": np.array([0.045, 0.080, 0.040, 0.38]),
}


@dataclass(frozen=True)
class RegionStyle:
    """Everything that makes one region look like itself."""

    veg: np.ndarray
    lichen: np.ndarray
    floor: np.ndarray
    lichen_fraction: float
    gain: float
    cast: np.ndarray
    haze: float
    haze_dn: np.ndarray
    sun_azimuth_deg: float
    sun_elevation_deg: float
    ambient: float
    relief_m: float
    texture: float
    polygon_density: float
    noise_dn: float
    reveg_max: float
    hard_negative_rate: float

    def to_json(self) -> dict:
        return {
            "sun_azimuth_deg": round(self.sun_azimuth_deg, 2),
            "sun_elevation_deg": round(self.sun_elevation_deg, 2),
            "haze": round(self.haze, 3),
            "gain": round(self.gain, 3),
            "relief_m": round(self.relief_m, 2),
        }


def make_style(rng: np.random.Generator) -> RegionStyle:
    """Draw a region style: vegetation colour, illumination, haze, texture, sun."""
    veg = SPECTRA["veg"] * np.array([rng.uniform(0.8, 1.45), rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.15)])
    lichen = SPECTRA["lichen"] * rng.uniform(0.85, 1.15, 4)
    floor = SPECTRA["floor"] * rng.uniform(0.85, 1.15) * np.array([rng.uniform(0.92, 1.05), 1.0, rng.uniform(0.92, 1.08), rng.uniform(0.9, 1.1)])
    return RegionStyle(
        veg=veg,
        lichen=lichen,
        floor=floor,
        lichen_fraction=float(rng.uniform(0.1, 0.5)),
        gain=float(rng.uniform(0.8, 1.2)),
        cast=rng.uniform(0.92, 1.08, 3),
        haze=float(rng.uniform(0.0, 0.25)),
        haze_dn=np.array([170.0, 180.0, 195.0]) * rng.uniform(0.9, 1.1),
        sun_azimuth_deg=float(rng.uniform(100.0, 260.0)),  # daytime sun, from ESE to WSW
        sun_elevation_deg=float(rng.uniform(20.0, 40.0)),
        ambient=float(rng.uniform(0.25, 0.4)),
        relief_m=float(rng.uniform(3.0, 15.0)),
        texture=float(rng.uniform(0.05, 0.18)),
        polygon_density=float(rng.uniform(0.0, 1.0)),
        noise_dn=float(rng.uniform(1.5, 4.0)),
        reveg_max=float(rng.uniform(0.0, 0.35)),
        hard_negative_rate=float(rng.uniform(0.85, 1.15)),
    )


# ----------------------------------------------------------------------------- the partial rule


def partial_label(floor_px: int, headwall_px: int, min_part_px: int = MIN_PART_PX) -> int:
    """Label value of one RTS inside one tile: 1, or 255 (ignore) where too little of the RTS lies inside the tile to label it.

    Args:
        floor_px: pixels of the RTS's slump floor inside the tile.
        headwall_px: pixels of its headwall inside the tile.
        min_part_px: a part with fewer pixels than this is not visible, so does not count.

    Returns:
        1 when both headwall and floor are inside, 255 (ignore) when only one of them (or only an
        invisible sliver) is, 0 when the RTS is not in the tile at all.
    """
    if floor_px >= min_part_px and headwall_px >= min_part_px:
        return 1
    if floor_px > 0 or headwall_px > 0:
        return 255
    return 0


def label_tile(instance: np.ndarray, part: np.ndarray, min_part_px: int = MIN_PART_PX) -> np.ndarray:
    """Apply :func:`partial_label` to every RTS of a tile crop.

    Args:
        instance: (H, W) int, RTS instance id per pixel, 0 = no RTS.
        part: (H, W) uint8, 1 = floor, 2 = headwall, 0 = neither.
        min_part_px: see :func:`partial_label`.

    Returns:
        (H, W) uint8 label: every pixel of an RTS gets that RTS's value (0, 1 or 255).
    """
    n = int(instance.max()) + 1 if instance.size else 1
    counts = np.bincount((instance.astype(np.int64) * 3 + part).ravel(), minlength=n * 3).reshape(n, 3)
    lut = np.array([partial_label(int(f), int(h), min_part_px) for f, h in counts[:, 1:]], dtype=np.uint8)
    lut[0] = 0
    return lut[instance]


# ----------------------------------------------------------------------------- noise and geometry


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std float32 random field with features of about ``scale_px`` pixels.

    Fine fields blur white noise; coarse ones are drawn on a coarse grid and resized bicubically,
    which is far cheaper than a wide Gaussian (a bilinear field would have facets that the
    hillshade shows as a grid of tiles).
    """
    h, w = shape
    if scale_px < 3.0:
        out = rng.standard_normal((h, w), dtype=np.float32)
        out = cv2.GaussianBlur(out, (0, 0), max(scale_px * 0.6, 0.3), borderType=cv2.BORDER_REFLECT)
    else:
        gh, gw = int(math.ceil(h / scale_px)) + 3, int(math.ceil(w / scale_px)) + 3
        coarse = ndimage.gaussian_filter(rng.standard_normal((gh, gw), dtype=np.float32), 0.8, mode="wrap")
        big = cv2.resize(coarse, (int(gw * scale_px), int(gh * scale_px)), interpolation=cv2.INTER_CUBIC)
        oy = ox = int(scale_px)
        out = big[oy : oy + h, ox : ox + w]
    return (out - out.mean()) / (out.std() + 1e-6)


def _shift(mask: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``out[p] = mask[p + (dy, dx)]`` (nearest, zero outside)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    out = cv2.warpAffine(mask.astype(np.uint8), m, (mask.shape[1], mask.shape[0]), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)
    return out.astype(bool)


def _frame(half: int, angle_rad: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local pixel grid and its coordinates along (a) and across (b) the unit vector at ``angle``.

    ``angle`` is an azimuth (clockwise from north); image rows grow southward.
    """
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    ux, uy = math.sin(angle_rad), -math.cos(angle_rad)
    a = xx * ux + yy * uy
    b = -xx * uy + yy * ux
    return a, b, np.array([uy, ux])


def lobate_mask(rng: np.random.Generator, radius: float, angle_rad: float, elong: float, pad: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An irregular lobate outline (sum of random harmonics), oriented along ``angle_rad``.

    Returns (mask, a, b, u): the local mask, along/across coordinates and the unit vector (dy, dx).
    """
    half = int(math.ceil(radius * 1.75 * max(elong, 1.0))) + pad + 2
    a, b, u = _frame(half, angle_rad)
    phi = np.arctan2(b, a / elong)
    r = np.ones_like(a)
    for k in range(2, 7):
        r += rng.uniform(0.0, 0.28 / k**0.7) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    r = np.maximum(r, 0.35) * radius
    mask = np.hypot(a / elong, b) <= r
    return mask, a, b, u


def polygon_mask(outline: np.ndarray, radius: float, angle_rad: float, rotation_rad: float, pad: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise a real outline (unit equivalent radius, east/north coords) rotated and scaled.

    Returns the same tuple as :func:`lobate_mask`; the RTS direction is ``angle_rad``.
    """
    c, s = math.cos(rotation_rad), math.sin(rotation_rad)
    pts = outline @ np.array([[c, s], [-s, c]]) * radius
    half = int(math.ceil(np.abs(pts).max())) + pad + 2
    a, b, u = _frame(half, angle_rad)
    img = np.zeros(a.shape, np.uint8)
    # cv2 wants (col, row) in fixed point; rows grow southward, so north is -row.
    poly = np.round(np.stack([pts[:, 0] + half, -pts[:, 1] + half], axis=1) * 16).astype(np.int32)
    cv2.fillPoly(img, [poly], 1, lineType=cv2.LINE_8, shift=4)
    return img.astype(bool), a, b, u


@dataclass
class Canvas:
    """The fields of one block while it is being rendered (all (H, W) unless noted)."""

    size: int
    dem: np.ndarray
    refl: np.ndarray  # (4, H, W) reflectance R, G, B, NIR
    instance: np.ndarray  # int32 RTS id
    part: np.ndarray  # uint8 FLOOR / HEADWALL
    hard: np.ndarray  # uint8 index + 1 into HARD_NEGATIVE_KINDS
    n_rts: int = 0
    rts_radius: list[float] = field(default_factory=list)

    def window(self, cy: int, cx: int, shape: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
        """Canvas and local slices of a local array of ``shape`` centred at (cy, cx)."""
        h, w = shape
        y0, x0 = cy - h // 2, cx - w // 2
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y0 + h, self.size), min(x0 + w, self.size)
        if cy1 <= cy0 or cx1 <= cx0:
            return None
        return (slice(cy0, cy1), slice(cx0, cx1)), (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))

    def paint(self, win, alpha: np.ndarray, spectrum: np.ndarray) -> None:
        """Blend a material in: ``spectrum`` is (4,) or (4, h, w) over the local window."""
        (cs, ls) = win
        al = alpha[ls]
        sp = spectrum if spectrum.ndim == 1 else spectrum[(slice(None),) + ls]
        sp = sp.reshape(4, 1, 1) if sp.ndim == 1 else sp
        region = self.refl[(slice(None),) + cs]
        region *= 1.0 - al
        region += al * sp

    def mark(self, win, mask: np.ndarray, kind: str) -> None:
        (cs, ls) = win
        self.hard[cs][mask[ls]] = HARD_NEGATIVE_KINDS.index(kind) + 1


def _soft(mask: np.ndarray, sigma: float = 0.7) -> np.ndarray:
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma)


# ----------------------------------------------------------------------------- background


def _background(rng: np.random.Generator, style: RegionStyle, size: int) -> Canvas:
    shape = (size, size)
    dem = style.relief_m * smooth_noise(rng, shape, 150) + 0.35 * style.relief_m * smooth_noise(rng, shape, 25) + 0.15 * smooth_noise(rng, shape, 3)
    lichen = 1.0 / (1.0 + np.exp(-(2.5 * smooth_noise(rng, shape, 20) + 4.0 * (style.lichen_fraction - 0.3))))
    refl = style.veg[:, None, None] * (1 - lichen) + style.lichen[:, None, None] * lichen
    # Ice-wedge polygon network: the zero set of a smooth field is a cellular web of lines,
    # which become wetter, greener, slightly darker troughs.
    if style.polygon_density > 0.3:
        web = np.abs(smooth_noise(rng, shape, rng.uniform(4, 8))) < 0.12 * style.polygon_density
        trough = _soft(web, 0.6) * 0.6
        refl = refl * (1 - trough) + (SPECTRA["shrub"] * 0.8)[:, None, None] * trough
        dem = dem - 0.3 * trough
    tex = 1.0 + style.texture * smooth_noise(rng, shape, 1.5) + 0.5 * style.texture * smooth_noise(rng, shape, 6)
    refl = (refl * tex).astype(np.float32)
    return Canvas(
        size=size,
        dem=dem.astype(np.float32),
        refl=refl,
        instance=np.zeros(shape, np.int32),
        part=np.zeros(shape, np.uint8),
        hard=np.zeros(shape, np.uint8),
    )


# ----------------------------------------------------------------------------- RTS


def _sun_rad(style: RegionStyle) -> float:
    return math.radians(style.sun_azimuth_deg)


def add_rts(
    cv: Canvas,
    rng: np.random.Generator,
    style: RegionStyle,
    cy: int,
    cx: int,
    radius: float,
    outlines: list[np.ndarray] | None = None,
    stabilized: bool = False,
) -> bool:
    """Carve and paint one RTS (or, ``stabilized``, a revegetated scar) centred near (cy, cx).

    The whole RTS must fit inside the canvas (2 px margin); the centre is moved inward if needed,
    and False is returned when it cannot fit at all.
    """
    # Upslope direction: toward the sun, within +-50 degrees, so the headwall face is shaded.
    angle = _sun_rad(style) + rng.uniform(-0.87, 0.87)
    pad = int(radius * 0.35) + 4
    if outlines:
        outline = outlines[int(rng.integers(len(outlines)))]
        mask, a, b, u = polygon_mask(outline, radius, angle, rng.uniform(0, 2 * math.pi), pad)
    else:
        mask, a, b, u = lobate_mask(rng, radius, angle, rng.uniform(0.7, 1.4), pad)
    ys, xs = np.nonzero(mask)
    if ys.size < 16:
        return False
    n = mask.shape[0]
    # Move the centre so the mask's bounding box lies inside the canvas.
    lo_y, hi_y = ys.min() - n // 2, ys.max() - n // 2
    lo_x, hi_x = xs.min() - n // 2, xs.max() - n // 2
    if hi_y - lo_y + 5 > cv.size or hi_x - lo_x + 5 > cv.size:
        return False
    cy = int(np.clip(cy, 2 - lo_y, cv.size - 3 - hi_y))
    cx = int(np.clip(cx, 2 - lo_x, cv.size - 3 - hi_x))
    extent_a = float(a[mask].max() - a[mask].min())
    h = float(np.clip(0.13 * extent_a, 2.0, 16.0))
    headwall = mask & ~_shift(mask, u[0] * h, u[1] * h)
    floor = mask & ~headwall
    if floor.sum() < 0.3 * mask.sum():
        return False
    win = cv.window(cy, cx, mask.shape)
    cs, ls = win
    # Relief: a depression deepest below the headwall, shallowing toward the toe.
    size_m = 2 * radius * PIXEL_M
    depth = float(np.clip(0.04 * size_m, 3.0, 25.0) * rng.uniform(0.7, 1.3))
    a_min, a_max = float(a[mask].min()), float(a[mask].max())
    s = np.clip((a - a_min) / max(a_max - a_min, 1.0), 0.0, 1.0)
    bowl = ndimage.gaussian_filter(floor.astype(np.float32), max(0.7, h / 4.0)) * (0.3 + 0.7 * s)
    cv.dem[cs] -= (depth * bowl)[ls]
    if stabilized:
        shrub = SPECTRA["shrub"] * rng.uniform(0.9, 1.1)
        cv.paint(win, _soft(floor) * rng.uniform(0.4, 0.8), shrub)
        cv.paint(win, _soft(headwall, 0.5) * rng.uniform(0.1, 0.35), SPECTRA["headwall"])
        cv.mark(win, mask, "stabilized_scar")
        return True
    # Floor: mud with flow streaks along the slope, wetter (darker) toward the toe, patchily
    # revegetated on older slumps.
    lam = rng.uniform(3.0, 6.0)
    streak = np.sin(2 * math.pi * b / lam + 1.5 * smooth_noise(rng, a.shape, 5))
    arcs = np.sin(2 * math.pi * a / rng.uniform(5.0, 9.0))
    tex = 1.0 + 0.05 * streak * (0.5 + 0.5 * smooth_noise(rng, a.shape, 8)) + 0.03 * arcs + 0.07 * smooth_noise(rng, a.shape, 1.5)
    tex *= 0.82 + 0.25 * s
    floor_spec = style.floor[:, None, None] * tex[None]
    reveg = rng.uniform(0.0, style.reveg_max) * np.clip(0.5 + 0.5 * smooth_noise(rng, a.shape, 6), 0, 1)
    cv.paint(win, _soft(floor) * (1.0 - reveg), floor_spec)
    cv.paint(win, _soft(headwall, 0.5) * rng.uniform(0.75, 1.0), SPECTRA["headwall"] * rng.uniform(0.8, 1.2))
    cv.n_rts += 1
    rid = cv.n_rts
    cv.rts_radius.append(radius)
    inst = cv.instance[cs]
    part = cv.part[cs]
    inst[mask[ls]] = rid
    part[floor[ls]] = FLOOR
    part[headwall[ls]] = HEADWALL
    return True


# ----------------------------------------------------------------------------- hard negatives


def _curve(rng: np.random.Generator, size: int, straight: bool) -> np.ndarray:
    """A line across the canvas: (N, 2) points (x, y), meandering unless ``straight``."""
    heading = rng.uniform(0, 2 * math.pi)
    start = np.array([rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size])
    pts_fwd, pts_back = [start], [start]
    amp = rng.uniform(0.0, 0.03) if straight else rng.uniform(0.15, 0.35)
    period = rng.uniform(40, 120)
    for pts, sign in ((pts_fwd, 1.0), (pts_back, -1.0)):
        p = start.copy()
        for i in range(int(1.6 * size / 2)):
            hd = heading + amp * math.sin(2 * math.pi * i * 2 / period) * (1 if sign > 0 else -1)
            p = p + sign * 2.0 * np.array([math.cos(hd), math.sin(hd)])
            pts.append(p)
            if not (-20 < p[0] < size + 20 and -20 < p[1] < size + 20):
                break
    return np.concatenate([np.array(pts_back[::-1]), np.array(pts_fwd[1:])])


def _distance_to(points: np.ndarray, size: int) -> np.ndarray:
    img = np.ones((size, size), np.uint8)
    cv2.polylines(img, [np.round(points * 16).astype(np.int32)], False, 0, thickness=1, lineType=cv2.LINE_8, shift=4)
    return ndimage.distance_transform_edt(img).astype(np.float32)


def add_hard_negative(cv: Canvas, rng: np.random.Generator, style: RegionStyle, kind: str, tile_size: int, rts_radius: float) -> None:
    """Render one hard negative of ``kind`` somewhere in the canvas."""
    size = cv.size
    cy, cx = int(rng.integers(size)), int(rng.integers(size))
    sun = _sun_rad(style)
    if kind in ("bare_patch", "snow", "lake", "lake_shore", "burn_scar"):
        radius = {
            "bare_patch": rts_radius * rng.uniform(0.6, 1.6),
            "snow": tile_size * rng.uniform(0.04, 0.18),
            "lake": tile_size * rng.uniform(0.08, 0.4),
            "lake_shore": tile_size * rng.uniform(0.08, 0.35),
            "burn_scar": tile_size * rng.uniform(0.25, 0.7),
        }[kind]
        radius = max(radius, 6.0)
        elong = rng.uniform(1.5, 3.0) if kind == "snow" else rng.uniform(0.7, 1.4)
        mask, a, b, _ = lobate_mask(rng, radius, rng.uniform(0, 2 * math.pi), elong, pad=8)
        win = cv.window(cy, cx, mask.shape)
        if win is None:
            return
        cs, ls = win
        if kind == "bare_patch":
            tex = 1.0 + 0.1 * smooth_noise(rng, a.shape, 1.2) + 0.06 * smooth_noise(rng, a.shape, 4)
            cv.paint(win, _soft(mask), style.floor[:, None, None] * rng.uniform(0.9, 1.2) * tex[None])
            cv.dem[cs] += (0.4 * _soft(mask, 3.0))[ls]
        elif kind == "snow":
            cv.paint(win, _soft(mask, 1.0) * rng.uniform(0.8, 1.0), SPECTRA["snow"] * rng.uniform(0.85, 1.05))
        elif kind == "burn_scar":
            patchy = np.clip(0.7 + 0.3 * smooth_noise(rng, a.shape, 8), 0.3, 1.0)
            cv.paint(win, _soft(mask, 3.0) * patchy, SPECTRA["burnt"] * rng.uniform(0.85, 1.3))
        else:
            if kind == "lake_shore":
                ring_w = int(rng.integers(3, 9))
                ring = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_w + 1, 2 * ring_w + 1))).astype(bool) & ~mask
                side = rng.uniform(0, 2 * math.pi)
                ring &= (a * math.cos(side) + b * math.sin(side) + 0.3 * radius * smooth_noise(rng, a.shape, 6)) > -0.2 * radius
                spec = SPECTRA["sand"] if rng.random() < 0.5 else style.floor
                cv.paint(win, _soft(ring), spec * rng.uniform(0.9, 1.1))
                cv.mark(win, ring, kind)
            cv.dem[cs] -= (1.5 * _soft(mask, 2.0))[ls]
            cv.paint(win, _soft(mask, 0.8), SPECTRA["water"] * rng.uniform(0.7, 1.4))
        cv.mark(win, mask, kind)
        return
    if kind == "stabilized_scar":
        add_rts(cv, rng, style, cy, cx, rts_radius * rng.uniform(0.7, 1.5), stabilized=True)
        return
    if kind in ("river_bar", "road"):
        pts = _curve(rng, size, straight=kind == "road")
        dist = _distance_to(pts, size)
        if kind == "road":
            width = rng.uniform(1.5, 2.5)
            road = dist <= width
            cv.dem += 0.8 * np.exp(-(dist**2) / (2 * (width + 1.5) ** 2))
            cv.paint(((slice(None), slice(None)), (slice(None), slice(None))), _soft(road, 0.6), SPECTRA["gravel"] * rng.uniform(0.85, 1.1))
            cv.hard[road] = HARD_NEGATIVE_KINDS.index(kind) + 1
            return
        width = rng.uniform(2.0, 6.0)
        cv.dem -= rng.uniform(1.5, 4.0) * np.exp(-(dist**2) / (2 * rng.uniform(12, 25) ** 2))
        bars = np.zeros((size, size), bool)
        for i in range(int(rng.integers(2, 6))):
            p = pts[int(rng.integers(len(pts)))]
            r = rng.uniform(0.6, 1.5) * rts_radius
            m, a, b, _ = lobate_mask(rng, r, rng.uniform(0, 2 * math.pi), rng.uniform(1.2, 2.2), pad=2)
            w = cv.window(int(p[1]), int(p[0]), m.shape)
            if w is not None:
                bars[w[0]][m[w[1]]] = True
        bars &= dist < width + 2.5 * rts_radius
        full = ((slice(None), slice(None)), (slice(None), slice(None)))
        tex = 1.0 + 0.1 * smooth_noise(rng, (size, size), 1.2)
        cv.paint(full, _soft(bars), SPECTRA["gravel"][:, None, None] * rng.uniform(0.8, 1.05) * tex[None])
        water = dist <= width
        cv.paint(full, _soft(water, 0.6), SPECTRA["water"] * rng.uniform(0.8, 1.6))
        cv.hard[bars | water] = HARD_NEGATIVE_KINDS.index(kind) + 1
        return
    # cliff / ridge: relief only, vegetation intact; the face away from the sun is dark.
    pts = _curve(rng, size, straight=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "cliff":
        # Signed distance along the sun direction (+- 40 deg): high on the sun side.
        ang = sun + rng.uniform(-0.7, 0.7)
        p0 = pts[len(pts) // 2]
        sx, sy = math.sin(ang), -math.cos(ang)
        along = (xx - p0[0]) * -sy + (yy - p0[1]) * sx
        d = (xx - p0[0]) * sx + (yy - p0[1]) * sy + rng.uniform(3, 15) * np.sin(2 * math.pi * along / rng.uniform(60, 200) + rng.uniform(0, 6.3))
        sigma = rng.uniform(1.0, 3.0)
        height = rng.uniform(4.0, 15.0)
        # Only a segment of the cliff exists: it fades out along its length.
        seg = 1.0 / (1.0 + np.exp((np.abs(along) - rng.uniform(0.3, 0.8) * size) / 10.0))
        cv.dem += height * seg / (1.0 + np.exp(-d / sigma))
        face = (np.abs(d) < 2.5 * sigma + 1) & (seg > 0.5)
    else:
        dist = _distance_to(pts, size)
        sigma = rng.uniform(2.5, 6.0)
        cv.dem += rng.uniform(3.0, 9.0) * np.exp(-(dist**2) / (2 * sigma**2))
        face = dist < 2 * sigma
    cv.hard[face] = HARD_NEGATIVE_KINDS.index(kind) + 1


# ----------------------------------------------------------------------------- sensors


def hillshade(dem: np.ndarray, azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Lambertian shading, 0-1, of a DEM on the 3 m grid (rows southward, columns eastward)."""
    gy, gx = np.gradient(dem.astype(np.float32), np.float32(PIXEL_M))
    dz_east, dz_north = gx, -gy
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    sx, sy, sz = math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)
    norm = np.sqrt(dz_east**2 + dz_north**2 + 1.0)
    return np.clip((-dz_east * sx - dz_north * sy + sz) / norm, 0.0, 1.0).astype(np.float32)


def _resample_10m(x: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """What a noisy 10 m band resampled bilinearly onto the 3 m grid looks like."""
    h, w = x.shape
    small = cv2.resize(x, (max(1, round(w * PIXEL_M / 10)), max(1, round(h * PIXEL_M / 10))), interpolation=cv2.INTER_AREA)
    small = small + noise * rng.standard_normal(small.shape, dtype=np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _lowpass(x: np.ndarray, factor: int) -> np.ndarray:
    h, w = x.shape
    small = cv2.resize(x, (max(2, w // factor), max(2, h // factor)), interpolation=cv2.INTER_AREA)
    small = ndimage.gaussian_filter(small, 1.0, mode="nearest")
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def sensors(cv: Canvas, rng: np.random.Generator, style: RegionStyle) -> tuple[np.ndarray, np.ndarray]:
    """RGB (3, H, W) uint8 and EXTRA (4, H, W) float32 (ndvi, nir, re, sr) of a rendered canvas."""
    shade = hillshade(cv.dem, style.sun_azimuth_deg, style.sun_elevation_deg)
    flat = math.sin(math.radians(style.sun_elevation_deg))
    illum = style.ambient + (1.0 - style.ambient) * shade / flat
    rad = np.clip(cv.refl, 0.0, 1.0) * illum[None]
    dn = rad[:3] * (np.float32(255.0 * 2.6 * style.gain) * style.cast[:, None, None].astype(np.float32))
    haze = np.clip(style.haze * (1.0 + 0.5 * smooth_noise(rng, (cv.size, cv.size), 150)), 0.0, 0.6)[None]
    dn = dn * (1.0 - haze) + style.haze_dn[:, None, None].astype(np.float32) * haze
    dn += style.noise_dn * rng.standard_normal(dn.shape, dtype=np.float32)
    rgb = np.clip(np.round(dn), 0, 255).astype(np.uint8)
    # Sentinel-2 bands: sensor noise at 10 m, then bilinear resampling onto the 3 m grid.
    red = _resample_10m(rad[0].astype(np.float32), rng, 0.002)
    nir = _resample_10m(rad[3].astype(np.float32), rng, 0.003)
    ndvi = (nir - red) / (nir + red + 1e-4)
    dem2 = cv2.GaussianBlur(cv.dem, (0, 0), 0.6, borderType=cv2.BORDER_REFLECT)  # 2 m ArcticDEM resampled to 3 m
    dem2 = dem2 + cv2.GaussianBlur(0.05 * rng.standard_normal(dem2.shape, dtype=np.float32), (0, 0), 0.7)
    re = dem2 - _lowpass(dem2, 16)
    sr = np.clip(255.0 * hillshade(dem2, style.sun_azimuth_deg, style.sun_elevation_deg), 0, 255)
    # Quantise like the source products (S2 reflectance is stored as integers of 1e-4): the low
    # mantissa bits are then zero and LZW with the float predictor compresses the files ~3x.
    quanta = (2.0**-12, 2.0**-14, 2.0**-8, 2.0**-4)
    extra = np.stack([np.round(x / q) * q for x, q in zip((ndvi, nir, re, sr), quanta)]).astype(np.float32)
    return rgb, extra


# ----------------------------------------------------------------------------- a block


@dataclass
class Block:
    """A rendered canvas, ready to be cut into tiles."""

    rgb: np.ndarray
    extra: np.ndarray
    instance: np.ndarray
    part: np.ndarray
    hard: np.ndarray
    n_rts: int


def rts_radius_px(rng: np.random.Generator, tile_size: int) -> float:
    """Equivalent radius of an ordinary RTS: lognormal around 13% of the tile width, >= 25 m."""
    return float(np.clip(tile_size * 0.13 * math.exp(0.5 * rng.standard_normal()), 25.0 / PIXEL_M, 0.42 * tile_size))


def render_block(
    rng: np.random.Generator,
    style: RegionStyle,
    tile_size: int,
    tiles_per_side: int,
    positive: bool,
    outlines: list[np.ndarray] | None = None,
) -> Block:
    """Render a ``tiles_per_side`` square block of tiles.

    Positive blocks get RTS fields: most tiles receive RTS until a target cover of 6-40% is
    reached, some RTS touch, and with some chance one giant RTS spans several tiles. Both kinds
    of block get hard negatives; negative blocks get more of them.
    """
    size = tile_size * tiles_per_side
    cv = _background(rng, style, size)
    n_hard = rng.poisson(style.hard_negative_rate * (0.12 if positive else 0.22) * tiles_per_side**2)
    kinds = rng.choice(len(HARD_NEGATIVE_KINDS), size=n_hard, p=_KIND_WEIGHTS / _KIND_WEIGHTS.sum())
    for k in kinds:
        add_hard_negative(cv, rng, style, HARD_NEGATIVE_KINDS[int(k)], tile_size, rts_radius_px(rng, tile_size))
    if positive:
        if rng.random() < 0.3:
            giant = tile_size * rng.uniform(0.55, 1.0)
            giant = min(giant, 420.0)  # <= ~2.5 km across
            add_rts(cv, rng, style, int(rng.integers(size // 3, 2 * size // 3 + 1)), int(rng.integers(size // 3, 2 * size // 3 + 1)), giant, outlines)
        for ty in range(tiles_per_side):
            for tx in range(tiles_per_side):
                if rng.random() > 0.6:
                    continue
                target = rng.uniform(0.05, 0.3) * tile_size**2
                area, prev = 0.0, None
                for _ in range(8):
                    r = rts_radius_px(rng, tile_size)
                    if prev is not None and rng.random() < 0.25:
                        # Touching neighbour: beside the previous slump, across the slope.
                        side = math.radians(style.sun_azimuth_deg) + math.pi / 2 * (1 if rng.random() < 0.5 else -1)
                        d = 0.9 * (prev[2] + r)
                        cy, cx = int(prev[0] - d * math.cos(side)), int(prev[1] + d * math.sin(side))
                    else:
                        cy = int(ty * tile_size + rng.uniform(0.15, 0.85) * tile_size)
                        cx = int(tx * tile_size + rng.uniform(0.15, 0.85) * tile_size)
                    if add_rts(cv, rng, style, cy, cx, r, outlines):
                        area += math.pi * r * r
                        prev = (cy, cx, r)
                    if area >= target:
                        break
    rgb, extra = sensors(cv, rng, style)
    return Block(rgb=rgb, extra=extra, instance=cv.instance, part=cv.part, hard=cv.hard, n_rts=cv.n_rts)
