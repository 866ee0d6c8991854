"""The web page as a person uses it: a real server process (``tunesmith serve`` on a free
loopback port, a tiny untrained DiT) and a real headless Chromium (Debian's, driven by
Playwright) that loads the page, types a prompt, generates, watches the progress bar move,
plays the result, and re-opens it from the recent list.

The finished page is saved as a screenshot under the test's tmp dir, and also at
$TUNESMITH_SCREENSHOT when that is set (docs/serve-page.png is made that way)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: apt-get install chromium "
                                                          "(packages/apt.txt; CI installs it)")

from playwright.sync_api import expect, sync_playwright

from tunesmith.serve.testing import running_server, tiny_generator

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPT = "warm lo-fi hip hop with dusty piano chords, soft vinyl crackle and a lazy swing, 80 BPM"
DURATION = 3.5
SEED = 1234
STEPS = 150  # enough steps that the stream reports several of them (the tiny model takes ~5 ms a step)

# Every value the progress bar takes, as [value or None (indeterminate), max], from the page's start.
RECORD_PROGRESS = """
window.__progress = [];
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("progress");
  const record = () => window.__progress.push([bar.hasAttribute("value") ? bar.value : null, bar.max]);
  new MutationObserver(record).observe(bar, {attributes: true, attributeFilter: ["value", "max"]});
});
"""

# How much of a canvas is drawn on: pixels unlike its top-left one, and how many colours it has.
CANVAS_INK = """(id) => {
  const canvas = document.getElementById(id);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let differ = 0;
  const colours = new Set();
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] !== data[0] || data[i + 1] !== data[1] || data[i + 2] !== data[2]) differ++;
    if (colours.size < 1000) colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
  }
  return {width: canvas.width, height: canvas.height, ink: differ / (data.length / 4), colours: colours.size};
}"""

PLAYER_READY = """() => {
  const player = document.getElementById("player");
  return !document.getElementById("output").hidden && player.readyState >= 2;
}"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_generator(tmp_path_factory.mktemp("models") / "tiny-dit")


