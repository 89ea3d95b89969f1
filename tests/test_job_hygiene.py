"""What a new user meets: wasted work on skipped inputs, stale resumes, outputs read back as inputs, config
mistakes, file modes, progress and summaries, labelled edit grids (issue 10, one test or more per item).

Stand-in networks keep the job tests fast; the real networks run in tests/test_invert_end_to_end.py.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import engine_standins as standins
from conftest import REPO
from magec_jax import cli
from magec_jax import images as imio
from magec_jax.configdicts import from_configdict
from magec_jax.editing.render import labelled_sheet
from magec_jax.errors import ConfigError, FileFormatError, MagecError
from magec_jax.inversion import job as job_lib
from magec_jax.inversion.engine import Engine
from magec_jax.inversion.protocols import job_config
from test_invert_job import make_config, write_faces


class CountingEngine(Engine):
    """The engine, counting how often it is built and how many batches it inverts."""

    built = 0
    batches = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        CountingEngine.built += 1

    def invert(self, images, **kwargs):
        CountingEngine.batches += 1
        return super().invert(images, **kwargs)


@pytest.fixture
def counting(monkeypatch):
    CountingEngine.built = CountingEngine.batches = 0
    monkeypatch.setattr(job_lib, "Engine", CountingEngine)
    return CountingEngine


def _bad_inputs(folder: Path, n: int) -> None:
    for i in range(n):
        (folder / f"bad{i}.png").write_text("not an image")


def _run(config, **kwargs):
    return job_lib.run(config, networks=standins.networks(), **kwargs)


# ---- 1. batches hold only valid images; a finished job does nothing ----------------------------------------


def test_batches_are_built_only_from_valid_images(tmp_path, counting):
    folder = tmp_path / "in"
    write_faces(folder, 4)
    _bad_inputs(folder, 4)  # sorted after the faces: with the old listing they filled a second batch
    record = _run(make_config(folder, tmp_path / "out", batch_size=4))
    assert record["done"] == 4 and len(record["skipped"]) == 4
    assert counting.batches == 1


def test_a_job_whose_inputs_are_all_bad_builds_nothing(tmp_path, counting):
    folder = tmp_path / "in"
    folder.mkdir()
    _bad_inputs(folder, 3)
    record = _run(make_config(folder, tmp_path / "out"))
    assert record["done"] == 0 and len(record["skipped"]) == 3
    assert counting.built == 0 and counting.batches == 0


def test_rerun_of_a_finished_job_compiles_and_optimises_nothing(tmp_path, counting):
    folder = tmp_path / "in"
    write_faces(folder, 3)
    _bad_inputs(folder, 2)
    first = _run(make_config(folder, tmp_path / "out"))
    assert first["done"] == 3 and counting.built == 1
    lines = []
    again = _run(make_config(folder, tmp_path / "out"), log=lines.append)
    assert counting.built == 1 and counting.batches == 1  # nothing new: no engine, no batch
    assert again["done"] == 0 and again["already_done"] == 3 and again["skipped_earlier"] == 2
    assert "5 images, 3 already done, 2 skipped (2 earlier), 0 to do" in lines[0]
    assert not any(line.startswith("skipped ") for line in lines)  # remembered, not read again
    # A skipped file that changes is tried again.
    write_faces(tmp_path / "fixed", 1, seed=3)[0].replace(folder / "bad0.png")
    third = _run(make_config(folder, tmp_path / "out"))
    assert third["done"] == 1 and third["skipped_earlier"] == 1 and counting.built == 2


# ---- 2. the output folder is never an input ---------------------------------------------------------------


def test_an_output_folder_inside_the_images_folder_is_not_listed(tmp_path):
    folder = tmp_path / "in"
    write_faces(folder, 3)
    out = folder / "out"
    assert _run(make_config(folder, out))["done"] == 3
    again = _run(make_config(folder, out))
    assert again["images"] == 3 and again["done"] == 0 and again["already_done"] == 3
    assert sorted(p.name for p in imio.list_images(folder, exclude=out)) == ["img00.png", "img01.png", "img02.png"]


# ---- 3. results carry a fingerprint; a mismatch is refused or recomputed ----------------------------------


def test_results_of_other_settings_are_refused_in_one_line_then_recomputed_on_request(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    write_faces(folder, 2)
    _run(make_config(folder, out, steps_scale=0.05))  # 5 + 5 steps
    record = json.loads((out / "img00.json").read_text())
    assert record["fingerprint"]["settings"]["phases"][0]["steps"] == 5 and record["input_sha256"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(MagecError) as err:
        _run(make_config(folder, out, steps_scale=0.1))
    message = str(err.value)
    assert "\n" not in message and "2 result(s)" in message and "on_mismatch=recompute" in message
    assert "settings.phases[0].steps: 5 -> 10" in message
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}  # nothing touched
    redone = _run(make_config(folder, out, steps_scale=0.1, on_mismatch="recompute"))
    assert redone["recomputed"] == 2 and redone["done"] == 2
    assert json.loads((out / "img00.json").read_text())["steps"] == 20
    assert _run(make_config(folder, out, steps_scale=0.1))["already_done"] == 2


def test_a_changed_input_file_or_bundle_is_a_mismatch(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    write_faces(folder, 2)
    _run(make_config(folder, out))
    write_faces(tmp_path / "other", 1, seed=5)[0].replace(folder / "img01.png")
    with pytest.raises(MagecError, match="input file: its contents changed"):
        _run(make_config(folder, out))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    with pytest.raises(MagecError, match=r"bundle: '' -> '[0-9a-f]{64}'"):
        _run(make_config(folder, out, bundle=str(bundle)))


def test_bundle_identity_follows_manifests_and_sizes_not_the_sample_cache(tmp_path):
    bundle = tmp_path / "b"
    (bundle / "generator").mkdir(parents=True)
    (bundle / "manifest.json").write_text('{"generator": "generator"}')
    (bundle / "generator" / "manifest.json").write_text('{"extra": {"kimg": 160}}')
    (bundle / "generator" / "params.npz").write_bytes(b"0" * 100)
    first = job_lib.bundle_identity(bundle)
    (bundle / "supervision").mkdir()
    (bundle / "supervision" / "mixed.npy").write_bytes(b"1" * 10)
    assert job_lib.bundle_identity(bundle) == first
    (bundle / "generator" / "manifest.json").write_text('{"extra": {"kimg": 200}}')
    assert job_lib.bundle_identity(bundle) != first


# ---- 5 and 8. config tools: one-line errors, exit 2, --help ------------------------------------------------

TOOLS = {  # tool -> (config, fields that make its paths valid-looking)
    "invert": ("tiny.py", {}),
    "evaluate": ("eval_tiny.py", {"bundle": "b", "images": "i", "out_dir": "o"}),
    "linknet": ("linknet_tiny.py", {}),
    "train_gan": ("lfw_stylegan2.py:tiny", {"out_dir": "o"}),
    "train_classifier": ("classifier_tiny.py", {"images": "i", "attributes": "a", "out_dir": "o"}),
}
MISTAKES = {  # tool -> (a zero batch size, a negative step count)
    "invert": ("batch_size=0", "inversion.noise_steps=-5"),
    "evaluate": ("batch_size=0", "methods.magec.inversion.phases=({'steps': -3, 'mse': 1.0, 'lpips': 1.0},)"),
    "linknet": ("sampling.batch_size=0", "linknet.epochs=-1"),
    "train_gan": ("batch_size=0", "total_kimg=-1"),
    "train_classifier": ("batch_size=0", "full_epochs=-1"),
}


def _main(tool: str):
    return __import__(f"magec_jax.{tool}", fromlist=["main"]).main


@pytest.mark.parametrize("tool", list(TOOLS))
def test_config_mistakes_are_one_line_with_exit_2(tool, capsys):
    config, paths = TOOLS[tool]
    base = ["--config", str(REPO / "configs" / config)] + [f"--config.{k}={v}" for k, v in paths.items()]
    zero_batch, negative_steps = MISTAKES[tool]
    cases = {
        "unknown field": base + ["--config.bogus_field=3"],
        "missing config file": ["--config", str(REPO / "configs" / "no_such_config.py")],
        "unknown ARG": ["--config", str(REPO / "configs" / config.split(":")[0]) + ":no_such_variant"],
        "zero batch size": base + [f"--config.{zero_batch}"],
        "negative steps": base + [f"--config.{negative_steps}"],
        "bad number": base + [f"--config.{zero_batch.split('=')[0]}=many"],
    }
    expected = {
        "unknown field": "no field 'bogus_field'",
        "missing config file": "no such config file",
        "unknown ARG": "unknown variant :no_such_variant",
        "zero batch size": "batch_size",
        "negative steps": negative_steps.split("=")[0].split(".")[-1],
        "bad number": "expected an integer",
    }
    if cli.read_config_file(REPO / "configs" / config.split(":")[0]).accepts("no_such_variant"):
        del cases["unknown ARG"]  # free text (the classifier's attribute subset), read by the trainer
    for case, argv in cases.items():
        assert _main(tool)(argv) == 2, case
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and expected[case] in err, (case, err)


@pytest.mark.parametrize("tool", list(TOOLS))
def test_help_lists_every_field_and_the_variants(tool, capsys):
    config = TOOLS[tool][0]
    assert _main(tool)(["--help", "--config", str(REPO / "configs" / config)]) == 0
    out = capsys.readouterr().out
    loaded = cli.load_config(str(REPO / "configs" / config))
    for field, value in cli._flatten(loaded):
        assert f"  {field} = {value!r}" in out, field
    info = cli.read_config_file(REPO / "configs" / config.split(":")[0])
    for variant in info.variants:
        assert f":{variant}" in out
    assert f"python -m magec_jax.{tool} --config FILE.py[:ARG]" in out
    assert _main(tool)(["--help"]) == 0  # without --config: the fields of the tool's example config
    example = cli.read_config_file(REPO / "configs" / config.split(":")[0])
    assert "\nfields of " in capsys.readouterr().out and example.variants is not None


def test_help_runs_as_a_process_and_exits_0():
    proc = subprocess.run([sys.executable, "-m", "magec_jax.invert", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "steps_scale = 1.0" in proc.stdout and "configs/tiny.py" in proc.stdout and ":wo_magec" in proc.stdout


def test_every_config_file_declares_its_variants_and_every_tool_names_out_dir():
    for path in sorted((REPO / "configs").glob("*.py")):
        info = cli.read_config_file(path)
        assert bool(info.variants) == ("del arg" not in path.read_text()), path.name
        config = cli.load_config(str(path))
        if "python -m magec_jax.linknet" not in info.doc:  # LinkNet and boundaries go into the bundle itself
            assert "out_dir" in config, path.name  # one name for the output location of every config tool


def test_overrides_are_read_by_the_field_type():
    config = cli.load_config(str(REPO / "configs" / "demo.py"), [
        ("edit_grid.strengths", "-2,0,2"), ("edit_grid.attributes", "Male,Smiling"), ("min_size", "16"),
        ("steps_scale", "0.1"), ("inversion.magec_alpha", "2"), ("distributed.num_processes", "1")])
    assert config.edit_grid.strengths == (-2, 0, 2) and config.edit_grid.attributes == ("Male", "Smiling")
    assert config.min_size == 16 and config.steps_scale == 0.1 and config.inversion.magec_alpha == 2.0
    with pytest.raises(ConfigError, match="did you mean steps_scale"):
        cli.load_config(str(REPO / "configs" / "demo.py"), [("step_scale", "0.1")])


@pytest.mark.parametrize("tool,shown", [
    ("generate", ["truncation towards w_avg (1: none) (default: 1.0)", "(default: const)", "(default: 8)"]),
    ("edit", ["(default: -3,0,3)", "along the component (default: -2,0,2)", "(default: 5)"]),
    ("diagnose", ["(default: magec)", "mapped w samples (default: 4000)"]),
])
def test_flag_tools_help_shows_the_defaults(tool, shown, capsys):
    main = _main(tool)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for text in shown:
        assert text in out, text
    assert "(default: None)" not in out


# ---- 9. one field shortens every protocol ------------------------------------------------------------------


@pytest.mark.parametrize("protocol,steps", [("magec", (10, 10)), ("wo_magec300", (15, 15)), ("i2spp", (100,))])
def test_steps_scale_is_one_config_field_for_every_protocol(protocol, steps):
    config = job_config(protocol)
    assert config.steps_scale == 1.0
    full = from_configdict(job_lib.JobConfig, config).settings
    config.steps_scale = 0.1
    short = from_configdict(job_lib.JobConfig, config).settings
    assert tuple(p.steps for p in short.phases) == steps
    assert [p.steps for p in full.phases] == [10 * s for s in steps]
    if protocol == "i2spp":
        assert (full.noise_phase.steps, short.noise_phase.steps) == (1000, 100)
    assert short.lr_decay_every == round(full.lr_decay_every * 0.1)


def test_steps_scale_from_the_command_line():
    config = cli.load_config(str(REPO / "configs" / "tiny.py"), [("steps_scale", "0.01")])
    assert from_configdict(job_lib.JobConfig, config).settings.total_steps == 2


# ---- 6. empty or missing input: one line, nothing created -------------------------------------------------


def test_missing_or_empty_images_are_an_error_and_create_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileFormatError, match="no such folder or list file"):
        _run(make_config(tmp_path / "typo", out))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(FileFormatError, match="no images in this folder"):
        _run(make_config(tmp_path / "empty", out))
    (tmp_path / "list.txt").write_text("# nothing\n")
    with pytest.raises(FileFormatError, match="no images in this list file"):
        _run(make_config(tmp_path / "list.txt", out))
    assert not out.exists()


# ---- 7. written files get the process umask ----------------------------------------------------------------


def test_outputs_get_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        imio.process_umask.cache_clear()
        folder = tmp_path / "in"
        write_faces(folder, 1)
        _run(make_config(folder, tmp_path / "out"))
        for path in (tmp_path / "out").iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
        from magec_jax.weights import Converted, save_converted

        dst = save_converted(tmp_path / "net", Converted("x", {}, {"a": np.zeros(2)}))
        assert stat.S_IMODE(dst.stat().st_mode) == 0o755
        assert stat.S_IMODE((dst / "manifest.json").stat().st_mode) == 0o644
    finally:
        os.umask(old)
        imio.process_umask.cache_clear()


# ---- 11. progress and the summary of every run -------------------------------------------------------------


def test_progress_shows_compiling_the_phase_and_valid_counts_and_the_summary_keeps_every_run(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    write_faces(folder, 3)
    _bad_inputs(folder, 2)
    lines = []
    _run(make_config(folder, out, steps_scale=0.05), log=lines.append)  # 5 + 5 steps, a line per step
    assert any(line.startswith("invert: compiling the inversion step for batches of 3") for line in lines)
    progress = [line for line in lines if line.startswith("[0] batch")]  # progress goes through log too
    assert "step 5/10 phase 1/2" in progress[4] and "step 6/10 phase 2/2" in progress[5]
    assert all("/3 images done" in line for line in progress)  # the valid images, not the 5 listed
    first = json.loads((out / "summary.json").read_text())
    assert first["done"] == 3 and len(first["runs"]) == 1 and first["runs"][0]["done"] == 3
    _run(make_config(folder, out, steps_scale=0.05))  # a no-op rerun
    summary = json.loads((out / "summary.json").read_text())
    assert [r["done"] for r in summary["runs"]] == [3, 0] and summary["runs"][0] == first["runs"][0]
    assert summary["done"] == 3 and summary["runs"][1]["valid"] == 3 and summary["images"] == 5
    assert {Path(s["image"]).name for s in summary["skipped"]} == {"bad0.png", "bad1.png"}


def test_progress_names_the_noise_stage(tmp_path, capsys):
    folder = tmp_path / "in"
    write_faces(folder, 1)
    config = make_config(folder, tmp_path / "out")
    config.inversion.noise_steps = 20  # 1 w+ phase of 100 steps scaled to 5, then 20 scaled to 1 noise step
    config.inversion.phases = config.inversion.phases[:1]
    _run(config)
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[0] batch")]
    assert "step 5/6 phase 1/2 loss" in progress[4] and "step 6/6 phase 2/2 (noise)" in progress[5]


# ---- 12. the edit grid is labelled -------------------------------------------------------------------------


def test_labelled_sheet_places_tiles_and_draws_the_labels():
    rng = np.random.default_rng(0)
    tiles = [[rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)] for _ in range(2)]
    blocks = [("face_one", [("Male", tiles[0]), ("Smiling", tiles[1])])]
    labelled = labelled_sheet(blocks, ["input", "G(w)", "+3"])
    plain = labelled_sheet([("", [("", tiles[0]), ("", tiles[1])])], ["", "", ""])
    # The tiles sit right of the label margin, under the header and the title lines.
    found = [(y, x) for y in range(labelled.shape[0] - 15) for x in range(labelled.shape[1] - 15)
             if np.array_equal(labelled[y:y + 16, x:x + 16], tiles[1][2])]
    assert len(found) == 1
    y, x = found[0]
    assert x > 16 * 2 and y > 2 * 16  # a margin of labels on the left, header and title lines above
    # Labels are drawn (dark pixels outside the tiles) and differ with the text.
    assert labelled.shape[1] > plain.shape[1]  # the margin holds "Smiling"
    margin = labelled[:, : x - 2 * (16 + 2)]
    assert (margin < 128).any() and not (plain[:, :2] < 128).any()
    other = labelled_sheet([("face_two", [("Young", tiles[0]), ("Smiling", tiles[1])])], ["input", "G(w)", "+3"])
    assert other.shape == labelled.shape and not np.array_equal(other, labelled)


# ---- 13. smaller points ------------------------------------------------------------------------------------


def test_two_inputs_with_one_output_name_skip_one_and_the_job_goes_on(tmp_path):
    folder = tmp_path / "in"
    faces = write_faces(folder, 2)
    Image.open(faces[0]).save(folder / "img00.jpg")  # img00.jpg beside img00.png
    record = _run(make_config(folder, tmp_path / "out"))
    assert record["done"] == 2
    [skip] = record["skipped"]
    assert skip["image"].endswith("img00.png") and "taken by" in skip["reason"] and "img00.jpg" in skip["reason"]


def test_a_bundle_given_as_a_file_is_named_in_one_line(tmp_path):
    from magec_jax.bundle import load_bundle

    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    with pytest.raises(FileFormatError) as err:
        load_bundle(manifest)
    assert str(err.value).startswith(f"{manifest}: a file, not a model bundle")


def test_diagnose_prints_a_short_readable_summary():
    from magec_jax import diagnose

    report = json.loads((REPO / "docs" / "eval_demo" / "previous_bundle16" / "diagnosis_magec.json").read_text())
    lines = diagnose.summary_lines(report)
    assert len(lines) <= 10
    assert any(re.match(r"\s+Smiling\s+0\.29\s+0\.82\s+2\.19\s+\+0\.15 \+0\.13 \+1\.25$", line) for line in lines)
    assert lines[-1].strip().startswith("phase 2 (mse 0.5") and "1.0% of the weighted gradient" in lines[-1]


def test_every_imported_package_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[ ]", d)[0].lower().replace("_", "-") for d in project["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    undeclared = set()
    for path in list((REPO / "magec_jax").rglob("*.py")) + list((REPO / "ports").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("magec_jax", "ports"):
                    continue
                dists = {d.lower().replace("_", "-") for d in providers.get(top, [top])}
                if not dists & (declared | {"jaxlib"}):  # jaxlib comes with jax
                    undeclared.add(f"{top} ({path.relative_to(REPO)})")
    assert not undeclared, sorted(undeclared)


def test_converted_manifests_record_no_absolute_paths(tmp_path):
    from magec_jax.weights import Converted, save_converted

    dst = save_converted(tmp_path / "g", Converted("x", {}, {"a": np.zeros(1)},
                                                  manifest={"extra": {"data": "/somewhere/lfw.tar", "kimg": 1}}))
    extra = json.loads((dst / "manifest.json").read_text())["extra"]
    assert extra == {"data": "lfw.tar", "kimg": 1}
    for manifest in (REPO / "demo" / "bundle").rglob("manifest.json"):
        strings = re.findall(r'"([^"]*)"', manifest.read_text())
        assert not [s for s in strings if s.startswith("/")], manifest


# ---- 4. generate reads the latents that invert and edit write ----------------------------------------------


def test_generate_reads_an_inversion_npz(tmp_path):
    from magec_jax import generate
    from magec_jax.models.stylegan2 import StyleGAN2Config
    from test_generate_cli import _tiny

    cfg = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=8, channel_base=64, channel_max=8, mapping_layers=2)
    gen = _tiny(tmp_path / "g", cfg)
    w = np.random.default_rng(0).standard_normal((1, cfg.num_ws, cfg.w_dim)).astype(np.float32)
    imio.atomic_save_npz(tmp_path / "face.npz", w=w, noise_0=np.zeros((4, 4), np.float32))
    np.save(tmp_path / "face.npy", w)
    out_npz, out_npy = tmp_path / "a.npy", tmp_path / "b.npy"
    assert generate.main(["--generator", str(gen), "--w-file", str(tmp_path / "face.npz"), "--out-npy", str(out_npz)]) == 0
    assert generate.main(["--generator", str(gen), "--w-file", str(tmp_path / "face.npy"), "--out-npy", str(out_npy)]) == 0
    np.testing.assert_array_equal(np.load(out_npz), np.load(out_npy))
    imio.atomic_save_npz(tmp_path / "other.npz", z=w)
    assert generate.main(["--generator", str(gen), "--w-file", str(tmp_path / "other.npz"), "--out", "x.png"]) == 2
