"""train/evaluation.py + pipelines/make_protocol.py + pipelines/evaluate.py: protocol files round-trip, metrics on
hand-computed cases (non-square style included), and an evaluation of NeAT and RAST rows on a generated protocol."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from core.config import ConfigError
from train.evaluation import Protocol, apply_size, load_protocol, save_protocol, write_tiny_protocol
from train.losses import gram_matrix
from train.metrics import StyleTransferMetrics, chamfer_colour_distance, match_style, ssim
from train.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_protocol_round_trips(tmp_path):
    proto = Protocol(name="p", contents=["c/a.jpg", "s3://bucket/b.png"], styles=["s/x.png"], pairs=[[1, 0]],
                     sizes=["native", "512x512", "max:1024"], metrics=["lpips", "gram"], style_match="pad",
                     timing_sizes=["1920x1080"], sha256={"c/a.jpg": "0" * 64}, notes="n")
    save_protocol(proto, tmp_path / "p.yaml")
    loaded, base = load_protocol(tmp_path / "p.yaml")
    assert loaded == proto and base == tmp_path
    assert loaded.pair_list() == [(1, 0)]
    assert Protocol(contents=["a", "b"], styles=["x", "y", "z"]).pair_list()[:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    data = yaml.safe_load((tmp_path / "p.yaml").read_text())
    for bad, match in (({"sizes": ["512"]}, "expected WIDTHxHEIGHT"), ({"pairs": [[0, 5]]}, "within the lists"),
                       ({"metrics": ["fid"]}, "unknown"), ({"colour": 1}, "colour"),
                       ({"contents": [], "pairs": []}, "lists no contents")):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**data, **bad}))
        with pytest.raises(ConfigError, match=match):
            load_protocol(tmp_path / "bad.yaml")


def test_make_protocol_picks_records_and_verifies(tmp_path):
    from core.synthetic import artwork_like, photo_like
    from pipelines.make_protocol import main

    for i in range(5):
        photo_like(40, 32, seed=i).save(tmp_path / f"c{i}.jpg")
    (tmp_path / "art").mkdir()
    for i in range(6):
        artwork_like(32, 32, seed=i).save(tmp_path / "art" / f"s{i}.png")
    (tmp_path / "contents.txt").write_text("\n".join(f"c{i}.jpg" for i in range(5)) + "\n")
    out = main(["--template", "train/protocols/neat_paper.yaml", "--content", str(tmp_path / "contents.txt"),
                "--style", str(tmp_path / "art"), "--n-content", "3", "--n-style", "4", "--seed", "1",
                "--out", str(tmp_path / "eval" / "protocol.yaml")])
    proto, base = load_protocol(out)
    assert len(proto.contents) == 3 and len(proto.styles) == 4 and len(proto.pair_list()) == 12
    assert proto.sizes == ["max:1024", "512x512"] and proto.timing_sizes == ["256x256", "512x512", "1920x1080"]
    assert all(c.startswith("../c") for c in proto.contents) and set(proto.sha256) == set(proto.contents +
                                                                                          proto.styles)
    again = main(["--template", "train/protocols/neat_paper.yaml", "--content", str(tmp_path / "contents.txt"),
                  "--style", str(tmp_path / "art"), "--n-content", "3", "--n-style", "4", "--seed", "1",
                  "--out", str(tmp_path / "again.yaml")])
    assert [p.rsplit("/", 1)[-1] for p in load_protocol(again)[0].contents] == \
        [p.rsplit("/", 1)[-1] for p in proto.contents]  # the pick is reproducible
    with pytest.raises(ConfigError, match="15 images wanted, only 5 found"):  # --debug: raise, not exit 2
        main(["--template", "train/protocols/neat_paper.yaml", "--content", str(tmp_path / "contents.txt"),
              "--style", str(tmp_path / "art"), "--out", str(tmp_path / "x.yaml"), "--debug"])
    from train.evaluation import verify_checksums

    verify_checksums(proto, base)
    artwork_like(32, 32, seed=99).save(tmp_path / "art" / proto.styles[0].rsplit("/", 1)[-1])
    with pytest.raises(ConfigError, match="sha256 mismatch"):
        verify_checksums(proto, base)


def test_style_is_cropped_or_padded_never_stretched():
    stripes = torch.zeros(1, 3, 32, 64)
    stripes[..., ::4] = 1.0  # vertical stripes, period 4 px, on a 2:1 style image
    cropped = match_style(stripes, (32, 32), "crop")
    assert torch.equal(cropped, stripes[..., 16:48])  # the centre, at its own scale: still period 4
    padded = match_style(stripes, (64, 64), "pad")
    assert padded.shape[-2:] == (64, 64) and torch.equal(padded[..., 16:48, :], stripes)
    small = match_style(stripes, (16, 16), "crop")  # downscaled by 2 (aspect kept), then cropped
    assert small.shape[-2:] == (16, 16)
    assert torch.equal(apply_size(torch.rand(1, 3, 30, 60), "20x20").new_tensor(
        apply_size(torch.rand(1, 3, 30, 60), "20x20").shape), torch.tensor([1, 3, 20, 20]))
    assert apply_size(torch.rand(1, 3, 30, 60), "max:40").shape[-2:] == (20, 40)


def test_metrics_on_hand_computed_cases():
    a, b = torch.full((1, 3, 32, 32), 0.5), torch.full((1, 3, 32, 32), 0.6)
    c1 = 0.01 ** 2
    # flat images: sigma terms vanish, SSIM = luminance term (float32 leaves ~1e-4 of rounding in the variances)
    assert ssim(a, b).item() == pytest.approx((2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1), rel=1e-3)
    assert ssim(b, b).item() == pytest.approx(1.0)
    feat = torch.ones(1, 2, 2, 2)
    assert torch.allclose(gram_matrix(feat), torch.full((1, 2, 2), 4 / 8))  # F F^T / (C H W)
    # Chamfer: one colour each, 25.5 apart on every channel of the 0-255 scale, both directions
    assert chamfer_colour_distance(a, b).item() == pytest.approx(2 * 3 * 25.5 ** 2, rel=1e-4)


def test_non_square_style_is_compared_by_its_centre():
    metrics = StyleTransferMetrics.random_init(metrics=["sifid", "gram", "chamfer"])
    g = torch.Generator().manual_seed(0)
    out = torch.rand(1, 3, 128, 128, generator=g)
    style = torch.rand(1, 3, 128, 256, generator=g)
    style[..., 64:192] = out  # a 1:2 style whose centre square is the output itself
    m = metrics(out, out, style)
    assert m["gram"][0] == pytest.approx(0.0, abs=1e-9) and m["sifid"][0] == pytest.approx(0.0, abs=1e-3)
    stretched = torch.nn.functional.interpolate(style, size=(128, 128), mode="bilinear", antialias=True)
    m_stretched = StyleTransferMetrics.random_init(metrics=["gram"])(stretched, out, style)
    assert m_stretched["gram"][0] > 1e-6  # what a stretched comparison would have reported instead of 0


def _checkpoint(path, name: str, **kwargs):
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    torch.save({"model_name": name, "model_config": model.model_config(), "model": model.state_dict(), "step": 0},
               path)
    return path


def test_evaluate_neat_and_rast_rows_on_a_tiny_protocol(tmp_path, caplog):
    from pipelines.evaluate import main

    caplog.set_level("INFO", logger="bbst.progress")
    proto = write_tiny_protocol(tmp_path / "proto")
    neat = _checkpoint(tmp_path / "neat.pt", "neat_tiny")
    no_prior = _checkpoint(tmp_path / "no_prior.pt", "neat_tiny", prior_deltas=False)
    rast = _checkpoint(tmp_path / "rast.pt", "rast_tiny")
    res = main(["--protocol", str(proto), "--model", f"NeAT={neat}", "--model", f"NeAT (no prior deltas)={no_prior}",
                "--model", f"RAST={rast}", "--no-blur-row", "--random-metrics", "--device", "cpu",
                "--out", str(tmp_path / "eval")])
    labels = [r[0] for r in res["quality"]]
    main_rows = ["NeAT", "NeAT (no prior blurring)", "NeAT (no prior deltas)", "RAST"]
    # the model trained without prior deltas has no prior to blur, and RAST has no blur control: no extra rows
    assert labels == main_rows + [f"{x} (48x48)" for x in main_rows]
    assert all(r[1] == "4" for r in res["quality"])  # 2 contents x 2 styles
    assert [r[0] for r in res["speed"]] == main_rows and all(len(r) == 3 for r in res["speed"])
    out = tmp_path / "eval"
    header = (out / "quality.csv").read_text().splitlines()[0]
    assert header == "Model,pairs,LPIPS ↓,SIFID ↓,Chamfer ↓,SSIM ↑,Gram ↓ (×10³)"
    assert "RANDOM" in (out / "quality.md").read_text() and "median of 2" in (out / "speed.md").read_text()
    with open(out / "per_pair.csv") as f:
        assert len(list(csv.DictReader(f))) == 4 * 8
    page = (out / "grid.html").read_text()
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) == 4 * (2 + 4)  # 4 grid pairs x (content, style, 4 rows)
    assert all((out / s).is_file() for s in srcs)
    # progress: one line at the end (a log line every interval in between, a live bar on a terminal)
    progress = [r.getMessage() for r in caplog.records if r.name == "bbst.progress"]
    assert progress and progress[-1].startswith("[evaluate] pairs 32/32 (100%)"), progress
    # grid.png names its columns above the first row: a strip of text over each of the 6 columns
    with Image.open(out / "grid.png") as img:
        grid = np.asarray(img.convert("L"))
    cell, pad = 192, 4
    assert grid.shape[1] == 6 * (cell + pad) + pad and grid.shape[0] > 4 * (cell + pad) + pad
    strip = grid[: grid.shape[0] - (4 * (cell + pad) + pad)]
    for j in range(6):
        column = strip[:, pad + j * (cell + pad): pad + j * (cell + pad) + cell]
        assert (column < 128).sum() > 10, f"column {j} has no label"


def test_grid_labels_are_cut_to_their_column():
    from train.image_grid import make_grid

    img = torch.rand(3, 20, 30)
    plain = make_grid([[img, img]], cell=64)
    labelled = make_grid([[img, img]], cell=64, labels=["content", "a very long model name indeed (512x512)"])
    assert labelled.shape[2] == plain.shape[2] and labelled.shape[1] > plain.shape[1]
    assert torch.equal(labelled[:, -plain.shape[1]:], plain)  # the images are where they were, below the strip


def test_grid_renders_in_chromium(tmp_path):
    """The grid page of a tiny evaluation (outputs precomputed: a copy of the content) shows every image."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("no /usr/bin/chromium")
    from train.evaluation import Row, evaluate
    from train.inference import load_image, save_image

    proto_path = write_tiny_protocol(tmp_path / "proto")
    proto, base = load_protocol(proto_path)
    proto.sizes, proto.metrics = ["max:64"], ["ssim"]
    outputs = tmp_path / "copy"
    for c in proto.contents:
        for s in proto.styles:
            save_image(load_image(base / c), outputs / f"{Path(c).stem}_stylized_{Path(s).stem}.png")
    evaluate(proto, [Row("copy", outputs=str(outputs))], tmp_path / "eval", StyleTransferMetrics.random_init(
        metrics=["ssim"]), base_dir=base, timing=False)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((tmp_path / "eval" / "grid.html").as_uri())
        page.wait_for_load_state("load")
        page.evaluate("() => Promise.all([...document.images].map(i => i.decode()))")
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        assert len(widths) == 4 * 3 and all(w > 0 for w in widths)  # 4 pairs x (content, style, row)
        assert page.eval_on_selector_all("table.grid thead th", "els => els.map(e => e.textContent)") == [
            "content", "style", "copy"]
        quality = page.eval_on_selector_all("table.scores", "els => els.map(e => e.innerText)")[0]
        assert "SSIM" in quality and "copy" in quality  # the quality table above the grid
        browser.close()
