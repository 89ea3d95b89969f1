"""MAGEC vs w/o MAGEC on held-out LFW people, with the demo bundle: the evaluation set and a validation set.

    python tools/heldout_faces.py --count 48 --out runs/lfw_heldout48
    nice -n 10 python -m magec_jax.evaluate --config configs/eval_demo.py          # the evaluation set
    python tools/heldout_faces.py --count 16 --exclude runs/lfw_heldout48 --out runs/lfw_heldout_val16
    nice -n 10 python -m magec_jax.evaluate --config configs/eval_demo.py:val      # the validation set
    nice -n 10 python -m magec_jax.evaluate --config configs/eval_demo.py:pti_val  # pivotal tuning, validation
    nice -n 10 python -m magec_jax.evaluate --config configs/eval_demo.py:pti      # pivotal tuning, evaluation

Faces: one photograph each of LFW people the demo generator never saw (``tools/heldout_faces.py``): 48 for
the evaluation (the 8 ``examples/`` are among them), and 16 OTHER people for validation, the only faces on
which any setting may be chosen. Bundle: ``demo/bundle`` (64x64 LFW StyleGAN2, faceres identity, the
faceres+emotion Male/Young/Smiling descriptor, its LinkNet on 50,000 samples and its boundaries).

Methods: ``magec`` and ``wo_magec`` are the paper's protocols unchanged (100 + 100 steps). ``magec_1e-2`` is
an ablation fixed before this evaluation (the previous 16-face run suggested it): MAGEC with l_magec raised
from 3e-4 to 1e-2 in both phases. ``magec_1e-3`` (l_magec 1e-3) is the setting chosen on the validation
people: of the MAGEC settings tried there, the only one with a lower mean ECS than w/o MAGEC on both edits.
``:full`` adds ``i2spp``, Image2StyleGAN++'s MSE + LPIPS W+ then noise optimisation shortened 4x to 250 + 250
steps (its schedule scaled with it). ``:val`` runs on the validation people and adds the other settings tried:
MAGEC at alpha 1.5 and 6 (the loss's edit strength; the evaluated edits stay at 3). ``:sf_val`` runs on the
validation people w/o MAGEC, the chosen MAGEC, MAGEC supervised by StyleFlow (the ``magec_styleflow`` term with
the bundle's prior, at the chosen weight 1e-3, alone and beside the chosen MAGEC term), scored on the two
InterFaceGAN edits and on two StyleFlow edits of the same attributes (``gender_logit`` and ``happy_log_odds``
moved by 2 training standard deviations). ``:pti_val`` and ``:pti`` evaluate pivotal tuning (docs/pti.md):
PTI of the w/o MAGEC pivots and of the chosen MAGEC pivots, with full weights (the official tuning) and with
rank-4 deltas, every image's 350 steps taken (``lpips_threshold`` 0), beside the untuned pivots; ``:pti`` with
the rank-4 delta chosen on ``:pti_val`` (every parameter group), ``:pti_val`` with rank 4 on conv, torgb and
affine on both pivots, and on the w/o MAGEC pivots the official threshold (0.06), rank 4 on the convolutions only
and on every group.
In ``:pti`` the untuned methods are not re-projected (``ecs`` off: their ECS on these people is the
``:eval`` run's). Tuned methods reuse the
pivots of the untuned ones (``pivots``), one image per tuning batch (the fastest on this CPU,
benchmarks/pti.py). Edits: InterFaceGAN "to
male" and "to smiling" at strength 3 (the paper's MAGEC alpha), each scored on the faces F says lack the
attribute. The realism column uses the substitute feature (no full VGG16 offline) against the evaluated faces
as references, so it is coarse here.

Runtime on the 2-core CPU, with two methods side by side (``--config.method_order=...`` in two processes on
the same output folder; a run without it then assembles every method from the finished work): about 65
minutes per 200-step method for the 48 faces (48 inversions, about 40 re-projections), 25-30 for the 16
validation faces (16 and 17). Every stage resumes. The outputs go under ``runs/`` (git-ignored); the results
and their reading are in docs/demo.md, "Evaluation on held-out LFW people", and ``docs/eval_demo/``.
"""

from pathlib import Path

import ml_collections

from magec_jax.images import MAX_IMAGE_PIXELS
from magec_jax.inversion.protocols import job_config

REPO = Path(__file__).resolve().parents[1]

