"""The training augmentation pipeline (flips, rotations, affine, elastic, colour), applied jointly to image, EXTRA and mask.

One draw per sample: rotate90, horizontal and vertical flips, an affine (shift, scale, rotation
about the tile centre) and an elastic deformation, with the probabilities and limits of the
``augment`` params. The geometric transforms are folded into one map per sample, so an image is
interpolated once whatever fired:

- only rotate90 and flips: exact pixel moves (``cv2.rotate`` / ``cv2.flip``), no interpolation;
- affine (with any rotate90 and flips folded into its matrix): one ``cv2.warpAffine``;
- elastic (with any affine, rotate90 and flips folded in): one ``cv2.remap`` whose map is the
  composed matrix applied to the elastically displaced grid.

The same map moves uint8 RGB (warped as uint8, 4 channels wide for OpenCV's vector path), the
float32 EXTRA channels and the label (nearest neighbour), so the mask follows the image exactly.
Borders reflect (``BORDER_REFLECT_101``): no invented black border and no fill value whose length
must match the channel count. OpenCV does not warp float16, so EXTRA is warped as float32.

The elastic field follows albumentations' ``ElasticTransform(approximate=True)`` (Gaussian noise
smoothed by a 17 px Gaussian of ``elastic_sigma``, scaled to ``elastic_alpha`` over the noise's
maximum), drawn on a grid ``stride`` times coarser and upsampled bilinearly. The coarse
smoothing is fitted to albumentations' correlation over 1-16 px (``_coarse_sigma``) and the scale
matches its per-pixel spread exactly in expectation (``_field_scale``), at about a fifteenth of
the cost. ``tests/data/test_augment.py`` compares its statistics with albumentations' own field.
Tiles are square (the data format's ``tile_size``), so rotate90 keeps the shape.

Colour jitter (brightness, contrast, saturation in random order, albumentations' torchvision-style
uint8 functions) touches RGB only (NDVI, relative elevation and shaded relief are measurements, not
colours) and runs before the geometry: it is pointwise but for the contrast's image mean, which
it takes over the whole tile before any pixel leaves it.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import cv2
import numpy as np
from albumentations.augmentations.pixel import functional as fpixel

from rts.config import AugmentConfig

_BORDER = cv2.BORDER_REFLECT_101
_ALB_KERNEL = 17  # albumentations' smoothing kernel for approximate=True


def _rot90_source(k: int, h: int, w: int) -> np.ndarray:
    """3x3 map from an output pixel (x, y) to its source under ``np.rot90(img, k)`` (square tiles when k is odd)."""
    m = np.eye(3)
    step = np.array([[0.0, -1.0, w - 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # np.rot90 once: src = (W-1-y, x)
    for _ in range(k % 4):
        m = m @ step
    return m


def _blur_matrix(n: int, ksize: int, sigma: float) -> np.ndarray:
    """The n x n matrix of a 1-D ``cv2.GaussianBlur`` with replicated borders."""
    eye = np.eye(n, dtype=np.float64)
    return cv2.GaussianBlur(eye, (1, ksize), sigma, borderType=cv2.BORDER_REPLICATE)  # blurs along axis 0


def _upsampled(n: int, stride: int, coarse_k: int, coarse_sigma: float) -> np.ndarray:
    """The (n, n / stride) axis operator of the coarse field: blur on the coarse grid, then bilinear upsampling."""
    nc = -(-n // stride)
    coarse = _blur_matrix(nc, coarse_k, coarse_sigma)
    return cv2.resize(coarse.astype(np.float32), (nc, n), interpolation=cv2.INTER_LINEAR).astype(np.float64)


def _correlation(a: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Mean correlation at each lag, away from the ends, of the field ``a @ white noise``."""
    cov = a @ a.T
    d = np.sqrt(np.diag(cov))
    r = cov / np.outer(d, d)
    n, edge = len(d), 24
    return np.array([np.diagonal(r, lag)[edge:n - edge - lag].mean() for lag in lags])


def _coarse_sigma(sigma: float, stride: int, coarse_k: int) -> float:
    """The coarse grid's smoothing whose upsampled field has albumentations' correlation over lags 1-16 px.

    Bilinear upsampling smooths too, so ``sigma / stride`` would give a longer correlation; the
    fit picks, on a 160 px axis (the correlation away from the ends does not depend on length),
    the coarse sigma closest to the fine field's correlation curve.
    """
    if stride == 1:
        return sigma
    n, lags = 160, np.arange(1, 17)
    target = _correlation(_blur_matrix(n, _ALB_KERNEL, sigma), lags)
    candidates = np.linspace(0.4, 1.2, 41) * sigma / stride
    errors = [((_correlation(_upsampled(n, stride, coarse_k, c), lags) - target) ** 2).sum() for c in candidates]
    return float(candidates[int(np.argmin(errors))])


