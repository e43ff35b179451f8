"""Provenance: every file ctgan generates says, in its own header, that it is synthetic.

A :class:`Provenance` names what made a file: the ctgan version, the model (3d | 2d), its
setting and training seed (the ``models/<setting>/seed<k>`` folder), the sampling seed and the
sample's index, how it was made (a random sample, an injection at scale n, or the reconstruction
from the model's fixed noise; for a random sample also its start scale, what it started from
and its noise factor: ``ctgan.sample_start.sampling_recipe``), its size factor, what the file holds (``volume``, ``lungs``,
``nodules``) and the seriesuid of the scan the model learnt from. Real scans carry none of this: :func:`read_provenance` returns None for them.

Where it is written (measured with SimpleITK 2.5 / ITK 5.4 and read back with nibabel 5.4):

- **MetaImage** (``.mha``): every field as a header line ``ctgan_<field> = <value>``
  (:data:`METAIMAGE_KEYS`); SimpleITK writes string metadata of any key there and reads it back.
- **NIfTI** (``.nii.gz``): three fixed-size text fields of the NIfTI-1 header.
  ``descrip`` (79 characters; SimpleITK writes it from the ``ITK_FileNotes`` key and refuses a
  longer one) = ``synthetic from <seriesuid>`` (a 64-character DICOM uid fits exactly);
  ``aux_file`` (23 characters) = ``<setting>/seed<k> s<seed>#<index>`` plus `` i<n>`` for an
  injection at scale n, `` rec`` for the reconstruction from the fixed noise; ``intent_name``
  (15 characters) = ``ctgan <version>``. SimpleITK never writes ``intent_name`` (it reads it),
  so :func:`stamp_nifti_intent` sets it in the written file's header, and for masks also
  ``intent_code`` 1002 (NIFTI_INTENT_LABEL). The size factor, profile, sampling recipe and
  content do not fit: the
  label intent and the file name (``<name>_lungs`` / ``<name>_nodules``) tell the content.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from ctgan import __version__

if TYPE_CHECKING:
    from ctgan.train import TrainedModel

CONTENTS = ("volume", "lungs", "nodules")
MODES = ("sample", "inject", "reconstruction")
PREFIX = "ctgan_"
METAIMAGE_KEYS = (
    "synthetic",
    "version",
    "model",
    "setting",
    "profile",
    "model_seed",
    "sample_seed",
    "sample_index",
    "mode",
    "inject_scale",
    "scale",
    "content",
    "source_seriesuid",
    "sampling",
)
# NIfTI-1 text fields (characters, without the terminating NUL) and their place in the header.
NIFTI_DESCRIP_CHARS = 79
NIFTI_AUX_FILE_CHARS = 23
NIFTI_INTENT_NAME_CHARS = 15
NIFTI_INTENT_NAME_OFFSET = 328
NIFTI_INTENT_CODE_OFFSET = 68
NIFTI_HEADER_SIZE = 348
NIFTI_INTENT_LABEL = 1002
DESCRIP_PREFIX = "synthetic from "
_AUX = re.compile(
    r"^(?P<setting>\S+)/seed(?P<k>\d+) s(?P<seed>\d+)#(?P<index>\d+)"
    r"(?: i(?P<n>\d+)| (?P<rec>rec))?$"
)
_INTENT = re.compile(r"^ctgan (?P<version>\S+)$")


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What made a generated file (module docstring)."""

    model: str
    setting: str
    model_seed: int
    sample_seed: int
    sample_index: int
    source_seriesuid: str
    mode: str = "sample"
    inject_scale: int | None = None
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    content: str = "volume"
    profile: str = ""
    version: str = __version__
    # a random sample's recipe, e.g. "start 1 gpnn sd 2.25, noise x0.25" ("" for other modes)
    sampling: str = ""

    def __post_init__(self) -> None:
        if self.content not in CONTENTS:
            raise ValueError(
                f"provenance content must be one of {', '.join(CONTENTS)}; got {self.content!r}"
            )
        if self.mode not in MODES:
            raise ValueError(
                f"provenance mode must be one of {', '.join(MODES)}; got {self.mode!r}"
            )
        if (self.mode == "inject") != (self.inject_scale is not None):
            raise ValueError(
                f"provenance inject_scale goes with mode 'inject' only; got mode {self.mode!r} "
                f"and inject_scale {self.inject_scale!r}"
            )
        if self.sampling and self.mode != "sample":
            raise ValueError(
                f"provenance sampling describes random samples only; got mode {self.mode!r} and "
                f"sampling {self.sampling!r}"
            )
        for name in ("model_seed", "sample_seed", "sample_index"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"provenance {name} must be an integer >= 0; got {value!r}")

    def with_content(self, content: str) -> Provenance:
        """The same provenance for another file of the sample (its lung or nodule mask)."""
        return dataclasses.replace(self, content=content)


