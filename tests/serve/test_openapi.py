"""/openapi.json: the document validates (OpenAPI 3.0 structure, every $ref resolves, every schema is
a valid JSON Schema), and every operation in it answers with a documented status whose JSON body
matches the documented schema.
usage: test_openapi.py SDXL MODEL"""
import base64
import copy
import json
import sys
import time

import jsonschema
import requests

from srvtest import Checks, Server, workdir

SDXL, MODEL = sys.argv[1], sys.argv[2]
c = Checks("serve_openapi")
srv = Server(SDXL, MODEL, workdir("serve_openapi")).start()
U = srv.url
doc = requests.get(U + "/openapi.json", timeout=30).json()

# The parts of the OpenAPI 3.0.3 specification's own schema that this document uses.
OPENAPI_30 = {
    "type": "object", "required": ["openapi", "info", "paths"], "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "properties": {
        "openapi": {"type": "string", "pattern": "^3\\.0\\.\\d+$"},
        "info": {"type": "object", "required": ["title", "version"],
                 "properties": {"title": {"type": "string"}, "version": {"type": "string"}, "description": {"type": "string"}}},
        "servers": {"type": "array", "items": {"type": "object", "required": ["url"]}},
        "security": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "array"}}},
        "tags": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "paths": {"type": "object", "additionalProperties": False,
                  "patternProperties": {"^/": {"$ref": "#/definitions/PathItem"}}},
        "components": {"type": "object", "properties": {
            "schemas": {"type": "object", "additionalProperties": {"type": "object"}},
            "securitySchemes": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["type"],
                "properties": {"type": {"enum": ["apiKey", "http", "oauth2", "openIdConnect"]}, "scheme": {"type": "string"}}}}}},
    },
    "definitions": {
        "PathItem": {"type": "object", "additionalProperties": False, "minProperties": 1,
                     "patternProperties": {"^(get|put|post|delete|options|head|patch|trace)$": {"$ref": "#/definitions/Operation"}}},
        "Operation": {"type": "object", "required": ["responses"], "properties": {
            "summary": {"type": "string"}, "operationId": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
            "security": {"type": "array"},
            "parameters": {"type": "array", "items": {"type": "object", "required": ["name", "in"], "properties": {
                "in": {"enum": ["query", "header", "path", "cookie"]}, "required": {"type": "boolean"}, "schema": {"type": "object"}},
                "if": {"properties": {"in": {"const": "path"}}}, "then": {"required": ["required"], "properties": {"required": {"const": True}}}}},
            "requestBody": {"type": "object", "required": ["content"], "properties": {"content": {"$ref": "#/definitions/Content"}}},
            "responses": {"type": "object", "minProperties": 1, "additionalProperties": False, "patternProperties": {
                "^[1-5][0-9][0-9]$|^default$": {"type": "object", "required": ["description"], "properties": {
                    "description": {"type": "string"}, "content": {"$ref": "#/definitions/Content"}}}}}}},
        "Content": {"type": "object", "patternProperties": {"^[a-z]+/[-a-z0-9.+]+$": {"type": "object", "properties": {"schema": {"type": "object"}}}},
                    "additionalProperties": False},
    },
}
errs = list(jsonschema.Draft7Validator(OPENAPI_30).iter_errors(doc))
c.ok(not errs, "document has the OpenAPI 3.0 structure%s" % ("" if not errs else ": " + errs[0].message))

refs = []


def walk(x):
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "$ref":
                refs.append(v)
            walk(v)
    elif isinstance(x, list):
        for v in x:
            walk(v)


walk(doc["paths"])
walk(doc["components"])
bad_refs = [r for r in refs if not (r.startswith("#/components/schemas/") and r.split("/")[-1] in doc["components"]["schemas"])]
c.ok(not bad_refs, "all %d $refs resolve %s" % (len(refs), bad_refs[:3]))
for name, sch in doc["components"]["schemas"].items():
    try:
        jsonschema.Draft4Validator.check_schema(sch)
        good = True
    except jsonschema.SchemaError as e:
        good = False
        print(name, e.message)
    c.ok(good, "components.schemas.%s is a valid JSON Schema" % name)
