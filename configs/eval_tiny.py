"""A tiny evaluation for tests and smoke runs: MAGEC vs w/o MAGEC at configs/tiny.py length (5 + 5 steps).

    python -m magec_jax.evaluate --config configs/eval_tiny.py --config.bundle=BUNDLE \
        --config.images=FACES --config.out_dir=OUT --config.ganspace=PCA.npz

    python -m magec_jax.evaluate --config configs/eval_tiny.py:ifg ...   # InterFaceGAN edit only, no PCA
    python -m magec_jax.evaluate --config configs/eval_tiny.py:pti ...   # w/o MAGEC, untuned and tuned

Edits: InterFaceGAN "to male" (strength 3, scored on the images F calls female) and, unless ARG is ``ifg``,
GANSpace component 0 on all 8 layers of a 32x32 generator (strength 2, no target: every image). The realism
score needs more than ``realism.k`` = 3 reference images (``realism.reference_images``, default the evaluated
images) and uses the substitute VGG16 feature unless ``realism.vgg16_weights`` is set.

Runtime on a 2-core CPU with the 32x32 test bundle (tests/bundle_tools.py) and 2 faces: about 1 minute (per
method one compile, an inversion job and a re-projection job of 10 steps; the faceres ID loss at 224x224
dominates each step). Expected result: results.json,
results.md and figures/*.png; 10 steps reconstruct nothing well, so the numbers only test the plumbing.
"""

import ml_collections

from magec_jax.images import MAX_IMAGE_PIXELS
from magec_jax.inversion.protocols import job_config

VARIANTS = {
    "ifg": "the InterFaceGAN edit only (no GANSpace PCA needed)",
    "pti": "w/o MAGEC and pivotal tuning of its pivots (wo_magec_pti, 18 of PTI's 350 steps), both edits",
}


def get_config(arg: str = ""):
    config = ml_collections.ConfigDict()
    config.name = "eval_tiny"
    config.bundle = ""
    config.images = ""
    config.out_dir = ""
    config.num_images = 0
    config.max_image_pixels = MAX_IMAGE_PIXELS  # larger images are refused unread (decompression bombs)
    config.batch_size = 4
    config.ganspace = ""
    config.methods = ml_collections.ConfigDict()
    for name, label in (("magec", "MAGEC"), ("wo_magec", "w/o MAGEC")):
        job = job_config(name)
        job.steps_scale = 0.05
        job.batch_size = 2
        job.label = label
        config.methods[name] = job
    tuned = job_config("wo_magec")  # pivotal tuning of wo_magec's pivots (the inversion block is not used)
    tuned.steps_scale = 0.05
    tuned.batch_size = 2
    tuned.pti.enabled = True
    tuned.label = "w/o MAGEC + PTI"
    tuned.pivots = "wo_magec"
    config.methods.wo_magec_pti = tuned
    config.method_order = ("wo_magec", "wo_magec_pti") if arg == "pti" else ("magec", "wo_magec")
    config.edits = ml_collections.ConfigDict()
    config.edits.ifg_male = dict(kind="interfacegan", attribute="Male", strength=3.0, target="Male")
    config.edits.gs_c0 = dict(kind="ganspace", component=0, layers=(0, 8), strength=2.0, target="")
    config.edit_order = ("ifg_male",) if arg == "ifg" else ("ifg_male", "gs_c0")
    config.realism = ml_collections.ConfigDict(dict(k=3, clamp_percentile=50.0, reference_images="", vgg16_weights=""))
    config.figures = ml_collections.ConfigDict(dict(num_images=3, num_extremes=1))
    config.significance = 0.05
    return config
