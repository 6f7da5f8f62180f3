"""Omniglot-style handwriting rendered from KanjiVG stroke data.

KanjiVG (https://kanjivg.tagaini.net, Ulrich Apel, CC BY-SA 3.0) ships with the PyPI package
``kanjivg`` as one SVG file per character in a top-level ``kanji/`` folder; every stroke is a
``<path d="...">`` in drawing order, in a 109 x 109 box. This module turns those strokes into
polylines and draws many "handwritten" samples of each character:

* a global random affine warp per sample, ``p -> A (p - c) + c + t`` with ``c`` the box centre,
  ``A = R(theta) Shear(s) diag(sx, sy)``;
* a per-stroke jitter, ``p -> m_k + R(phi_k) diag(r_k) (p - m_k) + d_k`` about the stroke's mean
  point ``m_k`` (different writers place and size strokes differently);
* a random pen width per sample.

Samples are drawn with PIL at ``4x`` the output size (round joints and caps) and box-filtered down
to ``image_size`` for anti-aliasing. Ink is 255 on a 0 background, as for Omniglot after inversion.
Every sample depends only on ``(seed, codepoint, sample index)``, so results do not depend on the
order or the subset of characters rendered.
"""
from __future__ import annotations

import functools
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ntk_bridge.errors import UserError

#: Bump whenever the drawing changes: it is part of the cache key.
RENDERER_VERSION = 2

#: KanjiVG's drawing box: coordinates lie in [0, 109].
BOX = 109.0

