"""tools/heldout_faces.py: held-out portraits, and a validation set of people disjoint from the evaluation set."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO
from magec_jax.errors import MagecError
from magec_jax.training import data as lfw

sys.path.insert(0, str(REPO / "tools"))
import heldout_faces  # noqa: E402  (tools/ is not a package)

PATHS = [f"Person_{i:04d}/Person_{i:04d}_{k:04d}.jpg" for i in range(2000) for k in (1, 2)]


def test_without_exclusion_the_pick_is_the_library_one():
    assert heldout_faces.pick_portraits(PATHS, 12) == lfw.heldout_portraits(PATHS, 12)


def test_validation_people_are_held_out_distinct_and_disjoint_from_the_evaluation_set(tmp_path):
    evaluation = heldout_faces.pick_portraits(PATHS, 48)
    for p in evaluation:  # the portraits as written: <Person>_0001.png
        (tmp_path / f"{p.split('/')[1].rsplit('.', 1)[0]}.png").write_bytes(b"")
    excluded = heldout_faces.people_in(tmp_path)
    assert excluded == {lfw.person_of(p) for p in evaluation} and len(excluded) == 48
    validation = heldout_faces.pick_portraits(PATHS, 16, exclude=excluded)
    people = [lfw.person_of(p) for p in validation]
    assert len(set(people)) == 16 and not set(people) & excluded
    assert all(lfw.is_heldout(person) and p.endswith("_0001.jpg") for person, p in zip(people, validation, strict=True))
    assert people == sorted(people)  # spread over the sorted remaining people, in order
    left = len(lfw.heldout_people(PATHS)) - 48
    with pytest.raises(MagecError, match=f"{left} are left"):
        heldout_faces.pick_portraits(PATHS, left + 1, exclude=excluded)
    with pytest.raises(MagecError, match="no such folder"):
        heldout_faces.people_in(tmp_path / "missing")
