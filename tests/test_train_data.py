"""Tests for train.data: per-epoch sample dealing and coverage, exact and elastic resume, damaged samples, decoding."""

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
    resumed.load_state_dict(torch.load(buf, weights_only=True))
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

    from core.images import TRANSPOSE
    from train.data import orient_tensor

    rng = np.random.default_rng(orientation)
    # 16 px colour blocks: asymmetric content whose position survives JPEG (4:4:4, quality 95)
    stored = Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
    data = buf.getvalue()
    upright = stored.transpose(TRANSPOSE[orientation]) if orientation in TRANSPOSE else stored
    crop = decode_crops(data, [CropSpec(10_000, 0.0, 0.0, False)], 64)[0]  # top-left of the upright image
    ref = np.asarray(upright)[:64, :64]
    assert np.abs(crop.astype(float) - ref.astype(float)).mean() < 6
    # the GPU path decodes without orientation and applies it itself; check that on CPU
    t = orient_tensor(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)), orientation)
    assert t.shape[1:] == (upright.size[1], upright.size[0])
    assert np.abs(t.permute(1, 2, 0).numpy()[:64, :64].astype(float) - ref).mean() < 6


def test_resume_reads_only_the_buffered_and_next_samples(shards, monkeypatch):
    import core.shards
    import train.data.read as data_mod  # the stage that reads shards

    data, cfg = _cfgs(shards)  # in-process (num_workers=0) so the reads can be counted
    first = ShardPairLoader(data, cfg)
    _stream(first, 8)  # 16 pairs consumed: 32 samples drawn, more read into the buffers
    state = first.state_dict()
    reads = []
    streamed = core.shards.iter_samples

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


# ------------------------------------------------------------------------------------------------ epoch coverage

SKEWED = {"one shard": [13], "primes": [2, 3, 5, 7, 11], "tiny last shard": [9, 9, 9, 1]}


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    base = tmp_path_factory.mktemp("skewed")
    return {name: str(write_demo_shards(base / name.replace(" ", "_"), {"content": counts, "style": [3, 2]},
                                        size=(64, 64), seed=i))
            for i, (name, counts) in enumerate(SKEWED.items())}


def _epoch_keys(root, world_size, num_workers, batch_size, **extra):
    """Content keys every rank yields in epoch 0, and the per-rank batch counts."""
    data = DataConfig(root=root, crop_size=16, short_side_min=16, short_side_max=32, style2=False)
    per_rank, counts = [], []
    for rank in range(world_size):
        cfg = LoaderConfig(batch_size=batch_size, num_workers=num_workers, shuffle_buffer=3, open_shards=2,
                           seed=7, prefetch_factor=1, **extra)
        loader = ShardPairLoader(data, cfg, rank=rank, world_size=world_size)
        n = loader.batches_per_epoch(0)
        batches = list(islice(iter(loader), n + 1))  # one more: it must belong to epoch 1
        assert [b["epoch"] for b in batches] == [0] * n + [1]
        assert all(len(b["content_key"]) == batch_size for b in batches)
        per_rank.append([k for b in batches[:n] for k in b["content_key"]])
        counts.append(n)
    return per_rank, counts


@pytest.mark.parametrize("layout", list(SKEWED))
@pytest.mark.parametrize("world_size,num_workers,batch_size", [(2, 2, 2), (3, 2, 1), (4, 1, 3)])
def test_every_sample_once_per_epoch_on_skewed_shards(skewed, layout, world_size, num_workers, batch_size):
    per_rank, counts = _epoch_keys(skewed[layout], world_size, num_workers, batch_size)
    total = sum(SKEWED[layout])
    assert len(set(counts)) == 1 and counts[0] == total // (world_size * batch_size)  # equal batches per rank
    keys = [k for rank in per_rank for k in rank]
    assert len(keys) == len(set(keys))  # nothing twice, across ranks and workers
    assert total - len(keys) < world_size * batch_size  # at most one global batch dropped


