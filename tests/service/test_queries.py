"""The query models of /classify and /explain (service/queries.py): the number parameters checked
as written are derived from them, and cover every number parameter the routes document."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import BaseModel

from service import names, queries
from service.config import Settings
from service.main import create_app


def _kinds(schema: dict) -> set[str]:
    return {s.get("type", "") for s in schema.get("anyOf", [schema])}


def test_number_parameters_are_the_routes_number_parameters(repository):
    spec = create_app(Settings(model_metadata=repository / "model.json")).openapi()
    documented = {
        p["name"]
        for path in ("/classify", "/explain")
        for p in spec["paths"][path]["post"]["parameters"]
        if p["in"] == "query" and _kinds(p["schema"]) & {"integer", "number"}
        and p["name"] != "target_class"  # a label or an index: a string, checked on its own
    }  # fmt: skip
    assert set(queries.NUMBER_PARAMETERS) == documented
    assert queries.NUMBER_PARAMETERS == ("top_k", "alpha", "max_side", "discard_ratio")


def test_number_parameters_are_ints_and_floats_only():
    class Some(BaseModel):
        count: int = 1
        ratio: float | None = None
        flag: bool = False
        name: str = "x"

    assert queries.number_parameters(Some, queries.ClassifyQuery) == ("count", "ratio", "top_k")


def test_the_query_models_take_what_the_contract_serves():
    assert queries.ExplainQuery(head_fusion="max").head_fusion == "max"
    assert set(queries.HeadFusion.__args__) == set(names.HEAD_FUSIONS)
    with pytest.raises(ValueError):
        queries.ExplainQuery(head_fusion="avg")


@pytest.mark.parametrize("module", ["page.py", "health.py"])
def test_page_and_health_import_no_route_module(module):
    tree = ast.parse((Path(queries.__file__).parent / "routes" / module).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.startswith("service.routes")}
