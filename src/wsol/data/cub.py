"""CUB-200-2011 as WSOL metadata, line for line as clovaai/wsolevaluation's ``metadata/CUB``.

Source: the official ``CUB_200_2011.tgz``, or its extracted ``CUB_200_2011`` folder (or that folder's parent),
which holds ``images.txt`` (``<id> <class folder>/<file>.jpg``), ``image_class_labels.txt`` (``<id> <class>``,
1-based), ``train_test_split.txt`` (``<id> <1 train | 0 test>``), ``bounding_boxes.txt`` (``<id> <x> <y>
<width> <height>``, floats) and ``images/``. What is written, as the reference has it:

- image ids are paths relative to ``images/``: ``001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg``;
- labels are the class id - 1; the official split gives ``train`` and ``test``, in ``images.txt`` order;
- boxes are ``int(x), int(y), int(x + w), int(y + h)`` (truncated): ``60.0 27.0 325.0 304.0`` ->
  ``60,27,385,331``; sizes are read from the image files. ``train`` has boxes too, as in the reference.

The protocol's ``val`` split (train-fullsup) is CUBV2, images collected by the wsolevaluation authors: pass
their images (the folder of class folders that their ``CUBV2.tar`` holds, or the tar) as ``val`` and their
boxes, ``metadata/CUB/val/localization.txt`` of the wsolevaluation repository, as ``val_boxes``. Its images
join the CUB images in the data root (as wsolevaluation's ``prepare_cub.sh`` extracts them there), labels
come from their class folder, lines keep the order of ``val_boxes``.

The data root is always ``OUT/images``: an archive is extracted there (the images only); the images of an
extracted folder are linked there, one symbolic link per file, so that the source stays where it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wsol.data.metadata import Metadata, Record, _records, write_class_names, write_split
from wsol.data.sources import (
    Prepared,
    building,
    check_box,
    decode_text,
    image_size,
    link,
    read_text,
    scan_archive,
    table,
    write_prepared,
)
from wsol.errors import WSOLError

ROOT_NAME = "CUB_200_2011"
FILES = {  # each official table and its columns
    "images.txt": "<image_id> <path>",
    "image_class_labels.txt": "<image_id> <class_id>",
    "train_test_split.txt": "<image_id> <is_training_image>",
    "bounding_boxes.txt": "<image_id> <x> <y> <width> <height>",
}


@dataclass
class _Table:
    label: str  # how errors name the file
    rows: dict[str, tuple[int, list[str]]]  # image id -> (line number, the other columns)


def _parse(text: str, label: str, name: str) -> _Table:
    rows: dict[str, tuple[int, list[str]]] = {}
    for number, (image_id, *rest) in table(text, label, FILES[name]):
        if image_id in rows:
            raise WSOLError(f"{label}:{number}: image id {image_id} appears twice (first on line {rows[image_id][0]})")
        rows[image_id] = (number, rest)
    return _Table(label, rows)


def _number(table_: _Table, image_id: str, index: int, kind: type = int) -> int | float:
    """Column ``index`` of the image's line as ``kind`` (int, or a finite float)."""
    number, values = table_.rows[image_id]
    try:
        value = kind(values[index])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        what = "an integer" if kind is int else "a number"
        raise WSOLError(f"{table_.label}:{number}: {values[index]!r} is not {what}")
    return value


def _read_folder(src: Path) -> tuple[Path, dict[str, _Table]]:
    """The CUB root under ``src`` (``src`` itself or ``src/CUB_200_2011``) and its tables."""
    root = next((r for r in (src, src / ROOT_NAME) if (r / "images.txt").is_file()), None)
    if root is None:
        raise WSOLError(f"{src}: no images.txt here nor in {ROOT_NAME}/ (expected the extracted {ROOT_NAME} "
                        f"folder, its parent, or {ROOT_NAME}.tgz)")
    return root, {name: _parse(read_text(root / name), str(root / name), name) for name in FILES}


