"""Tensor and model names shared by the graphs, the Triton configs and the engine builder (no
imports, so the TensorRT container can use them without torch)."""

HEAD_FUSIONS = ("mean", "max", "min")
INPUT_NAME = "image"
LOGITS = "logits"
ROLLOUT_OUTPUTS = tuple(f"rollout_{fusion}" for fusion in HEAD_FUSIONS)
DISCARD_RATIO = "discard_ratio"  # explain graphs: FP32 [N, 1], vit-explain's ratio in [0, 1)
# attribution graphs (Chefer et al. 2021 transformer attribution, issue 11)
ATTRIBUTION_TASK = "attribution"  # the models are vit_attribution_<precision>
TARGET_CLASS = "target_class"  # INT32 [N, 1]: class per image; -1 (any negative) = top-1
ATTRIBUTION = "attribution"  # FP32 [N, grid_h, grid_w]: raw relevance of the query row
TOP1 = -1
# JPEG bytes in (issue 16, make repo --preprocess dali): on the gpu target, one Triton ensemble per
# served model, <model>_jpeg, whose first step is the DALI model vit_preprocess_jpeg (decode,
# resize, crop on the GPU) and second the model itself. Their input is one JPEG file per image.
JPEG_INPUT = "jpeg"  # UINT8 [-1] per image: the file's bytes (trailing zero padding is harmless)
PREPROCESS_MODEL = "vit_preprocess_jpeg"
JPEG_MODEL_SUFFIX = "_jpeg"


def jpeg_model_name(model: str) -> str:
    """The ensemble that takes JPEG bytes for `model` (model.json names the suffix for the
    gateway, which cannot import build/)."""
    return model + JPEG_MODEL_SUFFIX
