"""The demo page (`python -m framework serve`) end to end: a real server process on a tiny
trained KWS run, driven by Debian's headless Chromium through Selenium and by Gradio's own
client. Without Chromium, its driver, Selenium or Gradio the browser tests skip naming the
missing package, except under .ci/run (SPEECH_RECIPES_CI=1), which installs them: there
they fail."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import FAST, corpus_overrides, free_port, merge

MAX_SECS, MAX_MB, TOP_K = 3, 1, 3
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def missing_tools(browser: bool = True) -> list[str]:
    """What the tests need (``browser``: also the browser) and this machine lacks, each with
    how to install it."""
    wanted = (("chromium", "chromium"), ("chromedriver", "chromium-driver")) if browser else ()
    missing = [f"{name} (apt-get install {package})" for name, package in wanted
               if shutil.which(name) is None]
    for module, extra in (("selenium", "dev"),) * browser + (("gradio", "serve"),):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{module} (pip install 'speech-recipes[{extra}]')")
    return missing


def require(missing: list[str]) -> None:
    if missing:
        reason = f"the demo-page test needs {', '.join(missing)}"
        if os.environ.get("SPEECH_RECIPES_CI"):
            pytest.fail(f"{reason}; .ci/run installs them, so CI must run this test")
        print(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def tools():
    """Chromium, its driver, Selenium and Gradio, or a skip (a failure in CI)."""
    require(missing_tools())


@pytest.fixture(scope="module")
def gradio_installed():
    require(missing_tools(browser=False))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """A KWS target_dir trained (stages 0-2) on the synthesized corpus."""
    from recipes.kws import KWS

    target = tmp_path_factory.mktemp("serve") / "kws"
    KWS().run(target_dir=str(target), stop="train", **merge(FAST, corpus_overrides(corpus)))
    return target


@pytest.fixture(scope="module")
def clips(tmp_path_factory, corpus):
    """Good clips (test-set words), and bad uploads: text named .wav, an empty file, a clip
    longer than --max-secs, a file larger than --max-mb."""
    folder = tmp_path_factory.mktemp("uploads")
    words = sorted(Path(corpus["test_v0.01"]).glob("*/*.wav"))
    good = [folder / f"{word}.wav" for word in ("yes", "left")]  # speakers share file names
    for path in good:
        shutil.copy(next(p for p in words if p.parent.name == path.stem), path)
    (folder / "notes.wav").write_text("minutes of the meeting, not audio\n" * 20)
    (folder / "empty.wav").write_bytes(b"")
    noise = np.random.default_rng(0).normal(0, 0.1, 16000 * (MAX_SECS + 1))
    sf.write(folder / "long.wav", noise.astype(np.float32), 16000, subtype="PCM_16")
    sf.write(folder / "huge.wav", np.zeros(int(MAX_MB * 2**20 / 4) + 16000, np.float32),
             16000, subtype="FLOAT")
    return {"good": good, **{p.stem: p for p in folder.iterdir() if p not in good}}


@pytest.fixture(scope="module")
def server(tools, trained, tmp_path_factory):
    """The URL of `python -m framework serve` running on ``trained`` (a real process)."""
    with serving(trained, tmp_path_factory.mktemp("server") / "serve.log", "--max-secs",
                 str(MAX_SECS), "--max-mb", str(MAX_MB), "--top-k", str(TOP_K)) as url:
        yield url


@contextlib.contextmanager
def serving(target: Path, log: Path, *options: str):
    """`python -m framework serve target` on a free port, stopped when the block ends."""
    port = free_port()
    cmd = [sys.executable, "-m", "framework", "serve", str(target), "--port", str(port),
           *options]
    uploads = log.parent / "gradio"  # Gradio's upload cache, not the machine's /tmp/gradio
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "GRADIO_TEMP_DIR": str(uploads)})
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, proc, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_until_up(url: str, proc, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"serve did not answer within {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def browser(server):
    """Headless Chromium at the page, logging every network request it makes."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--window-size=1200,1000",
                "--force-device-scale-factor=1",
                # the microphone: Chrome's fake capture device (beeps), allowed without asking
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.requested = []  # URLs of the performance log, which each get_log empties
    try:
        driver.get(server)
        WebDriverWait(driver, 60).until(  # the page is built by scripts after loading
            lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=file]"))
        yield driver
    finally:
        driver.quit()


def requested_urls(driver) -> list[str]:
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            driver.requested.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            driver.requested.append(message["params"]["url"])
    return driver.requested