def test_a_person_generates_music_on_the_page(tmp_path, model_dir):
    with running_server([model_dir], tmp_path / "data", args=["--torch-threads", "1"]) as server, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(30_000)
            problems: list[str] = []
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
            outside: list[str] = []
            page.on("request", lambda req: outside.append(req.url)
                    if not req.url.startswith((server.base_url, "blob:", "data:")) else None)
            page.add_init_script(RECORD_PROGRESS)
            page.goto(server.base_url + "/")

            # the model select is filled from /v1/models; the diffusion model's settings are shown
            expect(page.get_by_label("Model", exact=True)).to_have_value("tiny-dit")
            page.get_by_text("Advanced settings").click()
            expect(page.get_by_label("Steps", exact=True)).to_be_visible()
            expect(page.get_by_label("Sampler", exact=True)).to_be_visible()
            expect(page.get_by_label("Temperature", exact=True)).to_be_hidden()  # a token-LM setting
            expect(page.get_by_label("Start from audio (init_audio)")).to_be_visible()
            expect(page.get_by_label("Melody to follow")).to_be_visible()  # a DiT follows one by noise optimisation
            expect(page.get_by_label("Audio to continue (prompt_audio)")).to_be_hidden()  # a token-LM input
            for label in ("Intensity (loudness over time)", "Structure", "Loop (s)", "Control iterations",
                          "Loudness to follow (intensity)"):
                expect(page.get_by_label(label, exact=True)).to_be_visible()

            # an error from the API is one line on the page (steps over this server's limit of 200)
            page.get_by_label("Prompt", exact=True).fill("a short test")
            page.get_by_label("Duration (s)", exact=True).fill("1")
            page.get_by_label("Steps", exact=True).fill("500")
            page.get_by_role("button", name="Generate").click()
            error = page.get_by_role("alert")
            expect(error).to_contain_text("steps 500 is beyond this server's limit of 200")
            assert "\n" not in error.inner_text()
            problems.clear()  # the browser logs the refused request as an error

            # a first generation, from an uploaded clip (multipart), keyboard only: Ctrl+Enter
            page.get_by_label("Steps", exact=True).fill("20")
            page.get_by_label("Start from audio (init_audio)").set_input_files(str(sine(tmp_path / "clip.wav")))
            page.get_by_label("Strength").fill("0.6")
            page.get_by_label("Regions to redo (s)").fill("0.2-0.6")
            page.get_by_label("Prompt", exact=True).fill("a lively jig for fiddle and bodhrán, 120 BPM")
            page.get_by_label("Prompt", exact=True).press("Control+Enter")
            expect(page.get_by_role("status")).to_contain_text("Done", timeout=60_000)
            expect(error).to_be_hidden()
            first_job = page.evaluate("async () => (await fetch('/v1/generations/' + location.hash.slice(1))).json()")
            assert first_job["inputs"] == ["init_audio"], first_job
            assert first_job["controls"] == {"steps": 20, "strength": 0.6, "mask": [[0.2, 0.6]]}, first_job
            line = page.get_by_label("Reproduce from the CLI").inner_text()
            for flag in ("--strength 0.6", "--inpaint 0.2:0.6", "--init-audio INIT_AUDIO.wav", "--steps 20"):
                assert flag in line, line
            expect(page.locator("#cli-note")).to_contain_text("INIT_AUDIO.wav: the file you uploaded")
            page.get_by_label("Start from audio (init_audio)").set_input_files([])
            page.get_by_label("Strength").fill("")
            page.get_by_label("Regions to redo (s)").fill("")

            # noise optimisation: a loudness curve, followed in 2 iterations; the CLI line says how
            page.get_by_label("Prompt", exact=True).fill("a swelling drone")
            page.get_by_label("Duration (s)", exact=True).fill("1")
            page.get_by_label("Steps", exact=True).fill("4")
            page.get_by_label("Intensity (loudness over time)", exact=True).fill("0:soft, 1:loud")
            page.get_by_label("Control iterations", exact=True).fill("2")
            page.get_by_role("button", name="Generate").click()
            expect(page.get_by_role("status")).to_contain_text("Done", timeout=60_000)
            expect(error).to_be_hidden()
            page.wait_for_function(PLAYER_READY, timeout=30_000)
            line = page.get_by_label("Reproduce from the CLI").inner_text()
            assert "--intensity '0:soft, 1:loud'" in line and "--control-iterations 2" in line, line
            expect(page.locator("#summary")).to_contain_text("intensity correlation")
            page.get_by_label("Intensity (loudness over time)", exact=True).fill("")
            page.get_by_label("Control iterations", exact=True).fill("")

            # the generation the test is about: prompt, duration, seed, steps; click Generate
            page.evaluate("window.__progress = []")
            page.get_by_label("Prompt", exact=True).fill(PROMPT)
            page.get_by_label("Duration (s)", exact=True).fill(str(DURATION))
            page.get_by_label("Seed", exact=True).fill(str(SEED))
            page.get_by_label("Steps", exact=True).fill(str(STEPS))
            page.get_by_role("button", name="Generate").click()
            expect(page.get_by_role("button", name="Cancel")).to_be_enabled()
            page.wait_for_function(PLAYER_READY, timeout=60_000)
            expect(page.get_by_role("status")).to_contain_text("Done in")
            expect(page.get_by_role("status")).to_contain_text(f"seed {SEED}")
            expect(page.get_by_role("button", name="Cancel")).to_be_disabled()

            # the progress bar moved: steps part-way, in order, then full
            seen = page.evaluate("window.__progress")
            fractions = [value / high for value, high in seen if value is not None and high > 0]
            partway = [f for f in fractions if 0 < f < 1]
            assert len(partway) >= 2, seen
            assert fractions == sorted(fractions) and fractions[-1] == 1, seen

            check_result(page)
            assert page.locator("#recent-list li").count() == 3
            first = page.locator("#recent-list li").first
            expect(first).to_contain_text(PROMPT)
            expect(first).to_contain_text("succeeded")

            # a fresh visit: the recent list is still there, and its entry re-opens the result
            page.goto(server.base_url + "/")
            expect(page.locator("#output")).to_be_hidden()
            page.get_by_role("button", name=f'Open "{PROMPT}"').click()
            page.wait_for_function(PLAYER_READY, timeout=30_000)
            expect(page.get_by_label("Prompt", exact=True)).to_have_value(PROMPT)
            expect(page.get_by_label("Seed", exact=True)).to_have_value(str(SEED))
            expect(page.get_by_label("Steps", exact=True)).to_have_value(str(STEPS))
            check_result(page)
            page.get_by_label("Prompt", exact=True).focus()  # the finished page as it looks, with the bar full
            page.evaluate("document.activeElement.blur()")

            assert not problems, problems
            assert not outside, f"the page fetched from elsewhere: {outside}"
            shots = [tmp_path / "serve-page.png"]
            if os.environ.get("TUNESMITH_SCREENSHOT"):
                shots.append(Path(os.environ["TUNESMITH_SCREENSHOT"]))
            for shot in shots:
                shot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def sine(path: Path, seconds: float = 1.0, rate: int = 24000) -> Path:
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate)
    return path


