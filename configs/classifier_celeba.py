"""MAGEC's attribute descriptor F: ResNet-50 with 40 sigmoid outputs trained on CelebA (METHOD.md schedule).

    python -m magec_jax.train_classifier --config configs/classifier_celeba.py \
        --config.images=celeba/img_align_celeba --config.attributes=celeba/list_attr_celeba.txt \
        --config.init_weights=weights/resnet50_imagenet --config.out_dir=runs/classifier_celeba

``init_weights``: a converted torchvision ImageNet ResNet-50 (``python -m ports.convert
resnet50-0676ba61.pth weights/resnet50_imagenet --format resnet50``) for every layer but the head; leave it empty to train from
scratch (much worse). Schedule: 2 epochs of the last layer at lr 0.02, then 4 epochs of all layers with
discriminative lrs 0.002..0.02 (AdamW, one cycle per phase), 224x224, batch 64: about 19k steps on the ~203k
CelebA images, a few hours on one H100 (image decoding bound), far too long for a CPU. A well-trained CelebA
ResNet-50 reaches about 90-91% mean validation accuracy over the 40 attributes. Rerunning resumes.
ARG: an optional comma-separated attribute subset, e.g. ``configs/classifier_celeba.py:Male,Smiling,Young``.
"""

from magec_jax.classifier.config import default_config

VARIANTS = {"<attributes>": "a comma-separated subset of the table's attributes, e.g. Male,Smiling (default: all)"}


def get_config(arg: str | None = None):
    config = default_config()
    config.attribute_names = arg or ""
    return config
