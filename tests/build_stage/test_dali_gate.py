"""DALI's preprocessing (build/repository/dali_pipeline.py, cpu decoder) against the gateway's, and
the gate that holds it there (build/checks/dali_gate.py): real JPEGs, the real DALI pipeline through
serialize and deserialize, the default model's own graph."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from build.checks import dali_gate
from build.repository import dali_pipeline
from build.repository.writer import onnx_path
from loadtest.corpus import default_corpus
from tests.helpers import encode


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [p.data for p in default_corpus().photos]


def test_the_gate_passes_the_default_model_with_the_measured_margins(
    repository, contract, heldout, tmp_path
):
    reference = tmp_path / "jpeg_reference.npz"
    gate = dali_gate.measure(
        contract.preprocessing,
        onnx_path(repository, "classify", "fp32"),
        heldout.images,
        heldout.labels,
        threads=2,
        reference_file=reference,
    )
    assert gate["status"] == "passed", gate.get("failures")
    held = gate["heldout_uploads"]
    assert held["images"] == len(heldout.images) and held["top1_agreement"] >= 0.99
    assert held["accuracy_dali"] == pytest.approx(held["accuracy_gateway"], abs=0.01)
    for entry in (*gate["photos"].values(), held):
        if isinstance(entry, dict):  # photos also carries its source
            assert entry["mean"] <= dali_gate.MAX_MEAN_DIFF
            assert entry["max"] <= dali_gate.MAX_PIXEL_DIFF
    assert reference.is_file()


def test_without_labels_top1_is_reported_not_gated(repository, contract, heldout):
    """As the precision gates: a random-weights model's near-tied logits may swap on any pixel
    difference, so only labelled held-out data holds top-1 to the bar."""
    gate = dali_gate.measure(
        contract.preprocessing,
        onnx_path(repository, "classify", "fp32"),
        heldout.images[:24],
        None,
        threads=2,
    )
    held = gate["heldout_uploads"]
    assert gate["status"] == "passed" and held["top1_gated"] is False
    assert 0 <= held["top1_agreement"] <= 1 and "accuracy_dali" not in held


def test_dali_pixels_match_the_gateway_at_224px(photos):
    pre = dali_gate.PHOTO_SPEC_224
    diff = dali_gate.pixel_difference(
        dali_gate.gateway_tensors(photos, pre), dali_gate.dali_tensors(photos, pre)
    )
    # measured 0.14 mean, 10 max: resampling only (both decoders are libjpeg-turbo here)
    assert diff["mean"] < 0.25 and diff["max"] <= 16, diff


@pytest.mark.parametrize(
    ("interpolation", "crop_pct"),
    [("bilinear", 0.875), ("bicubic", 1.0), ("bicubic", 1.15), ("lanczos", 0.9)],
)
def test_other_interpolations_and_crop_pcts_match_the_gateway(photos, interpolation, crop_pct):
    """crop_pct > 1 pads with zeros, as torchvision's CenterCrop does."""
    pre = replace(dali_gate.PHOTO_SPEC_224, interpolation=interpolation, crop_pct=crop_pct)
    files = photos[::3]
    reference = dali_gate.gateway_tensors(files, pre)
    diff = dali_gate.pixel_difference(reference, dali_gate.dali_tensors(files, pre))
    assert diff["mean"] <= dali_gate.MAX_MEAN_DIFF and diff["max"] <= dali_gate.MAX_PIXEL_DIFF
    if crop_pct > 1:
        assert (reference[:, :, 0, :] == 0).all()  # the padded top row, in both
        assert (dali_gate.dali_tensors(files, pre)[:, :, 0, :] == 0).all()


def test_exif_orientation_greyscale_and_progressive_files_match_the_gateway(photos):
    photo = Image.open(io.BytesIO(photos[1])).convert("RGB")
    files = [encode(photo.convert("L"), "JPEG"), encode(photo, "JPEG", progressive=True)]
    for orientation in (3, 6, 8):  # 6 and 8 swap the sides
        exif = Image.Exif()
        exif[0x0112] = orientation
        files.append(encode(photo, "JPEG", exif=exif.tobytes()))
    pre = dali_gate.PHOTO_SPEC_224
    diff = dali_gate.pixel_difference(
        dali_gate.gateway_tensors(files, pre), dali_gate.dali_tensors(files, pre)
    )
    assert diff["worst_image_mean"] <= dali_gate.MAX_MEAN_DIFF, diff


def test_the_bounds_catch_dalis_own_rounding_of_size_and_crop(photos):
    """DALI's resize_shorter rounds the longer side and crop_pos=0.5 rounds the offset its own
    way: half a pixel of shift, which the gate must refuse (why the pipeline computes both)."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    pre = dali_gate.PHOTO_SPEC_224
    pipe = dali_pipeline.require().Pipeline(batch_size=32, num_threads=1, device_id=None)
    with pipe:
        jpeg = fn.external_source(name="jpeg", dtype=types.UINT8, ndim=1)
        image = fn.decoders.image(jpeg, device="cpu", output_type=types.RGB)
        image = fn.resize(image, resize_shorter=248, interp_type=types.INTERP_CUBIC)
        pipe.set_outputs(
            fn.crop_mirror_normalize(image, crop=(224, 224), dtype=types.UINT8, output_layout="CHW")
        )
    pipe.build()
    naive = dali_pipeline.run(pipe, [np.frombuffer(d, np.uint8) for d in photos])
    failures: list[str] = []
    dali_gate._bounded(
        dali_gate.pixel_difference(dali_gate.gateway_tensors(photos, pre), naive), "naive", failures
    )
    assert failures and "naive: mean pixel difference" in failures[0]
    with pytest.raises(dali_gate.DaliGateRefused, match="--preprocess dali refused: naive"):
        dali_gate.raise_if_refused({"status": "refused", "failures": failures})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_size": (224, 320)}, "square inputs"),
        ({"interpolation": "hamming"}, "no DALI equivalent"),
        ({"interpolation": "nearest"}, "no DALI equivalent"),
        ({"crop_mode": "squash"}, "crop_mode"),
    ],
)
def test_preprocessing_without_an_exact_dali_equivalent_is_refused(change, message):
    pre = replace(dali_gate.PHOTO_SPEC_224, **change)
    with pytest.raises(dali_pipeline.Unsupported, match=message):
        dali_pipeline.check_supported(pre)


def test_the_uploads_are_real_jpegs_of_several_sizes(heldout):
    uploads = dali_gate.render_uploads(heldout.images[:12])
    sizes = {Image.open(io.BytesIO(u)).size for u in uploads}
    assert all(u[:2] == b"\xff\xd8" for u in uploads) and len(sizes) == len(dali_gate.UPLOAD_SCALES)


# DALI's own warning when a pipeline asks for CUDA: it names the CUDA runtime wheels
@pytest.mark.filterwarnings("ignore:nvidia-dali-cuda120 is no longer shipped")
def test_the_gpu_variant_cannot_run_without_a_gpu_and_says_so(contract, tmp_path):
    """model.dali of the repository (mixed decoder) is written here; running it needs CUDA."""
    path = tmp_path / "model.dali"
    dali_pipeline.serialize(contract.preprocessing, "gpu", 4, path)
    with pytest.raises(RuntimeError, match="CUDA"):
        dali_pipeline.load_cpu(path.read_bytes(), 4)
