"""Edits of inverted latents, rendered: the library behind ``python -m magec_jax.edit`` and the evaluation.

Data flow::

    inversion output <name>.npz (w [1, L, D], optional noise_<i>) + <name>.json (input image path)
      --load_latent--> Latent --Editor.apply(Edit)--> edited w --Renderer--> images [N, R, R, 3] in [-1, 1]

* :class:`Edit` is one additive latent edit (InterFaceGAN boundary or GANSpace component); its
  :meth:`Edit.inverse` is the same edit with the opposite strength, as the Edit-Consistency Score needs.
* :class:`Renderer` runs the generator's synthesis jitted on fixed-size batches (the last one padded), so
  it compiles once per batch size. Every image is rendered with explicit noise maps: the ones the inversion
  optimised (Image2StyleGAN++'s noise stage) where the latent file has them, else the generator's constant
  buffers, exactly as the inversion job rendered its reconstruction.
* :func:`run_edits` is the edit tool: per latent, a PNG grid (one row per edit sweep: input | reconstruction
  | edits) and every edited latent as ``.npz`` (key ``w``, the inversion's noise maps copied along); with
  ``paste_back``, for a face the job aligned from a photograph (``config.align``), each edit pasted back into
  the photograph.
* :func:`paste_edit_grid`: the job's edit stage for photographs: each photograph with all its faces edited.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax import images as imio
from magec_jax.editing.directions import GanSpace, ganspace_edit, interfacegan_edit, interpolate, load_ganspace
from magec_jax.editing.styleflow import bundle_editor, read_context_file
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.faces import pipeline as faces
from magec_jax.faces.align import Alignment, AlignmentError
from magec_jax.logs import Log, to_stderr
from magec_jax.models import deltas as deltas_lib
from magec_jax.models.stylegan2 import noise_buffers, synthesize_fn
from magec_jax.models.styleflow_editor import Change, StyleFlowEditor
from magec_jax.faces import paste
from magec_jax.weights import sha256_file

EditKind = Literal["interfacegan", "ganspace", "styleflow"]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


# ---- latents -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Latent:
    """One inverted latent as the inversion job wrote it.

    Attributes:
      name: the file's stem (the job's output name).
      path: the ``.npz`` file.
      w_LxD: float32 ``[num_ws, w_dim]``.
      noise: the noise maps the inversion optimised (``[h, w]`` each, ``noise_shapes`` order), or None.
      image: the input image named by the inversion's ``<name>.json``, or None when there is no JSON.
      photo: for a face the job aligned from a photograph (``config.align``), the photograph; else None.
      alignment: that face's alignment in the photograph; else None.
    """

    name: str
    path: Path
    w_LxD: np.ndarray
    noise: tuple[np.ndarray, ...] | None
    image: Path | None
    photo: Path | None = None
    alignment: Alignment | None = None


def load_latent(path: str | Path) -> Latent:
    """Reads an inversion ``.npz`` (key ``w`` ``[1, L, D]`` or ``[L, D]``, optional ``noise_<i>``) and the
    ``image`` entry of the ``.json`` beside it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise FileFormatError(path, f"unreadable latent file ({e.__class__.__name__}: {e})") from None
    if "w" not in arrays:
        raise FileFormatError(path, f"no key 'w' (found {', '.join(sorted(arrays)) or 'nothing'})")
    w = np.asarray(arrays["w"], np.float32)
    if w.ndim == 3 and w.shape[0] == 1:
        w = w[0]
    if w.ndim != 2 or not np.all(np.isfinite(w)):
        raise FileFormatError(path, f"'w' must be a finite [1, num_ws, w_dim] latent, got shape {arrays['w'].shape}")
    count = sum(1 for k in arrays if re.fullmatch(r"noise_\d+", k))
    missing = [i for i in range(count) if f"noise_{i}" not in arrays]
    if missing:
        raise FileFormatError(path, f"noise maps are not numbered 0..{count - 1} (missing noise_{missing[0]})")
    noise = tuple(np.asarray(arrays[f"noise_{i}"], np.float32) for i in range(count)) or None
    image = photo = alignment = None
    record = path.with_suffix(".json")
    if record.is_file():
        try:
            entries = json.loads(record.read_text())
            alignment = Alignment.from_json(entries["alignment"]) if entries.get("alignment") else None
        except (OSError, ValueError, AlignmentError) as e:
            raise FileFormatError(record, f"unreadable inversion record ({e})") from None
        image = Path(entries["image"]) if entries.get("image") else None
        photo = Path(entries["photo"]) if entries.get("photo") else None
    return Latent(name=path.stem, path=path, w_LxD=w, noise=noise, image=image, photo=photo, alignment=alignment)


