"""ImageNet (ILSVRC 2012) validation images as WSOL metadata, as clovaai/wsolevaluation's ``metadata/ILSVRC/test``.

In the protocol, ImageNet "val" is the ``test`` split (its ``val`` split is ImageNetV2). Source: a folder
holding the 50,000 ``ILSVRC2012_val_XXXXXXXX.JPEG`` images (in it, in ``val/``, or in Kaggle's
``ILSVRC/Data/CLS-LOC/val/``) and their boxes, either

- PASCAL-VOC XML files ``ILSVRC2012_val_XXXXXXXX.xml`` (the official ``ILSVRC2012_bbox_val_v3.tgz``, extracted;
  in the folder, in ``val/``, or in Kaggle's ``ILSVRC/Annotations/CLS-LOC/val/``), one ``<object>`` per box with
  ``<name>`` (the wnid) and ``<bndbox>`` ``xmin ymin xmax ymax``; or
- Kaggle's ``LOC_val_solution.csv``: ``ImageId,PredictionString`` with ``wnid xmin ymin xmax ymax wnid ...``.

``boxes`` names the XML folder or the CSV file when they lie elsewhere. What is written, as the reference has it:

- image ids ``val/ILSVRC2012_val_00000001.JPEG`` (the data root ``OUT/images`` holds ``val/``, symbolic links
  to the source images), in file-name order;
- the label is the index of the image's (first) wnid in the sorted list of the 1000 wnids, the standard
  ImageNet order (``n01440764`` is 0): from ``synsets`` (``LOC_synset_mapping.txt`` or one wnid a line; Kaggle's
  mapping is found in the folder), else from the wnids of the boxes, which must then be all 1000;
- every box of the image, unchanged (integers, in the XML's / CSV's order): ``111 108 441 193`` ->
  ``val/ILSVRC2012_val_00000001.JPEG,111,108,441,193``; sizes are read from the image files.
"""

from __future__ import annotations

import csv
import io
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from wsol.data.metadata import Metadata, Record, write_class_names, write_split
from wsol.data.sources import Prepared, building, check_box, image_size, link, read_text, write_prepared
from wsol.errors import WSOLError

NUM_CLASSES = 1000
_STEM = re.compile(r"ILSVRC2012_val_\d{8}")
_WNID = re.compile(r"n\d{8}")
_IMAGE_DIRS = (".", "val", "ILSVRC/Data/CLS-LOC/val")
_XML_DIRS = (".", "val", "ILSVRC/Annotations/CLS-LOC/val")
CSV_NAME = "LOC_val_solution.csv"
SYNSETS_NAME = "LOC_synset_mapping.txt"

Box = tuple[int, int, int, int]
# image stem -> (where its boxes were read, for errors; [(wnid, box), ...])
Annotations = dict[str, tuple[str, list[tuple[str, Box]]]]


def _ints(values: list[str | None], where: str) -> Box:
    try:
        return tuple(int(v) for v in values)  # type: ignore[arg-type, return-value]
    except (TypeError, ValueError):
        raise WSOLError(f"{where}: box {values} is not four integers") from None


