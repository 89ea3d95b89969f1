"""torchvision ResNet-50 ("v1.5") with a K-way head: MAGEC's attribute descriptor F (40 CelebA attributes).

    x_BxSxSx3 ImageNet-normalised (S = 224 for the paper's classifier)
      conv1 7x7/2 (pad 3) -> bn1 -> ReLU -> max-pool 3x3/2 (pad 1)                 S/2, S/4
      layer1..layer4: 3, 4, 6, 3 Bottleneck blocks, widths 64, 128, 256, 512 (outputs x4); the first block of
                      layer2..4 has stride 2, on its 3x3 conv (v1.5)              S/4, S/8, S/16, S/32
          out = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + identity)
          identity = downsample(x) = bn(conv1x1/stride(x)) in each layer's first block, else x
      avgpool (global mean) -> fc: Linear(2048 -> K)                               raw logits

BatchNorm eps 1e-5; no conv has a bias; paddings explicit and symmetric, as in PyTorch. Layer names mirror
torchvision's state dict (``conv1``, ``bn1``, ``layer2.0/conv2``, ``layer2.0/downsample.0``, ``fc``).

As a descriptor the network takes the project's images (NHWC in [-1, 1], any size), resizes them to the
classifier's ``image_size`` and applies ``Normalize(ImageNet mean, std)`` to ``(x + 1) / 2``, i.e. what
``ToTensor`` + ``Normalize`` give on the same image.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from magec_jax.models.interfaces import Descriptor
from magec_jax.models.resize import resize_images

KIND = "resnet50"
BN_EPS = 1e-5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (planes, blocks, stride of the first block) per layer.
LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
EXPANSION = 4
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """A ResNet-50 classifier: its outputs, their names and the input size it was trained at."""

    attribute_names: tuple[str, ...] = CELEBA_ATTRIBUTES
    image_size: int = 224

    @property
    def num_classes(self) -> int:
        return len(self.attribute_names)

    def to_dict(self) -> dict:
        return {"attribute_names": list(self.attribute_names), "image_size": self.image_size}

    @classmethod
    def from_dict(cls, d: dict) -> "ResNetConfig":
        return cls(attribute_names=tuple(d["attribute_names"]), image_size=int(d["image_size"]))


class ResNetOutput(NamedTuple):
    """What :class:`ResNet50` returns.

    Attributes:
      logits_BxK: raw logits (no sigmoid).
      taps: outputs of the stem (after the max-pool) and of ``layer1`` .. ``layer4``; global-mean them for
        torchvision's ``avgpool`` output.
    """

    logits_BxK: jax.Array
    taps: tuple[jax.Array, ...]


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        use_bias=False, dtype=dtype, name=name,
    )


def _batch_norm(name: str, train: bool, dtype: Any) -> nn.BatchNorm:
    # torch momentum 0.1 == flax momentum 0.9 (weight of the old running value).
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPS, dtype=dtype, name=name)


class Bottleneck(nn.Module):
    """torchvision ``Bottleneck`` (``layerL.i``), stride on the 3x3 conv; ``downsample`` in a layer's first block."""

    planes: int
    stride: int
    downsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, train: bool) -> jax.Array:
        dt = self.dtype
        out = nn.relu(_batch_norm("bn1", train, dt)(_conv(self.planes, 1, 1, "conv1", dt)(x_BxHxWxC)))
        out = nn.relu(_batch_norm("bn2", train, dt)(_conv(self.planes, 3, self.stride, "conv2", dt)(out)))
        out = _batch_norm("bn3", train, dt)(_conv(self.planes * EXPANSION, 1, 1, "conv3", dt)(out))
        identity = x_BxHxWxC
        if self.downsample:
            identity = _conv(self.planes * EXPANSION, 1, self.stride, "downsample.0", dt)(x_BxHxWxC)
            identity = _batch_norm("downsample.1", train, dt)(identity)
        return nn.relu(out + identity)


