"""Check a JSON document against one of edgelift's own schemas, without the ``jsonschema`` package.

Documents that come from elsewhere (a device's streamed results, a report file someone edited) are
validated before any code indexes into them, so a missing key or a wrong type is one clear error
naming the field, not a ``KeyError`` three calls later. Supports the subset of JSON Schema 2020-12
that ``edgelift/schemas/*.json`` use: type, required, properties, additionalProperties, items,
minItems, enum, const, minimum, oneOf and local ``$ref``.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64  # documents nest a few levels; a deeper one is a nesting bomb, refused before recursion


class SchemaViolation(ValueError):
    """``path``: where in the document (``runs[0].latency.avg_ns``), ``problem``: what is wrong there."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or 'the document'}: {problem}")
        self.path, self.problem = path, problem


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == v,
}


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` before parsing (no RecursionError)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise ValueError(f"JSON nested deeper than {max_depth} levels")
        elif ch in "]}":
            depth -= 1
    return _text(json.loads(text))


def _text(value: Any) -> Any:
    """Lone surrogates (``"\\ud800"`` is valid JSON, not valid text) replaced, so the document can be written out."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


def validate(doc: Any, schema: dict, root: dict | None = None, path: str = "") -> None:
    """Raise :class:`SchemaViolation` at the first place ``doc`` breaks ``schema``."""
    root = schema if root is None else root
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local $ref is supported, not {ref}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        validate(doc, target, root, path)
    if "oneOf" in schema:
        matches = 0
        for option in schema["oneOf"]:
            try:
                validate(doc, option, root, path)
                matches += 1
            except SchemaViolation:
                pass
        if matches != 1:
            raise SchemaViolation(path, f"matches {matches} of the {len(schema['oneOf'])} allowed forms (needs 1)")
    if "const" in schema and (doc != schema["const"] or type(doc) is not type(schema["const"])):
        raise SchemaViolation(path, f"must be {schema['const']!r}, got {_short(doc)}")
    if "enum" in schema and doc not in schema["enum"]:
        raise SchemaViolation(path, f"must be one of {schema['enum']}, got {_short(doc)}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](doc) for t in types):
            raise SchemaViolation(path, f"must be {' or '.join(types)}, got {_short(doc)}")
    if "minimum" in schema and _TYPES["number"](doc) and doc < schema["minimum"]:
        raise SchemaViolation(path, f"must be >= {schema['minimum']}, got {doc}")
    if isinstance(doc, dict):
        for key in schema.get("required", []):
            if key not in doc:
                raise SchemaViolation(path, f"lacks the required field '{key}'")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in doc.items():
            if key in props:
                validate(value, props[key], root, f"{path}.{key}" if path else key)
            elif isinstance(extra, dict):
                validate(value, extra, root, f"{path}.{key}" if path else key)
    if isinstance(doc, list):
        if len(doc) < schema.get("minItems", 0):
            raise SchemaViolation(path, f"needs at least {schema['minItems']} item(s), has {len(doc)}")
        if "items" in schema:
            for i, item in enumerate(doc):
                validate(item, schema["items"], root, f"{path}[{i}]")


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, (dict, list)) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."