ops = [(p, m) for p, item in doc["paths"].items() for m in item]
ids = [item[m]["operationId"] for p, item in doc["paths"].items() for m in item]
c.ok(len(ids) == len(set(ids)), "operationIds are unique")
print("operations:", len(ops))


def nullable(s):
    """OpenAPI 3.0 'nullable' -> JSON Schema; resolves $refs inline."""
    if isinstance(s, list):
        return [nullable(x) for x in s]
    if not isinstance(s, dict):
        return s
    if "$ref" in s:
        return nullable(copy.deepcopy(doc["components"]["schemas"][s["$ref"].split("/")[-1]]))
    s = {k: nullable(v) for k, v in s.items()}
    if s.pop("nullable", False):
        s = {"anyOf": [s, {"type": "null"}]} if s else {}
    return s


# inputs for every operation
r = requests.post(U + "/v1/jobs", json={"prompt": "doc", "width": 64, "height": 64, "steps": 2, "seed": 3}, timeout=60)
JOB = r.json()["id"]
for _ in range(600):
    if requests.get(U + "/v1/jobs/" + JOB).json()["job"]["state"] == "done":
        break
    time.sleep(0.05)
t2i = requests.post(U + "/sdapi/v1/txt2img", json={"prompt": "doc", "width": 64, "height": 64, "steps": 2}, timeout=300).json()
PNG = t2i["images"][0]
BODIES = {
    ("/v1/jobs", "post"): {"prompt": "doc", "width": 64, "height": 64, "steps": 2},
    ("/v1/validate", "post"): {"prompt": "doc", "width": 64, "height": 64, "steps": 2},
    ("/sdapi/v1/txt2img", "post"): {"prompt": "doc", "width": 64, "height": 64, "steps": 2},
    ("/sdapi/v1/img2img", "post"): {"prompt": "doc", "init_images": [PNG], "width": 64, "height": 64, "steps": 2, "denoising_strength": 0.5},
    ("/sdapi/v1/options", "post"): {"CLIP_stop_at_last_layers": 1},
    ("/sdapi/v1/png-info", "post"): {"image": PNG},
    ("/v1/tokenize", "post"): {"prompt": "doc, <lora:x:0.5>", "negative_prompt": ""},
    ("/v1/preprocess", "post"): {"image": PNG, "preprocess": "canny:100:200", "max_side": 32},
}
order = sorted(ops, key=lambda o: o[1] == "delete")  # cancel last
for path, m in order:
    url = U + path.replace("{id}", JOB).replace("{n}", "0")
    body = BODIES.get((path, m))
    r = requests.request(m.upper(), url, json=body, timeout=300) if body is not None else requests.request(m.upper(), url, timeout=300)
    spec = doc["paths"][path][m]["responses"]
    documented = str(r.status_code) in spec
    c.ok(documented and r.status_code < 400, "%s %s -> %d (documented: %s)" % (m.upper(), path, r.status_code, documented))
    if not documented:
        continue
    content = spec[str(r.status_code)].get("content", {})
    ctype = r.headers.get("Content-Type", "").split(";")[0]
    c.ok(ctype in content, "%s %s answers %s, documented %s" % (m.upper(), path, ctype, list(content)))
    if ctype == "application/json" and "schema" in content.get(ctype, {}):
        try:
            jsonschema.validate(r.json(), nullable(content[ctype]["schema"]))
            good = True
        except (jsonschema.ValidationError, ValueError) as e:
            good = False
            print("   ", str(e)[:300])
        c.ok(good, "%s %s body matches its schema" % (m.upper(), path))
c.ok(srv.stop() == 0, "server exits 0")
c.done()