def upload(driver, path: Path, timeout: float = 30) -> str:
    """Upload ``path`` into the page's clip and return the message line once it names the
    file (or a Gradio error toast's text)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for clear in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Clear']"):
        driver.execute_script("arguments[0].click()", clear)  # drop the previous clip
    for toast in driver.find_elements(By.CSS_SELECTOR, "[data-testid='toast-close']"):
        driver.execute_script("arguments[0].click()", toast)
    box = driver.find_element(By.CSS_SELECTOR, "[data-testid='textbox']")
    driver.execute_script("arguments[0].value = ''", box)
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(path))

    def answered(d):  # read in one script: a toast may close between two driver calls
        shown = d.execute_script(
            "return [document.querySelector(\"[data-testid='textbox']\").value, ...Array.from("
            "document.querySelectorAll(\"[data-testid='toast-body']\"), t => t.innerText)]")
        return next((text for text in shown if path.name in text), False)
    return WebDriverWait(driver, timeout).until(answered)


def page_labels(driver) -> list[tuple[str, int, object]]:
    """(label, percent shown, its bar element) of every row of the label block, top first."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "[data-testid='label'] .confidence-set")
    return [(row.find_element(By.CSS_SELECTOR, "dt").text,
             int(row.find_element(By.CSS_SELECTOR, "dd").text.rstrip("%")),
             row.find_element(By.CSS_SELECTOR, "meter")) for row in rows]


@pytest.fixture(scope="module")
def predictor(trained):
    """The prediction API on ``trained`` (what `python -m framework predict` prints)."""
    from framework.predict import Predictor

    return Predictor.open(trained)


@pytest.fixture(scope="module")
def predicted(predictor, clips) -> dict[str, list[dict]]:
    """The top-k of each good clip, by file name."""
    return {path.name: predictor.predict(path, top_k=TOP_K) for path in clips["good"]}


def assert_nothing_fetched_remotely(driver) -> None:
    """Every request the page made so far went to this machine."""
    urls = requested_urls(driver)
    assert any("/gradio_api/" in url for url in urls)  # the log does record requests
    remote = [url for url in urls if not url.startswith(("blob:", "data:"))
              and urlsplit(url).hostname not in LOCAL_HOSTS]
    assert not remote, remote


def bar_fraction(shot, bar, row_width: float) -> float:
    """How much of its row a bar fills in the screenshot: coloured (orange, not the white or
    grey background) pixels along the bar's middle line, over the row's width."""
    y = int(bar.location["y"] + bar.size["height"] / 2)
    x0 = int(bar.location["x"])
    line = np.asarray(shot.convert("RGB"))[y, x0:x0 + int(row_width)].astype(int)
    coloured = (line[:, 0] - line[:, 2]) > 40
    return float(coloured.sum()) / row_width


def test_page_shows_the_predicted_labels_as_bars_and_fetches_nothing_remote(
        browser, clips, predicted):
    from PIL import Image

    clip = clips["good"][0]
    message = upload(browser, clip)
    expected = predicted[clip.name]
    shown = page_labels(browser)
    assert [label for label, _, _ in shown] == [p["label"] for p in expected], message
    for (_, percent, _), p in zip(shown, expected):
        assert abs(percent - 100 * p["score"]) <= 1
    assert message.startswith(f"{clip.name}: {expected[0]['label']} ")

    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png()))
    row_width = shown[0][2].find_element("xpath", "..").size["width"]
    for _, _, bar in shown:  # each bar is drawn as long as its score
        fraction = bar_fraction(shot, bar, row_width)
        score = float(bar.get_attribute("value"))
        assert abs(fraction - score) < 0.03, (fraction, score)
    assert bar_fraction(shot, shown[0][2], row_width) > 0.3  # the top bar is really there
    assert_nothing_fetched_remotely(browser)


def test_bad_uploads_get_a_message_and_the_server_goes_on(browser, clips):
    expected = {"notes": "not usable audio", "empty": "the file is empty",
                "long": f"longer than this page takes ({MAX_SECS} s",
                "huge": "exceed the maximum allowed size"}
    for name, words in expected.items():
        message = upload(browser, clips[name])
        assert words in message, (name, message)
        assert not page_labels(browser), name  # no stale labels beside the message
    good = clips["good"][1]
    assert upload(browser, good).startswith(f"{good.name}: ")
    assert page_labels(browser)
    assert_nothing_fetched_remotely(browser)


