"""Inputs beyond http: the read-only-what-the-user-named policy, image listings, local and S3 reads."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ray_local import ray_local  # noqa: F401 - session fixture

from core import synthetic
from curate.build_config import BuildConfig
from curate.downloader import DownloadConfig, Downloader
from curate.imagecheck import ImageCheckConfig, ImageChecker
from curate.inputs import InputPolicy, canonical, image_root, source_for, url_kind
from curate.reader import ListNotFoundError, ReaderConfig, ReaderError, iter_partitions


def jpeg(w: int = 96, h: int = 72, seed: int = 0) -> bytes:
    return synthetic.encode(synthetic.photo_like(w, h, seed=seed), "JPEG")


def fetch(cfg: DownloadConfig, urls: list) -> dict[str, np.ndarray]:
    return Downloader(cfg)({"url": np.array(urls, dtype=object)})


# -- the policy, as pure functions ---------------------------------------------------------------------------------
def test_url_kinds():
    assert url_kind("https://a/b.jpg") == "http" and url_kind("HTTP://a") == "http"
    assert url_kind("/data/a.jpg") == url_kind("file:///data/a.jpg") == "local"
    assert url_kind("s3://bucket/a.jpg") == url_kind("gs://b/a") == url_kind("ftp://host/a") == "fsspec"
    assert url_kind("images/a.jpg") == url_kind("./a.jpg") == "relative"
    assert url_kind("") == url_kind("data:image/png;base64,AA") == url_kind("javascript:alert(1)") == "other"


def test_canonical_forms():
    assert canonical("/data/./art//x/../a.jpg") == "file:///data/art/a.jpg"
    assert canonical("file:///data/a%20b.jpg") == canonical("file://localhost/data/a b.jpg") == "file:///data/a b.jpg"
    assert canonical("s3://bucket/imgs/../secret/a.jpg") == "s3://bucket/secret/a.jpg"
    with pytest.raises(ValueError, match="host"):
        canonical("file://otherhost/etc/passwd")


def test_policy_reads_only_under_the_named_roots():
    policy = InputPolicy(["/data/art", "s3://bucket/imgs/"])
    for ok in ("/data/art/a.jpg", "/data/art/sub/b.png", "file:///data/art/c.jpg", "s3://bucket/imgs/x/y.jpg"):
        assert policy.refusal(ok) is None, ok
    for bad in ("/etc/passwd", "file:///etc/passwd", "/data/art/../../etc/passwd", "/data/artist/a.jpg",
                "/data/art/./../secret.jpg", "s3://bucket/imgs/../private/a.jpg", "s3://other/imgs/a.jpg",
                "gs://bucket/imgs/a.jpg", "file://evil.example/data/art/a.jpg"):
        assert policy.refusal(bad), bad
    assert "input_roots is empty" in InputPolicy([]).refusal("/etc/passwd")


def test_image_roots_and_sources():
    assert image_root("/data/art") == image_root("/data/art/") == "/data/art"
    assert image_root("/data/art/*/*.jpg") == "/data/art" and image_root("s3://b/imgs/**/*.png") == "s3://b/imgs"
    folders = ReaderConfig().source_folders
    assert source_for("/data/coco/train2017/1.jpg", "/data", folders) == "coco"
    assert source_for("/mnt/train2017/1.jpg", "/mnt/train2017", folders) == "coco"
    assert source_for("/data/WikiArt/Impressionism/monet.jpg", "/data", folders) == "wikiart"
    assert source_for("/data/mix/behance/p/1.jpg", "/data/mix", folders) == "behance"
    assert source_for("/data/mix/1.jpg", "/data/mix", folders) is None


# -- listing a folder of images ------------------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "datasets"
    files = {"wikiart/Baroque/b.jpg": jpeg(seed=1), "wikiart/Baroque/a.jpg": jpeg(seed=2),
             "coco/train2017/000001.jpg": jpeg(seed=3), "coco/train2017/000002.png": b"",
             "behance/p1/x.webp": b"", "notes.txt": b"not an image", ".hidden/z.jpg": jpeg(seed=4)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_folder_tree_lists_images_in_sorted_order_with_sources(tree):
    parts = list(iter_partitions(str(tree), ReaderConfig(format="images", rows_per_partition=2)))
    assert [p for p, _ in parts] == [0, 1, 2]
    rows = [r for _, t in parts for r in t.to_pylist()]
    rel = [os.path.relpath(r["url"], tree) for r in rows]
    assert rel == ["behance/p1/x.webp", "coco/train2017/000001.jpg", "coco/train2017/000002.png",
                   "wikiart/Baroque/a.jpg", "wikiart/Baroque/b.jpg"]
    assert [r["source"] for r in rows] == ["behance", "coco", "coco", "wikiart", "wikiart"]
    assert rows[0]["key"] == "0000000000000" and rows[2]["key"] == "0000010000000"
    assert all(os.path.isabs(r["url"]) for r in rows)


def test_glob_lists_only_matching_images(tree):
    rows = [r for _, t in iter_partitions(str(tree / "wikiart" / "*" / "*.jpg"), ReaderConfig(format="images"))
            for r in t.to_pylist()]
    assert [os.path.basename(r["url"]) for r in rows] == ["a.jpg", "b.jpg"]


def test_single_image_file(tree):
    one = str(tree / "wikiart" / "Baroque" / "a.jpg")
    rows = [r for _, t in iter_partitions(one, ReaderConfig(format="images")) for r in t.to_pylist()]
    assert [(r["url"], r["source"]) for r in rows] == [(one, "wikiart")]
    cfg = BuildConfig(urls=one, reader=ReaderConfig(format="images"))
    out = fetch(cfg.download, [one, str(tree / "wikiart" / "Baroque" / "b.jpg")])
    assert list(out["status"]) == ["ok", "blocked_address"]


def test_missing_or_empty_image_folder_is_a_user_error(tmp_path):
    with pytest.raises(ListNotFoundError):
        list(iter_partitions(str(tmp_path / "nope"), ReaderConfig(format="images")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReaderError, match="no image files"):
        list(iter_partitions(str(tmp_path / "empty"), ReaderConfig(format="images")))


def test_images_flag_config_reads_its_own_folder_only(tree):
    cfg = BuildConfig(urls=str(tree / "coco" / "*" / "*.jpg"), reader=ReaderConfig(format="images"))
    assert cfg.download.input_roots == [str(tree / "coco")]
    assert BuildConfig(urls="/data/list.csv").download.input_roots == []  # a URL list adds no root
    s3 = BuildConfig(urls="s3://bucket/imgs", reader=ReaderConfig(format="images"),
                     storage_options={"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}})
    assert s3.download.input_roots == ["s3://bucket/imgs"]
    assert s3.download.storage_options == {"s3": {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}}


def test_images_flag_on_the_command_line(tree):
    from pipelines import build_bbst

    args = build_bbst.build_parser().parse_args(["--images", str(tree), "--set", "download.input_roots=[/srv/x]"])
    cfg = build_bbst.load_cli_config(args)
    assert cfg.urls == str(tree) and cfg.reader.format == "images"
    assert cfg.download.input_roots == ["/srv/x", str(tree)]
    from core.config import ConfigError

    with pytest.raises(ConfigError, match="--images and --urls"):
        build_bbst.load_cli_config(build_bbst.build_parser().parse_args(["--images", str(tree), "--urls", "x.csv"]))


# -- reading local files -------------------------------------------------------------------------------------------
def test_local_rows_statuses(tree, tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg(seed=9))
    big = tree / "wikiart" / "big.jpg"
    big.write_bytes(jpeg(400, 300, seed=5))
    cfg = DownloadConfig(input_roots=[str(tree)], retries=1, backoff_base=0.01, max_bytes=len(big.read_bytes()) - 1)
    urls = [str(tree / "wikiart/Baroque/a.jpg"), f"file://{tree}/coco/train2017/000001.jpg",
            str(tree / "missing.jpg"), str(tree / "notes.txt"), str(tree / "coco/train2017/000002.png"),
            str(big), str(secret), f"{tree}/../secret.jpg", "/etc/passwd", "relative/a.jpg", str(tree / "wikiart")]
    out = fetch(cfg, urls)
    assert list(out["status"]) == ["ok", "ok", "download_error", "not_image", "not_image", "too_large",
                                   "blocked_address", "blocked_address", "blocked_address", "invalid_url",
                                   "download_error"], list(out["error"])
    assert out["error"][2] == "file not found"  # not retried: no "(after 2 attempts)"
    assert out["image"][0] == (tree / "wikiart/Baroque/a.jpg").read_bytes() and out["mime"][0] == "image/jpeg"
    assert out["http_status"][0] is None and out["num_bytes"][0] == len(out["image"][0])
    assert all(out["image"][i] is None for i in range(2, len(urls)))


def test_a_link_out_of_the_images_folder_is_refused_unless_its_folder_is_named(tree, tmp_path):
    """Listing --images DIR follows links, reading does not leave DIR: outside_root rows, nothing read."""
    private = tmp_path / "private"
    private.mkdir()
    (private / "me.jpg").write_bytes(jpeg(seed=7))
    inside = tree / "wikiart" / "Baroque" / "a.jpg"
    (tree / "wikiart" / "stolen.jpg").symlink_to(private / "me.jpg")
    (tree / "wikiart" / "host.jpg").symlink_to("/etc/hostname")
    (tree / "wikiart" / "again.jpg").symlink_to(inside)  # a link that stays inside the folder is read
    (tree / "elsewhere").symlink_to(private, target_is_directory=True)
    parts = list(iter_partitions(str(tree), ReaderConfig(format="images", rows_per_partition=100)))
    listed = [u for _, batch in parts for u in batch.column("url").to_pylist()]
    for name in ("wikiart/stolen.jpg", "wikiart/host.jpg"):  # listed (a linked folder is not walked)
        assert str(tree / name) in listed, listed
    urls = [str(tree / "wikiart/stolen.jpg"), str(tree / "wikiart/host.jpg"), str(tree / "elsewhere/me.jpg"),
            str(tree / "wikiart/again.jpg")]
    out = fetch(DownloadConfig(input_roots=[str(tree)], retries=0), urls)
    assert list(out["status"]) == ["outside_root"] * 3 + ["ok"], list(out["error"])
    assert out["image"][0] is None and out["image"][1] is None and out["image"][2] is None
    assert f"leads to {private / 'me.jpg'}, outside {tree}" in out["error"][0]
    assert out["image"][3] == inside.read_bytes()
    # naming the folder the links lead into lets them be read
    out = fetch(DownloadConfig(input_roots=[str(tree), str(private)], retries=0), urls[:1] + urls[2:3])
    assert list(out["status"]) == ["ok", "ok"] and out["image"][0] == (private / "me.jpg").read_bytes()


def test_a_url_list_alone_reads_no_local_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    out = fetch(DownloadConfig(retries=0), [str(tmp_path / "a.jpg"), "/etc/passwd", f"file://{tmp_path}/a.jpg"])
    assert list(out["status"]) == ["blocked_address"] * 3
    assert "download.input_roots" in out["error"][0]


def test_transient_read_errors_are_retried(tree, monkeypatch):
    d = Downloader(DownloadConfig(input_roots=[str(tree)], retries=2, backoff_base=0.001, backoff_max=0.01))
    fs, _, _ = d._filesystem(str(tree))
    real_open, calls = fs.open, []

    def flaky(path, *args, **kwargs):
        calls.append(path)
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(fs, "open", flaky)
    out = d({"url": np.array([str(tree / "wikiart/Baroque/a.jpg")], dtype=object)})
    assert out["status"][0] == "ok" and len(calls) == 3


def test_min_side_per_source_through_check(tree):
    coco = tree / "coco" / "train2017" / "000003.jpg"
    coco.write_bytes(jpeg(640, 480, seed=6))
    flickr = tree / "flickr" / "000003.jpg"
    flickr.parent.mkdir()
    flickr.write_bytes(jpeg(640, 480, seed=6))
    (tree / "coco/train2017/000002.png").unlink()
    (tree / "behance/p1/x.webp").unlink()
    cfg = BuildConfig(urls=str(tree), reader=ReaderConfig(format="images"))
    batch = {c: np.array(v, dtype=object) for _, t in iter_partitions(cfg.urls, cfg.reader)
             for c, v in t.to_pydict().items()}
    out = ImageChecker(ImageCheckConfig(min_side=400))(Downloader(cfg.download)(batch))
    got = {os.path.relpath(u, tree): s for u, s in zip(out["url"], out["status"], strict=True)}
    assert got["coco/train2017/000003.jpg"] == "ok"  # coco: 256 px floor by default
    assert got["flickr/000003.jpg"] == "ok"  # 480 >= the 400 floor set here
    assert got["wikiart/Baroque/a.jpg"] == "too_small"  # 72 px
    out = ImageChecker(ImageCheckConfig())(Downloader(cfg.download)(batch))
    got = {os.path.relpath(u, tree): s for u, s in zip(out["url"], out["status"], strict=True)}
    assert got["coco/train2017/000003.jpg"] == "ok" and got["flickr/000003.jpg"] == "too_small"


# -- S3 through moto -----------------------------------------------------------------------------------------------
def test_s3_images_listed_and_read(s3_endpoint):
    import fsspec

    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **opts)
    fs.mkdir("inputs")
    fs.pipe({"inputs/art/wikiart/a.jpg": jpeg(seed=1), "inputs/art/coco/b.jpg": jpeg(seed=2),
             "inputs/art/readme.txt": b"hello", "inputs/private/c.jpg": jpeg(seed=3)})
    cfg = BuildConfig(urls="s3://inputs/art", reader=ReaderConfig(format="images"), storage_options=opts)
    rows = [r for _, t in iter_partitions(cfg.urls, cfg.reader, storage_options=cfg.storage_options)
            for r in t.to_pylist()]
    assert [(r["url"], r["source"]) for r in rows] == [("s3://inputs/art/coco/b.jpg", "coco"),
                                                       ("s3://inputs/art/wikiart/a.jpg", "wikiart")]
    urls = [r["url"] for r in rows] + ["s3://inputs/art/missing.jpg", "s3://inputs/art/readme.txt",
                                       "s3://inputs/private/c.jpg", "s3://inputs/art/../private/c.jpg"]
    out = fetch(cfg.download, urls)
    assert list(out["status"]) == ["ok", "ok", "download_error", "not_image", "blocked_address",
                                   "blocked_address"], list(out["error"])
    assert out["image"][1] == jpeg(seed=1)


# -- the whole build from a folder ---------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_build_from_an_images_folder(tmp_path, ray_local):  # noqa: F811
    import pyarrow.parquet as pq

    from core import schema
    from pipelines import build_bbst

    root = tmp_path / "datasets"
    for i in range(3):
        (root / "coco" / "train2017").mkdir(parents=True, exist_ok=True)
        (root / "coco" / "train2017" / f"{i:012d}.jpg").write_bytes(
            synthetic.encode(synthetic.photo_like(320, 260, seed=30 + i), "JPEG"))
    (root / "wikiart" / "Cubism").mkdir(parents=True)
    for i in range(2):
        (root / "wikiart" / "Cubism" / f"w{i}.jpg").write_bytes(
            synthetic.encode(synthetic.artwork_like(300, 300, seed=40 + i), "JPEG"))
    whole = synthetic.encode(synthetic.artwork_like(300, 300, seed=50), "JPEG")
    (root / "wikiart" / "Cubism" / "cut.jpg").write_bytes(whole[:len(whole) // 2] + b"\xff\xd9")
    out = tmp_path / "out"
    summary = build_bbst.main(["--images", str(root), "--out", str(out), "--min-side", "280",
                               "--set", "progress_interval_s=0", "--set", "shards.target_samples=2"])
    assert summary["rows_in"] == 6
    assert {k: v for k, v in summary["counts_by_status"].items() if v} == {"ok": 5, "corrupt": 1}
    assert summary["counts_by_subset"] == {"style": 2, "content": 3}  # wikiart -> style, coco -> content
    meta = pq.read_table(out / schema.META_DIR).to_pylist()
    assert {(os.path.relpath(r["url"], root), r["source"]) for r in meta if r["status"] == "ok"} == {
        ("coco/train2017/000000000000.jpg", "coco"), ("coco/train2017/000000000001.jpg", "coco"),
        ("coco/train2017/000000000002.jpg", "coco"), ("wikiart/Cubism/w0.jpg", "wikiart"),
        ("wikiart/Cubism/w1.jpg", "wikiart")}


@pytest.mark.ray
@pytest.mark.slow
def test_build_from_an_s3_glob_to_s3(s3_endpoint, ray_local):  # noqa: F811
    """The documented S3 form: --images with a glob on a bucket, output to the bucket, one storage_options."""
    import json

    import fsspec

    from pipelines import build_bbst

    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **opts)
    fs.mkdir("art")
    fs.pipe({f"art/{style}/{i}.jpg": synthetic.encode(synthetic.artwork_like(300, 260, seed=60 + 7 * i + len(style)),
                                                      "JPEG")
             for style in ("cubism", "baroque") for i in range(2)})
    fs.pipe({"art/cubism/notes.txt": b"x", "art/readme.jpg": jpeg(seed=1)})  # outside the glob
    summary = build_bbst.main(["--images", "s3://art/*/*.jpg", "--out", "s3://art/runs/art", "--min-side", "256",
                               "--set", f"storage_options={json.dumps(opts)}", "--set", "progress_interval_s=0"])
    assert summary["rows_in"] == 4 and summary["counts_by_status"]["ok"] == 4
    fs.invalidate_cache()
    assert fs.exists("art/runs/art/summary.json")
