"""JPEG bytes -> the model's input as an NVIDIA DALI pipeline: one definition, two devices.

The gpu target's Triton DALI model runs it with the "mixed" decoder (nvJPEG; the A100/H100
hardware JPEG decoders where present); the parity gate and the tests run the very same graph with
the "cpu" decoder (libjpeg-turbo), since this machine has no GPU. Only the decoder's device differs:
every later operator follows its input onto the GPU by itself.

The steps are service/preprocess.py's (timm's eval transform), with its rounding:
  resize the shorter side to floor(size / crop_pct) and the longer one to floor(that * long /
  short) (torchvision Resize(int)); the model's interpolation, antialiased like Pillow's; centre
  crop at round((resized - size) / 2), half to even (torchvision CenterCrop), zero padding when
  crop_pct > 1; uint8 CHW out. EXIF orientation is applied by the decoder (adjust_orientation).
DALI's own resize_shorter rounds the longer side instead of truncating it, and crop_pos=0.5 rounds
the offset its own way: half a pixel of shift was a mean difference of up to 9/255 on a photo,
so the sizes and offsets are computed here, per image, from the decoded shape.

Square inputs only: timm's ResizeKeepRatio (non-square models) rounds in float64, which DALI's
float32 arithmetic cannot promise to match.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from build.contract import Preprocessing
from build.names import JPEG_INPUT

if TYPE_CHECKING:
    import numpy as np
    from nvidia.dali.data_node import DataNode
    from nvidia.dali.pipeline import Pipeline

DEVICES = ("gpu", "cpu")  # gpu: the repository's model.dali; cpu: the gate and the tests here
# timm interpolation name -> DALI interpolation (types.DALIInterpType member), antialiased like
# Pillow's. Against Pillow on the photo corpus at 224 px (mean / max levels): bicubic 0.14 / 10,
# bilinear 0.13 / 1, lanczos 0.15 / 19. Not here: nearest (DALI picks another source pixel at
# some positions: max 73), box and hamming (no DALI counterpart).
INTERPOLATION = {
    "bicubic": "INTERP_CUBIC",
    "bilinear": "INTERP_LINEAR",
    "lanczos": "INTERP_LANCZOS3",
}
# CPU threads of one pipeline (Triton's dali model parameter num_threads overrides it): with the
# mixed decoder they parse headers and Huffman-decode what the hardware decoder does not take.
NUM_THREADS = 4


class DaliMissing(Exception):
    """NVIDIA DALI is not installed; the message says how to get it."""


class Unsupported(ValueError):
    """The model's preprocessing has no exact DALI equivalent here; the message says what."""


def require() -> ModuleType:
    """nvidia.dali, or DaliMissing with a one-line reason."""
    try:
        import nvidia.dali as dali
    except ImportError as exc:
        raise DaliMissing(
            "NVIDIA DALI is not installed (nvidia-dali-cuda130, dependency group dali: "
            "make install)"
        ) from exc
    return dali


def check_supported(pre: Preprocessing) -> None:
    height, width = pre.input_size
    if height != width:
        raise Unsupported(
            f"--preprocess dali supports square inputs; this model takes {height}x{width}"
        )
    if pre.interpolation not in INTERPOLATION:
        raise Unsupported(
            f"--preprocess dali: interpolation {pre.interpolation!r} has no DALI equivalent "
            f"that matches Pillow (supported: {', '.join(INTERPOLATION)})"
        )
    if pre.crop_mode != "center":
        raise Unsupported(f"--preprocess dali: crop_mode {pre.crop_mode!r} is not supported")


