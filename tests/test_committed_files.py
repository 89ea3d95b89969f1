"""What is committed names no folder of the machine it was made on: every git-tracked JSON and Markdown file is
free of absolute machine paths (``/work/...``, ``/tmp/...``, ``/home/...``, ``/root/...``, ``/Users/...``,
``C:\\...``). Results and reports name their files relative to the repository (``magec_jax.paths``).

The only exemptions are example paths inside documented commands, listed one by one in ``COMMAND_EXAMPLES``
with the file and the exact text: a command shown to the reader may have to name a scratch folder (a
compilation cache in ``/tmp``), which is advice, not the record of a result. Each exemption must still match,
so that none outlives the command it was written for.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import REPO

# A folder of one machine: a Unix home, scratch or work folder, or a Windows drive (also as JSON escapes it).
# Not preceded by a word character, '.', '~', '-' or '/', so that a URL (github.com/home/...) or a relative path
# (../tmp/x) does not count.
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:work|tmp|home|root|Users)/|(?<![\w\\])[A-Z]:\\{1,2}[A-Za-z]")

# (file, the exact command text that holds the example path): commands in README-like documents only.
COMMAND_EXAMPLES = (
    ("benchmarks/README.md", "benchmarks/device_suite.py --compilation-cache /tmp/magec_jax_cache"),
)


def _tracked(*patterns: str) -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the committed files are unknown")
    out = subprocess.run(["git", "ls-files", "-z", "--", *patterns], cwd=REPO, capture_output=True, check=True)
    return [name for name in out.stdout.decode().split("\0") if name]


def machine_paths(name: str, text: str) -> list[str]:
    """``FILE:LINE: text`` of every line of ``text`` naming a machine path, exempted command examples aside."""
    allowed = [example for file, example in COMMAND_EXAMPLES if file == name]
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for example in allowed:
            line = line.replace(example, "")
        if MACHINE_PATH.search(line):
            found.append(f"{name}:{number}: {line.strip()[:160]}")
    return found


def test_no_committed_json_or_markdown_names_a_machine_path():
    files = _tracked("*.json", "*.md")
    assert files, "git ls-files found no JSON or Markdown file"
    found = []
    for name in files:
        path = REPO / name
        if path.is_file():  # a file deleted in the working tree but not yet in the index has nothing to check
            found += machine_paths(name, path.read_text(encoding="utf-8", errors="replace"))
    assert not found, "absolute paths of a machine in committed files (name them relative to the repository):\n" + \
        "\n".join(found)


def test_every_command_example_exemption_is_still_used():
    for name, example in COMMAND_EXAMPLES:
        assert example in (REPO / name).read_text(), f"{name}: exemption {example!r} matches nothing; remove it"


@pytest.mark.parametrize("line", [
    '  "bundle": "/work/main/demo/bundle",',
    '"argv": ["benchmarks/x.py", "--out", "/tmp/run.json"]',
    "16 images; bundle `/home/someone/magec/demo/bundle`; reference method",
    '"path": "/root/checkout"',
    "see /Users/me/magec/results.json",
    r'"file": "C:\\Users\\me\\results.json"',
    r"C:\magec\results.json",
])
def test_the_scan_finds_machine_paths(line):
    assert machine_paths("results.json", line)


@pytest.mark.parametrize("line", [
    '  "bundle": "demo/bundle",',
    '"against": "../scratch/base"',
    "https://github.com/home/tmp/work/",
    "relative: runs/tmp/x.json",
    '"C:": "not a path"',
])
def test_the_scan_leaves_relative_paths_and_urls_alone(line):
    assert not machine_paths("results.json", line)


def test_an_exemption_covers_only_its_own_file_and_text():
    line = "    PYTHONPATH=. timeout 420 python benchmarks/device_suite.py --compilation-cache /tmp/magec_jax_cache"
    assert not machine_paths("benchmarks/README.md", line)
    assert machine_paths("README.md", line)
    assert machine_paths("benchmarks/README.md", line + " --out /tmp/suite.json")