def _extract_archive(src: Path, images: Path) -> tuple[str, dict[str, _Table]]:
    """Extract the images of ``src`` (a tar of the CUB root) into ``images``; the root's path in the archive
    (``CUB_200_2011/``, or '' when the tables lie at the top) and its tables."""

    def image_path(name: str) -> str | None:  # <root>/images/<class>/<file> -> <class>/<file>
        parts = PurePosixPath(name).parts
        return "/".join(parts[-2:]) if 3 <= len(parts) <= 4 and parts[-3] == "images" else None

    def is_table(name: str) -> bool:
        parts = PurePosixPath(name).parts
        return len(parts) <= 2 and parts[-1] in FILES

    texts = scan_archive(src, image_path, is_table, images)
    roots = sorted(str(PurePosixPath(name).parent) for name in texts if PurePosixPath(name).name == "images.txt")
    if len(roots) != 1:
        found = "none" if not roots else ", ".join(roots)
        raise WSOLError(f"{src}: expected one images.txt in the archive (is it {ROOT_NAME}.tgz?), found {found}")
    prefix = "" if roots[0] == "." else roots[0] + "/"
    tables = {}
    for name in FILES:
        label = f"{src}/{prefix}{name}"
        if prefix + name not in texts:
            raise WSOLError(f"{label}: file not found in the archive")
        tables[name] = _parse(decode_text(texts[prefix + name], label), label, name)
    return prefix, tables