class ResNet50(nn.Module):
    """``torchvision.models.resnet50(num_classes=K)`` on NHWC ImageNet-normalised images.

    ``train=True`` uses batch statistics and updates ``batch_stats`` (apply with ``mutable=['batch_stats']``);
    the default is eval mode, with the running statistics.
    """

    num_classes: int = len(CELEBA_ATTRIBUTES)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWx3: jax.Array, train: bool = False) -> ResNetOutput:
        pooled_Bx2048, taps = resnet50_trunk(x_BxHxWx3, train, self.dtype)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(pooled_Bx2048).astype(jnp.float32)
        return ResNetOutput(logits, taps)


def resnet50_trunk(x_BxHxWx3: jax.Array, train: bool, dtype: Any) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Everything of torchvision's ResNet-50 before ``fc``: ``(avgpool output [B, 2048], taps)``.

    Call it inside an ``nn.compact`` method: its layers (``conv1``, ``bn1``, ``layer1.0`` ...) become submodules
    of the calling module, so every network built on this trunk has torchvision's parameter names.
    """
    x = nn.relu(_batch_norm("bn1", train, dtype)(_conv(64, 7, 2, "conv1", dtype)(x_BxHxWx3)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf, like PyTorch
    taps = [x]
    for layer, (planes, blocks, stride) in enumerate(LAYERS, start=1):
        for i in range(blocks):
            block = Bottleneck(planes, stride if i == 0 else 1, i == 0, dtype=dtype, name=f"layer{layer}.{i}")
            x = block(x, train)
        taps.append(x)
    return jnp.mean(x, axis=(1, 2)), tuple(taps)


def imagenet_normalize(images_BxHxWxC: jax.Array) -> jax.Array:
    """``Normalize(mean, std)`` of ``(x + 1) / 2``: project images in [-1, 1] -> the network's input."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32).reshape(1, 1, 1, 3)
    std = jnp.asarray(IMAGENET_STD, jnp.float32).reshape(1, 1, 1, 3)
    return ((images_BxHxWxC + 1.0) * 0.5 - mean) / std


def resnet_preprocess(images_BxHxWxC: jax.Array, image_size: int) -> jax.Array:
    """Resize (area down, bilinear up) to ``image_size`` square, then ImageNet-normalise."""
    return imagenet_normalize(resize_images(images_BxHxWxC, (image_size, image_size)))


def resnet_logits(
    variables, images_BxHxWxC: jax.Array, *, image_size: int = 224, dtype: Any = jnp.float32
) -> jax.Array:
    """Logits ``[B, K]`` of images in [-1, 1]; K is read off the ``fc`` kernel."""
    num_classes = variables["params"]["fc"]["kernel"].shape[-1]
    x = resnet_preprocess(images_BxHxWxC, image_size)
    return ResNet50(num_classes=num_classes, dtype=dtype).apply(variables, x).logits_BxK


@functools.lru_cache(maxsize=None)
def _logits_fn(image_size: int, dtype: Any):
    """One ``apply`` per setting, so that engines closing over it as a static argument compile once."""
    return functools.partial(resnet_logits, image_size=image_size, dtype=dtype)


def resnet_descriptor(
    variables,
    attribute_names: Sequence[str] = CELEBA_ATTRIBUTES,
    *,
    image_size: int = 224,
    name: str = "resnet50-celeba",
    dtype: Any = jnp.float32,
) -> Descriptor:
    """The ResNet-50 attribute classifier in the engine's :class:`Descriptor` role (loss ``'bce'``)."""
    num_classes = variables["params"]["fc"]["kernel"].shape[-1]
    if num_classes != len(attribute_names):
        raise ValueError(
            f"the fc layer has {num_classes} outputs but {len(attribute_names)} attribute names were given"
        )
    return Descriptor(
        name=name, attribute_names=tuple(attribute_names), loss="bce", apply=_logits_fn(image_size, dtype),
        variables=variables,
    )
