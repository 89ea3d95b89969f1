"""The README's "Python API" blocks run as written, from the repository root, on the demo bundle."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_its_three_examples():
    blocks = _blocks()
    assert len(blocks) == 3
    assert "invert_arrays" in blocks[0] and "register_term" in blocks[1] and "magec_loss" in blocks[2]


def test_python_api_blocks_run_as_written():
    script = "\n".join(_blocks())
    # The blocks share one namespace, as in a notebook; the assertions check what their comments claim.
    script += (
        "\nassert out['ws'].shape == (2, nets.num_ws, nets.w_dim)"
        "\nassert set(out_prior['terms']) >= {'mse', 'lpips', 'id', 'magec', 'w_prior'}"
        "\nassert np.all(out_prior['terms']['w_prior'] < before)"
        "\nassert np.isfinite(float(loss)) and grad.shape == (nets.num_ws, nets.w_dim)"
        "\nprint('README API OK')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "README API OK" in done.stdout
