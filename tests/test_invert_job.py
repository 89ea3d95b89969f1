"""The batch job: outputs, bad inputs, non-finite images, resume after a kill, two processes.

Stand-in networks keep these fast; the real networks run in tests/test_invert_end_to_end.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import engine_standins as standins
from magec_jax.images import to_uint8
from magec_jax.inversion import job as job_lib
from magec_jax.inversion.protocols import job_config

TESTS = Path(__file__).parent


def make_config(images: Path, out: Path, steps_scale: float = 0.05, **overrides):
    config = job_config("magec", steps_scale=steps_scale)  # by default 5 + 5 steps, chunks of 1
    config.images, config.out_dir, config.batch_size = str(images), str(out), 4
    config.update(overrides)
    return config


def write_faces(folder: Path, n: int, seed: int = 1) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(standins.targets(n, seed)):
        p = folder / f"img{i:02d}.png"
        Image.fromarray(np.kron(to_uint8(img), np.ones((2, 2, 1), np.uint8))).save(p)  # 16x16 -> resized to 8
        paths.append(p)
    return paths


def test_outputs_and_formats(tmp_path):
    write_faces(tmp_path / "in", 5)
    summary = job_lib.run(make_config(tmp_path / "in", tmp_path / "out"), networks=standins.networks())
    assert summary["done"] == 5 and not summary["failed"] and not summary["skipped"]
    for i in range(5):
        with np.load(tmp_path / "out" / f"img{i:02d}.npz") as z:
            assert z["w"].shape == (1, standins.NUM_WS, standins.W_DIM) and z["w"].dtype == np.float32
        assert Image.open(tmp_path / "out" / f"img{i:02d}.png").size == (standins.RES, standins.RES)
        rec = json.loads((tmp_path / "out" / f"img{i:02d}.json").read_text())
        assert rec["status"] == "ok" and rec["steps"] == 10 and set(rec["losses"]) == {"mse", "lpips", "id", "magec"}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["done"] == 5 and summary["runs"][-1]["batch_size"] == 3  # 5 at batch_size 4: 2 batches of 3


def test_batch_plan_pads_as_few_rows_as_possible():
    assert job_lib.batch_plan(17, 16) == (9, 2)
    assert job_lib.batch_plan(16, 16) == (16, 1) and job_lib.batch_plan(3, 16) == (3, 1)
    assert job_lib.batch_plan(33, 16) == (11, 3) and job_lib.batch_plan(0, 16) == (16, 0)
    assert job_lib.batch_plan(5, 6, devices=4) == (8, 1)  # batch_size rounded up to the devices
    assert job_lib.batch_plan(9, 8, devices=4) == (8, 2)  # 2 batches either way; 8 is the smallest multiple of 4
    for count in range(1, 60):
        for size in (1, 3, 8, 16):
            for devices in (1, 2, 4):
                batch, n = job_lib.batch_plan(count, size, devices)
                largest = -(-size // devices) * devices
                assert batch % devices == 0 and batch <= largest and n == -(-count // largest)
                assert batch * n >= count and (batch - devices) * n < count  # no smaller batch fits
    with pytest.raises(ValueError):
        job_lib.batch_plan(3, 0)


def test_padding_the_last_batch_does_not_change_results(tmp_path):
    write_faces(tmp_path / "in", 5)
    job_lib.run(make_config(tmp_path / "in", tmp_path / "a", batch_size=4), networks=standins.networks())
    job_lib.run(make_config(tmp_path / "in", tmp_path / "b", batch_size=1), networks=standins.networks())
    for i in range(5):
        a, b = (np.load(tmp_path / d / f"img{i:02d}.npz")["w"] for d in ("a", "b"))
        np.testing.assert_allclose(a, b, atol=standins.BATCH_ATOL)


def test_bad_inputs_are_reported_and_skipped(tmp_path):
    folder = tmp_path / "in"
    write_faces(folder, 2)
    (folder / "text.png").write_text("not an image")
    (folder / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    Image.new("RGB", (3, 3)).save(folder / "tiny.png")
    Image.new("CMYK", (16, 16)).save(folder / "cmyk.jpg")  # accepted: converted to RGB (magec_jax.images)
    Image.new("F", (16, 16)).save(folder / "float.tif")
    Image.new("RGBA", (16, 16), (1, 2, 3, 0)).save(folder / "transparent.png")
    Image.new("L", (16, 16), 128).save(folder / "gray.png")  # accepted: grayscale is replicated
    summary = job_lib.run(make_config(folder, tmp_path / "out"), networks=standins.networks())
    reasons = {Path(s["image"]).name: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"text.png", "truncated.jpg", "tiny.png", "float.tif", "transparent.png"}
    assert "too small" in reasons["tiny.png"] and "mode F" in reasons["float.tif"]
    assert "transparent" in reasons["transparent.png"] and "unreadable" in reasons["text.png"]
    assert summary["done"] == 4


def test_nonfinite_image_is_reported_and_the_batch_finishes(tmp_path):
    folder = tmp_path / "in"
    write_faces(folder, 3)
    Image.new("RGB", (16, 16), (255, 255, 255)).save(folder / "white.png")
    nets = standins.networks()

    def fragile_lpips(variables, x, y):  # fault injection: the loss is NaN for an all-white target
        return jnp.where(jnp.all(y > 0.999), jnp.nan, nets.lpips(variables, x, y))

    summary = job_lib.run(make_config(folder, tmp_path / "out"), networks=dataclasses.replace(nets, lpips=fragile_lpips))
    assert [Path(f["image"]).name for f in summary["failed"]] == ["white.png"]
    assert summary["done"] == 3 and not (tmp_path / "out" / "white.json").exists()
    # The batch's other images are unaffected: they get the latents of a run without the failing image.
    (folder / "white.png").unlink()
    job_lib.run(make_config(folder, tmp_path / "clean"), networks=nets)
    for i in range(3):
        a, b = (np.load(tmp_path / d / f"img{i:02d}.npz")["w"] for d in ("out", "clean"))
        np.testing.assert_allclose(a, b, atol=standins.BATCH_ATOL)


SCRIPT = """
import sys, json
sys.path.insert(0, {tests!r})
import jax
jax.config.update("jax_default_matmul_precision", "highest")
from test_invert_job import make_config
from magec_jax.configdicts import from_configdict
from magec_jax.inversion import job
config = make_config(__import__("pathlib").Path({images!r}), __import__("pathlib").Path({out!r}), **json.loads({overrides!r}))
job.init_distributed(from_configdict(job.JobConfig, config).distributed)  # before the networks touch a device
import engine_standins as standins
job.run(config, networks=standins.networks())
"""


def _script(images, out, **overrides):
    return textwrap.dedent(SCRIPT.format(tests=str(TESTS), images=str(images), out=str(out),
                                         overrides=json.dumps(overrides)))


@pytest.mark.slow
def test_resume_after_kill_finishes_only_what_is_missing(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    write_faces(folder, 8)
    config = dict(batch_size=2, steps_scale=1.0)  # 200 steps a batch: slow enough to be killed mid-job
    proc = subprocess.Popen([sys.executable, "-c", _script(folder, out, **config)], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "img01.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_first = sorted(p.name for p in out.glob("*.json") if p.name != "summary.json")
    assert 2 <= len(done_first) < 8, done_first
    stamps = {n: (out / n).stat().st_mtime_ns for n in done_first}
    summary = job_lib.run(make_config(folder, out, **config), networks=standins.networks())
    assert summary["already_done"] == len(done_first) and summary["done"] == 8 - len(done_first)
    assert all((out / n).stat().st_mtime_ns == t for n, t in stamps.items())  # finished work untouched
    assert not list(out.glob(".*"))  # no temporary files left behind
    reference = job_lib.run(make_config(folder, tmp_path / "ref", **config), networks=standins.networks())
    assert reference["done"] == 8
    for i in range(8):
        a, b = (np.load(d / f"img{i:02d}.npz")["w"] for d in (out, tmp_path / "ref"))
        np.testing.assert_allclose(a, b, atol=standins.BATCH_ATOL)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_and_split_the_work(tmp_path):
    folder = tmp_path / "in"
    write_faces(folder, 6)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for pid in range(2):
        dist = dict(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid, cpu_collectives="gloo")
        script = _script(folder, tmp_path / "multi", batch_size=2, distributed=dist)
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env))
    for p in procs:
        assert p.wait(timeout=300) == 0
    parts = [json.loads((tmp_path / "multi" / f"summary.process{i}.json").read_text()) for i in range(2)]
    assert [p["done"] for p in parts] == [3, 3]
    assert json.loads((tmp_path / "multi" / "summary.json").read_text())["done"] == 6
    job_lib.run(make_config(folder, tmp_path / "single", batch_size=2), networks=standins.networks())
    for i in range(6):
        a, b = (np.load(tmp_path / d / f"img{i:02d}.npz")["w"] for d in ("multi", "single"))
        np.testing.assert_allclose(a, b, atol=standins.BATCH_ATOL)
