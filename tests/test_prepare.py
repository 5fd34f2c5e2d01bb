"""`wsol data prepare`: CUB-200-2011 and ImageNet val as the reference's WSOL metadata, from tiny fake sources."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from wsol.cli import app
from wsol.data.metadata import Metadata, Record, read_class_names, write_split
from wsol.data.prepare import PREPARERS, prepare
from wsol.errors import WSOLError

runner = CliRunner()

ALBATROSS, LAYSAN = "001.Black_footed_Albatross", "002.Laysan_Albatross"
A46, A09, A02 = (f"{ALBATROSS}/Black_Footed_Albatross_{n}.jpg" for n in ("0046_18", "0009_34", "0002_55"))
L03, L02 = (f"{LAYSAN}/Laysan_Albatross_{n}.jpg" for n in ("0003_1033", "0002_1027"))
# id, path, class id, is_train, "x y w h", (width, height): images.txt order is not the order of the paths
CUB = [
    (1, A46, 1, 0, "10.7 3.2 20.5 8.9", (40, 30)),
    (2, A09, 1, 1, "0.0 0.0 32.0 24.0", (32, 24)),
    (3, A02, 1, 0, "1.0 2.0 3.0 4.0", (20, 20)),
    (4, L03, 2, 1, "1.9 2.9 3.9 4.9", (24, 36)),
    (5, L02, 2, 0, "5.0 6.0 10.0 10.0", (50, 20)),
]
# what the reference's metadata/CUB/<split>/*.txt hold for these, computed by hand
TEST_LINES = {
    "image_ids.txt": [A46, A02, L02],
    "class_labels.txt": [f"{A46},0", f"{A02},0", f"{L02},1"],
    "image_sizes.txt": [f"{A46},40,30", f"{A02},20,20", f"{L02},50,20"],
    "localization.txt": [f"{A46},10,3,31,12", f"{A02},1,2,4,6", f"{L02},5,6,15,16"],  # 10.7 + 20.5, 3.2 + 8.9
}
TRAIN_LINES = {
    "image_ids.txt": [A09, L03],
    "class_labels.txt": [f"{A09},0", f"{L03},1"],
    "image_sizes.txt": [f"{A09},32,24", f"{L03},24,36"],
    "localization.txt": [f"{A09},0,0,32,24", f"{L03},1,2,5,7"],  # int(1.9 + 3.9), int(2.9 + 4.9)
}


def jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def cub_files(rows=CUB) -> dict[str, bytes]:
    """The files of a CUB_200_2011 folder, relative to it."""
    files = {
        "images.txt": "".join(f"{i} {path}\n" for i, path, *_ in rows),
        "image_class_labels.txt": "".join(f"{i} {c}\n" for i, _, c, *_ in rows),
        "train_test_split.txt": "".join(f"{i} {t}\n" for i, _, _, t, *_ in rows),
        "bounding_boxes.txt": "".join(f"{i} {box}\n" for i, _, _, _, box, _ in rows),
        "classes.txt": f"1 {ALBATROSS}\n2 {LAYSAN}\n",
    }
    files = {name: text.encode() for name, text in files.items()}
    files.update({f"images/{path}": jpeg(size) for _, path, *_, size in rows})
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def write_tar(path: Path, files: dict[str, bytes], prefix: str = "CUB_200_2011/") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("attributes.txt"), io.BytesIO(b""))  # as the official archive has
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def assert_reference_lines(out: Path) -> None:
    for split, expected in (("test", TEST_LINES), ("train", TRAIN_LINES)):
        for name, want in expected.items():
            assert lines(out / "metadata" / split / name) == want, (split, name)
        meta = Metadata.load(out / "metadata" / split)
        assert meta.has_boxes and meta.image_ids == expected["image_ids.txt"]
        for image_id in meta.image_ids:  # every id is a real image under the data root, of the size written
            with Image.open(out / "images" / image_id) as image:
                assert image.size == meta.sizes[image_id]
    assert read_class_names(out / "metadata" / "class_names.txt") == ["Black_footed_Albatross", "Laysan_Albatross"]


@pytest.mark.parametrize("parent", [False, True])
def test_cub_folder_gives_the_reference_lines_and_links_the_images(tmp_path: Path, parent: bool) -> None:
    root = write_folder(tmp_path / "src" / "CUB_200_2011", cub_files())
    result = prepare("cub", root.parent if parent else root, tmp_path / "out")
    assert result.splits == {"train": 2, "test": 3} and result.linked
    assert result.data_root == tmp_path / "out" / "images"
    assert_reference_lines(tmp_path / "out")
    link = tmp_path / "out" / "images" / TEST_LINES["image_ids.txt"][0]
    assert link.is_symlink() and link.resolve() == (root / "images" / TEST_LINES["image_ids.txt"][0]).resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temporary folder left


@pytest.mark.parametrize("prefix", ["CUB_200_2011/", "./CUB_200_2011/", ""])
def test_cub_tgz_extracts_the_images(tmp_path: Path, prefix: str) -> None:
    archive = write_tar(tmp_path / "CUB_200_2011.tgz", cub_files(), prefix)
    result = prepare("cub", archive, tmp_path / "out")
    assert not result.linked
    assert_reference_lines(tmp_path / "out")
    image = tmp_path / "out" / "images" / TEST_LINES["image_ids.txt"][0]
    assert image.is_file() and not image.is_symlink()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["images", "metadata", "prepared.json"]


def test_cub_cli(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "CUB_200_2011", cub_files())
    result = runner.invoke(app, ["data", "prepare", "cub", str(root), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"--data-root {tmp_path / 'out' / 'images'}" in result.output and "train 2, test 3" in result.output
    assert lines(tmp_path / "out" / "metadata" / "test" / "localization.txt") == TEST_LINES["localization.txt"]
    result = runner.invoke(app, ["data", "prepare", "cub", str(root), "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, WSOLError) and "already exists" in str(result.exception)
    result = runner.invoke(app, ["data", "prepare", "cub", str(root), "--out", str(tmp_path / "out"), "--overwrite"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "prepare", "cub", str(root), "--out", str(tmp_path / "o2"), "--boxes", "x"])
    assert isinstance(result.exception, WSOLError) and "--boxes is not an option of cub" in str(result.exception)
    result = runner.invoke(app, ["data", "prepare", "voc", str(root), "--out", str(tmp_path / "o2")])
    assert isinstance(result.exception, WSOLError) and "knows cub, ilsvrc" in str(result.exception)


def test_a_folder_holding_anything_else_is_never_replaced(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "CUB_200_2011", cub_files())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(WSOLError, match="not a prepared dataset folder"):
        prepare("cub", root, tmp_path / "mine", overwrite=True)
    prepare("cub", root, tmp_path / "out")
    (tmp_path / "out" / "notes.md").write_text("mine")
    with pytest.raises(WSOLError, match="it holds notes.md"):
        prepare("cub", root, tmp_path / "out", overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"


def drop(name: str):
    return lambda files: {k: v for k, v in files.items() if k != name}


def replace_line(name: str, number: int, line: str):
    def change(files):
        rows = files[name].decode().splitlines()
        rows[number - 1] = line
        return {**files, name: ("\n".join(rows) + "\n").encode()}
    return change


@pytest.mark.parametrize("change, message", [
    (drop("bounding_boxes.txt"), "CUB_200_2011/bounding_boxes.txt: file not found"),
    (replace_line("bounding_boxes.txt", 3, "3 1.0 2.0 3.0"),
     "CUB_200_2011/bounding_boxes.txt:3: expected '<image_id> <x> <y> <width> <height>', got '3 1.0 2.0 3.0'"),
    (replace_line("bounding_boxes.txt", 2, "2 0.0 zero 32.0 24.0"), "bounding_boxes.txt:2: 'zero' is not a number"),
    (replace_line("bounding_boxes.txt", 2, "2 0.0 0.0 nan 24.0"), "bounding_boxes.txt:2: 'nan' is not a number"),
    (replace_line("bounding_boxes.txt", 2, "2 0.0 0.0 33.0 24.0"),
     "bounding_boxes.txt:2: box (0, 0, 33, 24) lies outside its 32 x 24 image"),
    (replace_line("bounding_boxes.txt", 2, "3 0.0 0.0 32.0 24.0"),
     "bounding_boxes.txt:3: image id 3 appears twice (first on line 2)"),
    (replace_line("image_class_labels.txt", 4, "7 2"), "image_class_labels.txt: no line for image id 4 "
                                                       "(listed in {root}/images.txt:4)"),
    (replace_line("train_test_split.txt", 1, "1 2"), "train_test_split.txt:1: '2' is not 1 (train) or 0 (test)"),
    (replace_line("images.txt", 2, "2 ../secrets.jpg"), "images.txt:2: image path '../secrets.jpg' must be relative"),
    (drop(f"images/{CUB[4][1]}"), f"CUB_200_2011/images/{CUB[4][1]}: image file not found "
                                  "(listed in {root}/images.txt:5)"),
    (lambda files: {**files, f"images/{CUB[0][1]}": b"not a jpeg"}, "not a readable image"),
])
def test_cub_broken_sources_are_one_line_naming_file_and_line(tmp_path: Path, change, message: str) -> None:
    root = write_folder(tmp_path / "CUB_200_2011", change(cub_files()))
    with pytest.raises(WSOLError) as error:
        prepare("cub", root, tmp_path / "out")
    assert message.format(root=root) in str(error.value) and "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CUB_200_2011"]  # nothing left behind


def test_cub_broken_archives(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "CUB_200_2011.tgz", cub_files())
    data = archive.read_bytes()
    (tmp_path / "truncated.tgz").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.tgz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    for name in ("truncated.tgz", "garbage.tgz"):
        with pytest.raises(WSOLError, match="not a readable tar archive"):
            prepare("cub", tmp_path / name, tmp_path / "out")
    write_tar(tmp_path / "no_boxes.tgz", drop("bounding_boxes.txt")(cub_files()))
    with pytest.raises(WSOLError, match=r"no_boxes.tgz/CUB_200_2011/bounding_boxes.txt: file not found in the archive"):
        prepare("cub", tmp_path / "no_boxes.tgz", tmp_path / "out")
    write_tar(tmp_path / "no_image.tgz", drop(f"images/{CUB[1][1]}")(cub_files()))
    with pytest.raises(WSOLError, match=rf"no_image.tgz/CUB_200_2011/images/{CUB[1][1]}: image not in the archive"):
        prepare("cub", tmp_path / "no_image.tgz", tmp_path / "out")
    write_tar(tmp_path / "other.tgz", {"README": b"hello"})
    with pytest.raises(WSOLError, match="expected one images.txt in the archive"):
        prepare("cub", tmp_path / "other.tgz", tmp_path / "out")
    with pytest.raises(WSOLError, match="no such file or folder"):
        prepare("cub", tmp_path / "missing.tgz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# CUBV2 (the protocol's val split): its images as wsolevaluation's CUBV2.tar holds them, its boxes as
# wsolevaluation's metadata/CUB/val/localization.txt has them
VAL_BOXES = [f"{LAYSAN}/25513167677.jpg,3,4,20,10", f"{ALBATROSS}/30107316117.jpg,1,2,30,20",
             f"{ALBATROSS}/30107316117.jpg,0,0,5,5"]
VAL_SIZES = {f"{ALBATROSS}/30107316117.jpg": (36, 24), f"{LAYSAN}/25513167677.jpg": (28, 28)}


@pytest.mark.parametrize("as_tar", [False, True])
def test_cub_val_split_from_cubv2(tmp_path: Path, as_tar: bool) -> None:
    root = write_folder(tmp_path / "CUB_200_2011", cub_files())
    val_files = {image_id: jpeg(size) for image_id, size in VAL_SIZES.items()}
    val = write_tar(tmp_path / "CUBV2.tar", val_files, "") if as_tar else write_folder(tmp_path / "CUBV2", val_files)
    (tmp_path / "localization.txt").write_text("\n".join(VAL_BOXES))
    result = runner.invoke(app, ["data", "prepare", "cub", str(root), "-o", str(tmp_path / "out"), "--val", str(val),
                                 "--val-boxes", str(tmp_path / "localization.txt")])
    assert result.exit_code == 0, result.output
    split = tmp_path / "out" / "metadata" / "val"
    assert lines(split / "image_ids.txt") == [f"{LAYSAN}/25513167677.jpg", f"{ALBATROSS}/30107316117.jpg"]
    assert lines(split / "class_labels.txt") == [f"{LAYSAN}/25513167677.jpg,1", f"{ALBATROSS}/30107316117.jpg,0"]
    assert lines(split / "image_sizes.txt") == [f"{LAYSAN}/25513167677.jpg,28,28", f"{ALBATROSS}/30107316117.jpg,36,24"]
    assert lines(split / "localization.txt") == [VAL_BOXES[0], VAL_BOXES[1], VAL_BOXES[2]]
    assert len(Metadata.load(split)) == 2 and len(Metadata.load(tmp_path / "out" / "metadata" / "test")) == 3
    assert (tmp_path / "out" / "images" / f"{ALBATROSS}/30107316117.jpg").is_symlink() != as_tar

    (tmp_path / "localization.txt").write_text(f"{VAL_BOXES[0]}\n999.Dodo/1.jpg,0,0,1,1\n")
    with pytest.raises(WSOLError, match=r"localization.txt:2: '999.Dodo/1.jpg' is not <CUB class folder>/<file>"):
        prepare("cub", root, tmp_path / "o2", val=val, val_boxes=tmp_path / "localization.txt")
    (tmp_path / "localization.txt").write_text(f"{LAYSAN}/404.jpg,0,0,1,1\n")
    with pytest.raises(WSOLError, match="404.jpg"):
        prepare("cub", root, tmp_path / "o2", val=val, val_boxes=tmp_path / "localization.txt")
    with pytest.raises(WSOLError, match="--val and --val-boxes go together"):
        prepare("cub", root, tmp_path / "o2", val=val)


# ---------------------------------------------------------------------------------------------------------------
# ILSVRC: ImageNet val, the protocol's test split

WNIDS = ["n01440764", "n01443537", "n01751748"]  # sorted: labels 0, 1, 2
ILSVRC = {  # stem: (size, [(wnid, box)])
    "ILSVRC2012_val_00000001": ((50, 40), [("n01751748", (11, 10, 44, 19))]),
    "ILSVRC2012_val_00000002": ((30, 30), [("n01440764", (4, 4, 29, 16)), ("n01440764", (2, 6, 23, 20))]),
    "ILSVRC2012_val_00000003": ((20, 36), [("n01443537", (0, 0, 20, 36))]),
}
ILSVRC_LINES = {
    "image_ids.txt": [f"val/{stem}.JPEG" for stem in ILSVRC],
    "class_labels.txt": ["val/ILSVRC2012_val_00000001.JPEG,2", "val/ILSVRC2012_val_00000002.JPEG,0",
                         "val/ILSVRC2012_val_00000003.JPEG,1"],
    "image_sizes.txt": ["val/ILSVRC2012_val_00000001.JPEG,50,40", "val/ILSVRC2012_val_00000002.JPEG,30,30",
                        "val/ILSVRC2012_val_00000003.JPEG,20,36"],
    "localization.txt": ["val/ILSVRC2012_val_00000001.JPEG,11,10,44,19", "val/ILSVRC2012_val_00000002.JPEG,4,4,29,16",
                         "val/ILSVRC2012_val_00000002.JPEG,2,6,23,20", "val/ILSVRC2012_val_00000003.JPEG,0,0,20,36"],
}
MAPPING = "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn01751748 sea snake\n"


def xml(stem: str, objects) -> str:
    parts = "".join(f"<object><name>{w}</name><pose>Unspecified</pose><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                    f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for w, b in objects)
    return f"<annotation><folder>val</folder><filename>{stem}</filename>{parts}</annotation>"


def ilsvrc_xml(root: Path) -> Path:
    """The official layout: flat val images, the XMLs of ILSVRC2012_bbox_val_v3.tgz in val/."""
    for stem, (size, objects) in ILSVRC.items():
        write_folder(root, {f"{stem}.JPEG": jpeg(size), f"val/{stem}.xml": xml(stem, objects).encode()})
    return root


def ilsvrc_kaggle(root: Path) -> Path:
    """Kaggle's layout: ILSVRC/Data/CLS-LOC/val/*.JPEG, LOC_val_solution.csv (unsorted), LOC_synset_mapping.txt."""
    rows = [f"{stem},{' '.join(f'{w} {b[0]} {b[1]} {b[2]} {b[3]}' for w, b in objects)} "
            for stem, (_, objects) in reversed(ILSVRC.items())]
    write_folder(root, {f"ILSVRC/Data/CLS-LOC/val/{stem}.JPEG": jpeg(size) for stem, (size, _) in ILSVRC.items()})
    write_folder(root, {"LOC_val_solution.csv": ("ImageId,PredictionString\n" + "\n".join(rows) + "\n").encode(),
                        "LOC_synset_mapping.txt": MAPPING.encode()})
    return root


