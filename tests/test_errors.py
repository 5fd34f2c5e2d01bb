"""One-line errors, also for those raised inside DataLoader workers."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, Dataset

from wsol.errors import WSOLError, one_line


class _Broken(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> None:
        raise WSOLError("photos/x.jpg: corrupt or truncated image (broken data stream)")


def test_an_error_from_a_worker_comes_back_as_its_one_line() -> None:
    with pytest.raises(WSOLError) as info:
        list(DataLoader(_Broken(), num_workers=1))
    assert "Original Traceback" in str(info.value)  # what torch re-raises: the worker's whole traceback
    assert one_line(info.value) == "photos/x.jpg: corrupt or truncated image (broken data stream)"
    assert one_line(WSOLError("a: b")) == "a: b"