def test_a_clip_recorded_in_the_browser_is_classified(browser, server, predictor, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)  # a fresh page: no clip
    WebDriverWait(browser, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "button[aria-label='Record audio']"))
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Record audio']").click()
    WebDriverWait(browser, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "button.record-button"))[0].click()
    time.sleep(1.5)
    browser.find_element(By.CSS_SELECTOR, "button.stop-button").click()
    box = browser.find_element(By.CSS_SELECTOR, "[data-testid='textbox']")
    message = WebDriverWait(browser, 30).until(lambda d: box.get_attribute("value"))
    # the recording as the server stored it, classified by the prediction API
    source = browser.find_element(By.CSS_SELECTOR, "[data-testid='download-link']")\
        .get_attribute("href")
    recorded = tmp_path / "recorded.wav"
    recorded.write_bytes(urllib.request.urlopen(source, timeout=10).read())
    assert sf.info(recorded).duration > 0.5, message
    top = predictor.predict(recorded, top_k=TOP_K)
    assert message.startswith(f"audio.wav: {top[0]['label']} "), message
    assert [label for label, _, _ in page_labels(browser)] == [p["label"] for p in top]
    assert_nothing_fetched_remotely(browser)


def test_concurrent_requests_are_all_answered(server, clips, predicted):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    paths = [*clips["good"], clips["notes"]]

    def classify(path):
        return client.predict(handle_file(str(path)), api_name="/classify")
    with ThreadPoolExecutor(len(paths)) as pool:
        answers = list(pool.map(classify, paths))
    for path, (labels, message) in zip(clips["good"], answers):
        expected = predicted[path.name]
        assert [c["label"] for c in labels["confidences"]] == [p["label"] for p in expected]
        np.testing.assert_allclose([c["confidence"] for c in labels["confidences"]],
                                   [p["score"] for p in expected], atol=1e-5)
        assert message.startswith(f"{path.name}: {expected[0]['label']} ")
    labels, message = answers[-1]
    assert labels == {} and message.startswith("notes.wav: not usable audio"), message


def test_a_bad_checkpoint_stops_serve_before_it_listens_in_one_line(gradio_installed,
                                                                    trained):
    done = subprocess.run([sys.executable, "-m", "framework", "serve", str(trained),
                           "--checkpoint", "step-999", "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: --checkpoint step-999: no such checkpoint")
    assert "Traceback" not in done.stderr and "valid_best" in done.stderr


def test_a_port_in_use_is_a_one_line_error(server, trained):
    port = urlsplit(server).port  # the running page's
    done = subprocess.run([sys.executable, "-m", "framework", "serve", str(trained),
                           "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == (f"error: cannot listen on 127.0.0.1:{port}: the port is in use or "
                           "the address is not this machine's; choose another --port or "
                           "--host\n")
    with urllib.request.urlopen(server, timeout=10) as response:  # the page is unharmed
        assert response.status == 200


def test_missing_browser_tools_are_named_with_their_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium, no chromedriver on it
    missing = " ".join(missing_tools())
    assert "apt-get install chromium)" in missing
    assert "apt-get install chromium-driver)" in missing


@pytest.fixture(scope="module")
def asv_server(gradio_installed, tmp_path_factory):
    """(URL of serve on a tiny evaluated ASV run, the run, the corpus's test root)."""
    from corpora.synthesize import synthesize_voxceleb1
    from tests.test_asv import run_asv

    root = tmp_path_factory.mktemp("serve_asv")
    corpus = synthesize_voxceleb1(root / "corpus", speakers=8, test_speakers=2, videos=2,
                                  utterances=2, min_secs=1.0, max_secs=1.5)
    target = root / "asv"
    run_asv(target, corpus, stop="evaluate", evaluate={"splits": ["valid"]},
            prepare_data={"valid_speakers": 3, "valid_trials": 16},
            train={"total_steps": 10, "eval_step": 10, "save_step": 10, "log_step": 10})
    with serving(target, root / "serve.log") as url:
        yield url, target, corpus["test_root"]


def test_verification_page_scores_two_clips_at_the_validation_threshold(asv_server):
    from gradio_client import Client, handle_file

    from recipes.asv import ASV

    url, target, test_root = asv_server
    first, second = sorted(Path(test_root).rglob("*.wav"))[:2]
    out = ASV().attach(target).score_files(first, second)  # what `score` prints
    verdict = "same speaker" if out["same_speaker"] else "different speakers"
    client = Client(url, verbose=False)
    shown = client.predict(handle_file(str(first)), handle_file(str(second)),
                           api_name="/score")
    assert shown.startswith(f"score {out['score']:.4f} ")
    assert f"threshold {out['threshold']:.4f}: {verdict}" in shown
    assert client.predict(handle_file(str(first)), None, api_name="/score") == \
        "no second clip: upload a file or record one"
