"""The paper's evaluation (section 4.2, Tables 1-3, Fig. 3 and 4b) on the official StyleGAN2 FFHQ-1024:
MAGEC vs w/o MAGEC vs Image2StyleGAN++ on 1000 CelebA-HQ images, InterFaceGAN male/smile and GANSpace edits.

    python -m magec_jax.evaluate --config configs/eval_ffhq1024.py \
        --config.bundle=weights/ffhq1024_bundle --config.images=data/celeba_hq_1000.txt \
        --config.out_dir=out/eval_ffhq1024 --config.realism.vgg16_weights=weights/vgg16-397923af.pth

Paths are fields: ``bundle`` (python -m magec_jax.bundle: StyleGAN2 FFHQ-1024, IR-SE50, the 40-attribute
ResNet-50 F, LinkNet, the InterFaceGAN++ W boundaries, which name the directions ``Male`` and ``Smiling``),
``images`` (a folder or list file; the paper used 1000 random CelebA-HQ images), ``ganspace`` (e4e's
``ffhq_pca.pt`` or an .npz), ``realism.vgg16_weights`` (torchvision VGG16; without it the realism column uses
the documented substitute feature and says so).

Edits: InterFaceGAN to male / to smiling at strength 3 (boundary units, the MAGEC loss's alpha) and GANSpace
"smile" (component 46 on layer 4, -20 stdevs: GANSpace's edit zoo and e4e's demo). GANSpace "to male" has no
published (component, layers) for StyleGAN2-FFHQ that could be checked offline, so ``gs_male`` is defined but
not run by default: pick its component with ``python -m magec_jax.edit LATENTS --component C --layers 0:8``,
then add ``--config.edits.gs_male.component=C`` and
``--config.edit_order="('ifg_male','ifg_smile','gs_male','gs_smile')"``.

Runtime: every image is inverted once per method and once more per edit it is scored on (about half the images
per edit), so roughly (1 + 0.5 * edits) x the inversion time; Image2StyleGAN++ (2000 steps) dominates.
Expected (paper, Tables 1 and 3): MSE 0.0040 / 0.0094 / 0.0012, LPIPS 0.053 / 0.062 / 0.018 for MAGEC /
w/o MAGEC / Image2StyleGAN++; ECS IFG male 0.84 / 1.01 / 0.97, IFG smile 0.87 / 0.95 / 1.00, GANSpace male
0.95 / 1.06 / 1.07, GANSpace smile 0.79 / 0.90 / 0.98 (the GANSpace edits of the paper are not specified, so
those columns compare only in direction).
"""

import ml_collections

from magec_jax.images import MAX_IMAGE_PIXELS
from magec_jax.inversion.protocols import job_config


def get_config(arg: str = ""):
    del arg
    config = ml_collections.ConfigDict()
    config.name = "eval_ffhq1024"
    config.bundle = "weights/ffhq1024_bundle"
    config.images = "data/celeba_hq_1000.txt"
    config.out_dir = "out/eval_ffhq1024"
    config.num_images = 1000
    config.max_image_pixels = MAX_IMAGE_PIXELS  # larger images are refused unread (decompression bombs)
    config.batch_size = 16
    config.ganspace = "data/editing_directions/ganspace_pca/ffhq_pca.pt"
    config.methods = ml_collections.ConfigDict()
    for name, label in (("magec", "MAGEC"), ("wo_magec", "w/o MAGEC"), ("i2spp", "Image2StyleGAN++")):
        job = job_config(name)
        job.batch_size = 16
        job.label = label
        config.methods[name] = job
    config.method_order = ("magec", "wo_magec", "i2spp")
    config.edits = ml_collections.ConfigDict()
    config.edits.ifg_male = dict(kind="interfacegan", attribute="Male", strength=3.0, target="Male")
    config.edits.ifg_smile = dict(kind="interfacegan", attribute="Smiling", strength=3.0, target="Smiling")
    config.edits.gs_male = dict(kind="ganspace", component=-1, layers=(0, 8), strength=2.0, target="Male")
    config.edits.gs_smile = dict(kind="ganspace", component=46, layers=(4, 5), strength=-20.0, target="Smiling")
    config.edit_order = ("ifg_male", "ifg_smile", "gs_smile")
    config.realism = ml_collections.ConfigDict(
        dict(k=3, clamp_percentile=50.0, reference_images="", vgg16_weights="weights/vgg16-397923af.pth")
    )
    config.figures = ml_collections.ConfigDict(dict(num_images=6, num_extremes=3))
    config.significance = 0.05
    return config
