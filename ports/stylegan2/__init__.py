"""Converters of StyleGAN2 networks to the project's format: ``magec_jax.models.stylegan2`` generators (kind
``stylegan2``) and ``magec_jax.models.discriminator`` discriminators (kind ``stylegan2_discriminator``).

One module per source format, each read without torch or TensorFlow and without running code from the file:

* ``ada_pytorch``: stylegan2-ada-pytorch network pickles (:func:`convert_nvidia_pkl`; ``G_ema`` by default,
  ``network='G'`` or ``'D'``) and ``torch.save(G_ema.state_dict())`` files (:func:`convert_state_dict`).
* ``nvlabs_tf``: NVlabs/stylegan2 TensorFlow pickles ``(G, D, Gs)`` (:func:`convert_tf_pkl`; ``Gs`` by default).
* ``rosinality``: rosinality/stylegan2-pytorch checkpoints (:func:`convert_rosinality`; generators only).

Each network of each format is one table of ``ports.tables.Rule`` rows (regex on the source name -> target
leaf, transform), applied by ``ports.tables.apply_table``: every source tensor must match a rule (resample
filters are checked against the standard one, not copied) and every leaf of the Flax variables must be produced
exactly once with its expected shape; otherwise the error names the offender. ``common`` holds what the formats
share.
"""

from ports.stylegan2.ada_pytorch import convert_nvidia_pkl, convert_state_dict
from ports.stylegan2.common import CONVERTER
from ports.stylegan2.nvlabs_tf import convert_tf_pkl
from ports.stylegan2.rosinality import convert_rosinality

__all__ = ["CONVERTER", "convert_nvidia_pkl", "convert_state_dict", "convert_rosinality", "convert_tf_pkl"]