def _records_of(tables: dict[str, _Table], find_image: Callable[[str, str], Path]) -> tuple[list[Record], list[Record]]:
    """Train and test records in ``images.txt`` order; ``find_image(rel, where)`` gives the image file."""
    images = tables["images.txt"]
    train: list[Record] = []
    test: list[Record] = []
    for image_id, (number, (rel,)) in images.rows.items():
        where = f"{images.label}:{number}"
        parts = rel.replace("\\", "/").split("/")
        if parts[0] == "" or ".." in parts or "," in rel:
            raise WSOLError(f"{where}: image path {rel!r} must be relative to images/, without ',' or '..'")
        for name in ("image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
            if image_id not in tables[name].rows:
                raise WSOLError(f"{tables[name].label}: no line for image id {image_id} (listed in {where})")
        class_id = _number(tables["image_class_labels.txt"], image_id, 0)
        is_train = _number(tables["train_test_split.txt"], image_id, 0)
        if class_id < 1 or is_train not in (0, 1):
            bad = "image_class_labels.txt" if class_id < 1 else "train_test_split.txt"
            number_, values = tables[bad].rows[image_id]
            raise WSOLError(f"{tables[bad].label}:{number_}: {values[0]!r} is not "
                            f"{'a class id >= 1' if class_id < 1 else '1 (train) or 0 (test)'}")
        x, y, w, h = (_number(tables["bounding_boxes.txt"], image_id, k, float) for k in range(4))
        box = (int(x), int(y), int(x + w), int(y + h))  # truncation, as the reference
        size = image_size(find_image(rel, where), where)
        check_box(box, size, f"{tables['bounding_boxes.txt'].label}:{tables['bounding_boxes.txt'].rows[image_id][0]}")
        (train if is_train else test).append(Record(rel, int(class_id) - 1, size=size, boxes=[box]))
    return train, test


def _val_records(val: Path, val_boxes: Path, images: Path, labels: dict[str, int]) -> list[Record]:
    """CUBV2: ids and boxes from ``val_boxes`` (wsolevaluation's val ``localization.txt``), images from ``val``
    (a folder of class folders, linked, or a tar of them, extracted) placed under ``images``."""
    if not val_boxes.is_file():
        raise WSOLError(f"{val_boxes}: file not found (the CUBV2 boxes: metadata/CUB/val/localization.txt of "
                        "clovaai/wsolevaluation)")
    boxes: dict[str, list[tuple[int, tuple[int, int, int, int]]]] = {}
    for number, (image_id, *values) in _records(val_boxes, 5):
        try:
            box = tuple(int(v) for v in values)
        except ValueError:
            raise WSOLError(f"{val_boxes}:{number}: box {','.join(values)!r} is not four integers") from None
        folder = image_id.split("/")[0]
        if folder not in labels or image_id.count("/") != 1:
            raise WSOLError(f"{val_boxes}:{number}: {image_id!r} is not <CUB class folder>/<file> "
                            f"(class folders as in images.txt, such as {next(iter(labels))!r})")
        boxes.setdefault(image_id, []).append((number, box))
    if not boxes:
        raise WSOLError(f"{val_boxes}: no boxes")
    clash = next((i for i in boxes if (images / i).exists()), None)
    if clash is not None:
        raise WSOLError(f"{val_boxes}:{boxes[clash][0][0]}: {clash!r} is the id of a CUB-200-2011 image")
    if val.is_dir():
        for image_id, lines in boxes.items():
            if not (val / image_id).is_file():
                raise WSOLError(f"{val / image_id}: image file not found (listed in {val_boxes}:{lines[0][0]})")
            link(val / image_id, images / image_id)
    elif val.is_file():
        def place(name: str) -> str | None:  # the ids themselves, or below one top folder
            rel = name if name in boxes else name.partition("/")[2]
            return rel if rel in boxes else None

        scan_archive(val, place, lambda name: False, images)
        for image_id, lines in boxes.items():
            if not (images / image_id).is_file():
                raise WSOLError(f"{val}: no image {image_id} in the archive (listed in {val_boxes}:{lines[0][0]})")
    else:
        raise WSOLError(f"{val}: no such file or folder (the CUBV2 images: a folder of class folders, or CUBV2.tar)")
    records = []
    for image_id, lines in boxes.items():
        where = f"{val_boxes}:{lines[0][0]}"
        size = image_size(images / image_id, where)
        for number, box in lines:
            check_box(box, size, f"{val_boxes}:{number}")
        records.append(Record(image_id, labels[image_id.split("/")[0]], size=size, boxes=[b for _, b in lines]))
    return records


def _class_names(records: list[Record]) -> list[str]:
    """Class k's name from its folder: ``001.Black_footed_Albatross`` -> ``Black_footed_Albatross``."""
    names: dict[int, str] = {}
    for record in records:
        folder = record.image_id.split("/")[0]
        names.setdefault(record.label, folder.split(".", 1)[1] if folder[:3].isdigit() and "." in folder else folder)
    return [names.get(k, f"class_{k + 1:03d}") for k in range(max(names) + 1)]


def prepare_cub(src: str | Path, out: str | Path, *, val: str | Path | None = None,
                val_boxes: str | Path | None = None, overwrite: bool = False) -> Prepared:
    """Write ``out/images`` (the data root) and ``out/metadata/{train,test[,val]}`` from CUB-200-2011.

    ``src``: ``CUB_200_2011.tgz`` or the extracted folder (or its parent). ``val`` and ``val_boxes``: the
    CUBV2 images and boxes for the ``val`` split (see the module's docstring). ``overwrite`` replaces an
    ``out`` written by an earlier preparation.
    """
    src = Path(src)
    if (val is None) != (val_boxes is None):
        raise WSOLError("--val and --val-boxes go together: the CUBV2 images and their boxes "
                        "(metadata/CUB/val/localization.txt of clovaai/wsolevaluation)")
    if not src.exists():
        raise WSOLError(f"{src}: no such file or folder (expected {ROOT_NAME}.tgz or the extracted folder)")
    linked = src.is_dir() or (val is not None and Path(val).is_dir())
    with building(out, overwrite) as tmp:
        images = tmp / "images"
        images.mkdir()
        if src.is_dir():
            root, tables = _read_folder(src)
            source = {"cub": str(root.absolute())}

            def find_image(rel: str, where: str) -> Path:
                if not (root / "images" / rel).is_file():
                    raise WSOLError(f"{root / 'images' / rel}: image file not found (listed in {where})")
                link(root / "images" / rel, images / rel)
                return images / rel
        else:
            prefix, tables = _extract_archive(src, images)
            source = {"cub": str(src.absolute())}

            def find_image(rel: str, where: str) -> Path:
                if not (images / rel).is_file():
                    raise WSOLError(f"{src}/{prefix}images/{rel}: image not in the archive (listed in {where})")
                return images / rel

        train, test = _records_of(tables, find_image)
        splits = {"train": train, "test": test}
        if val is not None:
            labels = {r.image_id.split("/")[0]: r.label for r in train + test}
            splits["val"] = _val_records(Path(val), Path(val_boxes), images, labels)
            source.update(val=str(Path(val).absolute()), val_boxes=str(Path(val_boxes).absolute()))
        for name, records in splits.items():
            if not records:
                raise WSOLError(f"{tables['train_test_split.txt'].label}: no {name} images")
            write_split(tmp / "metadata" / name, records)
            Metadata.load(tmp / "metadata" / name)  # what is written reads back
        write_class_names(tmp / "metadata", _class_names(train + test))
        counts = {name: len(records) for name, records in splits.items()}
        write_prepared(tmp, "cub", source, counts, linked)
    return Prepared("cub", Path(out).absolute(), counts, linked)
