"""ctgan.provenance: every generated file says it is synthetic, in its own header; real scans do
not. Files are written by ctgan.export and reopened with SimpleITK and nibabel."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import untrained_smoke_model

from ctgan import __version__, cli
from ctgan import sample as sampling
from ctgan.export import export_label_map, export_model_volume
from ctgan.provenance import (
    NIFTI_INTENT_LABEL,
    Provenance,
    describe_file,
    metaimage_fields,
    model_provenance,
    nifti_fields,
    read_provenance,
    stamp_nifti_intent,
)

LUNA_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"  # 64 characters


def provenance(**changes) -> Provenance:
    values = {
        "model": "3d",
        "setting": "3d-B",
        "model_seed": 2,
        "sample_seed": 7,
        "sample_index": 3,
        "source_seriesuid": LUNA_UID,
        "profile": "smoke",
    }
    values.update(changes)
    return Provenance(**values)


def volume(shape=(7, 30, 30)) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)


def test_model_provenance_names_model_setting_seeds_version_and_source():
    model = untrained_smoke_model(seed=4)
    record = model_provenance(model, 9, 1, inject_scale=1)
    assert (record.model, record.setting, record.model_seed) == ("3d", "3d-B", 4)
    assert (record.sample_seed, record.sample_index, record.mode) == (9, 1, "inject")
    assert (record.source_seriesuid, record.version, record.content) == (
        "1.2.3",
        __version__,
        "volume",
    )
    assert record.with_content("lungs").content == "lungs"


def test_metaimage_header_holds_every_field_for_simpleitk(tmp_path):
    model = untrained_smoke_model()
    record = model_provenance(model, 7, 3, scale=(1.5, 1, 1))
    path = export_model_volume(model, volume((10, 30, 30)), tmp_path / "v.mha", (1.5, 1, 1), record)
    image = sitk.ReadImage(str(path))
    assert image.GetMetaData("ctgan_synthetic") == "true"
    assert image.GetMetaData("ctgan_setting") == "3d-B"
    assert image.GetMetaData("ctgan_source_seriesuid") == "1.2.3"
    assert image.GetMetaData("ctgan_version") == __version__
    assert image.GetMetaData("ctgan_sample_seed") == "7"
    assert not image.HasMetaDataKey("ctgan_inject_scale")  # empty fields are left out
    assert read_provenance(path) == record
    assert metaimage_fields(record)["ctgan_scale"] == "1.5 1 1"
    assert image.GetMetaData("ctgan_sampling") == record.sampling == "start 0, noise x1"


def test_a_random_sample_records_how_it_was_drawn():
    import dataclasses

    model = untrained_smoke_model()
    assert model_provenance(model, 0, 0).sampling == "start 0, noise x1"
    assert model_provenance(model, 0, 0, inject_scale=1).sampling == ""
    assert model_provenance(model, 0, 0, reconstruction=True).sampling == ""
    model.real_volumes = [np.zeros(s, np.float32) for s in model.scale_shapes]
    for changes, expected in [
        (
            {
                "sample_start_source": "gpnn",
                "sample_start_noise_sd": 2.25,
                "sample_noise_factor": 0.25,
            },
            "start 1 gpnn sd 2.25, noise x0.25",
        ),
        ({"sample_start_source": "real", "sample_noise_factor": 0.5}, "start 1 real, noise x0.5"),
    ]:
        train = dataclasses.replace(model.config.train, **changes)
        model.config = dataclasses.replace(model.config, train=train)
        assert model_provenance(model, 0, 0, start_scale=1).sampling == expected
    with pytest.raises(ValueError, match="sampling describes random samples only"):
        provenance(mode="inject", inject_scale=1, sampling="start 0, noise x1")


@pytest.mark.parametrize(
    "mode,inject_scale", [("sample", None), ("inject", 2), ("reconstruction", None)]
)
def test_nifti_header_fields_are_readable_by_simpleitk_and_nibabel(tmp_path, mode, inject_scale):
    record = provenance(mode=mode, inject_scale=inject_scale)
    model = untrained_smoke_model()
    path = export_model_volume(model, volume(), tmp_path / "v.nii.gz", provenance=record)
    fields = nifti_fields(record)
    assert fields["descrip"] == f"synthetic from {LUNA_UID}" and len(fields["descrip"]) == 79
    image = sitk.ReadImage(str(path))
    assert image.GetMetaData("descrip") == fields["descrip"]
    assert image.GetMetaData("aux_file") == fields["aux_file"]
    assert image.GetMetaData("intent_name") == f"ctgan {__version__}"
    header = nibabel.load(str(path)).header
    assert header["descrip"].item().decode() == fields["descrip"]
    assert header["aux_file"].item().decode() == fields["aux_file"]
    assert header["intent_name"].item().decode() == f"ctgan {__version__}"
    assert int(header["intent_code"]) == 0
    back = read_provenance(path)
    assert back is not None
    assert (back.setting, back.model_seed, back.sample_seed, back.sample_index) == ("3d-B", 2, 7, 3)
    assert (back.mode, back.inject_scale, back.source_seriesuid) == (mode, inject_scale, LUNA_UID)
    # the header stamp leaves the voxels and geometry as SimpleITK wrote them
    assert image.GetSize() == (30, 30, 7) and image.GetPixelID() == sitk.sitkInt16


def test_nifti_label_map_gets_the_label_intent(tmp_path):
    record = provenance(content="lungs")
    mask = np.zeros((7, 30, 30), dtype=bool)
    mask[2:5, 10:20, 5:12] = True
    path = export_label_map(
        mask, tmp_path / "v_lungs.nii.gz", (2, 1, 1), (0, 0, 0), np.eye(3).ravel(), record
    )
    header = nibabel.load(str(path)).header
    assert int(header["intent_code"]) == NIFTI_INTENT_LABEL
    assert np.array_equal(np.asarray(nibabel.load(str(path)).dataobj).transpose(2, 1, 0), mask)
    assert read_provenance(path).content == "lungs"


def test_nifti_fields_that_do_not_fit_are_refused_before_writing():
    with pytest.raises(ValueError, match=r"NIfTI aux_file field holds at most 23 characters"):
        nifti_fields(provenance(sample_seed=10**12))
    with pytest.raises(ValueError, match=r"descrip field holds at most 79 .*export as \.mha"):
        nifti_fields(provenance(source_seriesuid="1." * 40))


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"content": "bones"}, r"content must be one of volume, lungs, nodules; got 'bones'"),
        ({"mode": "paint"}, r"mode must be one of sample, inject, reconstruction; got 'paint'"),
        ({"inject_scale": 2}, r"inject_scale goes with mode 'inject' only"),
        ({"sample_seed": -1}, r"sample_seed must be an integer >= 0; got -1"),
    ],
)
def test_bad_provenance_is_rejected(changes, match):
    with pytest.raises(ValueError, match=match):
        provenance(**changes)


def test_real_scans_carry_no_provenance(tiny_mhd, tmp_path):
    assert read_provenance(tiny_mhd) is None
    assert "no ctgan provenance: not generated by ctgan" in describe_file(tiny_mhd)
    # a NIfTI written by another tool, with a description of its own
    image = sitk.ReadImage(str(tiny_mhd))
    image.SetMetaData("ITK_FileNotes", "synthetic from a phantom")
    sitk.WriteImage(image, str(tmp_path / "other.nii.gz"))
    assert read_provenance(tmp_path / "other.nii.gz") is None


def test_read_provenance_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image file .*absent.nii.gz not found"):
        read_provenance(tmp_path / "absent.nii.gz")
    (tmp_path / "broken.mha").write_text("not an image")
    with pytest.raises(ValueError, match=r"could not be read as an image.*give a \.nii\.gz"):
        read_provenance(tmp_path / "broken.mha")


def test_stamp_nifti_intent_refuses_other_files(tmp_path):
    (tmp_path / "short.nii").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match=r"not a NIfTI-1 file: 10 bytes"):
        stamp_nifti_intent(tmp_path / "short.nii", "ctgan")
    (tmp_path / "other.nii.gz").write_bytes(gzip.compress(b"\1" * 400))
    with pytest.raises(ValueError, match=r"not a NIfTI-1 file \(sizeof_hdr is not 348\)"):
        stamp_nifti_intent(tmp_path / "other.nii.gz", "ctgan")


# --- ctgan info FILE and ctgan sample ----------------------------------------------------------


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model folder models/3d-B/seed0 whose loading returns the untrained smoke model."""
    import ctgan.train

    folder = tmp_path / "models" / "3d-B" / "seed0"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"stub")
    monkeypatch.setattr(
        ctgan.train, "load_trained", lambda path, device="cpu": untrained_smoke_model(0, folder)
    )
    return folder