def test_one_shard_serves_every_reader_of_the_documented_smoke_layout(skewed):
    # 1 shard for 1 rank x 2 workers (the curation demo's layout) is no longer an error
    per_rank, counts = _epoch_keys(skewed["one shard"], 1, 2, 2)
    assert counts == [6] and len(set(per_rank[0])) == 12


def _elastic(root, old_ws, new_ws, steps, batch_size=2, num_workers=2):
    data = DataConfig(root=root, crop_size=16, short_side_min=16, short_side_max=32, style2=False)

    def cfg(nw):
        return LoaderConfig(batch_size=batch_size, num_workers=nw, shuffle_buffer=3, open_shards=2, seed=11,
                            prefetch_factor=1)

    before, states = [], []
    for rank in range(old_ws):
        loader = ShardPairLoader(data, cfg(num_workers), rank=rank, world_size=old_ws)
        before += [k for b in islice(iter(loader), steps) for k in b["content_key"]]
        states.append(loader.state_dict())
    after = []
    for rank in range(new_ws):
        loader = ShardPairLoader(data, cfg(1), rank=rank, world_size=new_ws)
        loader.load_state_dict(states)  # every rank's state, as the checkpoint holds them
        rest = loader.batches_per_epoch(0) - steps
        batches = list(islice(iter(loader), rest + 1))
        assert [b["epoch"] for b in batches] == [0] * rest + [1]
        after.append([k for b in batches[:rest] for k in b["content_key"]])
    return before, after


@pytest.mark.parametrize("new_ws", [1, 4])
def test_elastic_resume_deals_the_rest_of_the_epoch_to_the_new_ranks(skewed, new_ws):
    root = skewed["primes"]
    before, after = _elastic(root, 2, new_ws, steps=3)
    assert len({len(a) for a in after}) == 1  # the new ranks are balanced too
    rest = [k for a in after for k in a]
    assert not set(before) & set(rest)  # nothing of the epoch repeated
    assert len(rest) == len(set(rest))
    missing = sum(SKEWED["primes"]) - len(before) - len(rest)
    assert 0 <= missing < new_ws * 2  # nothing lost beyond the last partial global batch


def test_same_size_resume_after_an_elastic_one_is_identical(skewed):
    data = DataConfig(root=skewed["primes"], crop_size=16, short_side_min=16, short_side_max=32)
    cfg = LoaderConfig(batch_size=1, num_workers=0, shuffle_buffer=3, open_shards=2, seed=11)
    states = []
    for rank in range(2):
        loader = ShardPairLoader(data, cfg, rank=rank, world_size=2)
        list(islice(iter(loader), 4))
        states.append(loader.state_dict())
    elastic = ShardPairLoader(data, cfg, rank=0, world_size=1)
    elastic.load_state_dict(states)
    full = _stream(elastic, 9)
    again = ShardPairLoader(data, cfg, rank=0, world_size=1)
    again.load_state_dict(states)
    head = _stream(again, 4)
    resumed = ShardPairLoader(data, cfg, rank=0, world_size=1)
    resumed.load_state_dict(again.state_dict())
    assert head + _stream(resumed, 5) == full


# ------------------------------------------------------------------------------------------------ damaged samples