def list_latents(sources: Sequence[str | Path]) -> list[Path]:
    """The ``.npz`` latents named by ``sources``: files as given, folders (inversion outputs) by their sorted
    top-level ``*.npz``."""
    found: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found += sorted(p for p in source.glob("*.npz") if p.is_file())
        elif source.is_file():
            found.append(source)
        else:
            raise FileFormatError(source, "no such latent file or folder")
    if not found:
        raise MagecError(f"{', '.join(map(str, sources))}: no .npz latents found")
    return found


# ---- edits -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Edit:
    """An additive latent edit.

    Attributes:
      kind: ``"interfacegan"`` (``w + strength * n_attribute`` on every layer, or per layer for a
        ``[num_ws, w_dim]`` boundary), ``"ganspace"`` (``w + strength * std_c * v_c`` on layers
        ``[start, end)``) or ``"styleflow"`` (the image's context value ``attribute`` moved by ``strength``
        standard deviations of the prior's training data, StyleFlow's edit rule).
      strength: boundary units (InterFaceGAN) or standard deviations along the component (GANSpace) or of the
        context value (StyleFlow).
      attribute: InterFaceGAN: the direction's name in the bundle; StyleFlow: the context value's name.
      component: GANSpace: the principal component's index.
      layers: GANSpace: ``(start, end)`` layer range, end exclusive; None for every layer.
    """

    kind: EditKind
    strength: float
    attribute: str = ""
    component: int = 0
    layers: tuple[int, int] | None = None

    def inverse(self) -> "Edit":
        """The edit that undoes this one: the opposite strength."""
        return dataclasses.replace(self, strength=-self.strength)

    @property
    def label(self) -> str:
        """A short file-safe name, e.g. ``ifg_Smiling_+3`` or ``gs_c46_l4-5_-20``."""
        if self.kind == "interfacegan":
            return _safe(f"ifg_{self.attribute}_{self.strength:+g}")
        if self.kind == "styleflow":
            return _safe(f"sf_{self.attribute}_{self.strength:+g}sd")
        span = "all" if self.layers is None else f"{self.layers[0]}-{self.layers[1]}"
        return _safe(f"gs_c{self.component}_l{span}_{self.strength:+g}")


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text)


@dataclasses.dataclass(frozen=True)
class Editor:
    """The edits available for one generator.

    Attributes:
      num_ws, w_dim: the latent shape.
      directions: InterFaceGAN boundaries by attribute name (``[w_dim]`` or ``[num_ws, w_dim]``).
      pca: the GANSpace PCA of W, or None.
      pca_source: where the PCA came from (for messages).
      styleflow: a StyleFlow prior for ``"styleflow"`` edits, or None.
      contexts: ``ws [N, num_ws, w_dim] -> raw contexts [N, M]``, the images' context for StyleFlow edits.
    """

    num_ws: int
    w_dim: int
    directions: Mapping[str, np.ndarray]
    pca: GanSpace | None = None
    pca_source: str = ""
    styleflow: StyleFlowEditor | None = None
    contexts: Callable[[np.ndarray], np.ndarray] | None = None

    def check(self, edit: Edit) -> None:
        """Raises :class:`MagecError` (one line) when ``edit`` cannot be applied to this generator."""
        if edit.kind == "interfacegan":
            if edit.attribute not in self.directions:
                known = ", ".join(sorted(self.directions)) or "none"
                raise MagecError(f"no InterFaceGAN direction {edit.attribute!r} in the bundle (it has: {known})")
            shape = self.directions[edit.attribute].shape
            if shape not in ((self.w_dim,), (self.num_ws, self.w_dim)):
                raise MagecError(f"direction {edit.attribute!r} has shape {shape}, the generator's latent is "
                                 f"[{self.num_ws}, {self.w_dim}]")
        elif edit.kind == "ganspace":
            if self.pca is None:
                raise MagecError("a GANSpace edit needs a PCA: give a PCA file or add 'ganspace' to the bundle")
            if not 0 <= edit.component < len(self.pca.std):
                raise MagecError(f"{self.pca_source}: GANSpace component {edit.component} out of range "
                                 f"0..{len(self.pca.std) - 1}")
            if edit.layers is not None and not 0 <= edit.layers[0] < edit.layers[1] <= self.num_ws:
                raise MagecError(f"GANSpace layer range {edit.layers} outside 0..{self.num_ws}")
        elif edit.kind == "styleflow":
            if self.styleflow is None or self.contexts is None:
                raise MagecError("a StyleFlow edit needs a prior trained on the bundle's F (python -m magec_jax.styleflow)")
            self.styleflow.check_changes(((edit.attribute, 0.0),), self.num_ws)  # the name and its layer rule
        else:
            raise MagecError(f"unknown edit kind {edit.kind!r} (interfacegan, ganspace or styleflow)")

    def apply(self, edit: Edit, ws_xLxD: np.ndarray) -> np.ndarray:
        """``edit`` applied to latents ``[..., num_ws, w_dim]`` (float32 numpy)."""
        if edit.kind == "styleflow":
            ws = np.asarray(ws_xLxD, np.float32).reshape(-1, self.num_ws, self.w_dim)
            ctx = self.contexts(ws)
            k = self.styleflow.context_names.index(edit.attribute)
            moved = ctx[:, k] + edit.strength * self.styleflow.std[k]
            return self.styleflow.edit_sequence(ws, ctx, ((edit.attribute, moved),))[0].reshape(np.shape(ws_xLxD))
        ws = jnp.asarray(ws_xLxD, jnp.float32)
        if edit.kind == "interfacegan":
            out = interfacegan_edit(ws, jnp.asarray(self.directions[edit.attribute]), edit.strength)
        else:
            out = ganspace_edit(ws, self.pca, edit.component, edit.strength, edit.layers)
        return np.asarray(out, np.float32)


