"""Invert a folder of images into editable W+ latents (MAGEC or a baseline, as the config says).

    python -m magec_jax.invert --config configs/demo.py
    python -m magec_jax.invert --config configs/demo.py --config.steps_scale=0.1 --config.out_dir=out/demo_quick
    python -m magec_jax.invert --config configs/ffhq1024.py:magec --config.images=faces/ --config.out_dir=out/
    python -m magec_jax.invert --help --config configs/demo.py:i2spp    # every field, and the variants

Outputs (per image ``<name>``: ``.npz`` latent, ``.png`` reconstruction, ``.json`` losses and fingerprint; plus
``summary.json`` with every run's record) are described in ``magec_jax.inversion.job``; with an ``edit_grid``
block, ``edits/`` and ``edit_grid.png`` (and, for photographs, ``pasted/<photo>__<label>.png``) are described in
``magec_jax.editing.render``; with ``config.pti.enabled``, pivotal tuning after the inversion writes ``pti/``
(``magec_jax.inversion.pti_job``: per image a weight delta, the tuned reconstruction and its record, and the
edit grid rendered by each tuned generator). Re-running the same command resumes; results computed with other settings are
refused in one line unless ``--config.on_mismatch=recompute``. ``--config.steps_scale`` shortens any protocol.
"""

import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections

from magec_jax.bundle import load_bundle
from magec_jax.cli import config_main
from magec_jax.configdicts import from_configdict
from magec_jax.editing.render import edit_grid, paste_edit_grid
from magec_jax.inversion import job as job_lib
from magec_jax.inversion import pti_job
from magec_jax.logs import Log, to_stderr

__all__ = ["main", "run"]


def run(config: ml_collections.ConfigDict, *, log: Log = to_stderr) -> dict[str, Any]:
    """The whole inversion command: loads the config's bundle (its manifest; weights only when there is
    something to invert or edit), runs :func:`magec_jax.inversion.job.run`, then the edit stage of an
    ``edit_grid`` block on process 0. Returns the job's run record."""
    job = from_configdict(job_lib.JobConfig, config)
    bundle = load_bundle(job.bundle)
    record = job_lib.run(job, bundle=bundle, log=log)
    tuned = pti_job.run(job, bundle=bundle, log=log)
    grid = job.edit_grid
    if grid.attributes and jax.process_index() == 0:
        # the pivots' edits by the bundle's generator; with PTI, also by each image's tuned generator (pti/)
        for deltas_dir in [None] + ([Path(job.out_dir) / pti_job.PTI_DIR] if tuned is not None else []):
            edit_grid(bundle, job.out_dir, grid.attributes, grid.strengths, max_image_pixels=job.max_image_pixels,
                      log=log, deltas_dir=deltas_dir)
            if job.align:
                paste_edit_grid(job.out_dir, grid.attributes, grid.strengths,
                                max_image_pixels=job.max_image_pixels, log=log, deltas_dir=deltas_dir)
    if tuned is not None:
        record["pti"] = tuned
    return record


main = config_main(run, __doc__, prog="magec_jax.invert", example="demo.py")

if __name__ == "__main__":
    sys.exit(main())
