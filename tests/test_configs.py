"""Every shipped config loads and parses into its typed form: without ARG and with every variant its file
declares in ``VARIANTS`` (read as ``--help`` reads them, ``magec_jax.cli.read_config_file``), so that no variant
can go unparsed."""

from __future__ import annotations

import importlib.util

import pytest

from magec_jax.cli import read_config_file
from magec_jax.configdicts import from_configdict
from magec_jax.evaluation.config import EvalConfig
from magec_jax.inversion.job import JobConfig
from magec_jax.supervision.job import SupervisionConfig
from magec_jax.supervision.styleflow import StyleFlowJobConfig
from magec_jax.classifier.config import TrainConfig
from magec_jax.training.config import TrainGANConfig
from tests.conftest import REPO

# Each config file and the typed form it becomes.
TYPED = {
    "ffhq1024": JobConfig, "demo": JobConfig, "tiny": JobConfig,
    "eval_tiny": EvalConfig, "eval_ffhq1024": EvalConfig, "eval_demo": EvalConfig,
    "linknet_tiny": SupervisionConfig, "linknet_demo": SupervisionConfig, "linknet_ffhq1024": SupervisionConfig,
    "classifier_tiny": TrainConfig, "classifier_celeba": TrainConfig, "classifier_cars": TrainConfig,
    "lfw_stylegan2": TrainGANConfig, "cars_stylegan2": TrainGANConfig,
    "styleflow_tiny": StyleFlowJobConfig, "styleflow_demo": StyleFlowJobConfig,
}
# A value for each free-text variant (``"<placeholder>"`` keys of VARIANTS).
PLACEHOLDER_EXAMPLES = {"<attributes>": "Male,Smiling"}


def _cases() -> list[tuple[str, str | None, type]]:
    cases = []
    for name, typed in TYPED.items():
        variants = read_config_file(REPO / "configs" / f"{name}.py").variants
        cases.append((name, None, typed))
        cases += [(name, PLACEHOLDER_EXAMPLES.get(arg, arg), typed) for arg in variants]
    return cases


CASES = _cases()

REQUIRED_PATHS = ("bundle", "images", "out_dir", "attributes")


def _get_config(name: str, arg: str | None):
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def test_every_config_file_and_variant_is_covered():
    assert {p.stem for p in (REPO / "configs").glob("*.py")} == set(TYPED)
    for name in TYPED:
        variants = read_config_file(REPO / "configs" / f"{name}.py").variants
        for arg in variants:
            if arg.startswith("<"):
                assert arg in PLACEHOLDER_EXAMPLES, f"configs/{name}.py: give {arg} an example in PLACEHOLDER_EXAMPLES"
            assert (name, PLACEHOLDER_EXAMPLES.get(arg, arg)) in {(n, a) for n, a, _ in CASES}
    assert ("eval_demo", "val") in {(n, a) for n, a, _ in CASES}  # the variants this test once missed


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