def assert_ilsvrc_lines(out: Path) -> None:
    for name, want in ILSVRC_LINES.items():
        assert lines(out / "metadata" / "test" / name) == want, name
    meta = Metadata.load(out / "metadata" / "test")
    assert len(meta) == 3 and meta.boxes["val/ILSVRC2012_val_00000002.JPEG"].shape == (2, 4)
    assert all((out / "images" / image_id).is_file() for image_id in meta.image_ids)


def test_ilsvrc_xml(tmp_path: Path) -> None:
    src = ilsvrc_xml(tmp_path / "val_images")
    with pytest.raises(WSOLError, match="the boxes name 3 classes, not 1000: .* --synsets"):
        prepare("ilsvrc", src, tmp_path / "out")
    (tmp_path / "wnids.txt").write_text("\n".join(reversed(WNIDS)) + "\n")  # a plain list; sorted all the same
    result = prepare("ilsvrc", src, tmp_path / "out", synsets=tmp_path / "wnids.txt")
    assert result.splits == {"test": 3} and result.linked
    assert_ilsvrc_lines(tmp_path / "out")
    assert read_class_names(tmp_path / "out" / "metadata" / "class_names.txt") == WNIDS


def test_ilsvrc_kaggle_csv_and_cli(tmp_path: Path) -> None:
    src = ilsvrc_kaggle(tmp_path / "kaggle")
    result = runner.invoke(app, ["data", "prepare", "ilsvrc", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"--data-root {tmp_path / 'out' / 'images'}" in result.output and "test 3" in result.output
    assert_ilsvrc_lines(tmp_path / "out")
    names = read_class_names(tmp_path / "out" / "metadata" / "class_names.txt")
    assert names == ["tench", "goldfish", "sea snake"]
    # the same boxes as XML, given with --boxes, give the same bytes
    for stem, (_, objects) in ILSVRC.items():
        write_folder(tmp_path / "xml", {f"{stem}.xml": xml(stem, objects).encode()})
    prepare("ilsvrc", src, tmp_path / "out2", boxes=tmp_path / "xml")
    for name in ILSVRC_LINES:
        written = (tmp_path / "out2/metadata/test" / name).read_bytes()
        assert written == (tmp_path / "out/metadata/test" / name).read_bytes()


@pytest.mark.parametrize("break_it, message", [
    (lambda s: (s / "val/ILSVRC2012_val_00000002.xml").write_text("<annotation><object>"),
     r"00000002.xml: not valid XML"),
    (lambda s: (s / "val/ILSVRC2012_val_00000002.xml").write_text(xml("x", [("n01440764", ("a", 1, 2, 3))])),
     r"00000002.xml: <object> 1: box \['a', '1', '2', '3'\] is not four integers"),
    (lambda s: (s / "val/ILSVRC2012_val_00000003.xml").write_text(xml("x", [("n09999999", (0, 0, 1, 1))])),
     r"00000003.xml: wnid 'n09999999' is not one of the classes \(.*wnids.txt\)"),
    (lambda s: (s / "val/ILSVRC2012_val_00000003.xml").write_text(xml("x", [("n01443537", (0, 0, 21, 36))])),
     r"00000003.xml: box \(0, 0, 21, 36\) lies outside its 20 x 36 image"),
    (lambda s: (s / "ILSVRC2012_val_00000002.JPEG").unlink(),
     r"ILSVRC2012_val_00000002.JPEG: image file not found \(its boxes are in .*00000002.xml\)"),
])
def test_ilsvrc_broken_xml_sources(tmp_path: Path, break_it, message: str) -> None:
    src = ilsvrc_xml(tmp_path / "val_images")
    (tmp_path / "wnids.txt").write_text("\n".join(WNIDS))
    break_it(src)
    with pytest.raises(WSOLError, match=message):
        prepare("ilsvrc", src, tmp_path / "out", synsets=tmp_path / "wnids.txt")
    assert not (tmp_path / "out").exists()


def test_ilsvrc_broken_csv_and_synsets(tmp_path: Path) -> None:
    src = ilsvrc_kaggle(tmp_path / "kaggle")
    csv_file = src / "LOC_val_solution.csv"
    good = csv_file.read_text()
    csv_file.write_text(good.replace("n01443537 0 0 20 36", "n01443537 0 0 20"))
    with pytest.raises(WSOLError, match=r"LOC_val_solution.csv:2: expected 'ILSVRC2012_val_XXXXXXXX,wnid xmin"):
        prepare("ilsvrc", src, tmp_path / "out")
    csv_file.write_text("id,boxes\n")
    with pytest.raises(WSOLError, match=r"LOC_val_solution.csv:1: expected the header"):
        prepare("ilsvrc", src, tmp_path / "out")
    csv_file.write_text(good)
    (src / "LOC_synset_mapping.txt").write_text(MAPPING + "tench2 tench\n")
    with pytest.raises(WSOLError, match=r"LOC_synset_mapping.txt:4: 'tench2' is not a wnid"):
        prepare("ilsvrc", src, tmp_path / "out")
    with pytest.raises(WSOLError, match="not a folder"):
        prepare("ilsvrc", csv_file, tmp_path / "out")
    with pytest.raises(WSOLError, match="no boxes found"):
        prepare("ilsvrc", tmp_path, tmp_path / "out")


# ---------------------------------------------------------------------------------------------------------------
# write_split, the metadata writer every preparer (and wsol data synth) uses


def test_write_split_reads_back_and_keeps_only_its_files(tmp_path: Path) -> None:
    split = tmp_path / "split"
    records = [Record("b/2.png", 1, size=(10, 8), boxes=[(0, 0, 5, 5), (1, 1, 9, 7)], masks=["m/2a.png", "m/2b.png"],
                      ignore="m/2i.png"),
               Record("a/1.png", 0, size=(4, 4), boxes=[(0, 0, 4, 4)], masks=["m/1.png"])]
    write_split(split, records)
    assert lines(split / "localization.txt") == ["b/2.png,0,0,5,5", "b/2.png,1,1,9,7", "a/1.png,0,0,4,4"]
    assert lines(split / "mask_localization.txt") == ["b/2.png,m/2a.png,m/2i.png", "b/2.png,m/2b.png,",
                                                      "a/1.png,m/1.png,"]
    meta = Metadata.load(split)
    assert meta.image_ids == ["b/2.png", "a/1.png"] and meta.labels == {"b/2.png": 1, "a/1.png": 0}
    assert meta.has_boxes and meta.has_masks and meta.ignore_paths["b/2.png"] == "m/2i.png"
    write_split(split, [Record("c/3.png", 2)])  # weak labels only: no sizes, no localization
    assert sorted(p.name for p in split.iterdir()) == ["class_labels.txt", "image_ids.txt", "image_sizes.txt"]
    assert Metadata.load(split).image_ids == ["c/3.png"]
    write_split(split, [Record("x/1.png", 0, masks=["x/1_m.png"], ignore="x/1_i.png")])  # masks only (OpenImages)
    assert lines(split / "localization.txt") == ["x/1.png,x/1_m.png,x/1_i.png"]


@pytest.mark.parametrize("record, message", [
    (Record("a,b.png", 0), "cannot be written"),
    (Record("../a.png", 0), "cannot be written"),
    (Record("a.png", -1), "negative label"),
])
def test_write_split_refuses_what_the_format_cannot_hold(tmp_path: Path, record: Record, message: str) -> None:
    with pytest.raises(WSOLError, match=message):
        write_split(tmp_path / "split", [record])
    with pytest.raises(WSOLError, match="given twice"):
        write_split(tmp_path / "split", [Record("a.png", 0), Record("a.png", 1)])
    assert not (tmp_path / "split").exists()


def test_registry() -> None:
    assert sorted(PREPARERS) == ["cub", "ilsvrc"]
