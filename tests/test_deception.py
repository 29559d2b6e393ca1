"""Deception rate with a user-supplied TorchScript artist model: classify and nearest-reference protocols."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from train.deception import DeceptionRate, load_artist_model, read_artist_csv


class MeanColour(nn.Module):
    """A toy 'artist classifier': logits = mean RGB (red -> artist 0, green -> 1, blue -> 2); features likewise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def _solid(rgb: tuple[float, float, float], n: int = 1) -> torch.Tensor:
    return torch.tensor(rgb).view(1, 3, 1, 1).expand(n, 3, 16, 16).clone()


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "artist.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(MeanColour(), (torch.rand(2, 3, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def test_torchscript_files_load_too(tmp_path):
    import warnings

    path = tmp_path / "artist_ts.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(MeanColour()), str(path))
    out = load_artist_model(path)(torch.ones(1, 3, 4, 4))
    assert out.shape == (1, 3)


def test_classify_protocol(model_file):
    model = load_artist_model(model_file)
    rate = DeceptionRate(model, "classify", artists=["red", "green", "blue"], input_size=8,
                         mean=(0, 0, 0), std=(1, 1, 1))
    assert rate.add(_solid((1, 0, 0), 2), ["red", "red"]) == [True, True]
    assert rate.add(_solid((0, 1, 0)), ["blue"]) == [False]
    rate.add(_solid((0, 0, 1)), ["blue"])
    res = rate.result()
    assert res["n"] == 4 and res["deception_rate"] == pytest.approx(3 / 4)
    assert res["deception_rate_artist_mean"] == pytest.approx((1.0 + 0.5) / 2)  # red 2/2, blue 1/2


def test_nearest_protocol(model_file):
    rate = DeceptionRate(load_artist_model(model_file), "nearest", input_size=8, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError, match="set_references"):
        rate.predict(_solid((1, 0, 0)))
    refs = torch.cat([_solid((0.9, 0.1, 0.1)), _solid((0.1, 0.1, 0.9))])
    rate.set_references(refs, ["monet", "picasso"])
    assert rate.predict(torch.cat([_solid((0.8, 0.2, 0.2)), _solid((0.2, 0.2, 0.7))])) == ["monet", "picasso"]
    rate.add(_solid((0.8, 0.2, 0.2)), ["picasso"])
    assert rate.result()["deception_rate"] == 0.0


def test_clear_errors(tmp_path, model_file):
    with pytest.raises(FileNotFoundError, match="artist model not found"):
        load_artist_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="neither a torch.export program nor a TorchScript model"):
        load_artist_model(bad)
    rate = DeceptionRate(load_artist_model(model_file), "classify", artists=["a", "b"], input_size=8)
    with pytest.raises(ValueError, match="3 logits but 2 artist names"):
        rate.predict(_solid((1, 0, 0)))
    csv_path = tmp_path / "artists.csv"
    csv_path.write_text("style,artist\nstyles/s1.jpg,monet\n")
    assert read_artist_csv(csv_path) == {"s1": "monet"}


def test_reference_set_from_a_folder_or_a_list_and_the_thirty_painting_rule(tmp_path, model_file):
    from PIL import Image

    from train.deception import keep_artists_with, read_reference_set, reference_batches
    from train.inference import load_image

    for artist, n in (("monet", 3), ("kahlo", 1)):
        (tmp_path / "refs" / artist).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (12, 10), (200, 10 * i, 10) if artist == "monet" else (10, 10, 200)).save(
                tmp_path / "refs" / artist / f"{artist}{i}.png")
    refs = read_reference_set(tmp_path / "refs")
    assert sorted(a for _, a in refs) == ["kahlo", "monet", "monet", "monet"]
    listed = tmp_path / "refs.csv"
    listed.write_text("image,artist\nrefs/monet/monet0.png,monet\n" + f"{tmp_path}/refs/kahlo/kahlo0.png,kahlo\n")
    assert read_reference_set(listed) == [(tmp_path / "refs/monet/monet0.png", "monet"),
                                          (tmp_path / "refs/kahlo/kahlo0.png", "kahlo")]
    assert {a for _, a in keep_artists_with(refs, 2)} == {"monet"}  # the paper keeps artists with >= 30
    with pytest.raises(FileNotFoundError, match="reference set not found"):
        read_reference_set(tmp_path / "nope")
    # features of a set larger than one batch, computed batch by batch
    rate = DeceptionRate(load_artist_model(model_file), input_size=8, mean=(0, 0, 0), std=(1, 1, 1))
    assert rate.mode == "nearest"
    rate.set_references(reference_batches([p for p, _ in refs], load_image, 8, batch=3), [a for _, a in refs])
    assert rate.ref_feats.shape[0] == 4
    assert rate.add(torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 8, 8), ["kahlo"]) == [True]


class _WritesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pt2_with_a_pickled_member_runs_nothing(tmp_path, model_file):
    """torch.export.load falls back to full pickle for some members; such an archive is refused before it loads."""
    import io
    import zipfile

    from core.tensorfile import PickleRefusedError

    marker = tmp_path / "ran"
    evil = io.BytesIO()
    torch.save({"x": _WritesMarker(marker)}, evil)
    crafted = tmp_path / "crafted.pt2"
    with zipfile.ZipFile(model_file) as src, zipfile.ZipFile(crafted, "w") as out:
        names = [i.filename for i in src.infolist()]
        assert any(n.endswith("sample_inputs/model.pt") for n in names), names
        for info in src.infolist():
            out.writestr(info, evil.getvalue() if info.filename.endswith("sample_inputs/model.pt")
                         else src.read(info.filename))
    with pytest.raises(PickleRefusedError, match=r"refused: .*posix\.system"):
        load_artist_model(crafted)
    with pytest.raises(PickleRefusedError, match=r"refused: .*posix\.system"):  # TorchScript is tried first
        load_artist_model(crafted.rename(tmp_path / "crafted.pt"))
    assert not marker.exists()