def _centre_start(resized: DataNode, target: int) -> DataNode:
    """torchvision CenterCrop's offset, in non-negative integer arithmetic (DALI's // and the
    missing % on negative numbers are not Python's): round((resized - target) / 2) half to even
    when the image is larger; minus the left padding (pad // 2) when it is smaller."""
    import nvidia.dali.math as dmath

    larger = dmath.max(resized - target, 0)
    smaller = dmath.max(target - resized, 0)
    half = larger // 2
    odd = larger - 2 * half  # an odd difference ends in .5: round to the even neighbour
    half_is_odd = half - 2 * (half // 2)
    return half + odd * half_is_odd - smaller // 2


def define(pre: Preprocessing, device: str) -> DataNode:
    """The graph, inside an open `with pipeline:`: returns the uint8 [3, H, W] output node."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    check_supported(pre)
    dali = require()
    fn, types, dmath = dali.fn, dali.types, dali.math
    size = pre.input_size[0]
    scale = math.floor(size / pre.crop_pct)
    jpeg = fn.external_source(name=JPEG_INPUT, device="cpu", dtype=types.UINT8, ndim=1)
    image = fn.decoders.image(
        jpeg, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB
    )
    # The decoded size (HWC, after EXIF orientation, as the decoder applies it) read from the
    # header on the CPU: sizes and offsets are CPU argument inputs with either decoder, whatever
    # executor the DALI in Triton's image runs (DataNode.shape() of GPU data needs the dynamic one).
    shape = fn.peek_image_shape(jpeg, dtype=types.INT32)
    height, width = shape[0], shape[1]
    shorter = dmath.min(height, width)
    new_h = (scale * height) // shorter  # the shorter side lands exactly on `scale`
    new_w = (scale * width) // shorter
    interp = getattr(types, INTERPOLATION[pre.interpolation])
    image = fn.resize(
        image,
        resize_x=fn.cast(new_w, dtype=types.FLOAT),
        resize_y=fn.cast(new_h, dtype=types.FLOAT),
        interp_type=interp,
        antialias=True,  # Pillow's filters widen with the downscale factor
    )
    start = fn.stack(_centre_start(new_h, size), _centre_start(new_w, size))
    image = fn.slice(
        image,
        start=start,
        shape=[size, size],
        axis_names="HW",
        out_of_bounds_policy="pad",
        fill_values=0,
    )
    return fn.transpose(image, perm=[2, 0, 1])


def create(
    pre: Preprocessing, device: str, batch_size: int, num_threads: int = NUM_THREADS
) -> Pipeline:
    """A pipeline, not built. The gpu variant has device_id=None too: it is only serialized here
    (creating it on a device needs CUDA); Triton's DALI backend creates it from model.dali on its
    instance's GPU, with the config's max_batch_size and num_threads (dali_backend
    src/dali_executor/dali_pipeline.h passes both to daliCreatePipeline)."""
    dali = require()
    pipe = dali.Pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=None,
        prefetch_queue_depth=1,
        output_dtype=[dali.types.UINT8],
        output_ndim=[3],
    )
    with pipe:
        pipe.set_outputs(define(pre, device))
    return pipe


def serialize(pre: Preprocessing, device: str, batch_size: int, path: Path) -> None:
    """model.dali: what Triton's DALI backend loads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    create(pre, device, batch_size).serialize(filename=str(path))


def load_cpu(serialized: bytes, batch_size: int, num_threads: int = NUM_THREADS) -> Pipeline:
    """A serialized cpu-variant pipeline, built and ready for run()."""
    dali = require()
    pipe = dali.Pipeline.deserialize(
        serialized_pipeline=serialized,
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=None,
        prefetch_queue_depth=1,
    )
    pipe.build()
    return pipe


def run(pipe: Pipeline, jpegs: list[np.ndarray]) -> np.ndarray:
    """uint8 [N, 3, H, W] for N <= the pipeline's batch size JPEGs (uint8 1-D arrays each)."""
    from nvidia.dali.tensors import TensorListCPU

    pipe.feed_input(JPEG_INPUT, jpegs)
    (images,) = pipe.run()
    if not isinstance(images, TensorListCPU):
        raise TypeError("run() takes a cpu pipeline (load_cpu, cpu_pipeline)")
    return images.as_array()


def cpu_pipeline(pre: Preprocessing, batch_size: int, num_threads: int = NUM_THREADS) -> Pipeline:
    """The cpu variant through serialize and deserialize, as a Triton model would get it."""
    return load_cpu(create(pre, "cpu", batch_size, num_threads).serialize(), batch_size)
