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

Runtime: 14-16 s a step of 64 (4.3 images/s) on the 2-core CPU shared with the cars GAN's training and other
jobs (load average 4-6), so an epoch of 103 steps takes 24 min: 2 epochs (206 steps) took 52 min from start to
exported weights. One epoch would fit 30 min but leaves a network from random weights at its warm-up (every
validation accuracy at or below always-absent after it). On a quiet CPU expect about half that.
Result (``demo/cars_eval/classifier.json``, docs/cars.md "Cars descriptor F"): mean accuracy 0.840 on the
validation split and 0.850 on the generator's 402 held-out crops, no better than always answering "absent"
(0.844, 0.849): F ranks the images above chance (mean AUC 0.71, 0.72) but its logits stay below 0. Not yet a
descriptor to edit with; it needs many more epochs (``--config.full_epochs``, a fresh ``out_dir``).
Rerunning resumes (the same ``image_size`` and ``framing`` only); ``--config.out_dir`` to start elsewhere.
"""

from pathlib import Path

from magec_jax.classifier.config import default_config

REPO = Path(__file__).resolve().parents[1]


def get_config(arg: str = ""):
    del arg
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