def check_result(page) -> None:
    """The result on show is the requested one: playable, drawn, downloadable, reproducible."""
    player = page.locator("#player")
    duration = player.evaluate("a => a.duration")
    assert abs(duration - DURATION) <= 0.05, duration
    assert player.evaluate("a => a.readyState") >= 2
    assert player.evaluate("a => a.play().then(() => 'playing', err => String(err))") == "playing"
    player.evaluate("a => { a.pause(); a.currentTime = 0; }")

    waveform = page.evaluate(CANVAS_INK, "waveform")
    spectrogram = page.evaluate(CANVAS_INK, "spectrogram")
    assert waveform["width"] > 300 and waveform["ink"] > 0.02, waveform
    assert spectrogram["width"] > 300 and spectrogram["colours"] > 50, spectrogram

    audio = page.evaluate("""async () => {
      const r = await fetch(document.getElementById("download-audio").href);
      return {status: r.status, type: r.headers.get("content-type"), seed: r.headers.get("x-seed")};
    }""")
    assert audio == {"status": 200, "type": "audio/wav", "seed": str(SEED)}
    flac = page.locator("#download-other a", has_text="FLAC").get_attribute("href")
    assert flac.endswith("/audio?format=flac")
    sidecar = page.evaluate("async () => (await fetch(document.getElementById('download-sidecar').href)).json()")
    assert sidecar["prompt"] == PROMPT and sidecar["seed"] == SEED and sidecar["model"] == "tiny-dit"
    assert sidecar["duration"] == DURATION and sidecar["controls"] == {"steps": STEPS}, json.dumps(sidecar)
    assert page.locator("#download-sidecar").get_attribute("download").endswith(".wav.json")
    line = page.get_by_label("Reproduce from the CLI").inner_text()
    assert line.startswith(f"tunesmith generate '{PROMPT}' --model tiny-dit --seed {SEED} --duration {DURATION}")
    assert f"--steps {STEPS}" in line


def test_api_key_and_cancel(tmp_path, model_dir):
    """A server with a key: the page asks for it, keeps it, and sends it (a header, or ?api_key=
    on what the browser fetches by URL); a job is canceled from the page."""
    args = ["--torch-threads", "1", "--api-key", "sekret"]
    with running_server([model_dir], tmp_path / "data", args=args) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(30_000)
            page.goto(server.base_url + "/")
            expect(page.get_by_role("alert")).to_contain_text("needs an API key")
            page.get_by_label("API key").fill("sekret")
            page.get_by_label("API key").press("Tab")
            expect(page.get_by_label("Model", exact=True)).to_have_value("tiny-dit")
            expect(page.get_by_role("alert")).to_be_hidden()

            # another client's long job holds the worker, so the page's job waits behind it
            long_job = {"prompt": "a long drone", "duration": 8, "steps": 200, "sampler": "heun"}
            page.evaluate("""(body) => fetch("/v1/generations", {method: "POST", body: JSON.stringify(body),
                headers: {"Content-Type": "application/json", "Authorization": "Bearer sekret"}})""", long_job)
            page.get_by_label("Prompt", exact=True).fill("a slow waltz for strings")
            page.get_by_label("Duration (s)", exact=True).fill("8")
            page.get_by_role("button", name="Generate").click()
            cancel = page.get_by_role("button", name="Cancel")
            expect(cancel).to_be_enabled()
            cancel.click()
            expect(page.get_by_role("status")).to_have_text("Canceled.")
            expect(page.locator("#recent-list li").first).to_contain_text("canceled")
            expect(page.locator("#output")).to_be_hidden()

            # the key is remembered: a new visit loads without asking, and re-opens with it
            page.goto(server.base_url + "/")
            expect(page.get_by_label("Model", exact=True)).to_have_value("tiny-dit")
            expect(page.get_by_label("API key")).to_have_value("sekret")
            expect(page.get_by_role("alert")).to_be_hidden()
        finally:
            browser.close()
