"""The inversion engine: MAGEC loss, the batched optimisation loop, and the batch job."""