def model_provenance(
    model: TrainedModel,
    sample_seed: int,
    sample_index: int,
    *,
    inject_scale: int | None = None,
    scale: tuple[float, float, float] | list[float] = (1.0, 1.0, 1.0),
    reconstruction: bool = False,
    start_scale: int | None = None,
) -> Provenance:
    """The provenance of sample ``sample_index`` drawn with ``sample_seed`` from ``model`` (an
    injection at ``inject_scale``; with ``reconstruction`` the model's reconstruction from its
    fixed noise; else a random sample from ``start_scale``, default the model's own)."""
    from ctgan.sample_start import resolve_start_scale, sampling_recipe

    config = model.config
    mode = "reconstruction" if reconstruction else "sample" if inject_scale is None else "inject"
    sampling = ""
    if mode == "sample":
        sampling = sampling_recipe(model, resolve_start_scale(model, start_scale, scale))
    return Provenance(
        model=config.model,
        setting=config.setting or f"{config.model}-?",
        model_seed=int(getattr(model, "seed", 0)),
        sample_seed=int(sample_seed),
        sample_index=int(sample_index),
        source_seriesuid=str(model.source.get("seriesuid") or "unknown"),
        mode=mode,
        inject_scale=inject_scale,
        scale=tuple(float(v) for v in scale),  # type: ignore[arg-type]
        profile=str(config.profile or ""),
        sampling=sampling,
    )


# --- writing ---------------------------------------------------------------------------------


def metaimage_fields(provenance: Provenance) -> dict[str, str]:
    """``{ctgan_<field>: value}`` for a MetaImage header (every non-empty field, as text)."""
    values = dataclasses.asdict(provenance)
    values["synthetic"] = "true"
    values["scale"] = " ".join(f"{v:g}" for v in provenance.scale)
    values["inject_scale"] = "" if provenance.inject_scale is None else str(provenance.inject_scale)
    # SimpleITK skips empty values (with a warning): leave them out (read back as absent)
    return {f"{PREFIX}{key}": str(values[key]) for key in METAIMAGE_KEYS if str(values[key])}


def nifti_fields(provenance: Provenance) -> dict[str, str]:
    """``{"descrip", "aux_file", "intent_name"}`` of a NIfTI header (module docstring).

    Raises ValueError when a field would exceed its size (a NIfTI header cannot hold it), naming
    the field and what to do; call it before generating anything.
    """
    aux = f"{provenance.setting}/seed{provenance.model_seed} s{provenance.sample_seed}#{provenance.sample_index}"
    if provenance.inject_scale is not None:
        aux += f" i{provenance.inject_scale}"
    if provenance.mode == "reconstruction":
        aux += " rec"
    fields = {
        "descrip": f"{DESCRIP_PREFIX}{provenance.source_seriesuid}",
        "aux_file": aux,
        "intent_name": f"ctgan {provenance.version}",
    }
    limits = {
        "descrip": NIFTI_DESCRIP_CHARS,
        "aux_file": NIFTI_AUX_FILE_CHARS,
        "intent_name": NIFTI_INTENT_NAME_CHARS,
    }
    for name, text in fields.items():
        if len(text.encode("ascii", "replace")) > limits[name]:
            raise ValueError(
                f"the NIfTI {name} field holds at most {limits[name]} characters; the provenance "
                f"{text!r} has {len(text)}; export as .mha (whose header has no such limit) or "
                f"use a smaller seed"
            )
    return fields


def stamp_nifti_intent(path: str | Path, intent_name: str, intent_code: int = 0) -> None:
    """Set ``intent_name`` (and ``intent_code``) in the header of the NIfTI-1 file ``path`` (.nii
    or .nii.gz), in place: SimpleITK writes neither."""
    path = Path(path)
    compressed = path.name.lower().endswith(".gz")
    raw = path.read_bytes()
    data = bytearray(gzip.decompress(raw) if compressed else raw)
    if len(data) < NIFTI_HEADER_SIZE:
        raise ValueError(f"{path} is not a NIfTI-1 file: {len(data)} bytes, shorter than a header")
    if struct.unpack("<i", data[:4])[0] == NIFTI_HEADER_SIZE:
        order = "<"
    elif struct.unpack(">i", data[:4])[0] == NIFTI_HEADER_SIZE:
        order = ">"
    else:
        raise ValueError(f"{path} is not a NIfTI-1 file (sizeof_hdr is not {NIFTI_HEADER_SIZE})")
    name = intent_name.encode("ascii")[:NIFTI_INTENT_NAME_CHARS]
    start = NIFTI_INTENT_NAME_OFFSET
    data[start : start + 16] = name.ljust(16, b"\0")
    data[NIFTI_INTENT_CODE_OFFSET : NIFTI_INTENT_CODE_OFFSET + 2] = struct.pack(
        f"{order}h", intent_code
    )
    path.write_bytes(gzip.compress(bytes(data), compresslevel=6) if compressed else bytes(data))


