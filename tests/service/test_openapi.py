"""The OpenAPI page documents every parameter and error."""

from __future__ import annotations


def test_openapi_documents_parameters_and_errors(http):
    spec = http.get("/openapi.json").json()
    explain = spec["paths"]["/explain"]["post"]
    params = {p["name"] for p in explain["parameters"]}
    assert params == {
        "method", "target_class", "head_fusion", "output", "alpha", "colormap", "max_side",
        "include_png", "top_k", "precision", "discard_ratio",
    }  # fmt: skip
    assert all(p.get("description") for p in explain["parameters"] if p["name"] != "top_k")
    for path in ("/classify", "/explain"):
        op = spec["paths"][path]["post"]
        assert {"200", "400", "408", "413", "415", "422", "502", "503", "504"} <= set(
            op["responses"]
        )
        assert set(op["requestBody"]["content"]) == {"multipart/form-data", "image/*"}
        multipart = op["requestBody"]["content"]["multipart/form-data"]
        assert "image/png" in multipart["encoding"]["file"]["contentType"]
        files = multipart["schema"]["properties"]["file"]
        assert (files["minItems"], files["maxItems"]) == (1, 16)  # MAX_FILES
    assert http.get("/docs").status_code == 200


def test_openapi_declares_each_binary_answer_and_its_headers(http):
    spec = http.get("/openapi.json").json()
    explain = spec["paths"]["/explain"]["post"]
    ok = explain["responses"]["200"]
    assert set(ok["content"]) == {"application/json", "image/png", "image/jpeg", "image/webp"}
    for media_type in ("image/png", "image/jpeg", "image/webp"):
        assert ok["content"][media_type]["schema"] == {"type": "string", "format": "binary"}
    assert {"X-Top-Label", "X-Top-Class-Index", "X-Top-Probability", "X-Model"} <= set(
        ok["headers"]
    )
    assert "406" in explain["responses"]
    for path in ("/classify", "/explain"):
        unavailable = spec["paths"][path]["post"]["responses"]["503"]
        assert unavailable["headers"]["Retry-After"]["schema"] == {"type": "integer"}
    ratio = next(p for p in explain["parameters"] if p["name"] == "discard_ratio")
    assert ratio["schema"]["minimum"] == 0 and ratio["schema"]["exclusiveMaximum"] == 1
    assert "vit-explain" in ratio["description"]
    assert "/info" in spec["paths"]


def test_openapi_documents_method_and_target_class(http, contract):
    spec = http.get("/openapi.json").json()
    params = {p["name"]: p for p in spec["paths"]["/explain"]["post"]["parameters"]}
    method = params["method"]
    assert method["schema"]["enum"] == ["rollout", "attribution"]
    assert method["schema"]["default"] == "rollout"
    assert "class-agnostic" in method["examples"]["rollout"]["summary"]
    assert "Chefer" in method["description"]
    target = params["target_class"]
    assert "method=attribution only" in target["description"] and "top-1" in target["description"]
    # the served model's classes, known at start-up: an index in range or one of its labels
    index, label = target["schema"]["anyOf"]
    assert (index["minimum"], index["maximum"]) == (0, len(contract.labels) - 1)
    assert label["enum"] == list(contract.labels)
    assert target["examples"]["index"]["value"] == "3"
    assert target["examples"]["label"]["value"] == contract.labels[-1]
    for rollout_only in ("head_fusion", "discard_ratio"):
        assert params[rollout_only]["description"].startswith("rollout only")
    headers = spec["paths"]["/explain"]["post"]["responses"]["200"]["headers"]
    assert {"X-Explain-Method", "X-Explained-Class-Index", "X-Explained-Label"} <= set(headers)
    heatmap = spec["components"]["schemas"]["Heatmap"]["properties"]
    assert {"method", "explained_class"} <= set(heatmap)