def _field_scale(h: int, w: int, sigma: float, stride: int, coarse_k: int, coarse_sigma: float) -> float:
    """Factor taking the coarse smoothed-and-upsampled unit noise to albumentations' per-pixel spread.

    Both fields are linear in white noise and separable, so each one's mean per-pixel variance is
    the product over the two axes of ``||A||_F^2 / n`` for the axis operator ``A``. Albumentations
    then divides by the noise's maximum over its ``2 h w`` values, whose median is exact in closed
    form and within a fraction of a percent of its mean at these sizes.
    """

    def axis_var(n: int) -> tuple[float, float]:
        fine = _blur_matrix(n, _ALB_KERNEL, sigma)
        up = _upsampled(n, stride, coarse_k, coarse_sigma)
        return float((fine**2).sum() / n), float((up**2).sum() / n)

    (fy, cy), (fx, cx) = axis_var(h), axis_var(w)
    n = 2 * h * w
    max_abs = NormalDist().inv_cdf((1.0 + 0.5 ** (1.0 / n)) / 2.0)  # median of max |N(0,1)| over n draws
    return math.sqrt(fy * fx / (cy * cx)) / max_abs


class Augmenter:
    """Callable ``(rgb uint8 (H,W,3), extra float32 (H,W,C) or None, label uint8 (H,W)) -> (stack float32 (H,W,3+C), label)``.

    ``apply`` is the same draw without the float32 stack: ``(rgb uint8, extra float32 or None,
    label)``, which ``TileDataset`` normalises directly. ``seed`` fixes the next draw.
    """

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.stride = max(1, int(cfg.elastic_sigma // 1.5))  # the coarse grid keeps >= 1.5 cells per sigma
        self._coarse_k = 2 * max(1, round((_ALB_KERNEL // 2) / self.stride)) + 1
        self._coarse_sigma = _coarse_sigma(cfg.elastic_sigma, self.stride, self._coarse_k)
        self._scales: dict[tuple[int, int], float] = {}
        self._grids: dict[tuple[int, int], np.ndarray] = {}
        self.rng = np.random.default_rng()

    def seed(self, seed: int) -> None:
        """Make the next draw reproducible (called per sample with a seed derived from epoch/index)."""
        self.rng = np.random.default_rng(seed)

    # -------------------------------------------------------------- draws

    def _color(self, rgb: np.ndarray) -> np.ndarray:
        c, rng = self.cfg, self.rng
        if rng.random() >= c.color_p:
            return rgb
        factors = [rng.uniform(1 - c.brightness, 1 + c.brightness), rng.uniform(1 - c.contrast, 1 + c.contrast),
                   rng.uniform(1 - c.saturation, 1 + c.saturation)]
        ops = (fpixel.adjust_brightness_torchvision, fpixel.adjust_contrast_torchvision, fpixel.adjust_saturation_torchvision)
        for i in rng.permutation(3):
            rgb = ops[i](rgb, factors[i])
        return rgb

    def draw(self, h: int, w: int) -> tuple[np.ndarray | None, bool, np.ndarray | None]:
        """One sample's geometry: ``(source map 3x3 or None, interpolating, elastic displacement (H,W,2) or None)``.

        The 3x3 matrix maps an output pixel (x, y), after the elastic displacement, to its source
        pixel in the input; ``interpolating`` is False when only rotate90 and flips fired.
        """
        c, rng = self.cfg, self.rng
        m = np.eye(3)
        if rng.random() < c.rotate90_p:
            m = m @ _rot90_source(int(rng.integers(0, 4)), h, w)
        if rng.random() < c.hflip_p:
            m = m @ np.array([[-1.0, 0, w - 1.0], [0, 1.0, 0], [0, 0, 1.0]])
        if rng.random() < c.vflip_p:
            m = m @ np.array([[1.0, 0, 0], [0, -1.0, h - 1.0], [0, 0, 1.0]])
        interpolating = False
        if rng.random() < c.affine_p:
            scale = rng.uniform(1 - c.scale_limit, 1 + c.scale_limit)
            angle = math.radians(rng.uniform(-c.rotate_limit, c.rotate_limit))
            tx = rng.uniform(-c.shift_limit, c.shift_limit) * w
            ty = rng.uniform(-c.shift_limit, c.shift_limit) * h
            cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
            cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
            # forward: dst = centre + scale * R(angle) (src - centre) + t; the source map is its inverse
            inv = np.array([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])
            inv[:2, 2] = np.array([cx, cy]) - inv[:2, :2] @ np.array([cx + tx, cy + ty])
            m = m @ inv
            interpolating = True
        field = None
        if rng.random() < c.elastic_p:
            field = self._elastic(h, w)
            interpolating = True
        if np.array_equal(m, np.eye(3)) and field is None:
            return None, False, None
        return m, interpolating, field

    def _elastic(self, h: int, w: int) -> np.ndarray:
        """Displacement (H, W, 2) float32: x then y, as albumentations' ``generate_displacement_fields``."""
        s = self.stride
        hc, wc = -(-h // s), -(-w // s)
        key = (h, w)
        if key not in self._scales:
            self._scales[key] = _field_scale(h, w, self.cfg.elastic_sigma, s, self._coarse_k, self._coarse_sigma) * self.cfg.elastic_alpha
        noise = self.rng.standard_normal((hc, wc, 2), dtype=np.float32)
        noise = cv2.GaussianBlur(noise, (self._coarse_k, self._coarse_k), self._coarse_sigma,
                                 borderType=cv2.BORDER_REPLICATE)
        field = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
        field *= np.float32(self._scales[key])
        return field

    # -------------------------------------------------------------- warps

    def _grid(self, h: int, w: int) -> np.ndarray:
        if (h, w) not in self._grids:
            xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            self._grids[(h, w)] = np.dstack([xs, ys])
        return self._grids[(h, w)]

    def warp(self, geometry, arrays: list[np.ndarray | None]) -> list[np.ndarray | None]:
        """Apply one draw to HWC arrays; the last one is the label (nearest neighbour), the others interpolate."""
        m, interpolating, field = geometry
        if m is None:
            return arrays
        h, w = arrays[-1].shape[:2]
        if not interpolating:
            return [None if a is None else _move(a, m) for a in arrays]
        if field is None:
            mat = m[:2].astype(np.float64)
            flags = cv2.WARP_INVERSE_MAP
            out = [None if a is None else cv2.warpAffine(a, mat, (w, h), flags=flags | cv2.INTER_LINEAR, borderMode=_BORDER)
                   for a in arrays[:-1]]
            return out + [cv2.warpAffine(arrays[-1], mat, (w, h), flags=flags | cv2.INTER_NEAREST, borderMode=_BORDER)]
        maps = cv2.transform(self._grid(h, w) + field, m[:2].astype(np.float32))
        out = [None if a is None else _fix_shape(cv2.remap(a, maps, None, cv2.INTER_LINEAR, borderMode=_BORDER), a)
               for a in arrays[:-1]]
        return out + [cv2.remap(arrays[-1], maps, None, cv2.INTER_NEAREST, borderMode=_BORDER)]

    def apply(self, rgb: np.ndarray, extra: np.ndarray | None, label: np.ndarray):
        """One draw: ``(rgb uint8 (H,W,3), extra float32 (H,W,C) or None, label (H,W))``, each warped alike."""
        h, w = label.shape
        if h != w and self.cfg.rotate90_p > 0:
            raise ValueError(f"augment.rotate90_p needs square tiles, got {h}x{w}; crop square or set augment.rotate90_p: 0")
        rgb = self._color(np.ascontiguousarray(rgb))
        geometry = self.draw(h, w)
        if extra is not None and not extra.shape[-1]:
            extra = None
        if geometry[1]:  # OpenCV's 4-channel uint8 path is about 1.5x its 3-channel one
            rgb = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
        rgb, extra, label = self.warp(geometry, [rgb, None if extra is None else np.ascontiguousarray(extra, np.float32), label])
        if rgb.shape[-1] == 4:
            rgb = cv2.cvtColor(rgb, cv2.COLOR_RGBA2RGB)
        return rgb, extra, label

    def __call__(self, rgb: np.ndarray, extra: np.ndarray | None, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rgb, extra, label = self.apply(rgb, extra, label)
        if extra is None:
            return rgb.astype(np.float32), label
        return np.concatenate([rgb.astype(np.float32), extra.reshape(*label.shape, -1)], axis=-1), label


def _fix_shape(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    """OpenCV drops a trailing channel axis of length 1."""
    return out.reshape(like.shape) if out.ndim != like.ndim else out


def _move(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Rotate90/flip exactly: the source map ``m`` is a signed permutation of the axes (+ offsets)."""
    (a00, a01, _), (a10, _, _) = np.rint(m[:2]).astype(int)
    if a00 == 0:  # axes swapped: out[y, x] = in[+-x, +-y], a transpose, then flips
        flip_cols, flip_rows = a10 < 0, a01 < 0
    else:
        flip_cols, flip_rows = a00 < 0, m[1, 1] < 0
    small = a.ndim == 2 or a.shape[-1] <= 4  # OpenCV's transpose takes at most 4 channels
    if small:
        out = cv2.transpose(a) if a00 == 0 else a
        if flip_cols or flip_rows:
            out = cv2.flip(out, -1 if flip_cols and flip_rows else (1 if flip_cols else 0))
        return _fix_shape(out, a) if out is not a else a.copy()
    out = np.swapaxes(a, 0, 1) if a00 == 0 else a
    if flip_cols:
        out = out[:, ::-1]
    if flip_rows:
        out = out[::-1]
    return np.ascontiguousarray(out)
