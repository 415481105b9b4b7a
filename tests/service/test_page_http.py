"""The demo page's HTTP side: GET / and its static files (same origin only), and GET /info."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from service.colormaps import COLORMAPS, hex_table

STATIC = Path(__file__).resolve().parents[2] / "service" / "static"


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        self.urls += [values[a] for a in ("src", "href") if values.get(a)]
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1


def test_page_and_its_assets_come_from_the_gateway_only(http):
    r = http.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp  # the browser refuses anything from another origin
    links = Links()
    links.feed(r.text)
    assert links.inline_scripts == 0  # CSP forbids inline scripts: all code is in app.js
    # relative, so the page also works under a proxy's path prefix
    assert links.urls and all(u.startswith("static/") for u in links.urls), links.urls
    for url in links.urls:
        asset = http.get("/" + url)
        assert asset.status_code == 200, url
        assert asset.content == (STATIC / url.removeprefix("static/")).read_bytes()
    for path in STATIC.iterdir():  # no absolute URL anywhere in the page's code
        assert "http://" not in path.read_text() and "https://" not in path.read_text(), path
    assert http.get("/static/%2e%2e/main.py").status_code == 404  # no way out of static/


def test_info_says_what_is_served(http, contract, repository):
    r = http.get("/info")
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["architecture"] == contract.model_name
    assert info["labels"] == 10 and info["input_size"] == [32, 32]
    assert info["classify"] == ["fp16", "fp32", "int8"]
    assert [m["precision"] for m in info["explain"]] == ["fp16", "fp32", "int8"]
    assert {m["name"] for m in info["explain"]} == {f"vit_explain_{p}" for p in info["classify"]}
    assert info["triton_error"] is None
    built = sorted(
        p.name.removeprefix("vit_attribution_")
        for p in (repository / "cpu").glob("vit_attribution_*")
    )
    assert info["attribution"] == built and "fp32" in built  # apart from explain's list
    for model in info["explain"]:  # read from Triton's model config, as the repository says
        config = (repository / "cpu" / model["name"] / "config.pbtxt").read_text()
        assert model["discard_ratio"] == ('name: "discard_ratio"' in config)
    assert info["head_fusions"] == ["mean", "max", "min"]
    assert info["outputs"] == ["png", "webp", "jpeg", "json"]
    assert list(info["colormaps"]) == list(COLORMAPS)
    assert all(info["colormaps"][name] == hex_table(name) for name in COLORMAPS)
    assert info["limits"]["max_files"] == 16 and info["limits"]["max_heatmap_side"] == 2048
