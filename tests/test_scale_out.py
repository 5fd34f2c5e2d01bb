"""Scaling `wsol localize` out (issue 13): shards merged equal one run, one live process per output folder,
and bounded memory with one-line out-of-memory errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import wsol.localize.folder as folder_module
import wsol.localize.pipeline as pipeline_module
from wsol.cli import app, run
from wsol.errors import WSOLError
from wsol.localize.shards import in_shard, parse_shard, shard_of
from wsol.locks import LOCK_NAME, FolderLock
from wsol.memory import fit_batch_size, is_out_of_memory, out_of_memory_message, parse_bytes

runner = CliRunner()


@pytest.fixture(scope="module")
def embedded():
    from wsol.models import EMBEDDED_MODEL, build_model

    return build_model(EMBEDDED_MODEL, pretrained=True).eval()


@pytest.fixture(autouse=True)
def cached_model(monkeypatch, embedded):
    monkeypatch.setattr(pipeline_module, "load_model", lambda name=None, checkpoint=None, **_: embedded)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Nine small photos of blobs in three sub-folders (keys with folders, as a corpus has)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for i in range(9):
        folder = root / f"part{i % 3}"
        folder.mkdir(exist_ok=True)
        image = np.full((96 + 8 * i, 128, 3), 235, np.uint8)
        y, x = int(rng.integers(10, 50)), int(rng.integers(10, 70))
        image[y:y + 40, x:x + 50] = rng.integers(0, 255, 3, dtype=np.uint8)
        Image.fromarray(image).save(folder / f"img{i}.png")
    return root


def test_shards_are_a_deterministic_partition_by_name():
    keys = [f"n{i:03d}/img{i}.jpg" for i in range(200)]
    parts = [in_shard(keys, (k, 3)) for k in range(3)]
    assert sorted(i for part in parts for i in part) == list(range(200))  # each key exactly once
    assert all(40 <= len(part) <= 90 for part in parts)  # about a third each
    # the same split whatever the order the keys are found in, on any machine (SHA-1 of the name)
    assert [shard_of(k, 3) for k in keys] == [shard_of(k, 3) for k in reversed(keys)][::-1]
    assert shard_of("n000/img0.jpg", 3) == int.from_bytes(
        __import__("hashlib").sha1(b"n000/img0.jpg").digest()[:8], "big") % 3
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None
    for bad in ("4/4", "-1/4", "1", "a/b", "0/0"):
        with pytest.raises(WSOLError, match="--shard"):
            parse_shard(bad)


def _localize(*args: str) -> None:
    """One image per batch: a CPU convolution's last bits depend on the batch it runs in, and the shards'
    batches differ from the single run's (the merge itself is exact: the same records, summed counters)."""
    result = runner.invoke(app, ["localize", *args, "--workers", "0", "--batch-size", "1", "-q"])
    assert result.exit_code == 0, (result.output, result.exception)


