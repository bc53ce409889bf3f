"""The demo page of a trained problem: ``python -m framework serve TARGET_DIR``.

A Gradio page served from this machine. A classification target_dir gets one clip (uploaded
or recorded with the browser's microphone) and its top-k labels as bars with scores; a
speaker-verification target_dir gets two clips and their score with the decision at the
checkpoint's validation-EER threshold (``score_files``, as the ``score`` command).

Contracts:

* **Offline.** Every asset (scripts, styles, fonts) is served by this process; the theme
  uses the system's fonts; analytics, Gradio's update check, share links, Hugging Face
  telemetry and Hub look-ups are off. The browser test checks that the page asks no other
  host for anything.
* **Checked at start**: a bad target_dir or checkpoint fails in one line before the page is
  served. A classification model is loaded once, by :class:`framework.predict.Predictor`.
  Verification goes through the problem's ``score_files``, which keeps the model it loaded
  the first time (:class:`framework.inference.TrainedModels` reuses an unchanged file).
* **Bad uploads** (not audio, empty, longer than ``max_secs``, larger than ``max_mb``) get
  a one-line message on the page naming the file; the request ends there and the server goes
  on serving. Gradio refuses files above ``max_mb`` before they are stored.
* **Concurrent requests** are served: Gradio's queue runs up to ``concurrency`` requests at
  once and holds at most ``QUEUE_SIZE`` more (a client beyond that is told the queue is
  full instead of waiting forever).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from framework.audio.io import inspect_audio
from framework.errors import UserError

QUEUE_SIZE = 32
CACHE_SECONDS = 3600  # uploads older than this are deleted from Gradio's cache (checked hourly)
# What the browser fetches must not leave this machine: the theme's fonts are the system's.
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
SYSTEM_MONO = ("ui-monospace", "monospace")


@dataclass(frozen=True)
class Limits:
    """What the page accepts: clips of at most ``max_secs`` seconds in files of at most
    ``max_mb`` MB (2^20 bytes, as Gradio counts them). Gradio itself refuses a larger
    upload, before storing it, with a message on the page; :meth:`check` does the rest."""

    max_secs: float = 30.0
    max_mb: float = 20.0

    def __post_init__(self):
        for option, value in (("--max-secs", self.max_secs), ("--max-mb", self.max_mb)):
            if not value > 0 or value == float("inf"):
                raise UserError(f"{option} {value}: must be a number > 0")

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 2**20)

    def describe(self) -> str:
        return (f"clips of up to {self.max_secs:g} s in files of up to {self.max_mb:g} MB, "
                "in any format libsndfile reads (WAV, FLAC, OGG, MP3...)")

    def check(self, path: str | None, what: str = "clip") -> None:
        """Raise :class:`UserError` (one line naming the file and what is wrong) unless
        ``path`` is a usable clip within the limits."""
        if not path:
            raise UserError(f"no {what}: upload a file or record one")
        name = Path(path).name
        if os.path.getsize(path) == 0:
            raise UserError(f"{name}: the file is empty")
        info = inspect_audio(path)
        if not info.ok:
            raise UserError(f"{name}: not usable audio ({info.reason})")
        if info.duration > self.max_secs:
            raise UserError(f"{name}: {info.duration:.1f} s is longer than this page takes "
                            f"({self.max_secs:g} s; serve --max-secs)")


def require_gradio() -> None:
    """Import gradio with the switches that keep it and the Hub client from calling out
    (set first: some are read at import time); a missing gradio is a one-line error."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["GRADIO_SHARE"] = "False"
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise UserError(f"the demo page needs gradio ({err}): pip install "
                        "'speech-recipes[serve]' (or pip install gradio)") from err


class Classify:
    """The page's classification request: a checked clip → ``({label: score}, message)``."""

    def __init__(self, predictor, limits: Limits, top_k: int):
        self.predictor, self.limits, self.top_k = predictor, limits, top_k

    def __call__(self, path: str | None):
        try:
            self.limits.check(path)
            started = time.perf_counter()
            top = self.predictor.predict(path, top_k=self.top_k)
        except UserError as err:
            return None, str(err)
        millis = 1000 * (time.perf_counter() - started)
        best = top[0]
        return ({item["label"]: item["score"] for item in top},
                f"{Path(path).name}: {best['label']} ({best['score']:.3f}) in {millis:.0f} ms")