def _damage(root, shard_name, row, how):
    """Rewrite one sample's image in a shard: ``truncate`` its JPEG or replace it with ``garbage``."""
    import webdataset as wds

    from core.shards import iter_samples

    path = f"{root}/shards/{shard_name}"
    samples = [s for _, s in iter_samples(path)]
    with open(path, "wb") as f:
        writer = wds.TarWriter(f)
        for i, s in enumerate(samples):
            if i == row:
                s["jpg"] = s["jpg"][: len(s["jpg"]) // 2] if how == "truncate" else b"not an image"
            writer.write(s)
        writer.close()
    return samples[row]["__key__"]


def test_damaged_samples_are_skipped_logged_once_and_counted(tmp_path, caplog):
    root = write_demo_shards(tmp_path, {"content": [10, 10, 10, 10, 10], "style": [6]}, size=(64, 64))
    bad = {_damage(root, "content-000001.tar", 3, "truncate"), _damage(root, "content-000003.tar", 0, "garbage")}
    data = DataConfig(root=str(root), crop_size=16, short_side_min=16, short_side_max=32)
    cfg = LoaderConfig(batch_size=2, num_workers=0, shuffle_buffer=3, open_shards=2, seed=2,
                       max_damaged_fraction=0.05)
    loader = ShardPairLoader(data, cfg)
    n = loader.batches_per_epoch(0)
    with caplog.at_level("WARNING", logger="bbst.train.data"):
        batches = list(islice(iter(loader), 2 * n))  # two epochs: each damaged sample met twice
    keys = {k for b in batches for k in b["content_key"]}
    assert not keys & bad and len(keys) == 48
    assert all(b["content"].shape[0] == 2 for b in batches)
    assert loader.stats()["data/damaged_samples"] == 4
    warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warnings) == 2  # once per sample, with shard and key
    assert any("content-000001.tar" in w and next(iter(bad & {k for k in bad if k in w})) in w for w in warnings)
    # the skip is deterministic: a resumed loader yields the same batches
    first = ShardPairLoader(data, cfg)
    head = _stream(first, n - 3)
    resumed = ShardPairLoader(data, cfg)
    resumed.load_state_dict(first.state_dict())
    assert head + _stream(resumed, 6) == _stream(ShardPairLoader(data, cfg), n + 3)


def test_damaged_share_over_the_limit_stops_with_a_clear_error(tmp_path):
    root = write_demo_shards(tmp_path, {"content": [10, 10], "style": [6]}, size=(64, 64))
    key = _damage(root, "content-000000.tar", 4, "truncate")
    data = DataConfig(root=str(root), crop_size=16, short_side_min=16, short_side_max=32)
    cfg = LoaderConfig(batch_size=2, num_workers=0, shuffle_buffer=3, open_shards=2, max_damaged_fraction=0.0)
    with pytest.raises(LoaderError, match=rf"max_damaged_fraction=0.0; the latest: .*content-000000.tar key {key}"):
        list(islice(iter(ShardPairLoader(data, cfg)), 10))


@pytest.mark.parametrize("kind", ["cmyk", "gray", "gray16", "rgb48", "exif6"])
def test_modes_the_curation_policy_keeps_decode_correctly(kind):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)  # 128x96 colour blocks
    ref = Image.fromarray(rgb)
    buf = io.BytesIO()
    if kind == "cmyk":
        ref.convert("CMYK").save(buf, "JPEG", quality=95)
    elif kind == "gray":
        ref = ref.convert("L").convert("RGB")
        ref.convert("L").save(buf, "JPEG", quality=95)
    elif kind == "gray16":
        gray = np.asarray(ref.convert("L")).astype(np.uint16) * 257
        ref = ref.convert("L").convert("RGB")
        Image.fromarray(gray).save(buf, "PNG")  # 16-bit grayscale PNG (mode I;16)
    elif kind == "rgb48":
        import zlib

        # a 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)
        raw = b"".join(b"\x00" + (row.astype(">u2") * 257).tobytes() for row in rgb)
        h, w = rgb.shape[:2]

        def chunk(tag, payload):
            return len(payload).to_bytes(4, "big") + tag + payload + zlib.crc32(tag + payload).to_bytes(4, "big")
        buf.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, 2, 0, 0, 0]))
                  + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    elif kind == "exif6":
        exif = Image.Exif()
        exif[0x0112] = 6
        ref.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
    crop = decode_crops(buf.getvalue(), [CropSpec(10_000, 0.0, 0.0, False)], 64)[0]  # top-left, full size
    expected = np.asarray(ref.convert("RGB"))[:64, :64].astype(float)
    assert crop.shape == (64, 64, 3)
    assert np.abs(crop.astype(float) - expected).mean() < 8, kind


# ------------------------------------------------------------------------------------------------ several roots


