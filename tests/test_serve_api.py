"""The HTTP API end to end, in process: a real (tiny, untrained) DiT + VAE generator saved to a
temp dir and served by ``create_app``; every route, every error, uploads, auth, the queue
bound, cancellation, batching, retention, and a schemathesis run over the OpenAPI schema."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from tunesmith.cli import main  # noqa: E402
from tunesmith.generator import load_generator  # noqa: E402
from tunesmith.serve import ServeSettings, create_app, results  # noqa: E402
from tunesmith.serve.testing import free_port, tiny_generator  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

LIMITS = dict(max_duration=4.0, max_steps=20, max_control_iterations=3, sync_max_duration=2.0,
              max_upload_bytes=200_000, max_upload_seconds=3.0, max_prompt_chars=200, poll_interval_s=0.02)
PCM16 = 2 / 32768  # what a 16-bit WAV or FLAC may differ from the float audio by


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_generator(tmp_path_factory.mktemp("models") / "tiny-dit")


@pytest.fixture(scope="module")
def generator(model_dir):
    return load_generator(model_dir)


@pytest.fixture(scope="module")
def settings(tmp_path_factory, model_dir) -> ServeSettings:
    # a folder of its own around the data directory, so that escapes from it are visible
    return ServeSettings(data_dir=tmp_path_factory.mktemp("serve") / "data", models=(str(model_dir),), **LIMITS)


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def wait(client: TestClient, job_id: str, timeout: float = 120.0,
         until: tuple[str, ...] = ("succeeded", "failed", "canceled"),
         headers: dict[str, str] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/generations/{job_id}", headers=headers).json()
        if job["status"] in until:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        time.sleep(0.02)


def events(client: TestClient, url: str) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of a job's stream, until its end."""
    found, event = [], None
    with client.stream("GET", url) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                found.append((event, json.loads(line[6:])))
    return found


def wav_bytes(seconds: float, rate: int = 24000, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format=fmt)
    return buffer.getvalue()


def midi_bytes(seconds: float = 1.0, notes: bool = True) -> bytes:
    """A one-track MIDI file: a rising line of quarter notes at 120 BPM over ``seconds``
    (or, without ``notes``, only drum hits: nothing pitched to follow)."""
    import mido

    track = mido.MidiTrack()
    beats = int(seconds * 2)
    for i in range(beats):
        channel, note = (0, 60 + 2 * i) if notes else (9, 36)
        track.append(mido.Message("note_on", note=note, velocity=80, channel=channel, time=0))
        track.append(mido.Message("note_off", note=note, velocity=0, channel=channel, time=480))
    song = mido.MidiFile(ticks_per_beat=480)
    song.tracks.append(track)
    buffer = io.BytesIO()
    song.save(file=buffer)
    return buffer.getvalue()


def decode(content: bytes) -> tuple[np.ndarray, int]:
    data, rate = sf.read(io.BytesIO(content), dtype="float32", always_2d=True)
    return data.T, rate


def assert_error(response, status: int, fragment: str = "") -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "\n" not in body["error"] and len(body["error"]) <= 500
    assert fragment.lower() in body["error"].lower(), body["error"]
    return body["error"]


# -- the happy paths ---------------------------------------------------------------------------------

