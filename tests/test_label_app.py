"""Labeling web app: access token off loopback, validation and path traversal, and a real-browser session
(keyboard labeling, undo, grid, zoom, a retrain round on the dashboard, SIGKILL + restart losing nothing)."""

import csv
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from label_pool import make_folder_pool, truth_of_key

from pipelines import label as label_app

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    return make_folder_pool(tmp_path_factory.mktemp("labelpool") / "pool", 40)


def _cfg(pool_dir, tmp_path, **kw):
    return label_app.LabelConfig(pool=str(pool_dir), db=str(tmp_path / "labels.sqlite"), model="test_vit_shared",
                                 **kw)


def test_token_decision_by_bind_address():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert not label_app.needs_token(host), host
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert label_app.needs_token(host), host


def test_cli_off_loopback_requires_token_on_every_request(pool_dir, tmp_path, monkeypatch, capsys):
    from fastapi.testclient import TestClient

    started = {}
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, **kw: started.update(app=app, host=host, port=port))
    args = ["--pool", str(pool_dir), "--db", str(tmp_path / "l.sqlite"), "--model", "test_vit_shared"]
    assert label_app.main(args + ["--host", "0.0.0.0", "--port", "8123"]) == 0
    out = capsys.readouterr().out
    token = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("access token: "))
    assert f"?token={token}" in out and started["host"] == "0.0.0.0"
    c = TestClient(started["app"], base_url="http://10.1.2.3:8123", follow_redirects=False)
    for path in ("/api/session", "/", "/static/label.js", "/api/image?key=img00001.jpg"):
        r = c.get(path)
        assert r.status_code == 401 and "access token required" in r.json()["error"], path
    assert c.get("/api/session", headers={"x-access-token": "wrong"}).status_code == 401
    assert c.get("/api/session", headers={"x-access-token": token}).status_code == 200
    assert c.get("/api/session", headers={"authorization": f"Bearer {token}"}).status_code == 200
    r = c.get(f"/dashboard?token={token}")  # the printed link: token traded for an HttpOnly cookie
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    assert "httponly" in r.headers["set-cookie"].lower()
    assert c.get("/api/stats").status_code == 200  # the cookie now rides along
    assert c.post("/api/label", json={"annotator": "a", "key": "img00001.jpg", "label": "skip"}).status_code == 200

    # default bind: loopback, no token, and other Host names are refused (DNS rebinding)
    capsys.readouterr()
    assert label_app.main(args) == 0
    assert "access token" not in capsys.readouterr().out and started["host"] == "127.0.0.1"
    local = TestClient(started["app"], base_url="http://127.0.0.1:8000")
    assert local.get("/api/session").status_code == 200
    assert local.get("/api/session", headers={"host": "attacker.example"}).status_code == 403