def load_pca(bundle: Any, path: str | Path | None, w_dim: int) -> tuple[GanSpace | None, str]:
    """The GANSpace PCA from ``path`` if given, else the bundle manifest's ``ganspace`` entry, else None;
    returned with its source. Its dimension must be ``w_dim``."""
    if path:
        source = Path(path)
    elif bundle is not None and bundle.manifest.get("ganspace"):
        source = bundle.part(bundle.manifest["ganspace"])
    else:
        return None, ""
    if not source.is_file():
        raise FileFormatError(source, "no such GANSpace PCA file")
    pca = load_ganspace(source)
    if pca.components.shape[1] != w_dim or pca.mean.shape != (w_dim,):
        raise FileFormatError(source, f"PCA of {pca.components.shape[1]}-d latents, the generator's w has {w_dim}")
    return pca, str(source)


# ---- batched rendering -------------------------------------------------------------------------------------


def map_batches(fn: Callable[..., Any], *args: Any, batch_size: int) -> Any:
    """``fn`` over fixed-size batches of ``args`` (pytrees with a common leading axis), results concatenated.

    The last batch is padded by repeating its last row (real data, so no special values reach ``fn``) and the
    padding is cut from the outputs; ``fn`` (jitted by the caller) therefore sees one shape.
    """
    n = jax.tree.leaves(args)[0].shape[0]
    outs = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)

        def take(a):
            a = np.asarray(a[start:stop])
            return np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a

        out = fn(*jax.tree.map(take, args))
        outs.append(jax.tree.map(lambda o: np.asarray(o)[: batch_size - pad], out))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outs)


class Renderer:
    """G(ws, noise) on batches of ``batch_size``, jitted once.

    Args:
      synthesize: ``(variables, ws_BxLxD, noise) -> images_BxHxWxC`` (``magec_jax.models.stylegan2.synthesize_fn``).
      variables: the generator's variables.
      noise_const: the generator's constant noise buffers (``[h, w]`` each).
      batch_size: images per compiled call.
    """

    def __init__(self, synthesize: Callable, variables: Any, noise_const: Sequence[Any], batch_size: int):
        self.variables = variables
        self.noise_const = tuple(np.asarray(n, np.float32) for n in noise_const)
        self.batch_size = batch_size
        self._synthesize = jax.jit(synthesize)

    def noise_for(self, latents: Sequence[Latent]) -> tuple[np.ndarray, ...]:
        """Per-layer ``[N, h, w]`` noise: each latent's own maps, or the constant buffers."""
        for lat in latents:
            if lat.noise is not None and [n.shape for n in lat.noise] != [n.shape for n in self.noise_const]:
                raise FileFormatError(lat.path, "its noise maps do not match the generator's noise inputs")
        return tuple(np.stack([const if lat.noise is None else lat.noise[i] for lat in latents])
                     for i, const in enumerate(self.noise_const))

    def __call__(self, ws_NxLxD: np.ndarray, noise: tuple[np.ndarray, ...] | None = None, *,
                 variables: Any = None) -> np.ndarray:
        """Images ``[N, R, R, 3]`` (float32, [-1, 1] nominal, not clamped); ``noise`` per layer ``[N, h, w]``
        (default: the constant buffers); ``variables``: another generator of the same shapes (an image's tuned
        generator, ``magec_jax.models.deltas.tuned_variables``; the same compiled call)."""
        ws = np.asarray(ws_NxLxD, np.float32)
        if noise is None:
            noise = tuple(np.broadcast_to(n, (ws.shape[0], *n.shape)) for n in self.noise_const)
        variables = self.variables if variables is None else variables
        return map_batches(
            lambda w, nz: self._synthesize(variables, w, nz), ws, tuple(noise), batch_size=self.batch_size
        )