@pytest.mark.parametrize("fmt", ["nii.gz", "mha"])
def test_ctgan_sample_files_say_synthetic_to_ctgan_info(capsys, model_dir, tmp_path, fmt):
    code, out, err = run(capsys, "sample", model_dir, "--out", tmp_path / "o", "--format", fmt)
    assert code == 0, err
    path = Path(out.split()[0])
    code, out, _ = run(capsys, "info", path)
    assert code == 0
    assert "SYNTHETIC, generated by ctgan" in out and "setting 3d-B" in out
    assert "seriesuid 1.2.3" in out and "seed 0, index 0" in out


def test_ctgan_info_on_a_real_scan_and_still_on_a_model_folder(capsys, model_dir, tiny_mhd):
    code, out, _ = run(capsys, "info", tiny_mhd)
    assert code == 0 and "no ctgan provenance: not generated by ctgan" in out
    code, out, _ = run(capsys, "info", model_dir)
    assert code == 0 and "setting:      3d-B" in out


def test_ctgan_sample_refuses_a_seed_the_nifti_header_cannot_hold(
    capsys, model_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(sampling, "sample_volumes", lambda *a, **k: pytest.fail("work started"))
    code, _, err = run(capsys, "sample", model_dir, "--out", tmp_path / "o", "--seed", 10**12)
    assert code == 2 and "aux_file field holds at most 23 characters" in err
    assert not (tmp_path / "o").exists()