def test_cli_bad_pool_is_one_clear_line(tmp_path, capsys):
    assert label_app.main(["--pool", str(tmp_path / "missing"), "--db", str(tmp_path / "l.sqlite"),
                           "--model", "test_vit_shared"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bbst label: error: ") and "missing: pool not found" in err and "Traceback" not in err
    assert label_app.main(["--pool", str(tmp_path), "--set", "sampling.nope=1"]) == 2
    assert "--set sampling.nope=1: unknown key sampling.nope" in capsys.readouterr().err


def test_validation_traversal_and_json_errors(pool_dir, tmp_path):
    from fastapi.testclient import TestClient

    app = label_app.create_app(_cfg(pool_dir, tmp_path), start_background=False)
    c = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)
    for key in ("../pool/img00001.jpg", "/etc/passwd", "img00001.jpg/../../x", "..%2F..%2Fetc%2Fpasswd"):
        r = c.get("/api/image", params={"key": key, "size": "full"})
        assert r.status_code == 404 and "no image with key" in r.json()["error"]
    assert c.get("/api/image", params={"key": "img00001.jpg", "size": "full"}).content == \
        (pool_dir / "img00001.jpg").read_bytes()
    assert c.get("/api/image", params={"key": "img00001.jpg", "size": "huge"}).status_code == 422
    bad_bodies = [
        {"annotator": "a", "key": "img00001.jpg", "label": "maybe"},
        {"annotator": "a", "key": "img00001.jpg", "label": "skip", "extra": 1},
        {"annotator": "<script>", "key": "img00001.jpg", "label": "skip"},
        {"annotator": "a", "key": "img00001.jpg", "label": "skip", "score_shown": 7},
    ]
    for body in bad_bodies:
        r = c.post("/api/label", json=body)
        assert r.status_code == 422 and r.json()["error"].startswith("invalid request"), body
        assert "Traceback" not in r.text
    r = c.post("/api/label", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    r = c.post("/api/label", json={"annotator": "a", "key": "nope.jpg", "label": "skip"})
    assert r.status_code == 404
    assert c.post("/api/undo", json={"annotator": "a"}).status_code == 409
    assert c.post("/api/export/checkpoint").status_code == 409  # no head yet: a clear message
    # internal errors are a JSON message, never a stack trace
    app.state.session.store.counts = lambda: (_ for _ in ()).throw(RuntimeError("secret detail"))
    r = c.get("/api/stats")
    assert r.status_code == 500 and r.json() == {"error": "internal error (RuntimeError); see the server log"}


def test_export_import_over_http(pool_dir, tmp_path):
    from fastapi.testclient import TestClient

    app = label_app.create_app(_cfg(pool_dir, tmp_path), start_background=False)
    c = TestClient(app, base_url="http://127.0.0.1")
    items = c.get("/api/next", params={"annotator": "ann", "n": 5}).json()["items"]
    assert len(items) == 5
    body = {"annotator": "ann", "items": [{"annotator": "ann", "key": it["key"], "label": "stylistic"}
                                          for it in items]}
    assert len(c.post("/api/labels", json=body).json()["ids"]) == 5
    exported = c.get("/api/export", params={"format": "csv"}).text
    assert len(list(csv.DictReader(io.StringIO(exported)))) == 5
    parquet = c.get("/api/export", params={"format": "parquet"}).content
    other = label_app.create_app(_cfg(pool_dir, tmp_path / "other"), start_background=False)
    c2 = TestClient(other, base_url="http://127.0.0.1")
    r = c2.post("/api/import", params={"format": "parquet"}, content=parquet)
    assert r.json() == {"imported": 5, "keys_not_in_pool": 0}
    assert c2.get("/api/stats").json()["counts"]["by_annotator"]["ann"]["stylistic"] == 5
    r = c2.post("/api/import", params={"format": "csv"}, content=b"key,label\nimg00001.jpg,yes\n")
    assert r.status_code == 400 and "uploaded csv file: row 1" in r.json()["error"]


def test_second_annotator_is_asked_for_agreement_and_kappa_reported(pool_dir, tmp_path):
    from fastapi.testclient import TestClient

    from classifier.sampling import SamplingConfig

    cfg = _cfg(pool_dir, tmp_path, sampling=SamplingConfig(uncertainty_share=0.0, random_share=0.5,
                                                           agreement_share=0.5))
    c = TestClient(label_app.create_app(cfg, start_background=False), base_url="http://127.0.0.1")
    first = c.get("/api/next", params={"annotator": "ann", "n": 10}).json()["items"]
    for it in first:
        c.post("/api/label", json={"annotator": "ann", "key": it["key"], "label": "stylistic"
                                   if truth_of_key(it["key"]) else "not_stylistic", "reason": it["reason"]})
    # items ann holds are never handed to bob as fresh ones; decided ones come back to him for agreement
    asked = c.get("/api/next", params={"annotator": "bob", "n": 10}).json()["items"]
    agree = [it for it in asked if it["reason"] == "agreement"]
    assert len(agree) == 5 and {it["key"] for it in agree} <= {it["key"] for it in first}
    assert {r["key"] for r in app_assignments(c, "bob")} == {it["key"] for it in agree}  # persisted
    for i, it in enumerate(agree):
        truth = "stylistic" if truth_of_key(it["key"]) else "not_stylistic"
        flipped = "not_stylistic" if truth == "stylistic" else "stylistic"
        c.post("/api/label", json={"annotator": "bob", "key": it["key"], "label": flipped if i == 0 else truth})
    ag = c.get("/api/stats").json()["agreement"]
    assert ag["items_multi"] == 5 and ag["items_disagreed"] == 1
    assert ag["pairs"][0]["annotators"] == ["ann", "bob"] and ag["pairs"][0]["observed_agreement"] == 0.8
    # the disagreement goes to a third annotator first, as a tie-breaker
    third = c.get("/api/next", params={"annotator": "cy", "n": 4}).json()["items"]
    assert [it["reason"] for it in third].count("disagreement") == 1


def app_assignments(client, annotator):
    return client.app.state.session.store.assignments(annotator)


def test_start_from_a_classifier_checkpoint(pool_dir, tmp_path):
    """--classifier: the pool is scored by the given head from the start and uncertainty sampling begins."""
    from fastapi.testclient import TestClient

    from classifier.demo import build_demo_classifier

    keys = sorted(p.name for p in pool_dir.iterdir())[:16]
    ckpt = build_demo_classifier([(pool_dir / k).read_bytes() for k in keys], [truth_of_key(k) for k in keys],
                                 str(tmp_path / "ckpt"), model_name="test_vit_shared")
    cfg = _cfg(pool_dir, tmp_path, classifier=ckpt)
    app = label_app.create_app(cfg, start_background=False)
    learner = app.state.session.learner
    assert learner.threshold == 0.5 and learner.model_version.startswith("demo-")
    learner.compute_features(list(app.state.session.pool.keys))  # what the background worker does
    assert len(learner.scores) == 40
    c = TestClient(app, base_url="http://127.0.0.1")
    items = c.get("/api/next", params={"annotator": "ann", "n": 8}).json()["items"]
    assert {"uncertain", "random"} >= {it["reason"] for it in items} and "uncertain" in {it["reason"] for it in items}
    assert all(it["score"] is not None and it["model_version"] == learner.model_version for it in items)
    c.post("/api/label", json={"annotator": "ann", "key": items[0]["key"], "label": "stylistic",
                               "score_shown": items[0]["score"], "model_version": items[0]["model_version"]})
    # undo puts the item back on ann's screen only
    undone = c.post("/api/undo", json={"annotator": "ann"}).json()["item"]
    bob = c.get("/api/next", params={"annotator": "bob", "n": 40}).json()["items"]
    assert undone["key"] not in {it["key"] for it in bob}
    # the checkpoint can be exported straight away
    out = c.post("/api/export/checkpoint").json()
    assert out["model_version"] == learner.model_version and Path(out["path"], "config.json").is_file()


# ------------------------------------------------------------------------------------------ browser session
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(pool: Path, db: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "pipelines" / "label.py"), "--pool", str(pool), "--db", str(db),
           "--model", "test_vit_shared", "--port", str(port), "--retrain-every", "6", "--min-per-class", "2",
           "--set", "active.val_fraction=0.4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"label server exited early: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/session", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("label server did not start within 120 s")


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to run the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


@pytest.mark.browser
@pytest.mark.slow
def test_browser_session_survives_kill_and_restart(pool_dir, tmp_path, browser):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    db = tmp_path / "labels.sqlite"
    proc = _start_server(pool_dir, db, port)
    try:
        ctx = browser.new_context(bypass_csp=True)  # the page CSP forbids eval; Playwright waits need it
        page = ctx.new_page()
        page.goto(base + "/")
        assert "target style" in page.inner_text("#guideline")
        page.fill("#annotator", "alice")
        page.press("#annotator", "Enter")
        page.wait_for_function("document.body.dataset.currentKey")
        done: list[tuple[str, str]] = []

        def current() -> str:
            return page.evaluate("document.body.dataset.currentKey")

        def decide(label: str | None = None) -> None:
            key = current()
            label = label or ("stylistic" if truth_of_key(key) else "not_stylistic")
            page.keyboard.press({"stylistic": "a", "not_stylistic": "x", "skip": " "}[label])
            page.wait_for_function("k => document.body.dataset.currentKey !== k", arg=key, timeout=15000)
            done.append((key, label))

        for _ in range(8):
            decide()
        assert page.locator("#recent li").count() == 8
        # backspace: the last decision is undone and its image comes back
        page.keyboard.press("Backspace")
        page.wait_for_function("k => document.body.dataset.currentKey === k", arg=done[-1][0])
        done.pop()
        assert page.locator("#recent li").count() == 7
        decide("skip")
        # zoom shows the original bytes at full resolution
        page.keyboard.press("z")
        page.wait_for_function("document.querySelector('#zoom img') && document.querySelector('#zoom img').complete")
        assert page.evaluate("document.querySelector('#zoom img').naturalWidth") == 64
        page.keyboard.press("Escape")

        # the dashboard shows a retrain round (accuracy / ROC-AUC points) once enough labels are in
        dash = ctx.new_page()
        dash.goto(base + "/dashboard")
        deadline = time.time() + 150  # generous: CI machines may be busy, the retrain thread runs niced
        while dash.evaluate("Number(document.body.dataset.rounds || 0)") < 1:
            assert time.time() < deadline, f"no round on the dashboard: {httpx.get(base + '/api/stats').json()}"
            if len(done) < 24:
                decide()
            time.sleep(0.3)
        dash.wait_for_selector("#rounds-plot circle[data-metric=accuracy]")
        assert dash.locator("#hist-plot rect").count() == 20
        assert "alice" in dash.inner_text("#counts")

        # grid view: bulk-decide a page of thumbnails
        page.keyboard.press("g")
        page.wait_for_selector("#grid .cell")
        grid_keys = page.eval_on_selector_all("#grid .cell", "els => els.map(e => e.dataset.key)")
        page.keyboard.press("Shift+X")
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('saved')")
        done.extend((k, "not_stylistic") for k in grid_keys)

        # SIGKILL at an arbitrary moment: every decision the page moved past is in the database
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = _start_server(pool_dir, db, port)
        rows = list(csv.DictReader(io.StringIO(httpx.get(base + "/api/export?format=csv").text)))
        got = {(r["key"], r["label"]) for r in rows if r["annotator"] == "alice"}
        assert got == set(done)
        assert all(r["round"] != "" and r["created_at"] for r in rows)
        assert any(r["model_version"] and r["score_shown"] for r in rows)  # decisions made after the first round

        # the page resumes: the same annotator sees the last ten decisions and only unlabelled images
        page.goto(base + "/")
        page.wait_for_function("document.body.dataset.currentKey")
        assert page.locator("#recent li").count() == 10
        assert current() not in {k for k, _ in done}
    finally:
        proc.kill()
        proc.wait(10)