def load_input(image: Path | None, resolution: int, log: Log, max_pixels: int = imio.MAX_IMAGE_PIXELS,
               framing: str = "square") -> np.ndarray:
    """The inversion's input image by the job's input policy (framed as ``framing``: the bundle's
    ``image_framing``; any size accepted; over ``max_pixels`` refused unread), or a mid-grey tile with a one-line
    report when it is unknown or unreadable."""
    if image is not None:
        try:
            return imio.load_image(image, resolution, min_size=0, max_pixels=max_pixels, framing=framing)
        except FileFormatError as e:
            log(f"warning: {e}; showing a grey tile")
    return np.zeros((resolution, resolution, 3), np.float32)


def blank(resolution: int) -> np.ndarray:
    """A white tile (uint8), for padding grid rows."""
    return np.full((resolution, resolution, 3), 255, np.uint8)


# ---- the edit tool -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EditJob:
    """What ``python -m magec_jax.edit`` does.

    Attributes:
      latents: ``.npz`` files and/or inversion output folders.
      out_dir: output folder.
      sweeps: rows of the grids, each a sequence of edits (e.g. one attribute at several strengths).
      interpolate_to: a second latent; adds a row interpolating each latent towards it.
      steps: number of interpolation points from t = 0 to t = 1.
      pca: GANSpace PCA file (default: the bundle's ``ganspace`` entry).
      batch_size: images per compiled generator call.
      paste_back: also write each edit pasted back into the photograph (latents of aligned faces only).
      max_image_pixels: inputs and photographs larger than this (width x height) are refused before decoding.
      styleflow: StyleFlow rows: each a sequence of ``(attribute, value)`` changes made one after another, a
        column per change (``magec_jax.editing.styleflow``; ``A=1,A=2`` sweeps one attribute).
      styleflow_prior: the converted prior (default: the bundle's ``styleflow`` entry).
      styleflow_attributes: a JSON file ``{latent name: {context name: value}}`` giving each image's context;
        without it, F's outputs on the reconstruction when the prior was trained on them, else the context that
        maximises the prior's likelihood of the latent.
      deltas: pivotal tuning's weight deltas (``magec_jax.inversion.pti_job``): one ``.npz`` file (one latent), or
        a folder of ``<latent name>.npz`` (the job's ``pti/``); each latent is then rendered, reconstruction and
        edits, by its own tuned generator. Empty: the bundle's generator.
    """

    latents: tuple[str, ...]
    out_dir: str
    sweeps: tuple[tuple[Edit, ...], ...] = ()
    interpolate_to: str = ""
    steps: int = 5
    pca: str = ""
    batch_size: int = 8
    paste_back: bool = False
    max_image_pixels: int = imio.MAX_IMAGE_PIXELS
    styleflow: tuple[tuple[Change, ...], ...] = ()
    styleflow_prior: str = ""
    styleflow_attributes: str = ""
    deltas: str = ""


def styleflow_label(changes: Sequence[Change]) -> str:
    """The file-safe name of the latent after ``changes``, e.g. ``sf_expected_age=60_happy_log_odds=+2``."""
    return _safe("sf_" + "_".join(f"{name}={value:g}" for name, value in changes))