def read_xml(path: Path) -> list[tuple[str, Box]]:
    """The ``(wnid, (xmin, ymin, xmax, ymax))`` of each ``<object>`` of one PASCAL-VOC file, in file order."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise WSOLError(f"{path}: not valid XML ({exc})") from None
    objects = []
    for k, obj in enumerate(root.iter("object"), start=1):
        wnid, bndbox = (obj.findtext("name") or "").strip(), obj.find("bndbox")
        if not wnid or bndbox is None:
            raise WSOLError(f"{path}: <object> {k} has no <name> or no <bndbox>")
        values = [bndbox.findtext(tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
        objects.append((wnid, _ints([v.strip() if v else v for v in values], f"{path}: <object> {k}")))
    if not objects:
        raise WSOLError(f"{path}: no <object> (no box)")
    return objects


def read_xml_folder(folder: Path) -> Annotations:
    """The boxes of every ``ILSVRC2012_val_*.xml`` in ``folder``."""
    names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".xml") and _STEM.fullmatch(e.name[:-4]))
    if not names:
        raise WSOLError(f"{folder}: no ILSVRC2012_val_*.xml files")
    return {name[:-4]: (str(folder / name), read_xml(folder / name)) for name in names}


def read_solution_csv(path: Path) -> Annotations:
    """The boxes of Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``)."""
    reader = csv.reader(io.StringIO(read_text(path, "Kaggle's ImageNet val boxes")))
    header = next(reader, None)
    if header != ["ImageId", "PredictionString"]:
        raise WSOLError(f"{path}:1: expected the header 'ImageId,PredictionString', got {header}")
    annotations: Annotations = {}
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not row:
            continue
        tokens = row[1].split() if len(row) == 2 else []
        if not _STEM.fullmatch(row[0]) or not tokens or len(tokens) % 5:
            raise WSOLError(f"{where}: expected 'ILSVRC2012_val_XXXXXXXX,wnid xmin ymin xmax ymax ...', got "
                            f"{','.join(row)[:120]!r}")
        if row[0] in annotations:
            raise WSOLError(f"{where}: image {row[0]} appears twice (first on {annotations[row[0]][0]})")
        annotations[row[0]] = (where, [(tokens[k], _ints(tokens[k + 1:k + 5], where))
                                       for k in range(0, len(tokens), 5)])
    if not annotations:
        raise WSOLError(f"{path}: no boxes")
    return annotations


def read_synsets(path: Path) -> list[tuple[str, str]]:
    """``(wnid, name)`` per line of ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``) or of a plain
    list of wnids (the name is then the wnid)."""
    synsets: dict[str, str] = {}
    for number, line in enumerate(read_text(path, "the ImageNet classes").splitlines(), start=1):
        if not line.strip():
            continue
        wnid, name = (line.split(maxsplit=1) + [""])[:2]
        if not _WNID.fullmatch(wnid):
            raise WSOLError(f"{path}:{number}: {wnid!r} is not a wnid (such as n01440764)")
        if wnid in synsets:
            raise WSOLError(f"{path}:{number}: {wnid} appears twice")
        synsets[wnid] = name.split(",")[0].strip() or wnid
    return list(synsets.items())


def _find(src: Path, candidates: tuple[str, ...], test: Callable[[Path], bool]) -> Path | None:
    """The first folder ``src / candidate`` that passes ``test``."""
    return next((src / c for c in candidates if (src / c).is_dir() and test(src / c)), None)


def prepare_ilsvrc(src: str | Path, out: str | Path, *, boxes: str | Path | None = None,
                   synsets: str | Path | None = None, overwrite: bool = False) -> Prepared:
    """Write ``out/images/val/`` (links to the images; data root ``out/images``) and ``out/metadata/test``.

    ``src``: the folder with the val images (and, by default, their boxes); ``boxes``: the XML folder or
    ``LOC_val_solution.csv``; ``synsets``: the class list (see the module's docstring).
    """
    src = Path(src)
    if not src.is_dir():
        raise WSOLError(f"{src}: not a folder (expected the folder of the extracted ImageNet val images)")
    if boxes is not None:
        boxes = Path(boxes)
        if not boxes.exists():
            raise WSOLError(f"{boxes}: no such file or folder (the XML boxes folder or {CSV_NAME})")
    elif (src / CSV_NAME).is_file():
        boxes = src / CSV_NAME
    else:
        boxes = _find(src, _XML_DIRS, lambda d: any(d.glob("ILSVRC2012_val_*.xml")))
        if boxes is None:
            raise WSOLError(f"{src}: no boxes found ({CSV_NAME}, or ILSVRC2012_val_*.xml in "
                            f"{', '.join(_XML_DIRS)}); give them with --boxes")
    annotations = read_xml_folder(boxes) if boxes.is_dir() else read_solution_csv(boxes)

    synsets_file = Path(synsets) if synsets is not None else src / SYNSETS_NAME
    if synsets is not None or synsets_file.is_file():
        classes = sorted(read_synsets(synsets_file))
        where_classes = str(synsets_file)
    else:
        classes = [(w, w) for w in sorted({w for _, objects in annotations.values() for w, _ in objects})]
        where_classes = "the wnids of the boxes"
        if len(classes) != NUM_CLASSES:
            raise WSOLError(f"{src}: the boxes name {len(classes)} classes, not {NUM_CLASSES}: their labels would not "
                            f"be ImageNet's; give the class list with --synsets ({SYNSETS_NAME} or one wnid a line)")
    index = {wnid: k for k, (wnid, _) in enumerate(classes)}

    stems = sorted(annotations)
    images = _find(src, _IMAGE_DIRS, lambda d: (d / f"{stems[0]}.JPEG").is_file())
    if images is None:
        raise WSOLError(f"{src}: image {stems[0]}.JPEG not found (looked in {', '.join(_IMAGE_DIRS)})")
    with building(out, overwrite) as tmp:
        records = []
        for stem in stems:
            where, objects = annotations[stem]
            image = images / f"{stem}.JPEG"
            if not image.is_file():
                raise WSOLError(f"{image}: image file not found (its boxes are in {where})")
            unknown = next((w for w, _ in objects if w not in index), None)
            if unknown is not None:
                raise WSOLError(f"{where}: wnid {unknown!r} is not one of the classes ({where_classes})")
            size = image_size(image, where)
            for _, box in objects:
                check_box(box, size, where)
            image_id = f"val/{image.name}"
            link(image, tmp / "images" / image_id)
            records.append(Record(image_id, index[objects[0][0]], size=size, boxes=[b for _, b in objects]))
        write_split(tmp / "metadata" / "test", records)
        Metadata.load(tmp / "metadata" / "test")  # what is written reads back
        write_class_names(tmp / "metadata", [name for _, name in classes])
        source = {"images": str(images.absolute()), "boxes": str(boxes.absolute()), "classes": where_classes}
        write_prepared(tmp, "ilsvrc", source, {"test": len(records)}, linked=True)
    return Prepared("ilsvrc", Path(out).absolute(), {"test": len(records)}, linked=True)