# (name, protocol, table label, steps scale, {field: value} overrides of the inversion block)
PAPER = (
    ("magec", "magec", "MAGEC", 1.0, {}),
    ("wo_magec", "wo_magec", "w/o MAGEC", 1.0, {}),
    ("magec_1e-2", "magec", "MAGEC, l_magec 1e-2", 1.0, {"magec": 1e-2}),
)
# chosen on the validation people: the only setting with a lower mean ECS than w/o MAGEC on both edits there
CHOSEN = (("magec_1e-3", "magec", "MAGEC, l_magec 1e-3", 1.0, {"magec": 1e-3}),)
I2SPP = (("i2spp", "i2spp", "Image2StyleGAN++ (500 steps)", 0.25, {}),)
VALIDATION = (
    ("magec_alpha1p5", "magec", "MAGEC, alpha 1.5", 1.0, {"magec_alpha": 1.5}),
    ("magec_alpha6", "magec", "MAGEC, alpha 6", 1.0, {"magec_alpha": 6.0}),
)
# MAGEC supervised by StyleFlow edits (the magec_styleflow term, the bundle's prior), alone and beside the chosen
# InterFaceGAN term, at the chosen weight; w/o MAGEC and the chosen MAGEC as references
STYLEFLOW = (
    ("wo_magec", "wo_magec", "w/o MAGEC", 1.0, {}),
    ("magec_1e-3", "magec", "MAGEC, l_magec 1e-3", 1.0, {"magec": 1e-3}),
    ("magec_sf_1e-3", "magec", "MAGEC-StyleFlow, l 1e-3", 1.0, {"magec": 0.0, "magec_styleflow": 1e-3}),
    ("magec_both_1e-3", "magec", "MAGEC + MAGEC-StyleFlow, l 1e-3", 1.0, {"magec": 1e-3, "magec_styleflow": 1e-3}),
)
# Pivotal tuning (docs/pti.md) of the w/o MAGEC and the chosen MAGEC pivots: (name, label, pivots, {pti field:
# value}); every image takes all 350 steps (threshold 0). Low-rank deltas at lr 3e-3 (tenfold PTI's: the factors
# start at zero and need it), rank 4.
FULL = dict(lpips_threshold=0.0)
RANK4 = dict(lpips_threshold=0.0, lr=3e-3, delta=dict(kind="lowrank", rank=4, groups=("conv", "torgb", "affine")))
RANK4_ALL = dict(RANK4, delta=dict(kind="lowrank", rank=4, groups=("conv", "torgb", "affine", "bias", "const",
                                                                   "noise_strength")))
PTI = (
    ("wo_magec_pti", "w/o MAGEC + PTI", "wo_magec", FULL),
    ("magec_1e-3_pti", "MAGEC 1e-3 + PTI", "magec_1e-3", FULL),
)
# chosen on the validation people: of the low-rank deltas tried there, the only one whose edit scores (t, the
# identity distance, realism) differ from full-weight PTI's by no significant amount on either edit
PTI_CHOSEN = (
    ("wo_magec_pti_r4_all", "w/o MAGEC + PTI rank 4, every group", "wo_magec", RANK4_ALL),
    ("magec_1e-3_pti_r4_all", "MAGEC 1e-3 + PTI rank 4, every group", "magec_1e-3", RANK4_ALL),
)
# on the validation people only: the official threshold, and which parameters the rank-4 delta tunes
PTI_VALIDATION = (
    ("wo_magec_pti_r4", "w/o MAGEC + PTI rank 4", "wo_magec", RANK4),
    ("magec_1e-3_pti_r4", "MAGEC 1e-3 + PTI rank 4", "magec_1e-3", RANK4),
    ("wo_magec_pti_t06", "w/o MAGEC + PTI, threshold 0.06", "wo_magec", dict(lpips_threshold=0.06)),
    ("wo_magec_pti_r4_conv", "w/o MAGEC + PTI rank 4, conv only", "wo_magec", dict(RANK4, delta=dict(
        kind="lowrank", rank=4, groups=("conv",)))),
    ("wo_magec_pti_r4_all", "w/o MAGEC + PTI rank 4, every group", "wo_magec", RANK4_ALL),
)
VARIANTS = {
    "eval": "the 48 evaluation people: MAGEC, w/o MAGEC, the l_magec 1e-2 ablation, l_magec 1e-3 (chosen on :val)",
    "full": "the same and Image2StyleGAN++ (500 steps)",
    "val": "the 16 validation people: the four methods and MAGEC at alpha 1.5 and alpha 6",
    "sf_val": "the 16 validation people: the StyleFlow-supervised MAGEC terms, InterFaceGAN and StyleFlow edits",
    "pti_val": "the 16 validation people: PTI (full, rank 4 on three sets of groups, threshold 0 and 0.06) on w/o "
               "MAGEC and MAGEC pivots",
    "pti": "the 48 evaluation people: PTI (full, and rank 4 on every group) on w/o MAGEC and MAGEC 1e-3 pivots, "
           "and no tuning",
}