def run_edits(job: EditJob, bundle: Any, *, log: Log = to_stderr,
              styleflow_contexts: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """Renders every edit of every latent; returns ``{name: record}`` (each also written as ``<name>.json``).

    ``bundle`` is a loaded model bundle (``magec_jax.bundle.load_bundle``): its generator renders, its
    directions and ``ganspace`` entry edit. ``styleflow_contexts`` (``images -> raw contexts``) gives StyleFlow
    the images' contexts from their reconstructions (F, when the prior was trained on F's outputs).

    Per latent ``<name>``: ``<name>.png`` (grid), ``<name>/<label>.npz`` (edited latents, key ``w``
    ``[1, L, D]``), with ``paste_back`` ``<name>/<label>.png`` (the photograph with this face edited, at the
    photograph's size), and ``<name>.json`` (written last: its presence with the same rows marks the latent as
    done, so a rerun skips it). ``grid.png``: every latent's grid in one sheet, each row labelled with its
    edits (columns: input, G(w), then the row's edits in order).
    """
    if not job.sweeps and not job.interpolate_to and not job.styleflow:
        raise MagecError("nothing to do: give InterFaceGAN, GANSpace, StyleFlow or interpolation edits")
    cfg, variables = bundle.generator
    pca, pca_source = load_pca(bundle, job.pca, cfg.w_dim)
    editor = Editor(cfg.num_ws, cfg.w_dim, bundle.directions(), pca, pca_source)
    for sweep in job.sweeps:
        for edit in sweep:
            editor.check(edit)
    other = load_latent(job.interpolate_to) if job.interpolate_to else None
    latents = [load_latent(p) for p in list_latents(job.latents)]
    for lat in latents + ([other] if other else []):
        if lat.w_LxD.shape != (cfg.num_ws, cfg.w_dim):
            raise FileFormatError(lat.path, f"latent of shape {lat.w_LxD.shape}, the generator's is "
                                            f"({cfg.num_ws}, {cfg.w_dim})")
    if job.paste_back:
        for lat in latents:
            if lat.alignment is None or lat.photo is None:
                raise FileFormatError(lat.path.with_suffix(".json"), "no photograph and alignment recorded: "
                                      "--paste-back needs faces the inversion job aligned (config.align)")
            if not lat.photo.is_file():
                raise FileFormatError(lat.photo, f"no such photograph (the source of {lat.path.name})")
    delta_paths = _delta_paths(job.deltas, latents)
    flow = None
    if job.styleflow:
        flow = bundle_editor(bundle, job.styleflow_prior or None)
        for line in dict.fromkeys(w for changes in job.styleflow for w in flow.check_changes(changes, cfg.num_ws)):
            log(line)
    rows = [[e.label for e in sweep] for sweep in job.sweeps]
    rows += [[styleflow_label(changes[: k + 1]) for k in range(len(changes))] for changes in job.styleflow]
    ts = np.linspace(0.0, 1.0, job.steps) if other is not None else np.zeros(0)
    if other is not None:
        rows.append([_safe(f"interp_{other.name}_{t:.3f}") for t in ts])
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pending = [lat for lat in latents if not _edits_done(out, lat, rows, job.paste_back, delta_paths.get(lat.name))]
    log(f"edit: {len(latents)} latents, {len(latents) - len(pending)} already done; "
        f"{sum(map(len, rows))} edits each in {len(rows)} rows")
    renderer = Renderer(synthesize_fn(cfg), variables, noise_buffers(cfg, variables), job.batch_size)
    given = read_context_file(job.styleflow_attributes, flow, [lat.name for lat in pending]) \
        if flow is not None and job.styleflow_attributes else None
    per_latent = 1 + sum(map(len, rows))
    group = 1 if delta_paths else max(1, job.batch_size // per_latent)  # a tuned generator renders one latent
    fingerprint = deltas_lib.generator_fingerprint(variables) if delta_paths else None
    results = {}
    for g in range(0, len(pending), group):
        chunk = pending[g: g + group]
        tuned = None
        if delta_paths:
            tuned = deltas_lib.tuned_variables(variables, delta_paths[chunk[0].name], bundle_source(bundle),
                                               fingerprint)
        flow_edits, flow_records = _styleflow_edits(flow, job.styleflow, chunk, renderer, given, styleflow_contexts,
                                                    tuned)
        ws, noise = [], []
        for c, lat in enumerate(chunk):
            edited = [lat.w_LxD] + [editor.apply(e, lat.w_LxD) for sweep in job.sweeps for e in sweep]
            edited += [rows_KxBxLxD[k, c] for rows_KxBxLxD in flow_edits for k in range(len(rows_KxBxLxD))]
            edited += [np.asarray(interpolate(lat.w_LxD, other.w_LxD, t)) for t in ts]
            ws += edited
            noise += [lat] * len(edited)
        images = renderer(np.stack(ws), renderer.noise_for(noise), variables=tuned)
        for i, lat in enumerate(chunk):
            mine = images[i * per_latent: (i + 1) * per_latent]
            latents_i = ws[i * per_latent: (i + 1) * per_latent]
            results[lat.name] = _write_latent_edits(out, lat, rows, mine, latents_i, cfg.img_resolution, log,
                                                    job.paste_back, job.max_image_pixels,
                                                    flow_records[i] if flow_records else None,
                                                    delta_paths.get(lat.name), bundle.image_framing())
        log(f"edit: {min(g + group, len(pending))}/{len(pending)} latents rendered")
    if not pending and (out / "grid.png").is_file():
        return results  # nothing new: the sheet of the previous run stands
    descriptions = [_sweep_description(sweep) for sweep in job.sweeps]
    descriptions += ["StyleFlow " + ", then ".join(f"{n}={v:g}" for n, v in changes) for changes in job.styleflow]
    descriptions += [f"to {other.name}, t = 0..1" for _ in ts[:1]]
    sheet = labelled_sheet([(lat.name, list(zip(descriptions, grid_tiles(
        faces.read_rgb(out / f"{lat.name}.png"), len(rows), 2 + max(map(len, rows)), cfg.img_resolution))))
        for lat in latents], ["input", "G(w)"] + [str(i) for i in range(1, 1 + max(map(len, rows)))])
    imio.atomic_write_bytes(out / "grid.png", imio.png_bytes(sheet))
    return results


def _sweep_description(sweep: Sequence[Edit]) -> str:
    """A grid row's label: what is edited and at which strengths, e.g. ``Smiling -3, 0, +3``."""
    edit = sweep[0]
    what = {"interfacegan": edit.attribute, "styleflow": f"StyleFlow {edit.attribute} (sd)",
            "ganspace": f"GANSpace c{edit.component}" + ("" if edit.layers is None else f" l{edit.layers[0]}-{edit.layers[1]}")}
    return f"{what[edit.kind]} " + ", ".join(f"{e.strength:+g}" if e.strength else "0" for e in sweep)


def _styleflow_edits(flow: StyleFlowEditor | None, rows: Sequence[Sequence[Change]], chunk: Sequence[Latent],
                     renderer: Renderer, given: Mapping[str, np.ndarray] | None,
                     from_images: Callable[[np.ndarray], np.ndarray] | None,
                     variables: Any = None) -> tuple[list[np.ndarray], list[dict]]:
    """The StyleFlow rows' latents for a chunk (``[K, B, L, D]`` per row) and each latent's context record
    (``variables``: the chunk's tuned generator, whose reconstruction F reads)."""
    if flow is None:
        return [], []
    ws = np.stack([lat.w_LxD for lat in chunk])
    if given is not None:
        ctx, source = np.stack([given[lat.name] for lat in chunk]), "file"
    elif from_images is not None:
        ctx, source = from_images(renderer(ws, renderer.noise_for(chunk), variables=variables)), "descriptor on G(w)"
    else:
        ctx, source = flow.estimate(ws), "maximum likelihood"
    edits = [flow.edit_sequence(ws, ctx, changes) for changes in rows]
    records = [dict(prior=flow.source, context_from=source,
                    context={n: float(v) for n, v in zip(flow.context_names, c, strict=True)}) for c in ctx]
    return edits, records


def _delta_paths(deltas: str, latents: Sequence[Latent]) -> dict[str, Path]:
    """``{latent name: its delta file}`` for ``EditJob.deltas`` (empty when not given); a missing delta is one
    line naming it."""
    if not deltas:
        return {}
    root = Path(deltas)
    if root.is_dir():
        paths = {lat.name: root / f"{lat.name}.npz" for lat in latents}
    elif len(latents) == 1:
        paths = {latents[0].name: root}
    else:
        raise FileFormatError(root, f"one weight delta for {len(latents)} latents: give a folder of "
                                    "<latent name>.npz deltas (the inversion job's pti/)")
    for name, path in paths.items():
        if not path.is_file():
            raise FileFormatError(path, f"no weight delta for the latent {name} (was it tuned? see pti/summary.json)")
    return paths


def bundle_source(bundle: Any) -> str:
    """How a delta's error message names the bundle's generator."""
    return str(getattr(bundle, "path", "")) or "the generator given"


def _edits_done(out: Path, lat: Latent, rows: list[list[str]], paste_back: bool, delta: Path | None = None) -> bool:
    """Done: the record and grid exist, with the same rows and pasted photographs (when asked for), rendered
    from the same latent file and weight delta (a latent or delta recomputed since gets its edits rendered
    again)."""
    record = out / f"{lat.name}.json"
    if not record.is_file() or not (out / f"{lat.name}.png").is_file():
        return False
    try:
        done = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return (done.get("rows") == rows and done.get("latent_sha256") == sha256_file(lat.path)
            and done.get("delta_sha256") == (None if delta is None else sha256_file(delta))
            and (done.get("pasted") is not None or not paste_back))


def _write_latent_edits(out: Path, lat: Latent, rows: list[list[str]], images: np.ndarray,
                        ws: list[np.ndarray], resolution: int, log: Log,
                        paste_back: bool = False, max_pixels: int = imio.MAX_IMAGE_PIXELS,
                        styleflow: dict | None = None, delta: Path | None = None, framing: str = "square") -> dict:
    x = imio.to_uint8(load_input(lat.image, resolution, log, max_pixels, framing))
    recon = imio.to_uint8(images[0])
    width = 2 + max(map(len, rows))
    tiles, k = [], 1
    for row in rows:
        edited = [imio.to_uint8(images[k + j]) for j in range(len(row))]
        tiles += [x, recon] + edited + [blank(resolution)] * (width - 2 - len(row))
        k += len(row)
    noise = {} if lat.noise is None else {f"noise_{i}": n for i, n in enumerate(lat.noise)}
    labels = [label for row in rows for label in row]
    for label, w in zip(labels, ws[1:]):
        imio.atomic_save_npz(out / lat.name / f"{label}.npz", w=w[None].astype(np.float32), **noise)
    photo = None
    if paste_back:
        try:
            photo = faces.read_photo(lat.photo, max_pixels=max_pixels)
        except FileFormatError as e:  # the photograph changed or went since it was inverted
            log(f"not pasted {lat.name}: {e}")
    if photo is not None:
        for label, image in zip(labels, images[1:]):
            pasted = paste.paste_back(photo, [(imio.to_uint8(image), lat.alignment)])
            imio.atomic_write_bytes(out / lat.name / f"{label}.png", imio.png_bytes(pasted))
    imio.atomic_write_bytes(out / f"{lat.name}.png", imio.png_bytes(imio.grid(tiles, columns=width)))
    record = dict(latent=str(lat.path), latent_sha256=sha256_file(lat.path),
                  image=None if lat.image is None else str(lat.image), rows=rows,
                  columns="input | reconstruction | edits", edited_latents=f"{lat.name}/<label>.npz",
                  pasted=f"{lat.name}/<label>.png" if photo is not None else None,
                  delta=None if delta is None else str(delta),
                  delta_sha256=None if delta is None else sha256_file(delta))
    if styleflow is not None:
        record["styleflow"] = styleflow
    imio.atomic_write_json(out / f"{lat.name}.json", record)
    return record


def edit_grid(bundle: Any, latents_dir: str | Path, attributes: Sequence[str], strengths: Sequence[float], *,
              max_image_pixels: int = imio.MAX_IMAGE_PIXELS, log: Log = to_stderr,
              deltas_dir: str | Path | None = None) -> Path | None:
    """The inversion's edit stage (``config.edit_grid``): InterFaceGAN edits of every latent in ``latents_dir``
    (rendered into ``latents_dir/edits/`` by :func:`run_edits` with the loaded ``bundle``, resumable), tiled into
    ``latents_dir/edit_grid.png``: per image a block titled with its name, one row per attribute (labelled),
    columns input | G(w) | one per strength (labelled above). With ``deltas_dir`` (the job's ``pti/``), the
    latents tuned there, each rendered by its tuned generator, into ``deltas_dir/edits/`` and
    ``deltas_dir/edit_grid.png``. Returns the grid's path, or None when there is no latent."""
    out = Path(latents_dir)
    names = sorted(p.stem for p in out.glob("*.npz") if p.is_file())
    home = out if deltas_dir is None else Path(deltas_dir)
    if deltas_dir is not None:
        names = [n for n in names if (home / f"{n}.npz").is_file() and (home / f"{n}.json").is_file()]
    if not names:
        return None
    sweeps = tuple(tuple(Edit("interfacegan", s, attribute=a) for s in strengths) for a in attributes)
    edits_dir = home / "edits"
    run_edits(EditJob(latents=tuple(str(out / f"{n}.npz") for n in names), out_dir=str(edits_dir), sweeps=sweeps,
                      max_image_pixels=max_image_pixels, deltas="" if deltas_dir is None else str(home)),
              bundle, log=log)
    blocks = []
    for name in names:
        sheet = faces.read_rgb(edits_dir / f"{name}.png")
        tile = (sheet.shape[0] - 2) // len(attributes) - 2
        blocks.append((name, list(zip(attributes, grid_tiles(sheet, len(attributes), 2 + len(strengths), tile)))))
    columns = ["input", "G(w)"] + [f"{s:+g}" if s else "0" for s in strengths]
    path = imio.atomic_write_bytes(home / "edit_grid.png", imio.png_bytes(labelled_sheet(blocks, columns)))
    log(f"edit grid ({', '.join(attributes)} at {', '.join(columns[2:])}) -> {path}")
    return path


def paste_edit_grid(out_dir: str | Path, attributes: Sequence[str], strengths: Sequence[float], *,
                    max_image_pixels: int = imio.MAX_IMAGE_PIXELS, log: Log = to_stderr,
                    deltas_dir: str | Path | None = None) -> list[Path]:
    """The edit stage of a job on photographs (``config.align``), after :func:`edit_grid`:
    ``out_dir/pasted/<photo>__<label>.png`` for every edit (``<label>`` as :attr:`Edit.label`, e.g.
    ``ifg_Smiling_+3``), the photograph with each of its faces whose edits were rendered
    (``out_dir/edits/<face>.png``) edited alike and pasted back. The faces, their photograph and alignment are
    read from the inversion's records (``<photo>__face<j>.json``). A pasted photograph newer than its photograph
    and edit grids is left as it is; returns those written. With ``deltas_dir``, the tuned edits there
    (``deltas_dir/edits/``) into ``deltas_dir/pasted/``."""
    out = Path(out_dir)
    home = out if deltas_dir is None else Path(deltas_dir)
    edits_dir = home / "edits"
    labels = [[Edit("interfacegan", s, attribute=a).label for s in strengths] for a in attributes]
    groups: dict[str, list[Latent]] = {}
    for path in list_latents([out]):
        lat = load_latent(path)
        photo_name, _, index = lat.name.rpartition("__face")
        if lat.photo is not None and lat.alignment is not None and index.isdigit():
            groups.setdefault(photo_name, []).append(lat)
    written = []
    for photo_name, group in sorted(groups.items()):
        rendered = sorted((f for f in group if (edits_dir / f"{f.name}.json").is_file()
                           and (edits_dir / f"{f.name}.png").is_file()),
                          key=lambda f: int(f.name.rpartition("__face")[2]))
        if not rendered:
            continue
        grids = [edits_dir / f"{f.name}.png" for f in rendered]
        targets = {label: home / faces.PASTED / f"{photo_name}__{label}.png" for row in labels for label in row}
        if all(faces.up_to_date(t, grids + [rendered[0].photo]) for t in targets.values()):
            continue
        try:
            photo = faces.read_photo(rendered[0].photo, max_pixels=max_image_pixels)
            sheets = [faces.read_rgb(grid) for grid in grids]
        except FileFormatError as e:
            log(f"not pasted {photo_name}: {e}")
            continue
        tile = (sheets[0].shape[0] - 2) // len(attributes) - 2
        tiles = [grid_tiles(sheet, len(attributes), 2 + len(strengths), tile) for sheet in sheets]
        for r, row in enumerate(labels):
            for c, label in enumerate(row):
                crops = [(face_tiles[r][2 + c], f.alignment) for face_tiles, f in zip(tiles, rendered)]
                written.append(imio.atomic_write_bytes(targets[label], imio.png_bytes(paste.paste_back(photo, crops))))
    if written:
        log(f"pasted {len(written)} edited photograph(s) -> {home / faces.PASTED}")
    return written


# ---- labelled sheets ---------------------------------------------------------------------------------------


def grid_tiles(grid_HxWxC: np.ndarray, rows: int, columns: int, tile: int, pad: int = 2) -> list[list[np.ndarray]]:
    """The ``rows x columns`` tiles of a grid written by :func:`magec_jax.images.grid` (square tiles of side
    ``tile``, ``pad`` pixels apart)."""
    step = tile + pad
    return [[grid_HxWxC[pad + r * step: pad + r * step + tile, pad + c * step: pad + c * step + tile]
             for c in range(columns)] for r in range(rows)]


def labelled_sheet(blocks: Sequence[tuple[str, Sequence[tuple[str, Sequence[np.ndarray]]]]],
                   column_labels: Sequence[str], *, pad: int = 2) -> np.ndarray:
    """Tiles rows of images into one labelled uint8 sheet ``[H, W, 3]``, text drawn with Pillow's default font.

    Args:
      blocks: ``(title, rows)`` pairs, e.g. one per inverted image; each row is ``(label, tiles)`` with uint8
        ``[h, w, 3]`` tiles, all of one size. The title is written on a line above its rows, each row's label
        in a left margin.
      column_labels: one header label per column, written above the first block.
      pad: white pixels between tiles.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    h, w = next(t for _, rows in blocks for _, tiles in rows for t in tiles).shape[:2]
    columns = max(len(column_labels), max(len(tiles) for _, rows in blocks for _, tiles in rows))
    line = int(font.getbbox("Ag")[3]) + 2 * pad
    margin = 2 * pad + max([int(font.getlength(label)) for _, rows in blocks for label, _ in rows] + [0])
    height = line + sum(line + len(rows) * (h + pad) for _, rows in blocks) + pad
    sheet = Image.new("RGB", (margin + columns * (w + pad) + pad, height), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(column_labels):
        x = margin + pad + c * (w + pad) + (w - font.getlength(label)) / 2
        draw.text((x, pad), label, fill="black", font=font)
    y = line
    for title, rows in blocks:
        draw.text((pad, y + pad), title, fill="black", font=font)
        y += line
        for label, tiles in rows:
            draw.text((pad, y + (h - line) / 2 + pad), label, fill="black", font=font)
            for c, tile in enumerate(tiles):
                sheet.paste(Image.fromarray(np.asarray(tile, np.uint8)), (margin + pad + c * (w + pad), y))
            y += h + pad
    return np.asarray(sheet)


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """``"-3,0,3"`` -> ``(-3.0, 0.0, 3.0)``; a range ``"START:STOP:COUNT"`` -> ``COUNT`` evenly spaced values
    from START to STOP inclusive (``"-3:3:4"`` -> ``(-3, -1, 1, 3)``); a one-line :class:`MagecError`
    naming ``what`` otherwise."""
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            values = tuple(float(v) for v in np.linspace(float(start), float(stop), int(count)))
        else:
            values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise MagecError(f"{what}: expected comma-separated numbers or START:STOP:COUNT, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise MagecError(f"{what}: expected finite numbers, got {text!r}")
    return values