def test_a_list_of_roots_is_one_stream_and_weights_set_each_share(tmp_path):
    a = write_demo_shards(tmp_path / "bbst", {"content": [6, 6], "style": [8, 8, 8, 6]}, size=(64, 64))
    b = write_demo_shards(tmp_path / "wikiart", {"style": [5, 5]}, size=(64, 64), seed=1)  # style only
    data = DataConfig(root=[str(a), str(b)], crop_size=16, short_side_min=16, short_side_max=32, style2=False)
    cfg = LoaderConfig(batch_size=2, num_workers=0, shuffle_buffer=3, open_shards=2, seed=1)
    loader = ShardPairLoader(data, cfg)
    assert loader.samples_per_epoch(0) == 12  # content only from the root that has it
    assert sum(s.nsamples for s in loader.style) == 40  # both roots' style, every sample once

    weighted = DataConfig(root=[str(a), str(b)], crop_size=16, short_side_min=16, short_side_max=32,
                          style2=False, style_weights=[0.7, 0.3])
    sources = ShardPairLoader(weighted, cfg).planner.style
    wikiart = {s.url for s in sources[1].shards}
    for epoch in range(3):
        runs = epoch_order(sources, 1, "style", epoch)
        shards = [s for src in sources for s in src.shards]
        from_b = sum(int(e - st) for sid, st, e in runs if shards[sid].url in wikiart)
        assert int((runs[:, 2] - runs[:, 1]).sum()) == 40 and from_b == 12  # 30 % of 40, WikiArt upsampled
    with pytest.raises(ValueError, match="one non-negative weight per data.root entry"):
        DataConfig(root=[str(a), str(b)], style_weights=[1.0])


def test_the_gpu_decode_path_skips_truncated_jpegs_in_the_worker(tmp_path):
    import dataclasses

    root = write_demo_shards(tmp_path, {"content": [6, 6], "style": [4]}, size=(64, 64))
    bad = _damage(root, "content-000001.tar", 2, "truncate")
    data = DataConfig(root=str(root), crop_size=16, short_side_min=16, short_side_max=32)
    cfg = LoaderConfig(batch_size=2, num_workers=0, shuffle_buffer=3, open_shards=2, max_damaged_fraction=0.2)
    loader = ShardPairLoader(data, cfg)
    loader.cfg = dataclasses.replace(cfg, decode="cuda")  # the byte-shipping path, finished on the CPU here
    batches = list(islice(iter(loader), loader.batches_per_epoch(0)))
    assert bad not in {k for b in batches for k in b["content_key"]}
    assert all(b["content"].shape == (2, 3, 16, 16) for b in batches)
    assert loader.stats()["data/damaged_samples"] == 1


def test_the_uneven_set_with_a_truncated_and_a_cmyk_jpeg_covers_its_epoch(tmp_path):
    import webdataset as wds

    from core.shards import iter_samples

    sizes = [1, 2, 3, 4, 5, 1, 2, 3, 25, 4, 2, 1]  # 12 shards of 1 to 25 samples, 53 in all
    root = write_demo_shards(tmp_path, {"content": sizes, "style": [4, 4]}, size=(64, 64))
    truncated = _damage(root, "content-000008.tar", 7, "truncate")
    path = root / "shards" / "content-000004.tar"  # one sample re-encoded as a CMYK JPEG
    samples = [s for _, s in iter_samples(str(path))]
    buf = io.BytesIO()
    Image.open(io.BytesIO(samples[2]["jpg"])).convert("CMYK").save(buf, "JPEG", quality=90)
    samples[2]["jpg"] = buf.getvalue()
    cmyk = samples[2]["__key__"]
    with open(path, "wb") as f:
        writer = wds.TarWriter(f)
        for s in samples:
            writer.write(s)
        writer.close()
    per_rank, counts = _epoch_keys(str(root), 2, 2, 2)  # default max_damaged_fraction: one is tolerated
    keys = [k for rank in per_rank for k in rank]
    assert counts == [13, 13] and len(keys) == 52
    assert truncated not in keys and cmyk in keys
    # 53 positions, 13 steps x 4 yielded: every healthy sample except the 1-sample remainder dropped this epoch
    # (the truncated one's slot holds a second crop of a healthy sample from its batch)
    assert len(set(keys)) >= 51