def get_config(arg: str = "eval"):
    arg = arg or "eval"
    if arg not in VARIANTS:
        raise ValueError(f"configs/eval_demo.py: unknown variant {arg!r}; expected one of {sorted(VARIANTS)}")
    validation = arg in ("val", "sf_val", "pti_val")
    methods = PAPER + CHOSEN + (I2SPP if arg == "full" else ()) + (VALIDATION if arg == "val" else ())
    methods = STYLEFLOW if arg == "sf_val" else methods
    methods = STYLEFLOW[:2] if arg in ("pti", "pti_val") else methods
    config = ml_collections.ConfigDict()
    config.name = {"val": "eval_demo_val16", "sf_val": "eval_demo_sf_val16", "pti_val": "eval_demo_pti_val16",
                   "pti": "eval_demo_pti48"}.get(arg, "eval_demo48")
    config.bundle = str(REPO / "demo" / "bundle")
    config.images = str(REPO / "runs" / ("lfw_heldout_val16" if validation else "lfw_heldout48"))
    config.out_dir = str(REPO / "runs" / config.name)
    config.num_images = 16 if validation else 48
    config.max_image_pixels = MAX_IMAGE_PIXELS  # larger images are refused unread (decompression bombs)
    config.batch_size = 16
    config.ganspace = ""
    config.methods = ml_collections.ConfigDict()
    for name, protocol, label, steps_scale, overrides in methods:
        job = job_config(protocol)
        job.steps_scale = steps_scale
        for term in ("magec", "magec_styleflow"):
            if term in overrides:
                job.inversion.phases = tuple(dict(phase, **{term: overrides[term]}) for phase in job.inversion.phases)
        if "magec_alpha" in overrides:
            job.inversion.magec_alpha = overrides["magec_alpha"]
        job.batch_size = 16
        job.inversion.compute.loop = "scan"  # 1.9x faster at 64x64 on CPU (configs/demo.py)
        job.label = label
        if arg == "pti":  # their ECS on these people is the :eval run's; the PTI study compares t, ID, realism
            job.ecs = False
        config.methods[name] = job
    tuned = {"pti_val": PTI + PTI_VALIDATION, "pti": PTI + PTI_CHOSEN}.get(arg, ())
    for name, label, pivots, fields in tuned:
        job = job_config("wo_magec")  # its inversion block is not used: the pivots are those of `pivots`
        job.pti.enabled = True
        job.pti.batch_size = 1
        job.pti.update(fields)
        job.batch_size = 16
        job.label = label
        job.pivots = pivots
        config.methods[name] = job
    # the reference of the paired tests first: PTI as the field runs it (w/o MAGEC pivots, full weights)
    config.method_order = tuple(m[0] for m in tuned) + tuple(m[0] for m in methods)
    config.edits = ml_collections.ConfigDict()
    config.edits.ifg_male = dict(kind="interfacegan", attribute="Male", strength=3.0, target="Male")
    config.edits.ifg_smile = dict(kind="interfacegan", attribute="Smiling", strength=3.0, target="Smiling")
    config.edit_order = ("ifg_male", "ifg_smile")
    if arg == "sf_val":  # StyleFlow edits of the same attributes: the image's own score moved 2 training sd
        config.edits.sf_male = dict(kind="styleflow", attribute="gender_logit", strength=2.0, target="Male")
        config.edits.sf_smile = dict(kind="styleflow", attribute="happy_log_odds", strength=2.0, target="Smiling")
        config.edit_order = ("ifg_male", "ifg_smile", "sf_male", "sf_smile")
    config.realism = ml_collections.ConfigDict(
        dict(k=3, clamp_percentile=50.0, reference_images="", vgg16_weights="")
    )
    config.figures = ml_collections.ConfigDict(dict(num_images=6, num_extremes=3))
    config.significance = 0.05
    return config
