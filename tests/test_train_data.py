"""Tests for train.data: shard shuffling before the split, rank balance, crops, and exact mid-epoch resume."""

from __future__ import annotations

import io
import json
from itertools import islice

import numpy as np
import pytest
import torch
from PIL import Image

from train.config import DataConfig, LoaderConfig
from train.data import CropSpec, LoaderError, ShardPairLoader, Source, decode_crops, epoch_order, list_shards
from train.demo_shards import write_demo_shards

CONTENT = [5, 7, 6, 4, 5, 6, 3, 6]
STYLE = [4, 4, 5, 3, 4]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return str(write_demo_shards(tmp_path_factory.mktemp("shards"), {"content": CONTENT, "style": STYLE},
                                 size=(160, 128)))


def _cfgs(root, **loader):
    data = DataConfig(root=root, crop_size=48, short_side_min=48, short_side_max=128)
    base = {"batch_size": 2, "num_workers": 0, "shuffle_buffer": 4, "open_shards": 2, "seed": 3}
    base.update(loader)
    return data, LoaderConfig(**base)


def _stream(loader, n):
    return [(tuple(b["content_key"]), tuple(b["style_key"]), b["content"].sum().item(), b["style2"].sum().item())
            for b in islice(iter(loader), n)]


def test_shards_are_shuffled_before_the_split(shards):
    content = list_shards(shards, "content")
    assert [s.nsamples for s in content] == CONTENT
    sources = [Source(shards, tuple(content))]
    firsts = []
    for epoch in range(4):
        runs = epoch_order(sources, 0, "content", epoch)
        assert sorted(runs[:, 0].tolist()) == list(range(len(CONTENT)))  # every shard once per epoch, whole
        firsts.append(tuple(runs[:3, 0].tolist()))
    assert len(set(firsts)) > 1  # a split-then-shuffle loader would give reader 0 the same shards every epoch


def test_ranks_and_workers_see_disjoint_samples_and_equal_batches(shards):
    seen, counts = [], []
    for rank in range(2):
        data, cfg = _cfgs(shards, num_workers=2)
        loader = ShardPairLoader(data, cfg, rank=rank, world_size=2)
        n = loader.batches_per_epoch(0)
        batches = list(islice(iter(loader), n))
        assert all(b["epoch"] == 0 for b in batches)
        keys = [k for b in batches for k in b["content_key"]]
        assert len(keys) == len(set(keys)), "a sample repeated within one epoch"
        seen.append(set(keys))
        counts.append(n)
    assert counts[0] == counts[1] > 0
    assert not seen[0] & seen[1]
    assert sum(CONTENT) - len(seen[0] | seen[1]) < 2 * 2  # less than one global batch dropped


def test_manifest_count_mismatch_names_the_shard(tmp_path):
    root = write_demo_shards(tmp_path, {"content": [3, 3], "style": [2]}, size=(96, 96))
    index = json.loads((root / "manifest.json").read_text())
    index["shardlist"][0]["nsamples"] = 4
    (root / "manifest.json").write_text(json.dumps(index))
    data, cfg = _cfgs(str(root), open_shards=1, shuffle_buffer=0)
    with pytest.raises(LoaderError, match=r"content-000000.tar: holds 3 samples but the manifest says 4"):
        list(islice(iter(ShardPairLoader(data, cfg)), 4))


def test_without_manifest_shards_are_globbed_and_counted(tmp_path):
    root = write_demo_shards(tmp_path, {"content": [3, 2], "style": [2]}, size=(96, 96), manifest=False)
    assert [s.nsamples for s in list_shards(str(root), "content")] == [3, 2]
    data, cfg = _cfgs(str(root))
    assert ShardPairLoader(data, cfg).batches_per_epoch(0) == 2


def test_batches_are_random_crops_at_training_size(shards):
    data, cfg = _cfgs(shards)
    batch = next(iter(ShardPairLoader(data, cfg)))
    for view in ("content", "style", "style2"):
        t = batch[view]
        assert t.shape == (2, 3, 48, 48) and t.dtype == torch.float32
        assert 0.0 <= t.min() and t.max() <= 1.0
    assert not torch.equal(batch["style"], batch["style2"])  # two different crops of one style image
    assert len(batch["content_key"]) == len(batch["style_key"]) == 2


def test_decode_crops_takes_the_box_from_the_full_resolution_image():
    # a horizontal ramp: the crop's mean brightness tells where it came from
    ramp = np.tile(np.linspace(0, 255, 512, dtype=np.float32), (384, 1))
    img = Image.fromarray(np.stack([ramp] * 3, -1).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    left, right = decode_crops(data, [CropSpec(384, 0.0, 0.0, False), CropSpec(384, 1.0, 0.0, False)], 64)
    assert left.shape == right.shape == (64, 64, 3)
    assert left.mean() < 30 and right.mean() > 225  # left edge vs right edge at full resolution
    # downscaled 4x (short side 96): decoded at a reduced DCT scale, still equal to a full decode + resize
    small = decode_crops(data, [CropSpec(96, 0.5, 0.5, False)], 64)[0]
    ref = np.asarray(img.resize((128, 96), Image.Resampling.BILINEAR))[16:80, 32:96]
    assert np.abs(small.astype(float) - ref.astype(float)).mean() < 4
    flipped = decode_crops(data, [CropSpec(384, 0.0, 0.0, True)], 64)[0]
    assert np.array_equal(flipped, left[:, ::-1])


@pytest.mark.parametrize("num_workers,stop", [(0, 5), (2, 7), (2, -1)])
def test_mid_epoch_resume_yields_the_identical_stream(shards, num_workers, stop):
    torch.set_num_threads(1)
    data, cfg = _cfgs(shards, num_workers=num_workers)
    full_loader = ShardPairLoader(data, cfg)
    if stop < 0:  # stop one batch before the epoch ends, so the resumed stream crosses into epoch 1
        stop = full_loader.batches_per_epoch(0) + stop
    total = stop + 6
    full = _stream(full_loader, total)

    first = ShardPairLoader(data, cfg)
    head = _stream(first, stop)
    state = first.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)  # the state must survive a checkpoint round trip
    buf.seek(0)
    resumed = ShardPairLoader(data, cfg)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    tail = _stream(resumed, total - stop)
    assert head + tail == full


