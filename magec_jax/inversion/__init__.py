"""The inversion: loss terms, the batched optimisation engine and the batch job, in the order data flows.

* ``magec_loss`` -- the vectorised MAGEC loss of one latent (LinkNet on the latent and on every edit);
* ``settings`` -- typed settings: phases weighting terms by name, optimiser, compute options;
* ``networks`` -- the frozen networks an inversion reads (``Networks``; built by ``magec_jax.bundle``);
* ``terms`` -- the loss-term registry (``register_term``); mse, lpips, id and magec are registered like a
  user's term;
* ``engine`` -- the per-image step, vmapped, jitted and sharded once (``Engine``, ``invert_arrays``);
* ``protocols`` -- the paper's protocols as typed settings and job configs;
* ``job`` -- the batch job over a folder (resumable, fingerprinted, multi-process), given its networks.

Nothing here loads a bundle or renders edits: ``python -m magec_jax.invert`` does that around the job.
"""
