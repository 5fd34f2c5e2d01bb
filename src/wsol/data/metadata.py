"""Reader and writer for the standard WSOL metadata format (clovaai/wsolevaluation).

A split folder holds plain text files, one comma-separated record a line, paths relative to the data root:

- ``image_ids.txt``      ``<image_id>``
- ``class_labels.txt``   ``<image_id>,<label>``
- ``image_sizes.txt``    ``<image_id>,<width>,<height>`` (may be empty or absent for mask datasets)
- ``localization.txt``   boxes ``<image_id>,<x0>,<y0>,<x1>,<y1>`` (one line per box) or masks
  ``<image_id>,<mask_png>,<ignore_png>`` (one line per instance; only the first names the ignore mask)
- ``mask_localization.txt`` (wsol extension, optional): masks in the format above, for datasets that have
  both boxes (in ``localization.txt``) and masks, such as ``wsol data synth``.

Image ids are relative paths inside the data root (score maps are written to ``<dir>/<image_id>.npy``), and
``image_ids.txt``, ``class_labels.txt`` and ``image_sizes.txt`` hold one line per id. Every line is validated;
a problem raises :class:`~wsol.errors.WSOLError` naming the file and line. A UTF-8 BOM is ignored.

Beside the split folders, an optional ``class_names.txt`` (wsol extension) names class i on line i; training
stores the names in its checkpoints, so reports say "03_dots" rather than "class 3".

:func:`write_split` writes a split folder from :class:`Record` objects (``wsol data synth`` and the
``wsol data prepare`` preparers use it), one line per record in the order given, each file atomically.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from wsol.errors import WSOLError, WSOLWarning
from wsol.files import write_text

EVAL_SIZE = 224  # the protocol evaluates every score map at 224 x 224


def _records(path: Path, num_fields: int | tuple[int, ...]) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for each non-empty line, checking the field count."""
    counts = (num_fields,) if isinstance(num_fields, int) else num_fields
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of the first id
    except FileNotFoundError:
        raise WSOLError(f"{path}: file not found") from None
    except UnicodeDecodeError as error:
        raise WSOLError(f"{path}: not a UTF-8 text file ({error.reason})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) not in counts:
            expected = " or ".join(str(c) for c in counts)
            raise WSOLError(f"{path}:{number}: expected {expected} comma-separated fields, got {len(fields)}: {line!r}")
        yield number, fields


def _check_unique(path: Path, number: int, image_id: str, first_lines: dict[str, int]) -> None:
    """Raise on a second line for ``image_id`` (a later line would silently override the first)."""
    if image_id in first_lines:
        raise WSOLError(f"{path}:{number}: duplicate image id {image_id!r} (first on line {first_lines[image_id]})")
    first_lines[image_id] = number


def _check_relative(path: Path, number: int, image_id: str) -> None:
    """Raise unless ``image_id`` is a relative path that stays inside the folder it is joined to."""
    parts = image_id.replace("\\", "/").split("/")  # a backslash separates folders on Windows
    if parts[0] == "" or ".." in parts:
        raise WSOLError(f"{path}:{number}: image id {image_id!r} must be a relative path inside the data root "
                        "(no leading '/', no '..')")


def _to_int(path: Path, number: int, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise WSOLError(f"{path}:{number}: {what} is not an integer: {value!r}") from None


@dataclass
class Metadata:
    """One split of a WSOL dataset: ids, labels, original sizes, GT boxes and/or mask paths."""

    split_dir: Path
    image_ids: list[str]
    labels: dict[str, int]
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # (width, height)
    boxes: dict[str, np.ndarray] | None = None  # (n, 4) int64 x0, y0, x1, y1 in original pixels
    mask_paths: dict[str, list[str]] | None = None
    ignore_paths: dict[str, str] | None = None
    _mask_size_warned: bool = field(default=False, repr=False, compare=False)

    @property
    def has_boxes(self) -> bool:
        return self.boxes is not None

    @property
    def has_masks(self) -> bool:
        return self.mask_paths is not None

    @property
    def num_classes(self) -> int:
        return max(self.labels.values()) + 1 if self.labels else 0

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def load(cls, split_dir: str | Path, mask_root: str | Path | None = None) -> Metadata:
        """Read and validate a split folder. With ``mask_root``, also check every mask file exists."""
        split_dir = Path(split_dir)
        if not split_dir.is_dir():
            raise WSOLError(f"{split_dir}: metadata folder not found")
        ids_file = split_dir / "image_ids.txt"
        if not ids_file.exists():
            splits = sorted(d.name for d in split_dir.iterdir() if (d / "image_ids.txt").is_file())
            if splits:
                example = "test" if "test" in splits else splits[0]
                raise WSOLError(f"{split_dir}: looks like a metadata root: give one split folder, e.g. "
                                f"{split_dir / example} (it has {', '.join(splits)})")
        id_lines: dict[str, int] = {}
        for number, (image_id,) in _records(ids_file, 1):
            _check_relative(ids_file, number, image_id)
            _check_unique(ids_file, number, image_id, id_lines)
        image_ids, seen = list(id_lines), set(id_lines)
        if not image_ids:
            raise WSOLError(f"{ids_file}: no image ids")

        labels_file = split_dir / "class_labels.txt"
        labels: dict[str, int] = {}
        label_lines: dict[str, int] = {}
        for number, (image_id, label) in _records(labels_file, 2):
            cls._check_known(labels_file, number, image_id, seen)
            _check_unique(labels_file, number, image_id, label_lines)
            labels[image_id] = _to_int(labels_file, number, label, "class label")
            if labels[image_id] < 0:
                raise WSOLError(f"{labels_file}:{number}: negative class label {labels[image_id]}")
        cls._check_complete(labels_file, image_ids, labels)

        sizes: dict[str, tuple[int, int]] = {}
        sizes_file = split_dir / "image_sizes.txt"
        if sizes_file.exists():
            size_lines: dict[str, int] = {}
            for number, (image_id, width, height) in _records(sizes_file, 3):
                cls._check_known(sizes_file, number, image_id, seen)
                _check_unique(sizes_file, number, image_id, size_lines)
                w = _to_int(sizes_file, number, width, "width")
                h = _to_int(sizes_file, number, height, "height")
                if w <= 0 or h <= 0:
                    raise WSOLError(f"{sizes_file}:{number}: image size must be positive, got {w} x {h}")
                sizes[image_id] = (w, h)

        metadata = cls(split_dir=split_dir, image_ids=image_ids, labels=labels, sizes=sizes)
        loc_file = split_dir / "localization.txt"
        if loc_file.exists():
            metadata._read_localization(loc_file, seen)
        mask_file = split_dir / "mask_localization.txt"
        if mask_file.exists():
            metadata._read_masks(mask_file, seen)
        if metadata.boxes is not None:
            cls._check_complete(sizes_file, image_ids, sizes)
            cls._check_complete(loc_file, image_ids, metadata.boxes)
        if metadata.mask_paths is not None:
            source = mask_file if mask_file.exists() else loc_file
            cls._check_complete(source, image_ids, metadata.mask_paths)
            if mask_root is not None:
                metadata.check_mask_files(mask_root)
        return metadata

    @staticmethod
    def _check_known(path: Path, number: int, image_id: str, known: set[str]) -> None:
        if image_id not in known:
            raise WSOLError(f"{path}:{number}: image id {image_id!r} is not in image_ids.txt")

    @staticmethod
    def _check_complete(path: Path, image_ids: list[str], table: dict) -> None:
        missing = [i for i in image_ids if i not in table]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise WSOLError(f"{path}: no entry for image id {missing[0]!r}{more}")

    def _read_localization(self, path: Path, known: set[str]) -> None:
        first = next(_records(path, (3, 5)), None)
        if first is None:
            return
        if len(first[1]) == 3:
            self._read_masks(path, known)
            return
        boxes: dict[str, list[tuple[int, int, int, int]]] = {}
        for number, fields in _records(path, 5):
            image_id = fields[0]
            self._check_known(path, number, image_id, known)
            x0, y0, x1, y1 = (_to_int(path, number, v, n) for v, n in zip(fields[1:], ("x0", "y0", "x1", "y1")))
            if x1 < x0 or y1 < y0:
                raise WSOLError(f"{path}:{number}: box ({x0}, {y0}, {x1}, {y1}) is not x0 <= x1, y0 <= y1")
            size = self.sizes.get(image_id)
            if size is None:
                raise WSOLError(f"{path}:{number}: image {image_id!r} has a box but no line in image_sizes.txt")
            width, height = size
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise WSOLError(
                    f"{path}:{number}: box ({x0}, {y0}, {x1}, {y1}) lies outside its {width} x {height} image"
                )
            boxes.setdefault(image_id, []).append((x0, y0, x1, y1))
        self.boxes = {k: np.asarray(v, dtype=np.int64) for k, v in boxes.items()}

    def _read_masks(self, path: Path, known: set[str]) -> None:
        mask_paths: dict[str, list[str]] = {}
        ignore_paths: dict[str, str] = {}
        for number, (image_id, mask, ignore) in _records(path, 3):
            self._check_known(path, number, image_id, known)
            if not mask:
                raise WSOLError(f"{path}:{number}: empty mask path")
            if image_id in mask_paths:
                if ignore:
                    raise WSOLError(f"{path}:{number}: only the first line of {image_id!r} may name an ignore mask")
                mask_paths[image_id].append(mask)
            else:
                mask_paths[image_id] = [mask]
                ignore_paths[image_id] = ignore
        self.mask_paths, self.ignore_paths = mask_paths, ignore_paths

    def check_mask_files(self, mask_root: str | Path) -> None:
        """Raise naming the first mask or ignore file that does not exist under ``mask_root``."""
        root = Path(mask_root)
        for image_id in self.image_ids:
            names = list(self.mask_paths[image_id]) + [self.ignore_paths[image_id]] * bool(self.ignore_paths[image_id])
            for name in names:
                if not (root / name).is_file():
                    raise WSOLError(f"{root / name}: mask file of image {image_id!r} not found")

    def resized_boxes(self, size: int = EVAL_SIZE) -> dict[str, np.ndarray]:
        """GT boxes rescaled to ``size`` x ``size`` as the reference does: ``int(x * size / width)``."""
        if self.boxes is None:
            raise WSOLError(f"{self.split_dir}: this split has no boxes")
        out = {}
        for image_id, boxes in self.boxes.items():
            width, height = self.sizes[image_id]
            # (x * size) / width in float64, truncated toward zero: the reference's int(float(x) * 224 / w)
            out[image_id] = (boxes.astype(np.float64) * size / np.array([width, height, width, height])).astype(
                np.int64
            )
        return out

    def load_mask(self, image_id: str, mask_root: str | Path, size: int = EVAL_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """GT foreground and ignore region of one image at ``size`` x ``size`` (bool arrays).

        Foreground is the union of the instance masks (nearest-neighbour resize, ``> 0.5``); the ignore
        region is the ignore mask minus the foreground, as in the reference.
        """
        if self.mask_paths is None:
            raise WSOLError(f"{self.split_dir}: this split has no masks")
        root = Path(mask_root)
        foreground = np.zeros((size, size), dtype=bool)
        for name in self.mask_paths[image_id]:
            foreground |= read_mask_png(root / name, size, self._size_check(image_id))
        ignore_name = self.ignore_paths[image_id]
        ignore = (read_mask_png(root / ignore_name, size, self._size_check(image_id)) & ~foreground if ignore_name
                  else np.zeros_like(foreground))
        return foreground, ignore

    def _size_check(self, image_id: str) -> Callable[[Path, int, int], None] | None:
        """A check of a mask's size against its image's recorded one (image_sizes.txt). The protocol resizes
        every mask to 224 x 224 whatever its size, so a mismatch is warned about (once per split), not refused."""
        if self._mask_size_warned or image_id not in self.sizes:
            return None
        width, height = self.sizes[image_id]

        def check(path: Path, mask_width: int, mask_height: int) -> None:
            if (mask_width, mask_height) != (width, height) and not self._mask_size_warned:
                self._mask_size_warned = True
                warnings.warn(f"{path}: mask is {mask_width} x {mask_height} but its image {image_id} is {width} x "
                              f"{height} ({self.split_dir / 'image_sizes.txt'}); the protocol resizes masks to "
                              f"{EVAL_SIZE} x {EVAL_SIZE} anyway: check the mask root (further mismatches in this "
                              "split are not reported)", WSOLWarning, stacklevel=2)

        return check


def read_mask_png(path: Path, size: int = EVAL_SIZE,
                  check: Callable[[Path, int, int], None] | None = None) -> np.ndarray:
    """A mask PNG as a bool array at ``size`` x ``size`` (nearest-neighbour resize, then ``> 0.5``);
    ``check(path, width, height)`` sees its size first."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise WSOLError(f"{path}: mask file missing or not a readable image")
    if check is not None:
        check(path, image.shape[1], image.shape[0])
    resized = cv2.resize(image.astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST)
    return resized > 0.5


CLASS_NAMES_FILE = "class_names.txt"  # optional, beside the splits of a WSOL metadata folder


def read_class_names(path: Path) -> list[str] | None:
    """Class names of a WSOL metadata folder: line i of ``class_names.txt`` names class i (the protocol's
    metadata has none; ``wsol data synth`` writes one). None when the file is absent."""
    if not path.is_file():
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise WSOLError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise WSOLError(f"{path}: expected one class name per line, without empty lines")
    return names


def write_class_names(metadata_dir: str | Path, names: Sequence[str]) -> Path:
    """Write ``class_names.txt`` (line i names class i) into ``metadata_dir``, atomically."""
    bad = [n for n in names if not n.strip() or "\n" in n or "\r" in n]
    if bad:
        raise WSOLError(f"{metadata_dir}: class name {bad[0]!r} is empty or spans lines")
    path = Path(metadata_dir) / CLASS_NAMES_FILE
    write_text(path, "".join(name + "\n" for name in names))
    return path


@dataclass(frozen=True)
class Record:
    """One image of a split, as :func:`write_split` writes it.

    ``boxes`` are ``(x0, y0, x1, y1)`` in original pixels; ``masks`` are instance mask paths (relative to the
    mask root) and ``ignore`` the image's ignore mask ('' for none).
    """

    image_id: str
    label: int
    size: tuple[int, int] | None = None  # (width, height)
    boxes: Sequence[tuple[int, int, int, int]] = ()
    masks: Sequence[str] = ()
    ignore: str = ""


_SPLIT_FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt", "mask_localization.txt")


def write_split(split_dir: str | Path, records: Iterable[Record]) -> Path:
    """Write a split folder that :meth:`Metadata.load` reads back: one line per record (per box, per mask).

    ``image_ids.txt``, ``class_labels.txt`` and ``image_sizes.txt`` are always written; ``localization.txt``
    holds the boxes, or the masks when no record has a box; ``mask_localization.txt`` the masks when there are
    boxes too. A standard file that has nothing to hold is removed, so the folder holds exactly ``records``.
    Each file is written atomically; a record that the format cannot hold (an id with a comma or a line
    break, a negative label) raises :class:`WSOLError` before anything is written.
    """
    split_dir = Path(split_dir)
    records = list(records)
    seen: set[str] = set()
    for record in records:
        image_id = record.image_id
        parts = image_id.replace("\\", "/").split("/")
        if any(c in image_id for c in ",\r\n") or image_id != image_id.strip() or parts[0] == "" or ".." in parts:
            raise WSOLError(f"{split_dir}: image id {image_id!r} cannot be written (it must be a relative path "
                            "inside the data root, without commas, line breaks or surrounding spaces)")
        if image_id in seen:
            raise WSOLError(f"{split_dir}: image id {image_id!r} given twice")
        seen.add(image_id)
        if record.label < 0:
            raise WSOLError(f"{split_dir}: image {image_id!r} has a negative label {record.label}")
        if any(c in name for name in (*record.masks, record.ignore) for c in ",\r\n"):
            raise WSOLError(f"{split_dir}: a mask path of image {image_id!r} contains a comma or a line break")

    box_lines = [f"{r.image_id},{x0},{y0},{x1},{y1}" for r in records for x0, y0, x1, y1 in r.boxes]
    mask_lines = [f"{r.image_id},{mask},{r.ignore if j == 0 else ''}" for r in records
                  for j, mask in enumerate(r.masks)]
    files = {
        "image_ids.txt": [r.image_id for r in records],
        "class_labels.txt": [f"{r.image_id},{r.label}" for r in records],
        "image_sizes.txt": [f"{r.image_id},{r.size[0]},{r.size[1]}" for r in records if r.size is not None],
    }
    if box_lines:
        files["localization.txt"] = box_lines
        if mask_lines:
            files["mask_localization.txt"] = mask_lines
    elif mask_lines:
        files["localization.txt"] = mask_lines
    split_dir.mkdir(parents=True, exist_ok=True)
    for name in _SPLIT_FILES:
        if name in files:
            write_text(split_dir / name, "".join(line + "\n" for line in files[name]))
        elif (split_dir / name).is_file():
            (split_dir / name).unlink()
    return split_dir