def test_resume_refuses_a_different_seed(shards):
    data, cfg = _cfgs(shards, num_workers=2)
    loader = ShardPairLoader(data, cfg)
    _stream(loader, 1)
    data, cfg1 = _cfgs(shards, num_workers=1, seed=4)
    with pytest.raises(LoaderError, match="loader.seed: checkpoint 3 vs now 4"):
        ShardPairLoader(data, cfg1).load_state_dict(loader.state_dict())


def _decode_path_batches(shards, device, n=1):
    import dataclasses

    data, cfg = _cfgs(shards)
    cpu = _stream_batches(ShardPairLoader(data, cfg), n)
    loader = ShardPairLoader(data, cfg)
    loader.cfg = dataclasses.replace(cfg, decode="cuda")  # the byte-shipping path, finished on `device`
    loader.device = torch.device(device)
    return cpu, _stream_batches(loader, n)


def _stream_batches(loader, n):
    return [{k: (v.cpu() if torch.is_tensor(v) else v) for k, v in b.items()} for b in islice(iter(loader), n)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_device_decode_path_matches_the_worker_decode(shards, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu, dev = _decode_path_batches(shards, device)
    for a, b in zip(cpu, dev):
        assert a["content_key"] == b["content_key"] and a["style_key"] == b["style_key"]
        for view in ("content", "style", "style2"):
            assert a[view].shape == b[view].shape
            # same crop boxes; only the resampling differs (DCT-scaled decode + PIL vs full decode + antialias)
            assert (a[view] - b[view]).abs().mean() < 0.045, view  # a 8 px shift or a flip gives > 0.06


def test_reads_shards_through_an_fsspec_url(shards):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.put(shards, "/bbst-run", recursive=True)  # same files behind a URL instead of a local path
    data, cfg = _cfgs(shards)
    local = _stream(ShardPairLoader(data, cfg), 3)
    data, cfg = _cfgs("memory://bbst-run")
    remote = ShardPairLoader(data, cfg)
    assert remote.content[0].url.startswith("memory://bbst-run/shards/")
    head = _stream(remote, 2)
    resumed = ShardPairLoader(data, cfg)
    resumed.load_state_dict(remote.state_dict())  # buffered samples are re-read by byte offset over the URL
    assert head + _stream(resumed, 1) == local


@pytest.mark.parametrize("orientation", [1, 3, 6, 7, 8])
def test_exif_orientation_is_applied_on_both_decode_paths(orientation):
    from torchvision.io import decode_jpeg

    from train.data import _EXIF_TRANSPOSE, orient_tensor

    rng = np.random.default_rng(orientation)
    # 16 px colour blocks: asymmetric content whose position survives JPEG (4:4:4, quality 95)
    stored = Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
    data = buf.getvalue()
    upright = stored.transpose(_EXIF_TRANSPOSE[orientation]) if orientation in _EXIF_TRANSPOSE else stored
    crop = decode_crops(data, [CropSpec(10_000, 0.0, 0.0, False)], 64)[0]  # top-left of the upright image
    ref = np.asarray(upright)[:64, :64]
    assert np.abs(crop.astype(float) - ref.astype(float)).mean() < 6
    # the GPU path decodes without orientation and applies it itself; check that on CPU
    t = orient_tensor(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)), orientation)
    assert t.shape[1:] == (upright.size[1], upright.size[0])
    assert np.abs(t.permute(1, 2, 0).numpy()[:64, :64].astype(float) - ref).mean() < 6


def test_resume_reads_only_the_buffered_and_next_samples(shards, monkeypatch):
    import curate.shards
    import train.data as data_mod

    data, cfg = _cfgs(shards)  # in-process (num_workers=0) so the reads can be counted
    first = ShardPairLoader(data, cfg)
    _stream(first, 8)  # 16 pairs consumed: 32 samples drawn, more read into the buffers
    state = first.state_dict()
    reads = []
    streamed = curate.shards.iter_samples

    def counting_stream(*args, **kwargs):
        for item in streamed(*args, **kwargs):
            reads.append(1)
            yield item

    original = data_mod.read_sample
    monkeypatch.setattr(data_mod, "iter_samples", counting_stream)
    monkeypatch.setattr(data_mod, "read_sample", lambda *a, **k: reads.append(1) or original(*a, **k))
    resumed = ShardPairLoader(data, cfg)
    resumed.load_state_dict(state)
    _stream(resumed, 1)
    # restoring = one read per buffered sample (2 streams x 5) + filling for one batch; no replay of the 32
    assert len(reads) <= 2 * (cfg.shuffle_buffer + 1) + 2 * cfg.batch_size + 2 * cfg.open_shards < 32