# --- reading ---------------------------------------------------------------------------------


def provenance_from_metadata(metadata: dict[str, str], file_name: str = "") -> Provenance | None:
    """The provenance of a file's header metadata (SimpleITK keys and values), or None when it
    carries none (a real scan, a file not written by ctgan). NIfTI headers do not hold the
    content: a label-intent file (a mask) is ``lungs`` when ``file_name`` contains ``lungs``,
    else ``nodules``; any other ``volume``."""
    if metadata.get(f"{PREFIX}synthetic") == "true":
        values = {key: metadata.get(f"{PREFIX}{key}", "") for key in METAIMAGE_KEYS}
        inject = values["inject_scale"]
        return Provenance(
            model=values["model"],
            setting=values["setting"],
            model_seed=int(values["model_seed"]),
            sample_seed=int(values["sample_seed"]),
            sample_index=int(values["sample_index"]),
            source_seriesuid=values["source_seriesuid"],
            mode=values["mode"],
            inject_scale=int(inject) if inject else None,
            scale=tuple(float(v) for v in values["scale"].split()),  # type: ignore[arg-type]
            content=values["content"],
            profile=values["profile"],
            version=values["version"],
            sampling=values["sampling"],
        )
    descrip = metadata.get("descrip", metadata.get("ITK_FileNotes", ""))
    aux = _AUX.match(metadata.get("aux_file", ""))
    intent = _INTENT.match(metadata.get("intent_name", ""))
    if not (descrip.startswith(DESCRIP_PREFIX) and aux and intent):
        return None
    content = "volume"
    if metadata.get("intent_code") == str(NIFTI_INTENT_LABEL):
        content = "lungs" if "lungs" in file_name.lower() else "nodules"
    return Provenance(
        model=aux["setting"].split("-")[0],
        setting=aux["setting"],
        model_seed=int(aux["k"]),
        sample_seed=int(aux["seed"]),
        sample_index=int(aux["index"]),
        source_seriesuid=descrip[len(DESCRIP_PREFIX) :],
        mode="reconstruction" if aux["rec"] else "sample" if aux["n"] is None else "inject",
        inject_scale=None if aux["n"] is None else int(aux["n"]),
        content=content,
        version=intent["version"],
    )


def read_provenance(path: str | Path) -> Provenance | None:
    """Read the provenance in the header of an image file (:func:`provenance_from_metadata`);
    None when it carries none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} not found")
    import SimpleITK as sitk  # here, not at the top: sampling and evaluation run without it

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ValueError(
            f"{path} could not be read as an image: {str(err).strip().splitlines()[-1]}; give a "
            f".nii.gz, .mha or .mhd file"
        ) from err
    metadata = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    return provenance_from_metadata(metadata, path.name)


def describe_file(path: str | Path) -> str:
    """Plain text for ``ctgan info FILE``: the provenance, or that the file carries none."""
    provenance = read_provenance(path)
    if provenance is None:
        return (
            f"{path}: no ctgan provenance: not generated by ctgan (a real scan or another tool's "
            f"file)"
        )
    lines = [
        f"{path}: SYNTHETIC, generated by ctgan {provenance.version} (not a patient scan)",
        f"  content:       {provenance.content}",
        f"  model:         {provenance.model}, setting {provenance.setting}, training seed "
        f"{provenance.model_seed} (models/{provenance.setting}/seed{provenance.model_seed})",
        f"  sample:        {provenance.mode}"
        + (f" at scale {provenance.inject_scale}" if provenance.inject_scale is not None else "")
        + f", seed {provenance.sample_seed}, index {provenance.sample_index}",
        f"  source scan:   seriesuid {provenance.source_seriesuid}",
    ]
    if provenance.sampling:
        lines.append(f"  drawn:         {provenance.sampling}")
    if provenance.profile:
        lines.append(f"  profile:       {provenance.profile}")
    if Path(path).name.lower().endswith(".mha"):
        lines.append(f"  size factor:   {' '.join(f'{v:g}' for v in provenance.scale)} (z, y, x)")
    return "\n".join(lines)
