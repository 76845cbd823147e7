"""The submit body in the OpenAPI document: `TrainingInput`, published while the routes take a plain JSON object.

The submit routes (native, estimates, the queue protocol) take the body as a `dict` and validate it themselves
(`routes_trainings.validate_training_input`): that keeps the one-entry-per-field 422 messages, the validation
context (`allow_file_urls`) and the `data:` URL handling in one place. So FastAPI would document the body as
"any object"; `TrainingInputBody` makes it a `$ref` to `TrainingInput`, and `publish_input_schema` puts that
schema (and the models it uses) into the document's components.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, FastAPI
from pydantic import WithJsonSchema

from ltx2trainer.schemas import TrainingInput

COMPONENTS = "#/components/schemas/"

TrainingInputBody = Annotated[
    dict[str, Any],
    WithJsonSchema({"$ref": COMPONENTS + TrainingInput.__name__}),  # the schema documented; parsing stays a dict
    Body(description="The training input (TrainingInput)."),
]


def input_schemas() -> dict[str, dict[str, Any]]:
    """`TrainingInput`'s JSON schema and those of the models it uses, by name, referring to each other as
    OpenAPI components."""
    schema = TrainingInput.model_json_schema(ref_template=COMPONENTS + "{model}", mode="validation")
    nested = schema.pop("$defs", {})
    return {**nested, TrainingInput.__name__: schema}


def publish_input_schema(app: FastAPI) -> None:
    """Have `app`'s OpenAPI document (built once, on first request) carry the input schemas in its components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()  # FastAPI's document, which FastAPI caches as app.openapi_schema
        components = document.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in input_schemas().items():
            components.setdefault(name, schema)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
