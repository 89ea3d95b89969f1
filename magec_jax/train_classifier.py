"""Train the attribute descriptor F: a ResNet-50 with K sigmoid outputs on a CelebA-format attribute table.

    python -m magec_jax.train_classifier --config configs/classifier_celeba.py \
        --config.images=DIR --config.attributes=list_attr_celeba.txt --config.out_dir=RUN

Data: ``attributes`` is a ``list_attr_celeba.txt``-style table (a count line, a header of attribute names,
then ``<image path relative to images> v1 v2 ...`` with values 1 / -1); ``attribute_names`` picks columns
(default: all). Images are read by the project's input policy and framed by ``framing`` (``"square"``: the
centred square; ``"letterbox"``: the whole image, long side to ``image_size``, centred on black; Lanczos) and
split once into train/validation by ``seed``. Resuming with another ``image_size`` or ``framing`` is refused.

Schedule (METHOD.md): ``head_epochs`` training only the last layer (body frozen, BatchNorm on its running
statistics) at ``head_lr``, then ``full_epochs`` of all layers with discriminative learning rates spaced
geometrically from ``lr_min`` (stem, layer1, layer2) over the middle group (layer3, layer4) to ``lr_max``
(fc), as fastai's ``slice(lr_min, lr_max)``; AdamW, one-cycle schedule per phase by default. BCE loss.

Outputs in ``out_dir``: ``checkpoints/`` (orbax; a rerun of the same command resumes from the latest),
``config.json`` (the run's config), ``metrics.json`` (per-epoch loss and per-attribute validation accuracy,
the framing), and ``resnet50/`` (the final weights in the converted format, kind ``resnet50``, the framing in
its manifest's ``extra``; load with ``magec_jax.models.resnet.resnet_descriptor``).
The code is in ``magec_jax/classifier/``.
"""

import sys

from magec_jax.cli import config_main
from magec_jax.classifier.loop import run

__all__ = ["main", "run"]

main = config_main(run, __doc__, prog="magec_jax.train_classifier", example="classifier_tiny.py")

if __name__ == "__main__":
    sys.exit(main())
