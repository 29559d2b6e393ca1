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
from loopback import free_port

from classifier.labeling.app import create_app, needs_token
from classifier.labeling.session import LabelConfig
from pipelines import label as label_app

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    return make_folder_pool(tmp_path_factory.mktemp("labelpool") / "pool", 40)


def _client(app, base: str = "http://127.0.0.1", **kw):
    """A TestClient that sends what a browser on the app's own page sends: its Origin."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=base, headers={"origin": base}, **kw)


def _cfg(pool_dir, tmp_path, **kw):
    return LabelConfig(pool=str(pool_dir), db=str(tmp_path / "labels.sqlite"), model="test_vit_shared",
                                 **kw)


def test_token_decision_by_bind_address():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert not needs_token(host), host
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert needs_token(host), host


def test_cli_off_loopback_requires_token_on_every_request(pool_dir, tmp_path, monkeypatch, capsys):
    from fastapi.testclient import TestClient

    started = {}

    def fake_run(app, host, port, **kw):  # stands in for the server while main() holds the session open
        started.update(host=host, port=port)
        started["check"](app)

    monkeypatch.setattr("uvicorn.run", fake_run)
    args = ["--pool", str(pool_dir), "--db", str(tmp_path / "l.sqlite"), "--model", "test_vit_shared"]

    def off_loopback(app):
        out = capsys.readouterr().out
        token = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("access token: "))
        assert f"?token={token}" in out
        c = TestClient(app, base_url="http://10.1.2.3:8123", follow_redirects=False,
                       headers={"origin": "http://10.1.2.3:8123"})
        for path in ("/api/session", "/", "/static/label.js", "/api/image?key=img00001.jpg"):
            r = c.get(path)
            assert r.status_code == 401 and "access token required" in r.json()["error"], path
        assert c.get("/api/session", headers={"x-access-token": "wrong"}).status_code == 401
        assert c.get("/api/session", headers={"x-access-token": token}).status_code == 200
        assert c.get("/api/session", headers={"authorization": f"Bearer {token}"}).status_code == 200
        # the token link: redirected on this server only (never to //host), the rest of the query kept encoded
        for path, location in ((f"/dashboard?token={token}", "/dashboard"),
                               (f"//evil.example/x?token={token}", "/evil.example/x"),
                               (f"/%5Cevil.example?token={token}", "/%5Cevil.example"),
                               (f"/?a=1%262&token={token}&b=x%20y&b=%3D", "/?a=1%262&b=x+y&b=%3D")):
            r = c.get("http://10.1.2.3:8123" + path)  # a full URL: httpx would read //host as a host
            assert r.status_code == 303 and r.headers["location"] == location, (path, r.headers.get("location"))
            assert "httponly" in r.headers["set-cookie"].lower()
        c.cookies.set("bbst_token", token)
        assert c.get("/api/stats").status_code == 200  # the cookie now rides along
        r = c.post("/api/label", json={"annotator": "a", "key": "img00001.jpg", "label": "skip"})
        assert r.status_code == 200

    started["check"] = off_loopback
    assert label_app.main(args + ["--host", "0.0.0.0", "--port", "8123"]) == 0
    assert started["host"] == "0.0.0.0"

    # default bind: loopback, no token, and other Host names are refused (DNS rebinding)
    def on_loopback(app):
        assert "access token" not in capsys.readouterr().out
        local = TestClient(app, base_url="http://127.0.0.1:8000")
        assert local.get("/api/session").status_code == 200
        assert local.get("/api/session", headers={"host": "attacker.example"}).status_code == 403

    started["check"] = on_loopback
    assert label_app.main(args) == 0  # the first server's database lock was released when it stopped
    assert started["host"] == "127.0.0.1"


def test_cli_bad_pool_is_one_clear_line(tmp_path, capsys):
    assert label_app.main(["--pool", str(tmp_path / "missing"), "--db", str(tmp_path / "l.sqlite"),
                           "--model", "test_vit_shared"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bbst label: error: ") and "missing: pool not found" in err and "Traceback" not in err
    assert label_app.main(["--pool", str(tmp_path), "--set", "sampling.nope=1"]) == 2
    assert "--set sampling.nope=1: unknown key sampling.nope" in capsys.readouterr().err


def test_validation_traversal_and_json_errors(pool_dir, tmp_path):

    app = create_app(_cfg(pool_dir, tmp_path), start_background=False)
    c = _client(app, raise_server_exceptions=False)
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

    app = create_app(_cfg(pool_dir, tmp_path), start_background=False)
    c = _client(app)
    items = c.post("/api/next", json={"annotator": "ann", "n": 5}).json()["items"]
    assert len(items) == 5
    body = {"annotator": "ann", "items": [{"annotator": "ann", "key": it["key"], "label": "stylistic"}
                                          for it in items]}
    assert len(c.post("/api/labels", json=body).json()["ids"]) == 5
    exported = c.get("/api/export", params={"format": "csv"}).text
    assert len(list(csv.DictReader(io.StringIO(exported)))) == 5
    parquet = c.get("/api/export", params={"format": "parquet"}).content
    other = create_app(_cfg(pool_dir, tmp_path / "other"), start_background=False)
    c2 = _client(other)
    r = c2.post("/api/import", params={"format": "parquet"}, content=parquet,
                headers={"content-type": "application/vnd.apache.parquet"})
    assert r.json() == {"imported": 5, "keys_not_in_pool": 0}
    assert c2.get("/api/stats").json()["counts"]["by_annotator"]["ann"]["stylistic"] == 5
    r = c2.post("/api/import", params={"format": "csv"}, content=b"key,label\nimg00001.jpg,yes\n",
                headers={"content-type": "text/csv"})
    assert r.status_code == 400 and "uploaded csv file: row 1" in r.json()["error"]


def test_second_annotator_is_asked_for_agreement_and_kappa_reported(pool_dir, tmp_path):

    from classifier.labeling.sampling import SamplingConfig

    cfg = _cfg(pool_dir, tmp_path, sampling=SamplingConfig(uncertainty_share=0.0, random_share=0.5,
                                                           agreement_share=0.5))
    c = _client(create_app(cfg, start_background=False))
    first = c.post("/api/next", json={"annotator": "ann", "n": 10}).json()["items"]
    for it in first:
        c.post("/api/label", json={"annotator": "ann", "key": it["key"], "label": "stylistic"
                                   if truth_of_key(it["key"]) else "not_stylistic", "reason": it["reason"]})
    # items ann holds are never handed to bob as fresh ones; decided ones come back to him for agreement
    asked = c.post("/api/next", json={"annotator": "bob", "n": 10}).json()["items"]
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
    third = c.post("/api/next", json={"annotator": "cy", "n": 4}).json()["items"]
    assert [it["reason"] for it in third].count("disagreement") == 1


def app_assignments(client, annotator):
    return client.app.state.session.store.assignments(annotator)


def test_start_from_a_classifier_checkpoint(pool_dir, tmp_path):
    """--classifier: the pool is scored by the given head from the start and uncertainty sampling begins."""

    from classifier.demo import build_demo_classifier

    keys = sorted(p.name for p in pool_dir.iterdir())[:16]
    ckpt = build_demo_classifier([(pool_dir / k).read_bytes() for k in keys], [truth_of_key(k) for k in keys],
                                 str(tmp_path / "ckpt"), model_name="test_vit_shared")
    cfg = _cfg(pool_dir, tmp_path, classifier=ckpt)
    app = create_app(cfg, start_background=False)
    learner = app.state.session.learner
    assert learner.threshold == 0.5 and learner.model_version.startswith("demo-")
    learner.compute_features(list(app.state.session.pool.keys))  # what the background worker does
    assert len(learner.scores) == 40
    c = _client(app)
    items = c.post("/api/next", json={"annotator": "ann", "n": 8}).json()["items"]
    assert {"uncertain", "random"} >= {it["reason"] for it in items} and "uncertain" in {it["reason"] for it in items}
    assert all(it["score"] is not None and it["model_version"] == learner.model_version for it in items)
    c.post("/api/label", json={"annotator": "ann", "key": items[0]["key"], "label": "stylistic",
                               "score_shown": items[0]["score"], "model_version": items[0]["model_version"]})
    # undo puts the item back on ann's screen only
    undone = c.post("/api/undo", json={"annotator": "ann"}).json()["item"]
    bob = c.post("/api/next", json={"annotator": "bob", "n": 40}).json()["items"]
    assert undone["key"] not in {it["key"] for it in bob}
    # the checkpoint can be exported straight away
    out = c.post("/api/export/checkpoint").json()
    assert out["model_version"] == learner.model_version and Path(out["path"], "config.json").is_file()


# ------------------------------------------------------------------------------------------ browser session
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
def test_browser_session_survives_kill_and_restart(tmp_path, browser):
    pool_dir = make_folder_pool(tmp_path / "pool", 60)  # room for the decisions below and some left over
    port = free_port()
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
        # items the page leased before the round carry no score: decide until one scored by the new model is
        # on screen, then decide that one too
        while not page.inner_text("#score").startswith("score "):
            assert time.time() < deadline and len(done) < 40, "no item with a score after the first round"
            decide()
        decide()

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


# ------------------------------------------------------------------------------------------ other sites
STATE_CHANGING = [("/api/import?format=csv", b"key,label\nimg00001.jpg,stylistic\n"), ("/api/retrain", b""),
                  ("/api/export/checkpoint", b""), ("/api/next", b'{"annotator": "mallory", "n": 8}'),
                  ("/api/label", b'{"annotator": "mallory", "key": "img00001.jpg", "label": "skip"}')]
SIMPLE_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]


def test_cross_site_requests_are_refused_and_same_origin_succeeds(pool_dir, tmp_path):
    app = create_app(_cfg(pool_dir, tmp_path), start_background=False)
    session = app.state.session
    started = []
    session.retrain_in_background = lambda: started.append(1) or True
    from fastapi.testclient import TestClient

    c = _client(app)
    bare = TestClient(app, base_url="http://127.0.0.1")  # sends no Origin unless told
    for path, body in STATE_CHANGING:
        for ctype in SIMPLE_TYPES:
            headers = {"content-type": ctype} if ctype else {}
            for foreign in ({"origin": "http://evil.example"}, {"origin": "http://127.0.0.1:9999"},
                            {"origin": "null"}, {"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"},
                            {"origin": "http://evil.example", "sec-fetch-site": "same-origin"}, {}):
                r = bare.post(path, content=body, headers={**headers, **foreign})
                assert r.status_code == 403 and "cross-site request refused" in r.json()["error"], (path, foreign)
    assert session.store.label_count(include_skips=True) == 0 and not started and not session._leases
    assert not (tmp_path / "labels.exports").exists()
    # /api/next leases items: a GET no longer exists
    assert c.get("/api/next", params={"annotator": "a"}).status_code == 405
    # the same requests from the app's own page pass the origin check (the import still needs a non-simple type)
    r = c.post("/api/import?format=csv", content=STATE_CHANGING[0][1], headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "text/csv" in r.json()["error"]
    r = c.post("/api/import?format=csv", content=STATE_CHANGING[0][1], headers={"content-type": "text/csv"})
    assert r.status_code == 200 and r.json()["imported"] == 1
    assert c.post("/api/retrain").status_code == 202 and started == [1]
    assert c.post("/api/export/checkpoint").status_code == 409  # past the guard: no head trained yet
    assert len(c.post("/api/next", json={"annotator": "ann", "n": 3}).json()["items"]) == 3
    # without Origin, a browser's Sec-Fetch-Site: same-origin (or none: typed in the address bar) is accepted
    for sfs in ("same-origin", "none"):
        r = bare.post("/api/label", json={"annotator": "ann", "key": "img00002.jpg", "label": "skip"},
                      headers={"sec-fetch-site": sfs})
        assert r.status_code == 200, sfs


@pytest.mark.browser
def test_a_page_on_another_origin_cannot_drive_the_session(pool_dir, tmp_path, browser):
    """Headless Chromium on an attacker page (another loopback port) sends no-cors requests: all refused."""
    import http.server
    import threading

    from label_server import serve

    app = create_app(_cfg(pool_dir, tmp_path), start_background=False)
    session = app.state.session
    started = []
    session.retrain_in_background = lambda: started.append(1) or True
    with serve(app) as target:
        attack = f"""<!doctype html><script>
        const t = {target!r};
        const opts = (body, type) => ({{method: "POST", mode: "no-cors", credentials: "include", body,
                                        headers: type ? {{"Content-Type": type}} : {{}}}});
        Promise.allSettled([
          fetch(t + "/api/import?format=csv", opts("key,label\\nimg00001.jpg,stylistic\\n", "text/plain")),
          fetch(t + "/api/retrain", opts("")),
          fetch(t + "/api/export/checkpoint", opts("")),
          fetch(t + "/api/next", opts('{{"annotator": "mallory", "n": 8}}', "text/plain")),
          fetch(t + "/api/next?annotator=mallory", {{mode: "no-cors"}}),
          fetch(t + "/api/label", opts('{{"annotator":"m","key":"img00001.jpg","label":"skip"}}', "text/plain")),
        ]).then(() => {{ document.title = "sent"; }});
        </script>""".encode()

        class Attacker(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.end_headers()
                self.wfile.write(attack)

            def log_message(self, *a):
                pass

        evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
            page.wait_for_function("document.title === 'sent'", timeout=20000)
            assert session.store.label_count(include_skips=True) == 0 and not started and not session._leases
            assert not (tmp_path / "labels.exports").exists()
            # control: the same request from the app's own page goes through
            page.goto(target + "/dashboard")
            status = page.evaluate("""() => fetch('/api/next', {method: 'POST', headers: {'Content-Type':
                'application/json'}, body: JSON.stringify({annotator: 'ann', n: 2})}).then(r => r.status)""")
            assert status == 200 and len(session._leases) == 2
        finally:
            evil.shutdown()
    session.close()


def test_bodies_over_the_limit_are_refused_before_they_are_read(pool_dir, tmp_path):

    from label_server import serve

    app = create_app(_cfg(pool_dir, tmp_path, max_json_kb=64, max_upload_mb=1), start_background=False)
    with serve(app) as base:
        port = int(base.rsplit(":", 1)[1])
        for path, declared in (("/api/label", 300 << 20), ("/api/import?format=csv", 300 << 20)):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                # 300 MB announced, 16 bytes sent: the answer must come without the server waiting for the rest
                sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {base}\r\n"
                             f"Content-Type: text/csv\r\nContent-Length: {declared}\r\n\r\n".encode() + b"x" * 16)
                reply = b""
                while chunk := sock.recv(65536):  # the server closes the connection after the refusal
                    reply += chunk
                reply = reply.decode()
            assert reply.startswith("HTTP/1.1 413") and "larger than" in reply, reply[:200]
        # a chunked body (no Content-Length) is cut off at the limit
        def chunks():
            for _ in range(200):
                yield b"a" * 8192

        with httpx.Client(base_url=base, headers={"origin": base}) as c:
            r = c.post("/api/label", content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413 and "request body larger than" in r.json()["error"]
            r = c.post("/api/import?format=csv", content=chunks(), headers={"content-type": "text/csv"})
            assert r.status_code == 413 and "import file larger than" in r.json()["error"]
            # under the limit: served normally
            assert c.post("/api/label", json={"annotator": "a", "key": "img00001.jpg", "label": "skip"}).status_code == 200
    app.state.session.close()


def test_names_import_values_assignments_and_swapped_links_over_http(pool_dir, tmp_path):
    import shutil

    pool = tmp_path / "pool"
    shutil.copytree(pool_dir, pool)
    app = create_app(_cfg(pool, tmp_path), start_background=False)
    c = _client(app, raise_server_exceptions=False)
    for i, name in enumerate(("bob", "BOB", "bob ", "ｂob")):
        assert c.post("/api/label", json={"annotator": name, "key": f"img0000{i}.jpg", "label": "stylistic"}
                      ).status_code == 200
    assert list(c.get("/api/stats").json()["counts"]["by_annotator"]) == ["bob"]
    assert len(c.get("/api/recent", params={"annotator": "Bob"}).json()["recent"]) == 4
    # import values: 4xx with row and column, never a 500
    r = c.post("/api/import?format=csv", content=b"key,label,round\nimg00009.jpg,stylistic,abc\n",
               headers={"content-type": "text/csv"})
    assert r.status_code == 400 and "uploaded csv file: row 1: round 'abc'" in r.json()["error"]
    r = c.post("/api/import?format=csv&annotator=%3Cx%3E", content=b"key,label\nimg00009.jpg,1\n",
               headers={"content-type": "text/csv"})
    assert r.status_code in (400, 422) and "annotator" in r.json()["error"]
    # assignments: every pair stored (in batches)
    keys = sorted(app.state.session.pool.keys)
    r = c.post("/api/assign", json={"keys": keys, "annotators": [f"ann{i}" for i in range(49)] + ["ANN0"]})
    assert r.json() == {"assigned": 40 * 49}  # "ANN0" is ann0
    assert c.post("/api/assign", json={"keys": ["nope.jpg"], "annotators": ["a"]}).status_code == 404
    # a file swapped for a link after start is refused, not followed
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8\xff secret")
    (pool / "img00020.jpg").unlink()
    os.symlink(secret, pool / "img00020.jpg")
    for size in ("full", "view"):
        r = c.get("/api/image", params={"key": "img00020.jpg", "size": size})
        assert r.status_code == 403 and "secret" not in r.text, size
    app.state.session.close()


@pytest.mark.browser
def test_page_progress_key_overlay_examples_and_dashboard_at_1366px(pool_dir, tmp_path, browser):
    from label_server import serve

    from classifier.labeling.active import ActiveConfig

    cfg = _cfg(pool_dir, tmp_path, active=ActiveConfig(retrain_every=10, min_per_class=2, val_fraction=0.3))
    app = create_app(cfg, start_background=False)
    session = app.state.session
    no_overflow = "document.documentElement.scrollWidth <= window.innerWidth"
    with serve(app) as base:
        ctx = browser.new_context(viewport={"width": 1366, "height": 768}, bypass_csp=True)
        page = ctx.new_page()
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('progress').dataset.left === '40'")
        assert "filled from confirmed labels" in page.inner_text("#ex-stylistic")
        page.fill("#annotator", "  Alice ")
        page.press("#annotator", "Enter")
        page.wait_for_function("document.body.dataset.currentKey")
        assert page.input_value("#annotator") == "alice"  # the name as the server counts it
        assert page.evaluate(no_overflow)

        # `?` lists the keys; Esc, the button and `?` again toggle it
        assert not page.is_visible("#keys-overlay")
        page.keyboard.press("?")
        assert page.is_visible("#keys-overlay")
        listed = page.eval_on_selector_all("#keys-table kbd", "els => els.map(e => e.textContent)")
        assert {"a", "x", "space", "Backspace", "z", "g", "h", "?"} <= set(listed)
        page.keyboard.press("Escape")
        assert not page.is_visible("#keys-overlay")
        page.click("#btn-keys")
        assert page.is_visible("#keys-overlay")
        page.keyboard.press("?")
        assert not page.is_visible("#keys-overlay")

        # the counter moves with every confirmed decision
        decided = []
        for i in range(8):
            key = page.evaluate("document.body.dataset.currentKey")
            page.keyboard.press("a" if truth_of_key(key) else "x")
            page.wait_for_function("k => document.body.dataset.currentKey !== k", arg=key, timeout=15000)
            decided.append(key)
            page.wait_for_function(f"document.getElementById('progress').dataset.labelled === '{i + 1}'")
        text = page.inner_text("#progress")
        assert "8 labelled (8 by you)" in text and "32 left in pool" in text
        assert "2 to the next retrain" in text or "more of the rarer class" in text
        # example panels fill from the confirmed labels, each image in its own class
        page.wait_for_function("Number(document.getElementById('ex-stylistic').dataset.count) > 0 && "
                               "Number(document.getElementById('ex-not_stylistic').dataset.count) > 0", timeout=15000)
        for cls, truth in (("stylistic", 1), ("not_stylistic", 0)):
            shown = page.eval_on_selector_all(f"#ex-{cls} img", "els => els.map(e => e.alt)")
            assert shown and all(k in decided and truth_of_key(k) == truth for k in shown), (cls, shown)

        # a round from a small held-out split: its figures carry the caveat; the dashboard fits 1366 px
        rest = [k for k in session.pool.keys if k not in decided]
        session.commit("bob", [{"key": k, "label": "stylistic" if truth_of_key(k) else "not_stylistic"}
                               for k in rest])
        assert session.learner.retrain() == 1
        n_val = session.store.rounds()[0]["metrics"]["n_val"]
        assert 0 < n_val < 20
        dash = ctx.new_page()
        dash.goto(base + "/dashboard")
        dash.wait_for_function("Number(document.body.dataset.rounds || 0) >= 1")
        assert dash.is_visible("#heldout-caveat")
        assert f"only {n_val} held-out labels (fewer than 20)" in dash.inner_text("#heldout-caveat")
        flagged = dash.eval_on_selector_all("#rounds td.caveat", "els => els.map(e => e.title)")
        assert len(flagged) >= 2 and all("fewer than 20" in t for t in flagged)
        assert "0 left in pool" in dash.inner_text("#progress")
        assert dash.evaluate(no_overflow)
        assert dash.evaluate("[...document.querySelectorAll('.dash section')].every("
                             "s => s.scrollWidth <= s.clientWidth + 1)")
        lefts = dash.eval_on_selector_all(".dash section", "els => new Set(els.map(e => e.offsetLeft)).size")
        assert lefts == 3  # three columns side by side at 1366 px
        ctx.close()
    session.close()


def test_cli_without_a_classifier_says_its_suggestions_are_untrained(pool_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: None)
    assert label_app.main(["--pool", str(pool_dir), "--db", str(tmp_path / "l.sqlite"), "--model",
                           "test_vit_shared"]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if "untrained model" in ln]
    assert len(notes) == 1 and notes[0].startswith("note: no --classifier: suggestions come from an untrained "
                                                   "model"), notes


@pytest.mark.browser
def test_a_demo_sized_pool_reaches_its_first_retrain_round_on_the_page(tmp_path, browser):
    """The default retrain counts (50 decisions, 10 per class) are fitted to a pool the size of the demo's kept set,
    so labelling through the page brings the first round; a pool too small for any round says so on the page."""
    from label_server import serve

    from curate.demo import build_demo_corpus

    kept = sum(r["expect"] == "ok" for r in build_demo_corpus(tmp_path / "corpus", 40, min_side=64))
    pool = make_folder_pool(tmp_path / "pool", kept)
    app = label_app.create_app(_cfg(pool, tmp_path))  # default ActiveConfig, background threads on
    session = app.state.session
    every = session.learner.cfg.retrain_every
    assert every < kept
    with serve(app) as base:
        page = browser.new_context(bypass_csp=True).new_page()  # wait_for_function evaluates strings
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('progress').dataset.left !== undefined")
        assert page.is_visible("#pool-note")
        assert page.inner_text("#pool-note").startswith(f"pool of {kept} images: the model is retrained every "
                                                        f"{every} decisions (not 50)")
        assert "suggestions from an untrained model" in page.inner_text("#model")
        page.fill("#annotator", "alice")
        page.press("#annotator", "Enter")
        decided = 0
        while decided < kept and page.evaluate("document.getElementById('model').dataset.round") == "0":
            page.wait_for_function("document.body.dataset.currentKey")
            key = page.evaluate("document.body.dataset.currentKey")
            page.keyboard.press("a" if truth_of_key(key) else "x")
            decided += 1
            page.wait_for_function(f"document.getElementById('progress').dataset.labelled === '{decided}'")
            if decided >= every:  # the round trains in the background; the next answer carries it
                time.sleep(0.5)
        assert page.evaluate("document.getElementById('model').dataset.round") == "1", decided
        assert decided < kept and session.store.rounds()[0]["n_labels"] >= every
        assert page.inner_text("#model").startswith("round 1 · model ")
    session.close()

    tiny = make_folder_pool(tmp_path / "tiny", 6)
    app = label_app.create_app(_cfg(tiny, tmp_path / "t"), start_background=False)
    with serve(app) as base:
        page = browser.new_context(bypass_csp=True).new_page()  # wait_for_function evaluates strings
        page.goto(base + "/")
        page.wait_for_function("!document.getElementById('pool-note').hidden")
        assert page.inner_text("#pool-note").startswith("this pool of 6 images is too small for active learning")
    app.state.session.close()