class Verify:
    """The page's verification request: two checked clips → a one-line verdict.

    ``score_files`` keeps its loaded model but builds a data loader on every call: one call
    at a time keeps that loader's worker processes from being forked by two threads at
    once, and the shared model from scoring two pairs at once."""

    def __init__(self, problem, checkpoint: str, limits: Limits):
        self.problem, self.checkpoint, self.limits = problem, checkpoint, limits
        self.lock = threading.Lock()

    def __call__(self, path1: str | None, path2: str | None) -> str:
        try:
            self.limits.check(path1, "first clip")
            self.limits.check(path2, "second clip")
            with self.lock:
                out = self.problem.score_files(path1, path2, self.checkpoint)
        except UserError as err:
            return str(err)
        verdict = "same speaker" if out["same_speaker"] else "different speakers"
        relation = ">=" if out["same_speaker"] else "<"
        return (f"score {out['score']:.4f} {relation} threshold {out['threshold']:.4f}: "
                f"{verdict} (validation EER point of {out['checkpoint']}, step {out['step']})")


def theme():
    import gradio as gr

    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(SYSTEM_MONO))


def header(problem, checkpoint: str, step: int, task: str, limits: Limits) -> str:
    return (f"## {type(problem).__name__}: {task}\n"
            f"`{problem.target_dir}`, checkpoint `{checkpoint}` (step {step}). "
            f"Upload or record {limits.describe()}.")


def classification_page(classify: Classify, intro: str):
    """Blocks: a clip in, its top-k labels out (bars), and a message line."""
    import gradio as gr

    with gr.Blocks(title="speech-recipes demo", analytics_enabled=False,
                   delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as page:
        gr.Markdown(intro)
        clip = gr.Audio(sources=["upload", "microphone"], type="filepath", format=None,
                        label="clip")
        labels = gr.Label(num_top_classes=classify.top_k, label="top labels")
        message = gr.Textbox(label="message", interactive=False)
        # format=None: the uploaded file reaches the checks as it is, not converted first
        gr.on([clip.upload, clip.stop_recording], classify, clip, [labels, message],
              api_name="classify")
    return page


def verification_page(verify: Verify, intro: str):
    """Blocks: two clips in, the score and same/different decision out."""
    import gradio as gr

    with gr.Blocks(title="speech-recipes demo", analytics_enabled=False,
                   delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as page:
        gr.Markdown(intro)
        with gr.Row():
            first = gr.Audio(sources=["upload", "microphone"], type="filepath", format=None,
                             label="first clip")
            second = gr.Audio(sources=["upload", "microphone"], type="filepath", format=None,
                              label="second clip")
        button = gr.Button("Score", variant="primary")
        verdict = gr.Textbox(label="verdict", interactive=False)
        button.click(verify, [first, second], verdict, api_name="score")
    return page


def build_page(problem, checkpoint: str, limits: Limits, top_k: int):
    """The page for an attached problem, its model loaded: verification when the problem
    scores pairs of files (``score_files``), classification otherwise."""
    if hasattr(problem, "score_files"):
        record = problem.validation_record(checkpoint)  # unevaluated: fails now, not later
        threshold = record["metrics"]["cosine_eer_threshold"]
        intro = header(problem, checkpoint, record["step"], "same speaker or not? (score >= "
                       f"{threshold:.4f}, the validation EER point)", limits)
        return verification_page(Verify(problem, checkpoint, limits), intro)
    from framework.predict import Predictor

    predictor = Predictor(problem, checkpoint)
    intro = header(problem, checkpoint, predictor.state["progress"]["step"],
                   f"which of {len(predictor.labels)} labels?", limits)
    return classification_page(Classify(predictor, limits, top_k), intro)


def serve(problem, checkpoint: str = "valid_best", host: str = "127.0.0.1", port: int = 8000,
          limits: Limits = Limits(), top_k: int = 5, concurrency: int = 2) -> None:
    """Serve the page of ``problem`` (attached to its target_dir and device) until
    interrupted."""
    for option, value in (("--top-k", top_k), ("--concurrency", concurrency)):
        if value < 1:
            raise UserError(f"{option} {value}: must be >= 1")
    require_gradio()
    require_free_port(host, port)  # before a model that may take long to load
    page = build_page(problem, checkpoint, limits, top_k)
    page.queue(default_concurrency_limit=concurrency, max_size=QUEUE_SIZE)
    try:
        page.launch(server_name=host, server_port=port, share=False, theme=theme(),
                    max_file_size=limits.max_bytes, footer_links=["api"],
                    enable_monitoring=False, ssr_mode=False, pwa=False, mcp_server=False,
                    prevent_thread_lock=True, quiet=True, show_error=True)
    except OSError as err:  # taken since the check
        raise port_error(host, port) from err
    print(f"serving {problem.target_dir} (checkpoint {checkpoint}) at {page.local_url}",
          flush=True)
    page.block_thread()


def require_free_port(host: str, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            sock.bind((host, port))
        except OSError as err:
            raise port_error(host, port) from err


def port_error(host: str, port: int) -> UserError:
    return UserError(f"cannot listen on {host}:{port}: the port is in use or the address is "
                     "not this machine's; choose another --port or --host")
