"""The OpenAPI page documents every parameter and error."""

from __future__ import annotations


def test_openapi_documents_parameters_and_errors(http):
    spec = http.get("/openapi.json").json()
    explain = spec["paths"]["/explain"]["post"]
    params = {p["name"] for p in explain["parameters"]}
    assert params == {
        "head_fusion", "output", "alpha", "colormap", "max_side", "include_png", "top_k",
        "precision",
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
