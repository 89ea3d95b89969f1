"""Measures the cars descriptor F (``configs/classifier_cars.py``) from its exported weights, as the engine will
use it: on its validation split, and on the 402 images the cars generator holds out (never trained on by either).

    python tools/eval_cars_classifier.py        # runs/classifier_cars + runs/cars_data -> demo/cars_eval/classifier.json

F is loaded from ``RUN/resnet50`` (the trainer's converted weights) in the descriptor role
(``magec_jax.models.resnet.resnet_descriptor``), and each image is read and framed as it was in training (the
``framing`` in the weights' manifest; ``magec_jax.images.load_image``). An attribute is predicted present when its
logit is above 0. The validation split is the trainer's own (``magec_jax.classifier.data.split`` with the run's
``val_fraction`` and ``seed``, from ``RUN/config.json``); its accuracy here repeats the trainer's last figure in
``RUN/metrics.json`` through the exported weights, and the JSON holds both. The held-out images are
``DATA/heldout_attributes.txt`` from ``tools/build_cars_data.py``.

Per attribute and set: ``accuracy``, ``majority_accuracy`` (that of always answering "absent": the bar F must
clear), ``positives``, ``recall`` (positives found), ``specificity`` (negatives found) and ``auc`` (the chance that
a positive's logit is above a negative's, ties counting half: whether F ranks the images right, whatever its
threshold; 0.5 is chance); and ``body_accuracy``: how often the highest of the four logits names the image's body
type, over the images of those four types, with ``body_majority_accuracy``, that of always naming the commonest.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.classifier.data import read_attribute_table, split
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.images import atomic_write_json, load_image
from magec_jax.models import resnet
from magec_jax.paths import portable_path
from magec_jax.weights import load_converted

REPO = Path(__file__).resolve().parents[1]


def auc(scores_N: np.ndarray, positive_N: np.ndarray) -> float | None:
    """Mann-Whitney AUC: P(a positive's score > a negative's), ties counting half; None without both classes."""
    pos, neg = scores_N[positive_N], scores_N[~positive_N]
    if not (len(pos) and len(neg)):
        return None
    above = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(above / (len(pos) * len(neg)))


def scores(logits_NxK: np.ndarray, labels_NxK: np.ndarray, names: Sequence[str]) -> dict:
    """Per-attribute accuracy, majority accuracy, positives, recall, specificity and AUC; mean accuracy and AUC;
    body accuracy with its majority bar."""
    predicted, truth = logits_NxK > 0, labels_NxK > 0.5
    per = {}
    for k, name in enumerate(names):
        pos, neg = truth[:, k], ~truth[:, k]
        per[name] = dict(
            accuracy=float(np.mean(predicted[:, k] == pos)), majority_accuracy=float(np.mean(neg)),
            positives=int(pos.sum()), recall=float(predicted[pos, k].mean()) if pos.any() else None,
            specificity=float((~predicted[neg, k]).mean()) if neg.any() else None,
            auc=auc(logits_NxK[:, k], pos),
        )
    one_type = truth.sum(axis=1) == 1  # the images of one of these body types (the types exclude each other)
    body = body_majority = None
    if one_type.any():
        body = float(np.mean(np.argmax(logits_NxK[one_type], 1) == np.argmax(truth[one_type], 1)))
        body_majority = float(truth[one_type].sum(axis=0).max() / one_type.sum())
    aucs = [v["auc"] for v in per.values() if v["auc"] is not None]
    return dict(images=len(labels_NxK), per_attribute=per,
                mean_accuracy=float(np.mean([v["accuracy"] for v in per.values()])),
                mean_majority_accuracy=float(np.mean([v["majority_accuracy"] for v in per.values()])),
                mean_auc=float(np.mean(aucs)) if aucs else None,
                body_accuracy=body, body_majority_accuracy=body_majority, body_images=int(one_type.sum()))


def logits(descriptor, paths: Sequence[Path], image_size: int, framing: str, batch_size: int) -> np.ndarray:
    """F's logits ``[N, K]`` for ``paths``, each framed as in training."""
    apply = jax.jit(descriptor.apply)
    out = []
    for start in range(0, len(paths), batch_size):
        batch = np.stack([load_image(p, image_size, min_size=1, framing=framing)
                          for p in paths[start: start + batch_size]])
        out.append(np.asarray(apply(descriptor.variables, jnp.asarray(batch))))
    return np.concatenate(out)


def evaluate(run: Path, data: Path, *, batch_size: int = 64) -> dict:
    """The figures of the module docstring for the run ``run`` and the data folder ``data``."""
    weights = load_converted(run / "resnet50", kind=resnet.KIND)
    names = tuple(weights.config["attribute_names"])
    image_size = int(weights.config["image_size"])
    framing = weights.manifest.get("extra", {}).get("framing", "square")
    descriptor = resnet.resnet_descriptor(jax.tree_util.tree_map(jnp.asarray, weights.variables), names,
                                          image_size=image_size, name="resnet50-cars")
    config_path = run / "config.json"
    try:
        config = json.loads(config_path.read_text())
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        raise FileFormatError(config_path.parent, f"not a finished classifier run ({e.__class__.__name__})") from None

    trained = read_attribute_table(Path(config["attributes"]), Path(config["images"]), names)
    _, val = split(len(trained.paths), config["val_fraction"], config["seed"])
    heldout = read_attribute_table(data / "heldout_attributes.txt", data / "heldout", names)
    if heldout.attribute_names != names:
        raise FileFormatError(data / "heldout_attributes.txt", f"columns {heldout.attribute_names}, F has {names}")
    val_paths = [trained.paths[i] for i in val]
    result = dict(
        weights=portable_path(run / "resnet50", REPO), attribute_names=list(names), image_size=image_size,
        framing=framing, threshold="logit > 0",
        validation=scores(logits(descriptor, val_paths, image_size, framing, batch_size), trained.labels_NxK[val],
                          names),
        gan_heldout=scores(logits(descriptor, list(heldout.paths), image_size, framing, batch_size),
                           heldout.labels_NxK, names),
        trainer=dict(steps=metrics.get("step"), epochs=metrics["history"][-1]["epoch"] if metrics.get("history")
                     else None, train_images=metrics.get("train_images"),
                     val_accuracy=metrics["history"][-1].get("val_accuracy") if metrics.get("history") else None),
    )
    result["validation"]["set"] = f"the trainer's validation split ({len(val)} of {len(trained.paths)} training crops)"
    result["gan_heldout"]["set"] = "the cars generator's held-out crops (is_heldout(file name, 0.1))"
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "classifier_cars", help="the classifier run")
    parser.add_argument("--data", type=Path, default=REPO / "runs" / "cars_data", help="tools/build_cars_data.py's")
    parser.add_argument("--out", type=Path, default=REPO / "demo" / "cars_eval" / "classifier.json")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.run, args.data, batch_size=args.batch_size)
    except MagecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_json(args.out, result)
    for key in ("validation", "gan_heldout"):
        r = result[key]
        print(f"{key}: {r['images']} images, mean accuracy {r['mean_accuracy']:.3f} (majority "
              f"{r['mean_majority_accuracy']:.3f}), mean AUC {r['mean_auc']:.3f}, body {r['body_accuracy']:.3f} "
              f"(majority {r['body_majority_accuracy']:.3f})  "
              + "  ".join(f"{n} {v['accuracy']:.3f}/{v['auc']:.3f}" for n, v in r["per_attribute"].items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
