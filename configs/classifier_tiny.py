"""A tiny classifier run for tests and smoke checks: 32x32 images, batch 4, 1 head epoch + 1 full epoch.

    python -m magec_jax.train_classifier --config configs/classifier_tiny.py:Male \
        --config.images=DIR --config.attributes=TABLE --config.out_dir=RUN

On the 26 CelebA-HQ faces of ``shared/data/celeba_hq`` (20 train, 6 validation) that is 10 steps: seconds,
plus about half a minute of compilation, on a 2-core CPU. From random weights the accuracy means nothing; the
run checks the mechanics (both phases, checkpoints, resume, validation report, converted weights).
ARG: the comma-separated attributes to train (default: all columns of the table).
"""

from magec_jax.classifier.config import default_config

VARIANTS = {"<attributes>": "a comma-separated subset of the table's attributes, e.g. Male,Smiling (default: all)"}


def get_config(arg: str | None = None):
    config = default_config()
    config.attribute_names = arg or ""
    config.image_size = 32
    config.batch_size = 4
    config.val_fraction = 0.25
    config.head_epochs = 1
    config.full_epochs = 1
    config.log_every = 5
    config.checkpoint_every = 2
    config.num_workers = 2
    return config
