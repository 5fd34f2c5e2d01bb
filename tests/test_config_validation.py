"""`wsol train` recipes: values that would reach Lightning/torch out of range fail in check()/load_config with
one line naming the key, before anything is written."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import typing

import pytest

from wsol.errors import WSOLError
from wsol.train.config import PRECISIONS, load_config

REQUIRED = ["data.root=images", "data.metadata=metadata"]


def checked(*overrides: str):
    config = load_config(None, [*REQUIRED, *overrides])
    config.check()
    return config


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lr=.nan", "config optim.lr=nan: must be a finite number > 0"),
    ("optim.lr=.inf", "config optim.lr=inf: must be a finite number > 0"),
    ("optim.lr=0", "config optim.lr=0.0: must be a finite number > 0"),
    ("optim.weight_decay=-1", "config optim.weight_decay=-1.0: must be a finite number >= 0"),
    ("optim.momentum=-0.5", "config optim.momentum=-0.5: must be a finite number >= 0"),
    ("optim.lr_decay_epochs=0", "config optim.lr_decay_epochs=0: must be > 0"),
    ("data.num_workers=-1", "config data.num_workers=-1: must be >= 0"),
    ("data.crop_size=0", "config data.crop_size=0: must be > 0"),
    ("data.resize_size=-5", "config data.resize_size=-5: must be > 0"),
    ("data.eval_batch_size=0", "config data.eval_batch_size=0: must be > 0"),
    ("trainer.precision=banana", "config trainer.precision='banana': must be one of auto, 32-true, 16-mixed"),
    ("trainer.accelerator=abc", "config trainer.accelerator='abc': must be one of auto, gpu, cpu, cuda, mps"),
    ("trainer.strategy=nope", "config trainer.strategy='nope': must be one of auto, ddp, "),
    ("trainer.devices=abc", "config trainer.devices='abc': expected auto, a number of devices"),
    ("trainer.devices=0", "config trainer.devices='0': expected auto"),
    ("trainer.devices=-2", "config trainer.devices='-2': expected auto"),
    ("trainer.limit_train_batches=0", "config trainer.limit_train_batches=0: must be a fraction of the batches "
                                      "in (0, 1.0] or a number of batches >= 1"),
    ("trainer.limit_train_batches=0.0", "config trainer.limit_train_batches=0.0: must be a fraction"),
    ("trainer.limit_train_batches=2.5", "config trainer.limit_train_batches=2.5: must be a fraction"),
    ("trainer.limit_val_batches=-1", "config trainer.limit_val_batches=-1: must be a fraction of the batches "
                                     "in [0, 1.0] or a number of batches >= 0"),
    ("trainer.max_steps=0", "config trainer.max_steps=0: must be > 0 or -1 (no limit)"),
    ("trainer.max_steps=-5", "config trainer.max_steps=-5: must be > 0 or -1 (no limit)"),
])
def test_out_of_range_value_is_one_line_naming_the_key(override, message):
    with pytest.raises(WSOLError) as info:
        checked(override)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("torch_xla") is not None, reason="torch_xla is installed here")
def test_accelerator_lightning_registers_but_cannot_run_names_the_missing_package():
    with pytest.raises(WSOLError, match=r"^config trainer\.accelerator='tpu': needs the torch_xla package"):
        checked("trainer.accelerator=tpu")


@pytest.mark.parametrize("override", [
    *(f"trainer.accelerator={name}" for name in ("auto", "cpu", "gpu", "cuda", "mps")),
    *(f"trainer.strategy={name}" for name in ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "fsdp")),
    *(f"trainer.precision={name}" for name in ("auto", "16", "32", "bf16-mixed", "16-mixed", "32-true")),
    *(f"trainer.devices={value}" for value in ("auto", "1", "4", "-1", "0,1", "'1 2'")),
    "trainer.max_steps=-1", "trainer.max_steps=1", "trainer.limit_val_batches=0", "data.num_workers=0",
    "optim.weight_decay=0", "data.crop_size=64",
])
def test_values_lightning_accepts_pass(override):
    checked(override)


def test_precision_choices_are_the_ones_lightning_accepts():
    from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    assert set(PRECISIONS) == {"auto", *typing.get_args(_PRECISION_INPUT_STR),
                               *typing.get_args(_PRECISION_INPUT_STR_ALIAS)}


def test_a_number_of_batches_stays_an_int_and_a_fraction_a_float():
    # 5 batches, not 5.0 (a fraction to Lightning's and WSOLModule's reading); 1.0 = all batches, 1 = one batch
    config = checked("trainer.limit_train_batches=5", "trainer.limit_val_batches=1.0")
    assert (config.trainer.limit_train_batches, type(config.trainer.limit_train_batches)) == (5, int)
    assert (config.trainer.limit_val_batches, type(config.trainer.limit_val_batches)) == (1.0, float)
    config = checked("trainer.limit_train_batches=0.25")
    assert (config.trainer.limit_train_batches, type(config.trainer.limit_train_batches)) == (0.25, float)


def test_binary_config_file_is_one_line(tmp_path):
    binary = tmp_path / "model.ckpt"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00\x01binary")
    with pytest.raises(WSOLError) as info:
        load_config(binary)
    assert str(info.value) == f"{binary}: not a UTF-8 text file (byte 0xff at offset 4); a config is a YAML file"
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"model:\n  name: r\x00x\n")
    with pytest.raises(WSOLError) as info:
        load_config(nul)
    assert str(info.value) == f"{nul}: not a YAML text file (character 0x00 at offset 16: special characters are " \
                              "not allowed)"


@pytest.mark.slow
def test_cli_stops_before_writing_anything(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", "from wsol.cli import run; run()", "train", *REQUIRED,
                             f"trainer.out_dir={out}", "trainer.max_steps=0"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: config trainer.max_steps=0: must be > 0 or -1 (no limit)"]
    assert not out.exists()


def test_a_device_this_machine_lacks_is_one_line(tmp_path) -> None:
    import torch

    from wsol.errors import WSOLError
    from wsol.train.config import load_config
    from wsol.train.run import make_trainer

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = load_config(None, ["trainer.accelerator=cuda", f"trainer.out_dir={tmp_path}"])
    with pytest.raises(WSOLError, match="trainer: `CUDAAccelerator` can not run on your system"):
        make_trainer(config, tmp_path, quiet=True)


def test_strategy_names_are_case_insensitive_and_bad_device_lists_are_one_line(tmp_path) -> None:
    from wsol.errors import WSOLError
    from wsol.train.config import load_config
    from wsol.train.run import make_trainer

    config = load_config(None, ["trainer.strategy=DDP", "data.root=/data", "data.metadata=/data/metadata"])
    config.check()
    assert config.trainer.strategy == "ddp"  # accepted, as Lightning reads it
    config = load_config(None, ["trainer.accelerator=cpu", "trainer.devices=0,1", f"trainer.out_dir={tmp_path}"])
    with pytest.raises(WSOLError, match="^trainer: "):
        make_trainer(config, tmp_path, quiet=True)
