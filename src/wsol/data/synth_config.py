"""The synthetic benchmark's configuration: every knob, its meaning and its checks (no image code here, so
that the command line can show the knobs without loading OpenCV; the generator is :mod:`wsol.data.synth`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from wsol.errors import WSOLError

SPLITS = ("train", "val", "test")
# the first four (the default 4 classes) tell apart without the body: "bars" is "stripes" turned 90 degrees
# relative to the body axis, which a small CNN confused with "stripes" half the time when only the pattern
# decides the class (head_cue="pattern")
PATTERNS = ("checker", "rings", "stripes", "dots", "eye", "bars", "diagonal", "split")
HEAD_CUES = ("both", "pattern", "color")
BODY_COLOURS = ("independent", "head")
# bumped whenever the same config stops giving the same bytes (2: head patterns reordered, body_colour)
GENERATOR = "wsol-synth/2"
_MAX_HUES = 12  # hues closer than 1/12 of the circle are hard to tell apart after noise and blur
_MAX_OBJECTS = 32  # placement (20 tries per object over full-image masks) slows down with more
_MIN_HEAD_PX = 4.0  # smallest head diameter in pixels: below it a head may cover no pixel (an empty mask)
# what generate() writes at the top of the folder: only a folder holding just these may be replaced
_DATASET_ENTRIES = frozenset({"images", "masks", "metadata", "synth.json", "README.md"})

# One line per knob: what it is, and what turning it makes harder. Read by the CLI help and the README.
KNOBS: dict[str, str] = {
    "seed": "random seed; the same config and seed give byte-identical files",
    "num_classes": "number of classes (head patterns/hues); more classes = finer head differences to learn",
    "train_per_class": "training images per class (weak labels only are meant to be used)",
    "val_per_class": "fully annotated images per class, for choosing thresholds and hyperparameters",
    "test_per_class": "test images per class",
    "min_side": "smallest original image side in pixels; sides vary so boxes must be rescaled to 224",
    "max_side": "largest original image side in pixels (width and height are drawn independently)",
    "scale_min": "smallest body length / shorter image side; small objects are harder to localise",
    "scale_max": "largest body length / shorter image side (divided by sqrt(count) when several objects)",
    "aspect_min": "thinnest body (width / length); thin, rotated bodies make boxes sensitive to thresholds",
    "aspect_max": "roundest body (width / length)",
    "max_objects": "objects per image drawn from 1..max_objects (at most 32); several objects defeat "
                   "largest-box rules",
    "part_size": "head diameter / body length; smaller = the discriminative part covers less of the box",
    "head_cue": "what tells classes apart: 'both' pattern and hue, 'pattern' only, or 'color' (or 'colour') only",
    "distractors": "clutter shapes per image drawn from 0..distractors; false activations on the background",
    "headless_bodies": "headless bodies per image drawn from 0..n: object-like background, a trap for PxAP",
    "loose_head_prob": "chance of a loose head of the image's class (ignored region): CAMs fire off-object",
    "occlusion_prob": "chance per object that an occluder hides part of its body: fragmented masks",
    "body_colour": "'independent' (a body's colour has nothing to do with its head's) or 'head' (the body takes "
                   "the head's bright tone, as a bird's body and head share plumage): with 'head' an image prior "
                   "(colour affinity, F-CAM's CRF) can carry a head's activation over the whole object; with "
                   "head_cue 'both' or 'color' the body then also carries the class hue",
    "texture": "background and body texture strength in [0, 1]; more texture = weaker object/background edge",
    "noise": "std of Gaussian pixel noise (0-255 scale)",
    "blur": "Gaussian blur sigma in pixels applied to the finished image (softens part details)",
}


@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the generator, with defaults sized for a CPU training run of a tiny CNN in minutes.

    The defaults make a benchmark on which a CAM covers part of the object but falls short of its box, as
    CUB CAMs do: one object per image, a head 0.6 body lengths wide (about a third of the object's pixels).
    With the former defaults (``part_size=0.3``, up to two objects, which shrink) the head covered so little
    of the box that no box around it could reach IoU 0.5, and plain CAM scored 3 % MaxBoxAcc: every method
    failed alike. Lower ``part_size`` or raise ``max_objects`` for a harder benchmark.
    """

    seed: int = 0
    num_classes: int = 4
    train_per_class: int = 150
    val_per_class: int = 10
    test_per_class: int = 50
    min_side: int = 160
    max_side: int = 320
    scale_min: float = 0.3
    scale_max: float = 0.6
    aspect_min: float = 0.35
    aspect_max: float = 0.7
    max_objects: int = 1
    part_size: float = 0.6
    head_cue: str = "both"
    distractors: int = 4
    headless_bodies: int = 1
    loose_head_prob: float = 0.1
    occlusion_prob: float = 0.2
    body_colour: str = "independent"
    texture: float = 0.5
    noise: float = 4.0
    blur: float = 0.6

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> WSOLError:
            return WSOLError(f"synth config: {key}={getattr(self, key)!r} {why}")

        if self.head_cue == "colour":  # both spellings, as --body-colour is British
            object.__setattr__(self, "head_cue", "color")
        if self.body_colour not in BODY_COLOURS:
            raise bad("body_colour", f"is not one of {', '.join(BODY_COLOURS)}")
        if self.head_cue not in HEAD_CUES:
            raise bad("head_cue", f"is not one of {', '.join(HEAD_CUES)}")
        limit = {"both": len(PATTERNS) * 2, "pattern": len(PATTERNS), "color": _MAX_HUES}[self.head_cue]
        if not 1 <= self.num_classes <= limit:
            raise bad("num_classes", f"must be in 1..{limit} with head_cue={self.head_cue!r}")
        for key in ("seed", "train_per_class", "val_per_class", "test_per_class", "distractors", "headless_bodies"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        if not 1 <= self.max_objects <= _MAX_OBJECTS:
            raise bad("max_objects", f"must be in 1..{_MAX_OBJECTS}")
        if not 64 <= self.min_side <= self.max_side:
            raise bad("min_side", f"must satisfy 64 <= min_side <= max_side ({self.max_side})")
        if not 0.05 <= self.scale_min <= self.scale_max <= 0.8:
            raise bad("scale_min", f"must satisfy 0.05 <= scale_min <= scale_max ({self.scale_max}) <= 0.8")
        if not 0.1 <= self.aspect_min <= self.aspect_max <= 1.0:
            raise bad("aspect_min", f"must satisfy 0.1 <= aspect_min <= aspect_max ({self.aspect_max}) <= 1")
        if not 0.1 <= self.part_size <= 0.6:
            raise bad("part_size", "must be in [0.1, 0.6]")
        for key in ("loose_head_prob", "occlusion_prob", "texture"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise bad(key, "must be in [0, 1]")
        for key in ("noise", "blur"):
            if not 0.0 <= getattr(self, key) < math.inf:
                raise bad(key, "must be a finite number >= 0")
        # objects shrink by 1/sqrt(count) (see _object_geometry): the smallest head must still cover pixels
        head = self.part_size * self.scale_min * self.min_side / math.sqrt(self.max_objects)
        if head < _MIN_HEAD_PX:
            raise bad("max_objects" if self.max_objects > 1 else "scale_min",
                      f"makes heads too small: part_size * scale_min * min_side / sqrt(max_objects) = {head:.2g} px, "
                      f"must be >= {_MIN_HEAD_PX:g} px (lower max_objects or raise part_size, scale_min or min_side)")

    def class_names(self) -> list[str]:
        """Names that say what decides each class, e.g. ``00_checker_h000`` (pattern, hue in degrees)."""
        return [_class_name(self, k) for k in range(self.num_classes)]

    def per_class(self, split: str) -> int:
        return {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}[split]


def _class_hue(config: SynthConfig, k: int) -> float:
    if config.head_cue == "both":
        # patterns repeat after 8 classes; hues then separate the two classes sharing a pattern
        return ((k % len(PATTERNS)) / min(config.num_classes, len(PATTERNS)) + 0.5 * (k // len(PATTERNS))) % 1.0
    return k / config.num_classes


def _class_name(config: SynthConfig, k: int) -> str:
    pattern = PATTERNS[k % len(PATTERNS)] if config.head_cue != "color" else "solid"
    if config.head_cue == "pattern":
        return f"{k:02d}_{pattern}"
    return f"{k:02d}_{pattern}_h{round(_class_hue(config, k) * 360) % 360:03d}"
