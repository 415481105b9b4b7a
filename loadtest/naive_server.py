"""(a) of `make bench-e2e`: the server a user writes first, to compare the stack against.

FastAPI + timm in eager PyTorch fp32, in-process, one image per request: the image as the raw
body, PIL decode, timm's own eval transform, the model, softmax top-5. Kept plain on purpose (no
batching, no ONNX, no tuning of threads or workers): it is the baseline, not a competitor.

  NAIVE_REPOSITORY=model_repository uvicorn loadtest.naive_server:create_app --factory

Weights do not change speed, so timm models are created without them (offline); the default
digits model loads its trained weights from the repository. Only this module imports torch and
timm on the serving side; the gateway never does.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Annotated

import timm
import torch
from fastapi import Body, FastAPI
from PIL import Image
from timm.data import create_transform


def load_model(repository: Path) -> tuple[torch.nn.Module, object, list[str]]:
    meta = json.loads((repository / "model.json").read_text())
    if meta["origin"] == "offline-digits":
        from build.model import digits

        model = digits.create_model()
        weights = repository / "source" / "digits_vit.pth"
        model.load_state_dict(torch.load(weights, weights_only=True))
    else:
        model = timm.create_model(
            meta["model_name"], pretrained=False, num_classes=len(meta["labels"])
        )
    pre = meta["preprocessing"]
    transform = create_transform(
        input_size=(3, *pre["input_size"]),
        interpolation=pre["interpolation"],
        crop_pct=pre["crop_pct"],
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
    )
    return model.eval(), transform, list(meta["labels"])


def create_app() -> FastAPI:
    model, transform, labels = load_model(
        Path(os.environ.get("NAIVE_REPOSITORY", "model_repository"))
    )
    app = FastAPI(title="naive ViT server (FastAPI + timm eager)")

    @app.post("/classify")
    def classify(image: Annotated[bytes, Body(media_type="image/jpeg")]) -> dict:
        img = Image.open(io.BytesIO(image)).convert("RGB")
        with torch.inference_mode():
            probs = model(transform(img).unsqueeze(0)).softmax(-1)[0]  # type: ignore[operator]
        top = probs.topk(min(5, len(labels)))
        return {
            "predictions": [
                {"label": labels[i], "probability": float(p)}
                for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            ]
        }

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app
