"""Every shipped config (with each ARG it documents) loads and parses into its typed form."""

from __future__ import annotations

import importlib.util

import pytest

from magec_jax.configdicts import from_configdict
from magec_jax.evaluation.config import EvalConfig
from magec_jax.inversion.job import JobConfig
from magec_jax.supervision.job import SupervisionConfig
from magec_jax.classifier.config import TrainConfig
from magec_jax.training.config import TrainGANConfig
from tests.conftest import REPO

CASES = [
    ("ffhq1024", arg, JobConfig) for arg in ("magec", "wo_magec", "wo_magec300", "i2spp")
] + [
    ("demo", arg, JobConfig) for arg in ("magec", "wo_magec", "i2spp")
] + [
    ("tiny", None, JobConfig),
    ("eval_tiny", "", EvalConfig), ("eval_tiny", "ifg", EvalConfig),
    ("eval_ffhq1024", None, EvalConfig), ("eval_demo", None, EvalConfig),
    ("linknet_tiny", None, SupervisionConfig), ("linknet_demo", None, SupervisionConfig),
    ("linknet_ffhq1024", None, SupervisionConfig),
    ("classifier_tiny", None, TrainConfig), ("classifier_celeba", None, TrainConfig),
    ("lfw_stylegan2", None, TrainGANConfig), ("lfw_stylegan2", "small", TrainGANConfig),
    ("lfw_stylegan2", "tiny", TrainGANConfig),
]

REQUIRED_PATHS = ("bundle", "images", "out_dir", "attributes")


def _get_config(name: str, arg: str | None):
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def test_every_config_file_is_covered():
    assert {p.stem for p in (REPO / "configs").glob("*.py")} == {name for name, _, _ in CASES}


@pytest.mark.parametrize("name,arg,typed", CASES, ids=[f"{n}:{a}" if a else n for n, a, _ in CASES])
def test_config_parses(name, arg, typed):
    config = _get_config(name, arg)
    for field in REQUIRED_PATHS:  # the paths a user passes on the command line
        if field in config and not config[field]:
            config[field] = f"/placeholder/{field}"
    parsed = from_configdict(typed, config)
    if typed is EvalConfig:
        for method in parsed.method_specs:  # each method is a whole inversion job once the evaluation fills its paths
            assert isinstance(method.job, JobConfig)
        assert parsed.methods and parsed.edits
    if typed is JobConfig:
        assert parsed.batch_size > 0 and parsed.settings.phases
