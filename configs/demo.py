"""The demo: MAGEC inversion of real photographs with the bundled LFW generator, then edits.

    python -m magec_jax.invert --config configs/demo.py

Finds the faces in the held-out LFW photographs of ``examples/`` that ``examples/faces.txt`` lists (people the
generator never saw: 8 portrait crops and 2 whole photographs, one with two people; ``examples/cars/`` is the
cars demo's), aligns each to the bundle's template (``align``), and
inverts them with the full MAGEC protocol (100 + 100 steps) using ``demo/bundle``: a 64x64 StyleGAN2 trained
by this project on LFW, the faceres identity network, and the faceres+emotion Male/Young/Smiling descriptor
with its LinkNet and boundaries. Writes ``out/demo/`` (per face ``<photo>__face<j>``: latent,
reconstruction, JSON with its alignment; ``aligned/``; ``summary.json``), ``out/demo/edit_grid.png`` (per face:
input | reconstruction | Male, Young, Smiling at -3, 0, +3) and ``out/demo/pasted/`` (each photograph with its
reconstructed faces pasted back, ``<photo>.png``, and with each edit, ``<photo>__ifg_Smiling_+3.png`` etc.).
The 11 faces take 2 batches of 6: 5 min 6 s in all on a quiet 2-core CPU, edits and pasting included;
``--config.steps_scale=0.1`` runs every phase at a tenth of its length (20 steps, for a quick look: 48 s of
inversion there). ARG picks another protocol (``wo_magec``, ``i2spp``) for comparison, or ``pti``: MAGEC, then
pivotal tuning (the official PTI settings, ``config.pti``; docs/pti.md) into ``out/demo_pti/pti/``: per face a
weight delta and the tuned reconstruction, ``pti/edit_grid.png`` (the same edits rendered by each face's tuned
generator) and ``pti/pasted/``.
Steps run as a ``lax.scan`` of ``chunk_steps`` per call: with this bundle's 64x64 networks that is 1.9x faster
than XLA:CPU's default of one call per step (``benchmarks/results/loop_demo_bundle.json``; the reverse holds
for the 256 config-f networks, ``loop_paper256.json``).
"""

from pathlib import Path

from magec_jax.inversion.protocols import job_config

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "magec": "MSE + LPIPS + ID + MAGEC, 100 + 100 steps (the paper's protocol)",
    "wo_magec": "the same without the MAGEC term (l_magec = 0)",
    "wo_magec300": "without MAGEC, 150 + 150 steps",
    "i2spp": "Image2StyleGAN++: MSE + LPIPS, 1000 w+ steps then 1000 noise steps",
    "pti": "MAGEC, then pivotal tuning of the generator around each MAGEC pivot (docs/pti.md)",
}


def get_config(arg: str = "magec"):
    arg = arg or "magec"
    if arg not in VARIANTS:
        raise ValueError(f"configs/demo.py: unknown variant {arg!r}; expected one of {sorted(VARIANTS)}")
    protocol = "magec" if arg == "pti" else arg
    config = job_config(protocol)
    config.name = f"demo_{arg}"
    config.bundle = str(REPO / "demo" / "bundle")
    config.images = str(REPO / "examples" / "faces.txt")
    config.out_dir = str(REPO / "out" / ("demo" if arg == "magec" else f"demo_{arg}"))
    if arg == "pti":
        config.pti.enabled = True
    config.batch_size = 8
    config.inversion.compute.loop = "scan"  # 1.9x faster at 64x64 on CPU (see above)
    config.align = True
    config.edit_grid.attributes = ("Male", "Young", "Smiling")
    config.edit_grid.strengths = (-3.0, 0.0, 3.0)
    return config