def test_three_shards_merged_equal_one_run_byte_for_byte(photos: Path, tmp_path: Path):
    _localize(str(photos), "--out", str(tmp_path / "one"), "--save-maps")
    for k in range(3):
        _localize(str(photos), "--out", str(tmp_path / f"shard{k}"), "--save-maps", "--shard", f"{k}/3")
    counts = [len((tmp_path / f"shard{k}" / "results.jsonl").read_text().splitlines()) for k in range(3)]
    assert sum(counts) == 9 and all(counts)  # every shard did a part, none twice
    result = runner.invoke(app, ["localize", "merge", *(str(tmp_path / f"shard{k}") for k in range(3)),
                                 "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, (result.output, result.exception)
    one, merged = tmp_path / "one", tmp_path / "merged"
    for name in ("results.jsonl", "index.html", "run.json"):
        assert (merged / name).read_bytes() == (one / name).read_bytes(), name
    for sub in ("overlays", "maps"):
        files = sorted(p.relative_to(one) for p in (one / sub).rglob("*") if p.is_file())
        assert len(files) == 9
        assert files == sorted(p.relative_to(merged) for p in (merged / sub).rglob("*") if p.is_file())
        assert all((one / f).read_bytes() == (merged / f).read_bytes() for f in files)
    # an incomplete set of shards is refused, naming what is missing
    missing = runner.invoke(app, ["localize", "merge", str(tmp_path / "shard0"), str(tmp_path / "shard2"),
                                  "--out", str(tmp_path / "bad")])
    assert isinstance(missing.exception, WSOLError) and "missing 1" in str(missing.exception)


def test_three_split_shards_merged_give_the_single_runs_metrics_to_the_last_digit(photos: Path, tmp_path: Path):
    split = tmp_path / "meta"
    split.mkdir()
    rng = np.random.default_rng(0)
    ids = sorted(str(p.relative_to(photos)) for p in photos.rglob("*.png"))
    sizes = {i: Image.open(photos / i).size for i in ids}
    (split / "image_ids.txt").write_text("\n".join(ids))
    (split / "class_labels.txt").write_text("\n".join(f"{i},{int(rng.integers(0, 1000))}" for i in ids))
    (split / "image_sizes.txt").write_text("\n".join(f"{i},{w},{h}" for i, (w, h) in sizes.items()))
    (split / "localization.txt").write_text("\n".join(f"{i},5,5,{w // 2 + 20},{h // 2 + 10}"
                                                      for i, (w, h) in sizes.items()))
    common = ["--metadata", str(split), "--data-root", str(photos), "--evaluate", "--cam-curve-interval", "0.01"]
    _localize(*common, "--out", str(tmp_path / "one"), "--scoremaps", str(tmp_path / "one" / "scoremaps"))
    for k in range(3):
        _localize(*common, "--out", str(tmp_path / f"s{k}"), "--shard", f"{k}/3")
    result = runner.invoke(app, ["localize", "merge", *(str(tmp_path / f"s{k}") for k in range(3)),
                                 "--out", str(tmp_path / "all"), "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    single = (tmp_path / "one" / "metrics.json").read_text()
    assert (tmp_path / "all" / "metrics.json").read_text() == single
    metrics = json.loads(single)
    assert metrics["num_images"] == 9 and metrics["boxes"]["num_images"] == 9
    assert 0 <= metrics["boxes"]["MaxBoxAcc"] <= 100 and "top1_loc" in metrics["boxes"]
    for image_id in ids:
        assert np.array_equal(np.load(tmp_path / "all" / "scoremaps" / f"{image_id}.npy"),
                              np.load(tmp_path / "one" / "scoremaps" / f"{image_id}.npy"))


HOLDER = """
import sys, time
from wsol.locks import FolderLock
lock = FolderLock(sys.argv[1], "--out").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _hold(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_process_is_refused_naming_the_owner_and_a_killed_one_does_not_block(photos: Path,
                                                                                      tmp_path: Path):
    out = tmp_path / "out"
    holder = _hold(out)
    try:
        result = runner.invoke(app, ["localize", str(photos), "--out", str(out), "--workers", "0", "-q"])
        assert isinstance(result.exception, WSOLError)
        message = str(result.exception)
        assert "\n" not in message and f"--out {out}: in use by pid {holder.pid} on " in message
        assert not (out / "results.jsonl").exists()  # refused before writing anything
        from wsol.train.run import _own_run_folder

        with pytest.raises(WSOLError, match=f"trainer.out_dir {out}: in use by pid {holder.pid}"):
            _own_run_folder(out)
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup runs
        holder.wait()
    assert (out / LOCK_NAME).exists()  # the file stays, but its lock died with the process
    with FolderLock(out, "--out") as lock:
        assert json.loads(os.pread(lock._fd, 4096, 0))["pid"] == os.getpid()
    _localize(str(photos), "--out", str(out))
    assert len((out / "results.jsonl").read_text().splitlines()) == 9


@pytest.mark.slow
def test_two_real_localize_processes_into_one_folder(photos: Path, tmp_path: Path):
    """Two `wsol localize` processes at once: one refused in one line (exit 2), the other writes each image once."""
    out = tmp_path / "out"
    holder = _hold(out)  # a first run in progress
    try:
        second = subprocess.run([sys.executable, "-c", "from wsol.cli import run; run()", "localize", str(photos),
                                 "--out", str(out), "--workers", "0", "-q"], capture_output=True, text=True,
                                timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"in use by pid {holder.pid}" in lines[0]


def test_batch_shrinks_to_the_memory_and_an_image_size_that_cannot_fit_is_refused(embedded):
    cpu = torch.device("cpu")
    notes: list[str] = []
    assert fit_batch_size(embedded, 224, 32, cpu, notes, free=1 << 40) == 32 and not notes
    from wsol.memory import activation_bytes

    per_image = activation_bytes(embedded, 224)
    assert activation_bytes(embedded, 448) == pytest.approx(4 * per_image, rel=1e-6)  # batch x size^2
    free = int(per_image * 5 / 0.7) + 1  # room for 5 images
    assert fit_batch_size(embedded, 224, 32, cpu, notes, free=free) == 5
    assert "--batch-size 32 lowered to 5" in notes[0]
    with pytest.raises(WSOLError, match=r"--image-size 4000: one image needs about .* --image-size \d+ fits"):
        fit_batch_size(embedded, 4000, 32, cpu, free=free)
    assert parse_bytes("2G") == 2 << 30 and parse_bytes("512M") == 512 << 20 and parse_bytes("100") == 100


def test_localize_with_a_small_memory_limit_lowers_the_batch(photos: Path, tmp_path: Path, monkeypatch, embedded):
    from wsol.memory import activation_bytes

    monkeypatch.setenv("WSOL_MEMORY_LIMIT", str(int(activation_bytes(embedded, 224) * 3 / 0.7) + 1))
    result = runner.invoke(app, ["localize", str(photos), "--out", str(tmp_path / "o"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "--batch-size 32 lowered to 3" in result.output
    assert len((tmp_path / "o" / "results.jsonl").read_text().splitlines()) == 9
    monkeypatch.setenv("WSOL_MEMORY_LIMIT", "1M")
    refused = runner.invoke(app, ["localize", str(photos), "--out", str(tmp_path / "p"), "--image-size", "1024"])
    assert isinstance(refused.exception, WSOLError) and "--image-size 1024: one image needs" in str(refused.exception)


@pytest.mark.parametrize("error, where", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 5600000000 bytes. Error code 12 (Cannot allocate memory)"), "memory (RAM)"),
    (RuntimeError("not enough memory: you tried to allocate 21474836480 bytes."), "memory (RAM)"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 5.60 GiB (GPU 0; 15.7 GiB total)"), "GPU memory"),
    (MemoryError("Unable to allocate 5.6 GiB for an array with shape (4000, 4000, 96)"), "memory (RAM)"),
])
def test_out_of_memory_anywhere_is_one_line_naming_the_setting(photos, tmp_path, monkeypatch, capsys, error, where):
    def fail(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(folder_module, "localize_images", fail)
    monkeypatch.setattr(sys, "argv", ["wsol", "localize", str(photos), "--out", str(tmp_path / "o"), "-q"])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: out of {where}: lower --batch-size or --image-size")
    assert is_out_of_memory(error)
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert "data.batch_size" in out_of_memory_message(error, ["wsol", "train", "-c", "x.yaml"])


def test_other_runtime_errors_keep_their_traceback(monkeypatch, tmp_path, photos):
    def fail(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(folder_module, "localize_images", fail)
    monkeypatch.setattr(sys, "argv", ["wsol", "localize", str(photos), "--out", str(tmp_path / "o"), "-q"])
    with pytest.raises(RuntimeError, match="a bug"):
        run()


def test_lock_records_its_owner(tmp_path: Path):
    with FolderLock(tmp_path / "f", "--out") as lock:
        with pytest.raises(WSOLError, match=f"in use by this process \\(pid {os.getpid()}\\)"):  # a second time
            FolderLock(tmp_path / "f", "--out").acquire()
        os.pread(lock._fd, 1, 0)  # (reading through its own descriptor keeps the lock)
    owner = json.loads((tmp_path / "f" / LOCK_NAME).read_text() or "{}")
    assert owner == {}  # emptied on release
    holder = _hold(tmp_path / "g")
    try:
        owner = json.loads((tmp_path / "g" / LOCK_NAME).read_text())
        assert owner["pid"] == holder.pid and owner["host"] and time.strptime(owner["started"], "%Y-%m-%d %H:%M:%S")
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(tmp_path / "f", "--out"):
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(WSOLError, match="exists and is not a folder"):
        FolderLock(tmp_path / "file", "--out").acquire()
