"""A tiny StyleFlow run for tests and smoke checks: 64 samples, a 32-32 ODE net, 2 epochs of batch 8.

    python -m magec_jax.styleflow --config configs/styleflow_tiny.py --config.bundle=B --config.out_dir=RUN

Seconds of training after about half a minute of compilation on a 2-core CPU; the figures mean nothing, the run
checks the mechanics (samples, training, checkpoints, resume, held-out NLL, the prior in the bundle).
"""

from magec_jax.supervision.styleflow import default_config


def get_config(arg: str = ""):
    del arg
    config = default_config()
    config.out_dir = "runs/styleflow_tiny"
    config.sampling.num_samples = 64
    config.sampling.batch_size = 32
    config.sampling.shard_size = 32
    config.flow.hidden_dims = "32-32"
    config.flow.batch_size = 8
    config.flow.epochs = 2
    config.flow.val_fraction = 0.25
    config.flow.rtol = 1e-3
    config.flow.atol = 1e-3
    config.flow.eval_batch = 16
    config.flow.estimate_samples = 0  # the estimate has its own test (a compile of its own)
    config.log_every = 4
    config.checkpoint_every = 6
    return config
