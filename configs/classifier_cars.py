"""The cars descriptor F: ResNet-50 from random weights on four body types of Stanford Cars, 64x64 letterboxed.

    python tools/build_cars_data.py                                  # runs/cars_data (4 s)
    python -m magec_jax.train_classifier --config configs/classifier_cars.py
    python tools/eval_cars_classifier.py                             # demo/cars_eval/classifier.json

Data: ``runs/cars_data`` from ``tools/build_cars_data.py``: the 7,352 Stanford Cars crops the cars generator
trains on (``configs/cars_stylegan2.py``; its 402 held-out images are not among them) with ``is_suv``,
``is_convertible``, ``is_pickup`` and ``is_sedan`` (why these four: the tool's docstring and docs/cars.md). Each
image is framed exactly as the generator's data was (``framing="letterbox"``: long side Lanczos-resized to 64,
centred on black), so F reads generated cars as it read its training cars. 10% (735) are the validation split.

Schedule: no ImageNet weights are available offline, so from random init there is no head-only phase
(``head_epochs=0``: a head on random features learns nothing worth keeping); ``full_epochs`` of all layers with
one learning rate (``lr_min = lr_max``: the discriminative spread is for fine-tuning pretrained layers), AdamW,
one cycle, batch 64, random x-flips (a car's side view mirrors to a car).

Runtime: 14 s a step of 64 (4.6 images/s) measured on the 2-core CPU shared with the cars GAN's training and
another engineer's jobs (load average 5.5-6), so one epoch of 103 steps takes 24 min: 2 epochs (206 steps),
about 50 min with compilation and the two validations. One epoch would fit 30 min but leaves a network from
random weights barely past its warm-up. On a quiet CPU expect about half that.
Result: in docs/cars.md ("Cars descriptor F") and ``demo/cars_eval/classifier.json``.
Rerunning resumes (the same ``image_size`` and ``framing`` only); ``--config.out_dir`` to start elsewhere.
"""

from pathlib import Path

from magec_jax.classifier.config import default_config

REPO = Path(__file__).resolve().parents[1]


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"unknown variant {arg!r} (this config has none)")
    config = default_config()
    config.images = str(REPO / "runs" / "cars_data" / "images")
    config.attributes = str(REPO / "runs" / "cars_data" / "attributes.txt")
    config.out_dir = str(REPO / "runs" / "classifier_cars")
    config.image_size = 64
    config.framing = "letterbox"
    config.batch_size = 64
    config.head_epochs = 0
    config.full_epochs = 2
    config.lr_min = 0.002
    config.lr_max = 0.002
    config.log_every = 20
    config.checkpoint_every = 50
    config.num_workers = 2
    return config
