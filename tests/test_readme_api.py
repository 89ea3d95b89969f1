"""The Python blocks of the README and of every guide in ``docs/`` run as written, from the repository root.

Each file's ```` ```python ```` blocks run in order in one subprocess, sharing one namespace as the cells of a
notebook do. The API guide's blocks invert on the demo bundle (about a minute on a CPU); the assertions added
after them check what their comments claim.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
API_GUIDE = ROOT / "docs" / "python_api.md"

# Appended to a file's blocks: what the comments in them claim.
CLAIMS = {
    API_GUIDE.name: (
        "\nassert images.shape == (2, 64, 64, 3) and images.min() >= -1 and images.max() <= 1"
        "\nassert sum(p.steps for p in settings.phases) == 10"
        "\nassert out['ws'].shape == (2, 10, 128) == (2, nets.num_ws, nets.w_dim)"
        "\nassert set(out['terms']) == {'mse', 'lpips', 'id', 'magec'}"
        "\nassert all(np.shape(v) == (2,) for v in out['terms'].values())"
        "\nassert set(out_prior['terms']) >= {'mse', 'lpips', 'id', 'magec', 'w_prior'}"
        "\nassert np.all(out_prior['terms']['w_prior'] < before)"
        "\nassert k == 3 and tuple(nets.descriptor.attribute_names) == ('Male', 'Young', 'Smiling')"
        "\nassert np.shape(loss) == () and np.isfinite(float(loss)) and grad.shape == (10, 128)"
    ),
}


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_the_api_guide_has_its_three_examples():
    blocks = python_blocks(API_GUIDE)
    assert len(blocks) == 3
    assert "invert_arrays" in blocks[0] and "register_term" in blocks[1] and "magec_loss" in blocks[2]


def test_every_claim_belongs_to_a_document_with_python_blocks():
    with_blocks = {path.name for path in DOCUMENTS if python_blocks(path)}
    assert API_GUIDE.name in with_blocks
    assert set(CLAIMS) <= with_blocks


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in DOCUMENTS if python_blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run_as_written(path):
    script = "\n".join(python_blocks(path)) + CLAIMS.get(path.name, "") + "\nprint('BLOCKS OK')\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{path.name}:\n{done.stderr[-3000:]}"
    assert "BLOCKS OK" in done.stdout