_TOKEN = re.compile(r"[MmCcSsLlHhVvZz]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_PATH_D = re.compile(r'<path\b[^>]*?\bd="([^"]+)"')


@dataclass(frozen=True)
class WarpConfig:
    """Strength of the random handwriting variation (angles in degrees, lengths in box units).

    Defaults were tuned so that raw-pixel nearest neighbour on 5-way tasks lands near Omniglot's
    (about 40-45% 1-shot, 60-65% 5-shot; Vinyals et al. 2016 report 41.7% / 63.2% for Omniglot).
    """

    rotation: float = 12.0
    shear: float = 0.2
    scale: tuple[float, float] = (0.75, 1.05)
    translation: float = 9.0
    stroke_rotation: float = 8.0
    stroke_scale: tuple[float, float] = (0.8, 1.15)
    stroke_translation: float = 4.0
    pen_width: tuple[float, float] = (6.0, 9.0)


def kanjivg_dir() -> Path:
    """The ``kanji/`` folder of the installed ``kanjivg`` package."""
    try:
        folder = Path(importlib.metadata.distribution("kanjivg").locate_file("kanji"))
    except importlib.metadata.PackageNotFoundError as exc:
        raise UserError("the kanji dataset needs the 'kanjivg' package: pip install kanjivg") from exc
    if not folder.is_dir():
        raise UserError(f"kanjivg is installed but has no kanji/ folder at {folder}")
    return folder


def kanjivg_version() -> str:
    """Version string of the installed ``kanjivg`` package (part of the cache key)."""
    return importlib.metadata.version("kanjivg")


def parse_path(d: str, points_per_curve: int = 8) -> np.ndarray:
    """Polyline ``[P, 2]`` of an SVG path ``d`` string (M/m, C/c, S/s, L/l, H/h, V/v, Z/z).

    Cubic Bezier segments ``B(u) = (1-u)^3 p0 + 3(1-u)^2 u p1 + 3(1-u) u^2 p2 + u^3 p3`` are
    sampled at ``points_per_curve`` equally spaced ``u`` in (0, 1]; ``S`` reflects the previous
    second control point about the current point, as the SVG specification says.
    """
    tokens = _TOKEN.findall(d)
    u = np.linspace(0.0, 1.0, points_per_curve + 1)[1:, None]
    bernstein = np.concatenate([(1 - u) ** 3, 3 * (1 - u) ** 2 * u, 3 * (1 - u) * u**2, u**3], 1)
    points: list[np.ndarray] = []
    current = np.zeros(2)
    start = np.zeros(2)
    last_control: np.ndarray | None = None
    command = ""
    i = 0

    def numbers(k: int) -> np.ndarray:
        nonlocal i
        values = np.array([float(t) for t in tokens[i : i + k]])
        if len(values) != k:
            raise ValueError(f"malformed SVG path: {d!r}")
        i += k
        return values

    while i < len(tokens):
        if tokens[i].isalpha():
            command = tokens[i]
            i += 1
            if command in "Zz":
                points.append(start[None].copy())
                current = start.copy()
                continue
        relative = command.islower()
        offset = current if relative else np.zeros(2)
        kind = command.upper()
        if kind == "M":
            current = numbers(2) + offset
            start = current.copy()
            points.append(current[None].copy())
            command = "l" if relative else "L"  # further pairs after M are line-tos
            last_control = None
        elif kind in "LHV":
            if kind == "L":
                target = numbers(2) + offset
            elif kind == "H":
                target = np.array([numbers(1)[0] + offset[0], current[1]])
            else:
                target = np.array([current[0], numbers(1)[0] + offset[1]])
            points.append(target[None])
            current = target
            last_control = None
        elif kind in "CS":
            if kind == "C":
                values = numbers(6).reshape(3, 2) + offset
                c1, c2, end = values
            else:
                values = numbers(4).reshape(2, 2) + offset
                c1 = 2 * current - last_control if last_control is not None else current.copy()
                c2, end = values
            control = np.stack([current, c1, c2, end])
            points.append(bernstein @ control)
            last_control = c2
            current = end
        else:
            raise ValueError(f"unsupported SVG path command {command!r} in {d!r}")
    return np.concatenate(points, 0) if points else np.zeros((0, 2))


@functools.lru_cache(maxsize=None)
def load_strokes(codepoint: int) -> tuple[np.ndarray, ...]:
    """The strokes of one character as polylines ``[P_k, 2]`` in drawing order (box coordinates)."""
    text = (kanjivg_dir() / f"{codepoint:05x}.svg").read_text(encoding="utf-8")
    return tuple(parse_path(d) for d in _PATH_D.findall(text))


def list_characters(max_strokes: int = 8, scripts: tuple[str, ...] = ("kanji", "kana")) -> list[int]:
    """Codepoints of the base (non-variant) KanjiVG characters with ``1..max_strokes`` strokes.

    ``scripts`` selects CJK ideographs (``"kanji"``: U+3400-U+9FFF) and/or hiragana and katakana
    (``"kana"``: U+3040-U+30FF); punctuation, digits and Latin letters are never used.
    """
    ranges = {"kanji": (0x3400, 0xA000), "kana": (0x3040, 0x3100)}
    unknown = set(scripts) - set(ranges)
    if unknown:
        raise UserError(f"unknown script(s) {sorted(unknown)}; choose from {sorted(ranges)}")
    chosen = []
    for path in sorted(kanjivg_dir().glob("*.svg")):
        if "-" in path.stem:  # variants such as 04e14-Kaisho.svg
            continue
        codepoint = int(path.stem, 16)
        if not any(lo <= codepoint < hi for lo, hi in (ranges[s] for s in scripts)):
            continue
        if 1 <= len(_PATH_D.findall(path.read_text(encoding="utf-8"))) <= max_strokes:
            chosen.append(codepoint)
    return chosen


def _rotation(angle: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 2, 2]`` for angles in radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def warp_strokes(
    strokes: tuple[np.ndarray, ...], n_samples: int, rng: np.random.Generator, warp: WarpConfig
) -> tuple[list[np.ndarray], np.ndarray]:
    """Random handwriting variants of one character, vectorised over samples.

    Returns ``(warped, pen)``: ``warped[k]`` is ``[n_samples, P_k, 2]`` (box coordinates), ``pen`` is
    ``[n_samples]`` pen widths in box units.
    """
    n_strokes = len(strokes)
    deg = np.pi / 180
    theta = rng.uniform(-warp.rotation, warp.rotation, n_samples) * deg
    shear = rng.uniform(-warp.shear, warp.shear, n_samples)
    scale = rng.uniform(*warp.scale, (n_samples, 2))
    shift = rng.uniform(-warp.translation, warp.translation, (n_samples, 2))
    shear_m = np.zeros((n_samples, 2, 2))
    shear_m[:, 0, 0] = shear_m[:, 1, 1] = 1.0
    shear_m[:, 0, 1] = shear
    global_a = _rotation(theta) @ shear_m @ (scale[:, :, None] * np.eye(2))  # [S, 2, 2]
    phi = rng.uniform(-warp.stroke_rotation, warp.stroke_rotation, (n_samples, n_strokes)) * deg
    ratio = rng.uniform(*warp.stroke_scale, (n_samples, n_strokes, 2))
    delta = rng.normal(0.0, warp.stroke_translation, (n_samples, n_strokes, 2))
    stroke_a = _rotation(phi) * ratio[..., None, :]  # R(phi) diag(r): [S, K, 2, 2]
    pen = rng.uniform(*warp.pen_width, n_samples)
    centre = np.full(2, BOX / 2)
    warped = []
    for k, stroke in enumerate(strokes):
        mean = stroke.mean(0)
        local = np.einsum("sij,pj->spi", stroke_a[:, k], stroke - mean) + mean + delta[:, None, k]
        warped.append(np.einsum("sij,spj->spi", global_a, local - centre) + centre + shift[:, None])
    return warped, pen


def draw(strokes: list[np.ndarray], pen: float, image_size: int = 28, oversample: int = 4) -> np.ndarray:
    """Rasterise polylines (box coordinates) to a uint8 image ``[image_size, image_size]``.

    Drawn at ``oversample * image_size`` with round joints and caps, then box-filtered down.
    """
    big = image_size * oversample
    factor = big / BOX
    width = max(1, int(round(pen * factor)))
    image = Image.new("L", (big, big), 0)
    canvas = ImageDraw.Draw(image)
    radius = width / 2
    for stroke in strokes:
        xy = [tuple(p) for p in (stroke * factor).tolist()]
        if len(xy) > 1:
            canvas.line(xy, fill=255, width=width, joint="curve")
        for x, y in (xy[0], xy[-1]):
            canvas.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return np.asarray(image.resize((image_size, image_size), Image.BOX), dtype=np.uint8)


def render_character(
    codepoint: int,
    n_samples: int,
    seed: int,
    image_size: int = 28,
    warp: WarpConfig = WarpConfig(),
) -> np.ndarray:
    """``n_samples`` handwritten samples ``[n_samples, image_size, image_size]`` uint8 of one character.

    Deterministic in ``(seed, codepoint)``: the generator is ``default_rng([seed, codepoint])``.
    """
    rng = np.random.default_rng([seed, codepoint])
    warped, pen = warp_strokes(load_strokes(codepoint), n_samples, rng, warp)
    return np.stack([draw([w[s] for w in warped], pen[s], image_size) for s in range(n_samples)])


def render_canonical(codepoint: int, image_size: int = 28, pen: float = 7.0) -> np.ndarray:
    """The unwarped glyph ``[image_size, image_size]`` uint8, its bounding box scaled (aspect kept)
    and centred to span 80% of the box: size-free, as the random warp changes size anyway."""
    strokes = load_strokes(codepoint)
    points = np.concatenate(strokes)
    low, high = points.min(0), points.max(0)
    factor = 0.8 * BOX / max(float((high - low).max()), 1e-6)
    centre = (low + high) / 2
    return draw([(s - centre) * factor + BOX / 2 for s in strokes], pen, image_size)


def drop_near_duplicates(codepoints: list[int], threshold: float = 0.9, image_size: int = 28) -> list[int]:
    """Keep the first of every group of glyphs whose canonical renders have cosine > ``threshold``.

    Canonical renders are size-normalised (:func:`render_canonical`) because the random warp
    rescales anyway. At 0.9 this drops the full-size twin of each small kana (``ぁ``/``あ``), the
    katakana ``ヘ`` (``へ``), and the lighter look-alikes among voiced kana; about 50 of the 1,507
    candidates with at most 8 strokes. Similar but distinct shapes such as ``口``/``ロ`` (cosine
    about 0.8 unblurred) stay, as Omniglot keeps look-alike characters of different alphabets; a
    pair like that lands in the same 5-way task with probability about 1e-4.
    """
    if not codepoints:
        return []
    flat = np.stack([render_canonical(c, image_size).ravel() for c in codepoints]).astype(np.float64)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    similar = flat @ flat.T > threshold
    keep = np.ones(len(codepoints), bool)
    for i in range(len(codepoints)):
        if keep[i]:
            later = similar[i].copy()
            later[: i + 1] = False
            keep &= ~later
    return [c for c, k in zip(codepoints, keep) if k]
