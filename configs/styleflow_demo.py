"""The demo bundle's StyleFlow prior: trained on its generator's samples labelled by its faceres+emotion F.

    python -m magec_jax.styleflow --config configs/styleflow_demo.py

Data: 10,000 single-w samples of ``demo/bundle``'s 64x64 LFW generator (seed 0: the samples the InterFaceGAN
boundaries were fitted on), each with F's threshold-free scores as the context: ``gender_logit`` (faceres),
``expected_age`` (faceres, years) and ``happy_log_odds`` (emotion). 9,000 train, 1,000 held out. Rendering and
labelling them is the slow part (about 5 samples/s on the shared 2-core CPU; cached under
``runs/supervision_demo``, so a rerun renders nothing).

Prior: the official architecture scaled to the 128-d latent: ``cnf(128, '256-256-256', 3, 1)`` (the official
512-d prior has five 512-wide layers). The official recipe (``magec_jax.supervision.styleflow``) except the batch
(32 instead of 5, and 10 epochs instead of 3: 2,810 steps instead of 6,000, for the CPU's sake).
"""

from magec_jax.supervision.styleflow import default_config


def get_config(arg: str = ""):
    del arg
    config = default_config()
    config.bundle = "demo/bundle"
    config.out_dir = "runs/styleflow_demo"
    config.cache_dir = "runs/supervision_demo"
    config.sampling.num_samples = 10_000
    config.sampling.batch_size = 32
    config.sampling.shard_size = 1_000
    config.flow.hidden_dims = "256-256-256"
    config.flow.batch_size = 32
    config.flow.epochs = 10
    config.log_every = 50
    config.checkpoint_every = 250
    return config
