"""core/device.py: the one device rule behind every --device flag and device config value."""

from __future__ import annotations

import pytest
import torch

from core.device import DeviceError, resolve_device
from core.errors import BbstError


def test_auto_picks_cuda_only_when_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == resolve_device("") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("auto", local_rank=2) == resolve_device("CUDA", local_rank=2) == torch.device("cuda", 2)
    assert resolve_device("cuda:1", local_rank=2) == torch.device("cuda", 1)  # an explicit index is kept
    assert resolve_device("cpu", local_rank=2) == torch.device("cpu")


def test_cuda_without_a_gpu_and_unknown_names_are_user_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="'cuda:0': no CUDA device is visible") as info:
        resolve_device("cuda:0")
    assert isinstance(info.value, BbstError) and info.value.hint
    with pytest.raises(DeviceError, match="'gpu0': not a device name"):
        resolve_device("gpu0")