def test_health_models_and_docs(client, model_dir):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["models"] == [model_dir.name]
    assert health["queue"]["capacity"] == 64
    models = client.get("/v1/models").json()
    assert models["default"] == model_dir.name
    [info] = models["data"]
    assert info["type"] == "latent-diffusion" and info["sample_rate"] == 24000
    assert info["max_duration"] == 4.0  # min(the model's 8 s, this server's 4 s)
    assert info["controls"]["steps"]["high"] == 1000
    assert info["audio_inputs"] == ["init_audio", "intensity", "melody"]  # melody, intensity: noise optimisation
    assert {"intensity", "structure", "loop", "control_iterations"} <= set(info["controls"])
    schema = client.get("/openapi.json").json()
    assert {"/v1/generations", "/v1/generations/{job_id}", "/v1/generations/{job_id}/events",
            "/v1/generations/{job_id}/audio", "/v1/audio/music", "/v1/models", "/health"} <= set(schema["paths"])
    body = schema["paths"]["/v1/generations"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert body["application/json"]["schema"]["properties"]["duration"]["maximum"] == 4.0
    form = body["multipart/form-data"]["schema"]["properties"]
    assert [kind.get("format", kind["type"]) for kind in form["intensity"]["anyOf"]] == ["string", "binary"]
    assert all(form[name]["format"] == "binary" for name in ("melody", "init_audio", "prompt_audio"))
    assert body["application/json"]["schema"]["properties"]["control_iterations"]["anyOf"][0]["maximum"] == 3
    assert "422" not in json.dumps(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_a_job_from_request_to_audio_and_back_to_the_cli(client, generator, settings, model_dir):
    response = client.post("/v1/generations", json={"prompt": "a waltz for strings", "duration": 1.0, "steps": 4,
                                                      "seed": 7})
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued" and job["seed"] == 7 and job["model"] == model_dir.name
    assert job["urls"] == {"get": f"/v1/generations/{job['id']}", "stream": f"/v1/generations/{job['id']}/events",
                           "cancel": f"/v1/generations/{job['id']}", "audio": f"/v1/generations/{job['id']}/audio"}
    assert response.headers["location"] == job["urls"]["get"]

    stream = events(client, job["urls"]["stream"])
    names = [name for name, _ in stream]
    assert names[-1] == "done" and set(names) <= {"queued", "progress", "done"}
    assert stream[-1][1]["status"] == "succeeded" and stream[-1][1]["seed"] == 7
    steps = [data["step"] for name, data in stream if name == "progress"]
    assert steps == sorted(steps) and all(d["step"] <= d["total"] for n, d in stream if n == "progress")

    done = client.get(job["urls"]["get"]).json()
    assert done["status"] == "succeeded" and done["sample_rate"] == 24000 and done["progress"]["step"] > 0
    assert done["controls"] == {"steps": 4} and done["batch_size"] == 1 and done["expires_at"]
    audio = client.get(job["urls"]["audio"])
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    assert audio.headers["x-seed"] == "7" and audio.headers["x-model"] == model_dir.name
    samples, rate = decode(audio.content)
    assert rate == 24000 and samples.shape == (1, 24000)

    # the sidecar has the CLI's fields, and they reproduce the audio
    sidecar = json.loads((settings.results_dir / f"{job['id']}.wav.json").read_text())
    assert {"prompt", "seed", "model", "duration", "sample_rate", "format", "melody", "controls",
            "generation_seconds"} <= set(sidecar)
    again = generator.generate(sidecar["prompt"], sidecar["duration"], sidecar["seed"], **sidecar["controls"])
    assert np.abs(again.samples[0].numpy() - samples).max() <= PCM16

    flac = client.get(job["urls"]["audio"], params={"format": "flac"})
    assert flac.headers["content-type"] == "audio/flac"
    assert np.abs(decode(flac.content)[0] - samples).max() <= PCM16


def test_seed_is_drawn_when_absent_and_formats(client):
    ids = {}
    for fmt in ("flac", "mp3"):
        response = client.post("/v1/generations", json={"prompt": "fast drums", "duration": 0.5, "steps": 2,
                                                          "format": fmt})
        assert response.status_code == 202
        ids[fmt] = response.json()
        assert isinstance(ids[fmt]["seed"], int) and 0 <= ids[fmt]["seed"] < 2**63
    for fmt, job in ids.items():
        assert wait(client, job["id"])["status"] == "succeeded"
        audio = client.get(job["urls"]["audio"])
        assert audio.headers["content-type"] == {"flac": "audio/flac", "mp3": "audio/mpeg"}[fmt]
        assert audio.headers["x-seed"] == str(job["seed"])
        samples, rate = decode(audio.content)
        assert rate == 24000 and abs(samples.shape[1] - 12000) < 2000  # mp3 pads a little


def test_synchronous_clip(client, generator, model_dir):
    response = client.post("/v1/audio/music", json={"input": "a brass march", "duration": 1.0, "steps": 3,
                                                     "seed": 3, "response_format": "flac"})
    assert response.status_code == 200 and response.headers["content-type"] == "audio/flac"
    assert response.headers["x-seed"] == "3" and response.headers["x-model"] == model_dir.name
    samples, _ = decode(response.content)
    expected = generator.generate("a brass march", 1.0, 3, steps=3).samples[0].numpy()
    assert np.abs(samples - expected).max() <= PCM16
    drawn = client.post("/v1/audio/music", json={"input": "a brass march", "duration": 0.5, "steps": 2})
    assert drawn.status_code == 200 and drawn.headers["x-seed"].isdigit()
    assert_error(client.post("/v1/audio/music", json={"input": "x", "duration": 3.0}), 400, "limit of 2 s")


# -- every error: its status and its one line -------------------------------------------------------

BAD_REQUESTS = [
    ("not JSON", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, "invalid JSON"),
    ("not an object", {"json": [1, 2]}, 400, "must be an object"),
    ("no prompt", {"json": {"duration": 1}}, 400, "prompt is required"),
    ("empty prompt", {"json": {"prompt": "  ", "duration": 1}}, 400, "prompt is empty"),
    ("long prompt", {"json": {"prompt": "x" * 201, "duration": 1}}, 400, "limit is 200"),
    ("unknown field", {"json": {"prompt": "x", "duration": 1, "tempo": 3}}, 400, "unknown field 'tempo'"),
    ("path as input", {"json": {"prompt": "x", "init_audio": "/etc/passwd"}}, 400, "as files"),
    ("unknown model", {"json": {"prompt": "x", "model": "nope"}}, 400, "unknown model 'nope'"),
    ("duration too long", {"json": {"prompt": "x", "duration": 5}}, 400, "limit of 4 s"),
    ("duration zero", {"json": {"prompt": "x", "duration": 0}}, 400, "duration"),
    ("duration NaN", {"content": b'{"prompt": "x", "duration": NaN}', "headers": {"content-type": "application/json"}},
     400, "finite"),
    ("duration text", {"json": {"prompt": "x", "duration": "long"}}, 400, "duration"),
    ("steps zero", {"json": {"prompt": "x", "duration": 1, "steps": 0}}, 400, "steps"),
    ("steps over limit", {"json": {"prompt": "x", "duration": 1, "steps": 21}}, 400, "limit of 20"),
    ("cfg negative", {"json": {"prompt": "x", "duration": 1, "cfg": -1}}, 400, "cfg"),
    ("seed negative", {"json": {"prompt": "x", "duration": 1, "seed": -1}}, 400, "seed"),
    ("bad format", {"json": {"prompt": "x", "duration": 1, "format": "aiff"}}, 400, "format"),
    ("bad sampler", {"json": {"prompt": "x", "duration": 1, "sampler": "plms"}}, 400, "sampler"),
    ("control the model lacks", {"json": {"prompt": "x", "duration": 1, "temperature": 0.5}}, 400, "temperature"),
    ("mask without audio", {"json": {"prompt": "x", "duration": 1, "mask": [[0, 0.5]]}}, 400, "needs init_audio"),
    ("backwards mask", {"json": {"prompt": "x", "duration": 1, "mask": [[0.5, 0.1]]}}, 400, "start < end"),
    # noise optimisation (DITTO): parsed and checked before any work, each error naming its field
    ("control_iterations over limit", {"json": {"prompt": "x", "duration": 1, "intensity": "0:soft",
                                                "control_iterations": 4}}, 400,
     "control_iterations 4 is beyond this server's limit of 3"),
    ("control_iterations zero", {"json": {"prompt": "x", "duration": 1, "control_iterations": 0}}, 400,
     "control_iterations"),
    ("control_iterations alone", {"json": {"prompt": "x", "duration": 1, "control_iterations": 2}}, 400,
     "control_iterations needs a target"),
    ("bad intensity level", {"json": {"prompt": "x", "duration": 1, "intensity": "0:shouty"}}, 400,
     "intensity: cannot read the level 'shouty'"),
    ("intensity without times", {"json": {"prompt": "x", "duration": 1, "intensity": "loud"}}, 400,
     "intensity point 'loud'"),
    ("intensity as a path", {"json": {"prompt": "x", "duration": 1, "intensity": "0:../../secret.wav"}}, 400,
     "upload it as the intensity file"),
    ("intensity too long", {"json": {"prompt": "x", "duration": 1, "intensity": "0:soft," * 200}}, 400,
     "intensity"),
    ("unknown structure letters", {"json": {"prompt": "x", "duration": 1, "structure": "AB?A"}}, 400,
     "cannot read the structure"),
    ("structure of one section", {"json": {"prompt": "x", "duration": 1, "structure": "A"}}, 400,
     "structure: a structure needs at least two sections"),
    ("loop over half the clip", {"json": {"prompt": "x", "duration": 1, "loop": 0.8}}, 400,
     "loop 0.8 s must be between"),
    ("loop negative", {"json": {"prompt": "x", "duration": 1, "loop": -1}}, 400, "loop"),
    ("too short to control", {"json": {"prompt": "x", "duration": 0.1, "structure": "AB"}}, 400, "too short"),
    ("wrong content type", {"content": b"prompt=x", "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
    ("body over the limit", {"content": b"x", "headers": {"content-type": "application/json",
                                                         "content-length": str(10**9)}}, 413, "over"),
]


@pytest.mark.parametrize("what, request_kwargs, status, fragment", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_status_and_one_line(client, what, request_kwargs, status, fragment):
    assert_error(client.post("/v1/generations", **request_kwargs), status, fragment)


def test_unknown_jobs_routes_and_methods(client):
    unknown = "0" * 32
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/audio"), ("GET", "/events")):
        assert_error(client.request(method, f"/v1/generations/{unknown}{path}"), 404, "no job")
    assert_error(client.get("/v1/generations/../../etc/passwd"), 404)
    assert_error(client.get("/v1/nothing"), 404, "no such URL")
    assert_error(client.put("/v1/models"), 405, "not allowed")
    assert_error(client.get("/v1/generations", params={"limit": 0}), 400, "limit")
    assert_error(client.get("/v1/generations/" + unknown + "/audio", params={"format": "aiff"}), 400, "format")


def test_cancel_of_a_finished_job_and_audio_of_an_unfinished_one(client):
    job = client.post("/v1/generations", json={"prompt": "x", "duration": 0.5, "steps": 2}).json()
    assert wait(client, job["id"])["status"] == "succeeded"
    assert_error(client.delete(job["urls"]["cancel"]), 409, "already succeeded")
    assert client.get("/v1/generations", params={"limit": 5}).json()["data"][0]["id"] == job["id"]


def test_the_web_page_routes(client):
    page = Path(__file__).parents[1] / "tunesmith" / "serve" / "static" / "index.html"
    response = client.get("/")
    if page.is_file():
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    else:
        assert_error(response, 404, "no web page")
    assert_error(client.get("/static/no-such-file.js"), 404)


# -- uploads ---------------------------------------------------------------------------------------------

def test_audio_to_audio_and_inpainting_uploads(client, settings):
    before = set(settings.uploads_dir.iterdir())
    for extra in ({"strength": "0.5"}, {"mask": "[[0.2, 0.6]]"}):
        response = client.post("/v1/generations", data={"prompt": "a calm ending", "duration": "1", "steps": "3",
                                                          "seed": "", **extra},
                               files={"init_audio": ("../../evil.wav", wav_bytes(1.0), "audio/wav")})
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["inputs"] == ["init_audio"]
        assert wait(client, job["id"])["status"] == "succeeded"
    stored = set(settings.uploads_dir.iterdir()) - before
    assert len(stored) == 2 and all(len(p.stem) == 32 and p.suffix == ".wav" for p in stored)
    # "../../evil.wav" would land two levels up from uploads/: nothing there, nor anywhere below
    assert not list(settings.data_dir.parent.rglob("evil*"))


def test_bad_uploads_are_refused_before_any_work(client, settings):
    before = set(settings.uploads_dir.iterdir())
    form = {"prompt": "x", "duration": "1", "steps": "2"}
    big = wav_bytes(2.9, rate=48000)  # under the 3 s limit, over the 200 kB one
    cases = [
        ({"init_audio": ("a.wav", big, "audio/wav")}, 413, "limit is 0.2 MB"),
        ({"init_audio": ("a.flac", wav_bytes(3.5, rate=8000, fmt="FLAC"), "audio/flac")}, 413, "limit is 3 s"),
        ({"init_audio": ("a.wav", b"RIFF but not really audio", "audio/wav")}, 400, "not an audio file"),
        ({"prompt_audio": ("a.wav", wav_bytes(0.5), "audio/wav")}, 400, "takes no prompt_audio"),
        ({"init_audio": ("a.mid", midi_bytes(), "audio/midi")}, 400, "only as the melody"),
        ({"melody": ("a.mid", b"MThd" + b"\x00" * 40, "audio/midi")}, 400, "not a MIDI file we can read"),
        ({"melody": ("a.mid", midi_bytes(notes=False), "audio/midi")}, 400, "no pitched notes"),
        ({"melody": ("a.mid", midi_bytes(seconds=4.0), "audio/midi")}, 413, "limit is 3 s"),
        ({"other": ("a.wav", wav_bytes(0.5), "audio/wav")}, 400, "unexpected file field"),
    ]
    for files, status, fragment in cases:
        assert_error(client.post("/v1/generations", data=form, files=files), status, fragment)
    def chunks():  # no Content-Length: cut off as it streams in, past the 1.6 MB body limit
        for _ in range(20):
            yield b"x" * 100_000

    assert_error(client.post("/v1/generations", content=chunks(), headers={"content-type": "application/json"}), 413,
                 "over")
    silent = io.BytesIO()
    sf.write(silent, np.zeros(24000, np.float32), 24000, format="WAV")
    assert_error(client.post("/v1/generations", data=form, files={"init_audio": ("s.wav", silent.getvalue())}), 400,
                 "silent")
    assert set(settings.uploads_dir.iterdir()) == before  # nothing kept


# -- noise optimisation (DITTO) --------------------------------------------------------------------------

def loudness_ramp(seconds: float = 1.0, rate: int = 24000) -> bytes:
    """A tone that swells from quiet to loud: a recording whose loudness to follow."""
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (np.linspace(0.01, 0.5, t.size) * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate,
             format="WAV")
    return buffer.getvalue()


def test_a_ditto_job_reports_each_control_and_reproduces(client, generator, settings):
    controls = {"steps": 3, "intensity": "0:soft, 1:loud", "control_iterations": 2}
    response = client.post("/v1/generations", json={"prompt": "a swelling drone", "duration": 1.0, "seed": 5,
                                                      **controls})
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["controls"] == controls and job["inputs"] == [] and job["batch_size"] == 1
    report = job["info"]["control_report"]
    assert set(report) == {"optimisation_loss", "intensity"}
    assert isinstance(report["intensity"]["correlation"], float) and report["intensity"]["loss"] >= 0
    sidecar = json.loads((settings.results_dir / f"{job['id']}.wav.json").read_text())
    assert sidecar["control_report"] == report and sidecar["controls"] == controls  # as the CLI's sidecar
    assert results.info_of(sidecar) == job["info"]  # what a restart recovers of a result whole on disk
    samples, _ = decode(client.get(job["urls"]["audio"]).content)
    alone = generator.generate("a swelling drone", 1.0, 5, **controls)
    assert np.abs(samples - alone.samples[0].numpy()).max() <= PCM16 + 1e-4
    assert alone.info["control_report"] == report

    # no control_iterations: the model's default (20) is above this server's limit (3), which caps it, on record
    capped = wait(client, client.post("/v1/generations", json={"prompt": "x", "duration": 1.0, "steps": 2,
                                                                "structure": "AB", "loop": 0.2}).json()["id"])
    assert capped["status"] == "succeeded", capped["error"]
    assert capped["controls"] == {"steps": 2, "structure": "AB", "loop": 0.2, "control_iterations": 3}
    assert {"structure", "loop"} <= set(capped["info"]["control_report"])
    plain = wait(client, client.post("/v1/generations", json={"prompt": "x", "duration": 0.5, "steps": 2}).json()["id"])
    assert set(plain["info"]) == {"loudness"} and plain["info"]["loudness"]["target_lufs"] == -16.0  # no control report


def test_text_control_by_clap_on_the_unconditional_model(client, generator):
    controls = {"steps": 2, "clap": "a solo cello", "unconditional": True, "control_iterations": 2}
    response = client.post("/v1/generations", json={"prompt": "ignored", "duration": 1.0, "seed": 3, **controls})
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    report = job["info"]["control_report"]["clap"]
    assert report["score"] == pytest.approx(1 - report["loss"], abs=1e-3)
    assert generator.generate("other words", 1.0, 3, **controls).info["control_report"]["clap"] == report
    assert_error(client.post("/v1/generations", json={"prompt": "x", "clap": ""}), 400, "clap")


def test_intensity_and_melody_as_uploads(client, settings):
    form = {"prompt": "a swelling drone", "duration": "1", "steps": "2", "control_iterations": "2", "seed": "1"}
    response = client.post("/v1/generations", data=form,
                           files={"intensity": ("ramp.wav", loudness_ramp(), "audio/wav")})
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["inputs"] == ["intensity"] and "intensity" not in job["controls"]
    assert isinstance(job["info"]["control_report"]["intensity"]["correlation"], float)

    before = {p.name for p in settings.uploads_dir.iterdir()}
    response = client.post("/v1/generations", data={**form, "intensity": "0:soft, 1:loud"},  # as in docs/serving.md
                           files={"melody": ("tune.mid", midi_bytes(), "audio/midi")})
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["inputs"] == ["melody"] and job["controls"]["intensity"] == "0:soft, 1:loud"
    assert 0 <= job["info"]["control_report"]["melody"]["accuracy"] <= 1 and "intensity" in job["info"]["control_report"]
    [stored] = {p.name for p in settings.uploads_dir.iterdir()} - before
    assert stored.endswith(".mid") and len(stored) == 36

    twice = client.post("/v1/generations", data={**form, "intensity": "0:soft,1:loud"},
                        files={"intensity": ("ramp.wav", loudness_ramp(), "audio/wav")})
    assert_error(twice, 400, "intensity is given twice, as text and as a file")
    empty_text = client.post("/v1/generations", data={**form, "intensity": ""},  # an empty field is not given
                             files={"intensity": ("ramp.wav", loudness_ramp(), "audio/wav")})
    assert empty_text.status_code == 202, empty_text.text
    wait(client, empty_text.json()["id"])
    with_init = client.post("/v1/generations", data={**form, "intensity": "0:soft,1:loud"},
                            files={"init_audio": ("a.wav", wav_bytes(1.0), "audio/wav")})
    assert_error(with_init, 400, "do not combine with init_audio")


# -- API key -----------------------------------------------------------------------------------------------

def test_api_key(tmp_path, model_dir):
    settings = ServeSettings(data_dir=tmp_path, models=(str(model_dir),), api_key="s3cret", **LIMITS)
    with TestClient(create_app(settings)) as c:
        assert c.get("/health").status_code == 200  # open: load balancers ask it
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            response = c.get("/v1/models", headers=headers)
            assert_error(response, 401, "API key")
            assert response.headers["www-authenticate"] == "Bearer"
        assert_error(c.post("/v1/generations", json={"prompt": "x"}, params={"api_key": "s3cret"}), 401)
        good = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=good).status_code == 200
        assert c.get("/v1/models", params={"api_key": "s3cret"}).status_code == 200  # for EventSource and <audio>
        job = c.post("/v1/generations", json={"prompt": "x", "duration": 0.5, "steps": 2}, headers=good)
        assert job.status_code == 202
        assert wait(c, job.json()["id"], headers=good)["status"] == "succeeded"


def test_cli_refuses_a_public_address_without_a_key_and_a_bad_model(capsys, monkeypatch, model_dir, tmp_path):
    monkeypatch.delenv("TUNESMITH_API_KEY", raising=False)
    port = str(free_port())
    assert main(["serve", "--host", "0.0.0.0", "--port", port, "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "needs an API key" in err
    assert main(["serve", "--port", port, "--model", str(tmp_path / "nope"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nope" in err
    assert main(["serve", "--port", port, "--max-queue", "0"]) == 2
    assert "max_queue" in capsys.readouterr().err


# -- queue bound, cancellation, batching: with a generator the test holds at its first step -------------------

class Gated:
    """A generator that stops at its first step until the test opens the gate."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.waiting = threading.Event()
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, prompts, duration, seed=0, *, callback=None, **controls):
        call = {"prompts": list(prompts), "seed": seed, "duration": duration, "steps_run": 0}
        self.calls.append(call)

        def gated(step: int, total: int) -> None:
            self.waiting.set()
            assert self.gate.wait(60)
            call["steps_run"] += 1
            if callback is not None:
                callback(step, total)

        return self.inner.generate(prompts, duration, seed, callback=gated, **controls)


@pytest.fixture
def gated(generator, tmp_path):
    gen = Gated(generator)
    settings = ServeSettings(data_dir=tmp_path, max_queue=4, max_batch=4, **LIMITS)
    with TestClient(create_app(settings, models={"tiny": gen})) as c:
        yield c, gen, settings
        gen.gate.set()


def post(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/generations", json={"prompt": "a folk tune", "duration": 1.0, "steps": 3, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def test_queue_full_cancel_queued_and_batching(gated, generator):
    client, gen, settings = gated
    first = post(client, steps=2)
    assert gen.waiting.wait(60)  # running, held at its first step
    assert client.get(first["urls"]["get"]).json()["status"] == "running"
    same = [post(client, prompt=f"a folk tune, take {i}", seed=10 + i) for i in range(3)]
    other = post(client, duration=0.5)  # another duration: never in the same batch
    assert [client.get(j["urls"]["get"]).json()["position"] for j in same + [other]] == [1, 2, 3, 4]
    full = client.post("/v1/generations", json={"prompt": "x", "duration": 1.0})
    assert_error(full, 429, "queue is full")
    assert int(full.headers["retry-after"]) >= 1
    canceled = client.delete(same[2]["urls"]["cancel"])
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert_error(client.delete(same[2]["urls"]["cancel"]), 409, "already been canceled")
    assert_error(client.get(same[2]["urls"]["audio"]), 409, "canceled")

    gen.gate.set()
    done = [wait(client, j["id"]) for j in [first, *same[:2], other]]
    assert [j["status"] for j in done] == ["succeeded"] * 4
    assert [j["batch_size"] for j in done] == [1, 2, 2, 1]
    assert [c["prompts"] for c in gen.calls[1:]] == [["a folk tune, take 0", "a folk tune, take 1"], ["a folk tune"]]
    assert gen.calls[1]["seed"] == [10, 11]
    for job in done[1:3]:  # a batched row is the job run alone: reproducible from its seed
        samples, _ = decode(client.get(job["urls"]["audio"]).content)
        alone = generator.generate(job["prompt"], job["duration"], job["seed"], steps=3).samples[0].numpy()
        assert np.abs(samples - alone).max() <= PCM16 + 1e-4
    assert wait(client, same[2]["id"])["status"] == "canceled"
    assert not (settings.results_dir / f"{same[2]['id']}.wav").exists()


def test_only_jobs_a_batch_reproduces_may_share_one():
    from tunesmith.serve.scheduler import batchable
    from tunesmith.serve.store import Job

    def job(**controls: Any) -> Job:
        return Job(id="0" * 32, model="m", prompt="p", duration=1.0, seed=0, format="wav", controls=controls)

    assert batchable(job(steps=4)) and batchable(job(sampler="euler"))
    assert not batchable(job(sampler="dpmpp-3m-sde"))  # its later noise comes from the batch's first seed
    noise = ("intensity", "structure", "loop", "melody")  # the DiT's noise-optimisation targets: run alone
    assert not batchable(job(intensity="0:soft"), noise) and not batchable(job(loop=1.0), noise)
    melody = job(steps=4)
    melody.inputs = {"melody": "0" * 32 + ".mid"}
    assert not batchable(melody, noise) and batchable(melody)  # a melody LM batches it (one conditioning)
    assert job(steps=4).batch_key != job(steps=5).batch_key


def test_ditto_jobs_with_equal_controls_run_alone(gated):
    client, gen, _ = gated
    first = post(client, steps=2)
    assert gen.waiting.wait(60)  # held: what follows queues up behind it
    ditto = [post(client, prompt=f"a swell, take {i}", seed=i, intensity="0:soft,1:loud", control_iterations=2)
             for i in range(2)]
    gen.gate.set()
    done = [wait(client, j["id"]) for j in [first, *ditto]]
    assert [j["status"] for j in done] == ["succeeded"] * 3
    assert [j["batch_size"] for j in done] == [1, 1, 1]
    assert all("control_report" in j["info"] for j in done[1:])


def test_cancel_stops_a_running_job_at_its_next_step(gated):
    client, gen, settings = gated
    job = post(client, steps=12)
    assert gen.waiting.wait(60)
    response = client.delete(job["urls"]["cancel"])
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    gen.gate.set()
    deadline = time.monotonic() + 30
    while client.get("/health").json()["queue"]["queued"] or not gen.calls or gen.calls[-1]["steps_run"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    assert gen.calls[-1]["steps_run"] == 1  # the first step's callback raised: no second step ran
    final = client.get(job["urls"]["get"]).json()
    assert final["status"] == "canceled" and final["error"] is None
    assert not list(settings.results_dir.glob(f"*{job['id']}*"))
    stream = events(client, job["urls"]["stream"])
    assert stream == [("done", stream[-1][1])] and stream[-1][1]["status"] == "canceled"


# -- retention ------------------------------------------------------------------------------------------------

def test_results_are_deleted_after_their_time(tmp_path, model_dir):
    settings = ServeSettings(data_dir=tmp_path, models=(str(model_dir),), result_ttl_s=60, **LIMITS)
    app = create_app(settings)
    with TestClient(app) as c:
        response = c.post("/v1/generations", data={"prompt": "x", "duration": "1", "steps": "2"},
                          files={"init_audio": ("a.wav", wav_bytes(1.0))})
        job = response.json()
        assert wait(c, job["id"])["status"] == "succeeded"
        assert list(settings.results_dir.iterdir()) and list(settings.uploads_dir.iterdir())
        scheduler = app.state.service.scheduler
        assert scheduler.cleanup(now=time.time() + 30) == 0
        assert scheduler.cleanup(now=time.time() + 61) == 1
        assert_error(c.get(job["urls"]["get"]), 404, "retention")
        assert not list(settings.results_dir.iterdir()) and not list(settings.uploads_dir.iterdir())


# -- property-based: no input makes a 500 --------------------------------------------------------------------

def test_schemathesis_finds_no_server_error(tmp_path, generator):
    """Every operation of the OpenAPI schema, with valid and invalid inputs (25 examples each):
    no 5xx, and every error in the one shape."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis.errors import Unsatisfiable

    settings = ServeSettings(data_dir=tmp_path, **{**LIMITS, "max_duration": 0.5, "sync_max_duration": 0.5,
                                                   "max_steps": 3})
    seen: dict[str, set[int]] = {}

    def fuzz(client: TestClient, operation: Any, mode: Any) -> None:
        name = f"{operation.method} {operation.path}"

        @given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis_settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            request = case.as_transport_kwargs(base_url="http://testserver")
            request.pop("cookies", None)
            if isinstance(request.get("data"), (bytes, str)):  # raw bodies: httpx calls them content
                request["content"] = request.pop("data")
            response = client.request(**request)
            seen.setdefault(name, set()).add(response.status_code)
            assert response.status_code < 500, (request, response.text)
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}

        try:
            call()
        except Unsatisfiable:  # no invalid input exists for an operation without parameters
            pass

    with TestClient(create_app(settings, models={"tiny": generator})) as client:
        schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
        for result in schema.get_all_operations():
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                fuzz(client, result.ok(), mode)
    assert 202 in seen["post /v1/generations"] and 200 in seen["get /v1/models"]
