"""A generated WSOL dataset whose class lives in a small part of each object.

Why: real WSOL benchmarks (CUB birds) are hard because the class is decided by a small discriminative part
(a bird's head) while the box covers the whole object (the body, shared by all species). A classifier then
fires on the part, and a CAM box falls short of the GT box. This generator reproduces that on purpose, on
CPU, in seconds, with both boxes and masks, so every metric of the protocol applies and every knob can be
turned to make one difficulty stronger or weaker.

Each object is a *body* (a rotated ellipse whose colour and texture come from one distribution shared by all
classes) with a *head* (a disc, smaller than the body, attached at one end of the body's long axis) whose
pattern and/or hue decide the class. All objects of one image share the image's class. Around them: a textured
background (multi-octave noise + a colour gradient), clutter shapes, headless bodies (background, not ignored: they are
not objects of any class) and, sometimes, a loose head of the image's class lying on its own (class evidence
that is not the object: it is put in the ignore mask, so PxAP neither rewards nor penalises it, while the
box metrics are hurt if a method localises it). An occluder may hide part of an object's body (never its
head). The instance masks are the *visible* pixels of each object (body + head); each box is the tight
bounding box of its instance mask.

Layout written under ``DIR`` (data root ``DIR/images``, mask root ``DIR/masks``)::

    images/<split>/<class>/<class>_<nnnn>.png
    masks/<split>/<class>/<class>_<nnnn>_m<i>.png      one per object, 0/255
    masks/<split>/<class>/<class>_<nnnn>_ignore.png    loose heads (all zero when there is none)
    metadata/<split>/{image_ids,class_labels,image_sizes,localization,mask_localization}.txt  (write_split)
    synth.json, README.md                              the config, class names, counts

The same config (seed included) gives byte-identical files: every image draws from its own random stream
seeded by ``(seed, split, class, index)``, and PNGs carry no timestamps.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from wsol.data.metadata import Record, write_class_names, write_split
from wsol.data.sources import building
from wsol.data.synth_config import (
    _DATASET_ENTRIES,
    GENERATOR,
    KNOBS,
    PATTERNS,
    SPLITS,
    SynthConfig,
    _class_hue,
)
from wsol.errors import WSOLError

_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _value_noise(rng: np.random.Generator, height: int, width: int, channels: int, cells: list[int]) -> np.ndarray:
    """Multi-octave value noise in about [-1, 1]: random grids upsampled bicubically and summed."""
    out = np.zeros((height, width, channels), dtype=np.float32)
    total = 0.0
    for octave, cell in enumerate(cells):
        grid = rng.uniform(-1, 1, size=(max(2, height // cell + 2), max(2, width // cell + 2), channels))
        up = cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
        weight = 0.6**octave
        out += weight * up.reshape(height, width, channels)
        total += weight
    return out / total


class _Canvas:
    """An RGB float image plus an owner map: -1 background, -2 loose head, i >= 0 object i."""

    def __init__(self, rng: np.random.Generator, config: SynthConfig, width: int, height: int) -> None:
        self.rng, self.config, self.width, self.height = rng, config, width, height
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        self.xs, self.ys = xs, ys
        self.image = np.zeros((height, width, 3), dtype=np.float32)
        self.owner = np.full((height, width), -1, dtype=np.int32)

    # -- geometry -------------------------------------------------------------------------------------
    def ellipse(self, cx: float, cy: float, a: float, b: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
        """Mask of a rotated ellipse and the normalised radius (0 centre, 1 rim) inside it."""
        dx, dy = self.xs - cx, self.ys - cy
        c, s = math.cos(theta), math.sin(theta)
        u, v = (dx * c + dy * s) / a, (-dx * s + dy * c) / b
        rho2 = u * u + v * v
        return rho2 <= 1.0, np.sqrt(np.minimum(rho2, 1.0))

    def head_coords(self, hx: float, hy: float, r: float, theta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mask of a disc and its local coordinates (u along the body axis, v across), scaled by the radius."""
        dx, dy = (self.xs - hx) / r, (self.ys - hy) / r
        c, s = math.cos(theta), math.sin(theta)
        u, v = dx * c + dy * s, -dx * s + dy * c
        return u * u + v * v <= 1.0, u, v

    # -- painting -------------------------------------------------------------------------------------
    def paint(self, mask: np.ndarray, colour: np.ndarray, owner: int | None) -> None:
        self.image[mask] = colour[mask] if colour.ndim == 3 else colour
        if owner is not None:
            self.owner[mask] = owner

    def background(self) -> None:
        rng, config, h, w = self.rng, self.config, self.height, self.width
        c0 = _hsv(rng.uniform(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.85))
        c1 = _hsv(rng.uniform(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.85))
        angle = rng.uniform(0, 2 * math.pi)
        t = self.xs * math.cos(angle) + self.ys * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        self.image[:] = c0 * (1 - t[..., None]) + c1 * t[..., None]
        noise = _value_noise(rng, h, w, 3, [max(w, h) // 3, 24, 8, 3])
        self.image += noise * (90.0 * config.texture)
        # oriented grain (grass, wood) so that the background has edges at many orientations
        freq, phase, grain_angle = rng.uniform(0.08, 0.4), rng.uniform(0, 2 * math.pi), rng.uniform(0, math.pi)
        grain = np.sin(freq * (self.xs * math.cos(grain_angle) + self.ys * math.sin(grain_angle)) + phase)
        self.image += (grain * 25.0 * config.texture)[..., None]

    def clutter(self, count: int) -> None:
        rng, h, w = self.rng, self.height, self.width
        side = min(w, h)
        layer = self.image.copy()
        for _ in range(count):
            colour = tuple(float(c) for c in _hsv(rng.uniform(), rng.uniform(0.2, 1), rng.uniform(0.2, 1)))
            kind = int(rng.integers(4))
            cx, cy = int(rng.integers(w)), int(rng.integers(h))
            size = int(rng.uniform(0.04, 0.2) * side) + 2
            if kind == 0:
                cv2.circle(layer, (cx, cy), size // 2, colour, -1, cv2.LINE_8)
            elif kind == 1:
                box = cv2.boxPoints(((cx, cy), (size, size * rng.uniform(0.2, 1)), rng.uniform(0, 180)))
                cv2.fillPoly(layer, [np.round(box).astype(np.int32)], colour, cv2.LINE_8)
            elif kind == 2:
                end = (cx + int(rng.integers(-2 * size, 2 * size)), cy + int(rng.integers(-2 * size, 2 * size)))
                cv2.line(layer, (cx, cy), end, colour, max(1, size // 6), cv2.LINE_8)
            else:
                points = np.array([cx, cy]) + rng.integers(-size, size + 1, size=(3, 2))
                cv2.fillPoly(layer, [points.astype(np.int32)], colour, cv2.LINE_8)
        self.image = layer

    def body(self, cx: float, cy: float, a: float, b: float, theta: float, owner: int | None,
             base: np.ndarray | None = None) -> np.ndarray:
        """Paint a body (shared colour/texture distribution for all classes, or the colour ``base``);
        return its mask."""
        rng = self.rng
        mask, rho = self.ellipse(cx, cy, a, b, theta)
        if base is None:
            base = _hsv(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.35, 0.9))
        spots = _value_noise(rng, self.height, self.width, 1, [max(4, int(b // 2)), 4])[..., 0]
        shade = 1.0 - 0.35 * rho**2 + 0.5 * self.config.texture * spots
        self.paint(mask, base * shade[..., None], owner)
        return mask

    def head_colour(self, k: int) -> np.ndarray:
        """The bright tone of a head of class ``k`` (its hue is the class's unless ``head_cue='pattern'``)."""
        rng, config = self.rng, self.config
        if config.head_cue == "pattern":
            hue = rng.uniform()  # hue from the shared distribution: useless for the class
        else:
            hue = _class_hue(config, k) + rng.uniform(-0.02, 0.02)
        return _hsv(hue, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0))

    def head(self, hx: float, hy: float, r: float, theta: float, k: int, owner: int | None,
             bright: np.ndarray | None = None) -> np.ndarray:
        """Paint a head whose pattern and/or hue encode class ``k`` (bright tone ``bright`` when given);
        return its mask."""
        rng, config = self.rng, self.config
        mask, u, v = self.head_coords(hx, hy, r, theta)
        if config.head_cue == "color":
            on = u * u + v * v < 0.6  # a solid disc with a dark rim: only the hue tells classes apart
        else:
            on = _pattern(PATTERNS[k % len(PATTERNS)], u, v)
        if bright is None:
            bright = self.head_colour(k)
        dark = bright * rng.uniform(0.1, 0.3)
        colour = np.where(on[..., None], bright, dark)
        self.paint(mask, colour, owner)
        return mask

    def occluder(self, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
        """Paint a textured rectangle that hides what is under it (owner back to background)."""
        rng = self.rng
        box = cv2.boxPoints(((cx, cy), (size, size * rng.uniform(0.4, 1.0)), angle))
        mask = np.zeros((self.height, self.width), dtype=np.uint8)
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1, cv2.LINE_8)
        m = mask.astype(bool)
        base = _hsv(rng.uniform(), rng.uniform(0.0, 0.5), rng.uniform(0.3, 0.8))
        tex = _value_noise(rng, self.height, self.width, 1, [6, 2])[..., 0]
        self.paint(m, base * (1 + 0.4 * self.config.texture * tex)[..., None], -1)
        return m


def _pattern(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A two-tone pattern over a head, in coordinates scaled by the head radius (so scale-invariant)."""
    if name == "stripes":  # stripes across the body axis
        return np.sin(u * math.pi * 2.5) > 0
    if name == "bars":  # stripes along the body axis
        return np.sin(v * math.pi * 2.5) > 0
    if name == "checker":
        return (np.floor(u * 1.6 + 10) + np.floor(v * 1.6 + 10)) % 2 == 0
    if name == "rings":
        return np.sin(np.sqrt(u * u + v * v) * math.pi * 3.0) > 0
    if name == "dots":
        fu, fv = (u * 1.5 + 10) % 1 - 0.5, (v * 1.5 + 10) % 1 - 0.5
        return fu * fu + fv * fv > 0.06
    if name == "eye":
        return (u - 0.25) ** 2 + v * v > 0.12
    if name == "diagonal":
        return np.sin((u + v) * math.pi * 2.0) > 0
    if name == "split":
        return u > 0.1
    raise AssertionError(name)


@dataclass
class _Object:
    mask_full: np.ndarray  # everything this object (and its occluder) may cover
    head: np.ndarray


def _object_geometry(rng: np.random.Generator, config: SynthConfig, width: int, height: int, count: int) -> tuple:
    """Sample a body/head pose that fits inside the image: (cx, cy, a, b, theta, hx, hy, r)."""
    shrink = 1.0 / math.sqrt(count)
    length = rng.uniform(config.scale_min, config.scale_max) * shrink * min(width, height)
    a = length / 2
    b = a * rng.uniform(config.aspect_min, config.aspect_max)
    r = config.part_size * a
    theta = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(theta), math.sin(theta)
    offset = a + 0.45 * r  # the head overlaps the end of the body a little: attached, not floating
    hox, hoy = offset * c, offset * s
    ex, ey = math.sqrt((a * c) ** 2 + (b * s) ** 2), math.sqrt((a * s) ** 2 + (b * c) ** 2)
    x_lo, x_hi = min(-ex, hox - r), max(ex, hox + r)
    y_lo, y_hi = min(-ey, hoy - r), max(ey, hoy + r)
    cx = rng.uniform(-x_lo + 1, max(-x_lo + 1, width - 2 - x_hi))
    cy = rng.uniform(-y_lo + 1, max(-y_lo + 1, height - 2 - y_hi))
    return cx, cy, a, b, theta, cx + hox, cy + hoy, r


def render(config: SynthConfig, rng: np.random.Generator,
           label: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """One image: ``(rgb uint8 HxWx3, instance masks (bool, visible pixels), ignore mask (bool))``."""
    width = int(rng.integers(config.min_side, config.max_side + 1))
    height = int(rng.integers(config.min_side, config.max_side + 1))
    canvas = _Canvas(rng, config, width, height)
    canvas.background()
    canvas.clutter(int(rng.integers(config.distractors + 1)))

    for _ in range(int(rng.integers(config.headless_bodies + 1))):
        cx, cy, a, b, theta, *_ = _object_geometry(rng, config, width, height, 1)
        canvas.body(cx, cy, a, b, theta, owner=None)
    if rng.uniform() < config.loose_head_prob:
        _, _, _, _, theta, hx, hy, r = _object_geometry(rng, config, width, height, 1)
        canvas.head(hx, hy, r, theta, label, owner=-2)

    count = int(rng.integers(1, config.max_objects + 1))
    placed: list[_Object] = []
    for _ in range(count):
        for _attempt in range(20):
            cx, cy, a, b, theta, hx, hy, r = _object_geometry(rng, config, width, height, count)
            body, _ = canvas.ellipse(cx, cy, a, b, theta)
            head, _, _ = canvas.head_coords(hx, hy, r, theta)
            occlude = rng.uniform() < config.occlusion_prob
            occ_pose = None
            full = body | head
            if occlude:
                # centred near the tail end, at most ~0.6 body length wide: it can never reach the head
                tail = (cx - 0.8 * a * math.cos(theta), cy - 0.8 * a * math.sin(theta))
                occ_pose = (tail[0], tail[1], rng.uniform(0.3, 0.6) * 2 * a, rng.uniform(0, 180))
                occ_mask = np.zeros((height, width), dtype=np.uint8)
                corners = cv2.boxPoints(((occ_pose[0], occ_pose[1]), (occ_pose[2], occ_pose[2]), occ_pose[3]))
                cv2.fillPoly(occ_mask, [np.round(corners).astype(np.int32)], 1, cv2.LINE_8)
                full = full | occ_mask.astype(bool)
            # heads must stay fully visible, bodies may overlap a little (a quarter of the smaller body)
            if any((full & o.head).any() or (o.mask_full & head).any() for o in placed):
                continue
            if any((full & o.mask_full).sum() > 0.25 * min(full.sum(), o.mask_full.sum()) for o in placed):
                continue
            break
        else:
            continue  # no room: fewer objects than drawn (the first object always fits)
        index = len(placed)
        colour = canvas.head_colour(label) if config.body_colour == "head" else None
        canvas.body(cx, cy, a, b, theta, owner=index, base=colour)
        canvas.head(hx, hy, r, theta, label, owner=index, bright=colour)
        if occ_pose is not None:
            canvas.occluder(*occ_pose)
        placed.append(_Object(full, head))

    image = canvas.image
    if config.blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), config.blur)
    if config.noise > 0:
        image = image + rng.normal(0.0, config.noise, size=image.shape).astype(np.float32)
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    masks = [canvas.owner == i for i in range(len(placed))]
    ignore = canvas.owner == -2
    if ignore.any():  # a 1-pixel margin: the blur smears the loose head's rim into its neighbours
        ignore = cv2.dilate(ignore.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return rgb, masks, ignore


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box ``(x0, y0, x1, y1)`` (inclusive) of a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = array[..., ::-1] if array.ndim == 3 else array  # OpenCV writes BGR
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(data), _PNG_PARAMS)
    if not ok:
        raise WSOLError(f"{path}: PNG encoding failed")
    path.write_bytes(encoded.tobytes())


def _readme(config: SynthConfig, counts: dict[str, int]) -> str:
    lines = [
        "# wsol synthetic WSOL dataset",
        "",
        "Generated by `wsol data synth` (wsol.data.synth). The class of each image is decided by the",
        "*head* of each object; the *body* (most of the box) is drawn from one distribution for all classes.",
        "Data root: `images/`; mask root: `masks/`; metadata: `metadata/<split>/`.",
        "Ignore masks cover loose heads (class evidence off the object); all-zero when there is none.",
        "",
        "## Classes",
        *[f"- {k}: `{name}`" for k, name in enumerate(config.class_names())],
        "",
        "## Images per split",
        *[f"- {split}: {n}" for split, n in counts.items()],
        "",
        "## Config",
        "| knob | value | meaning |",
        "|---|---|---|",
        *[f"| `{f.name}` | `{getattr(config, f.name)!r}` | {KNOBS[f.name]} |" for f in fields(config)],
        "",
    ]
    return "\n".join(lines)


def is_current(out_dir: str | Path, config: SynthConfig) -> bool:
    """Whether ``out_dir`` holds a dataset made by this generator version with exactly ``config``."""
    info = Path(out_dir) / "synth.json"
    try:
        written = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return written.get("format") == GENERATOR and written.get("config") == asdict(config)


ProgressFn = Callable[[int, int], None]


def generate(
    config: SynthConfig, out_dir: str | Path, *, overwrite: bool = False, progress: ProgressFn | None = None
) -> Path:
    """Write the dataset to ``out_dir`` atomically (built in a temp folder beside it, then renamed).

    ``progress(done, total)`` is called after each image. An existing non-empty ``out_dir`` is an error
    unless ``overwrite``, and even then it is only replaced when it holds a dataset written here before
    (never a folder with anything else in it). Returns the output folder.
    """
    out = Path(out_dir).absolute()
    with building(out, overwrite, _check_replaceable) as tmp:
        _generate_into(config, tmp, progress)
    return out


def _check_replaceable(out: Path) -> None:
    """Raise unless ``out`` is a folder holding a synthetic dataset (its synth.json) and nothing else."""
    if not out.is_dir():
        raise WSOLError(f"{out}: exists and is not a folder; will not replace it with a synthetic dataset")
    others = sorted(p.name for p in out.iterdir() if p.name not in _DATASET_ENTRIES)
    try:
        written = json.loads((out / "synth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        written = None
    made_here = isinstance(written, dict) and str(written.get("format", "")).startswith("wsol-synth/")
    if others or not made_here:
        found = f"it holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}" if others else \
            "it has no synth.json written by wsol data synth"
        raise WSOLError(f"{out}: not a synthetic dataset folder ({found}); will not replace it, "
                        "choose a new or empty --out folder")


def _generate_into(config: SynthConfig, root: Path, progress: ProgressFn | None) -> dict[str, int]:
    names = config.class_names()
    total = sum(config.per_class(split) for split in SPLITS) * config.num_classes
    done = 0
    counts: dict[str, int] = {}
    for split_index, split in enumerate(SPLITS):
        records: list[Record] = []
        for label, name in enumerate(names):
            for i in range(config.per_class(split)):
                rng = np.random.default_rng([config.seed, split_index, label, i])
                rgb, instance_masks, ignore = render(config, rng, label)
                stem = f"{split}/{name}/{name}_{i:04d}"
                image_id = f"{stem}.png"
                _write_png(root / "images" / image_id, rgb)
                ignore_name = f"{stem}_ignore.png"
                _write_png(root / "masks" / ignore_name, ignore.astype(np.uint8) * 255)
                mask_names = []
                for j, mask in enumerate(instance_masks):
                    mask_names.append(f"{stem}_m{j}.png")
                    _write_png(root / "masks" / mask_names[-1], mask.astype(np.uint8) * 255)
                records.append(Record(image_id, label, size=(rgb.shape[1], rgb.shape[0]),
                                      boxes=[mask_box(mask) for mask in instance_masks], masks=mask_names,
                                      ignore=ignore_name))
                done += 1
                if progress is not None:
                    progress(done, total)
        counts[split] = len(records)
        write_split(root / "metadata" / split, records)
    write_class_names(root / "metadata", names)
    info = {
        "format": GENERATOR,
        "config": asdict(config),
        "class_names": names,
        "counts": counts,
        "data_root": "images",
        "mask_root": "masks",
        "metadata": {split: f"metadata/{split}" for split in SPLITS},
    }
    (root / "synth.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (root / "README.md").write_text(_readme(config, counts), encoding="utf-8")
    return counts
