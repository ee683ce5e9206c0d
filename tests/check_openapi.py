#!/usr/bin/env python3
"""check_openapi.py URL SPEC [STICKER_ID USER QUERY]

Checks a running broker against its OpenAPI description: fetches /openapi.json and requires it to
equal SPEC (the file in the source tree); checks the document (OpenAPI 3.0.x, every $ref
resolves, every operation has responses); then sends real requests to every operation — good
ones and bad ones (unknown parameter, malformed body, offset beyond R, batch over its cap,
unknown sticker, wrong method) — and validates each response against the schema the document
gives for its path, method, status and content type (jsonschema, Draft 4: what OpenAPI 3.0's
schema objects are). Fails when a response's status is not documented, its body does not
validate, or an operation of the document was never exercised.
"""
import json
import sys
import urllib.error
import urllib.request

import jsonschema

URL, SPEC = sys.argv[1], sys.argv[2]
STICKER, USER, QUERY = (sys.argv[3:6] + [None, None, None])[:3]
failures = []
seen = set()


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg, file=sys.stderr)


def call(method, path, body=None, headers=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(URL + path, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


with open(SPEC, encoding="utf-8") as f:
    spec = json.load(f)
status, hdrs, served = call("GET", "/openapi.json")
if status != 200 or json.loads(served) != spec:
    fail("/openapi.json (%d) is not the document in the source tree" % status)
if not str(spec.get("openapi", "")).startswith("3.0."):
    fail("not an OpenAPI 3.0 document")


def resolve(ref):
    node = spec
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def walk_refs(node, where):
    if isinstance(node, dict):
        if "$ref" in node:
            try:
                resolve(node["$ref"])
            except (KeyError, TypeError):
                fail("%s: $ref %s does not resolve" % (where, node["$ref"]))
        for k, v in node.items():
            walk_refs(v, where + "/" + k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk_refs(v, "%s[%d]" % (where, i))


walk_refs(spec, "#")
operations = set()
for p, item in spec["paths"].items():
    for m, op in item.items():
        operations.add((p, m))
        if not op.get("responses"):
            fail("%s %s has no responses" % (m, p))

resolver = jsonschema.RefResolver.from_schema(spec)


def check(method, template, path, body=None, headers=None, raw=None, want=None):
    """Send the request; validate the answer against the document; returns (status, json)."""
    status, hdrs, data = call(method, path, body, headers, raw)
    seen.add((template, method.lower()))
    what = "%s %s -> %d" % (method, path[:80], status)
    if want is not None and status != want:
        fail("%s: expected %d: %s" % (what, want, data[:200]))
    op = spec["paths"][template][method.lower()]
    resp = op["responses"].get(str(status))
    if resp is None:
        fail("%s: status not documented" % what)
        return status, None
    if "$ref" in resp:
        resp = resolve(resp["$ref"])
    ctype = (hdrs.get("Content-Type") or "").split(";")[0].strip()
    content = resp.get("content", {})
    if ctype not in content:
        fail("%s: content type %r not documented (%s)" % (what, ctype, list(content)))
        return status, None
    if not hdrs.get("X-Request-Id"):
        fail("%s: no X-Request-Id header" % what)
    if ctype != "application/json":
        return status, data
    try:
        doc = json.loads(data)
    except ValueError:
        fail("%s: not JSON" % what)
        return status, None
    try:
        jsonschema.Draft4Validator(content[ctype]["schema"], resolver=resolver).validate(doc)
    except jsonschema.ValidationError as e:
        fail("%s: %s at %s" % (what, e.message, list(e.absolute_path)))
    return status, doc


q = urllib.request.quote(QUERY or "好累")
user = urllib.request.quote(USER or "u01")
check("GET", "/v1/search", "/v1/search?q=%s&user=%s&k=5" % (q, user), want=200)
_, a = check("GET", "/v1/search", "/v1/search?q=%s&k=3&explain=1&offset=2" % q, want=200)
if a and a["hits"] and "ocr" not in a["hits"][0]:
    fail("explain=1: no stored fields in the hits")
check("GET", "/v1/search", "/v1/search?q=%s&size=3" % q, want=400)
check("GET", "/v1/search", "/v1/search?q=%s&offset=100" % q, want=400)
check("GET", "/v1/search", "/v1/search?q=%s&exclude=%s" % (q, ",".join(map(str, range(101)))),
      want=413)
check("GET", "/v1/search", "/v1/search?q=%s" % q, headers={"X-Request-Id": "bad id"}, want=400)
check("POST", "/v1/search", "/v1/search",
      body={"q": QUERY or "好累", "user": USER or "u01", "k": 4, "exclude": ["1", 2],
            "timeout": "2s", "allow_partial": True}, want=200)
check("POST", "/v1/search", "/v1/search", raw=b'{"q": ', want=400)
check("POST", "/v1/search", "/v1/search", body={"q": "a", "size": 1}, want=400)
_, m = check("POST", "/v1/msearch", "/v1/msearch",
             body={"searches": [{"q": QUERY or "好累", "k": 2}, {"q": ""}]}, want=200)
if m and (len(m["responses"]) != 2 or "error" not in m["responses"][1]):
    fail("msearch: the second search is not its own error")
check("POST", "/v1/msearch", "/v1/msearch", body={"searches": [{"q": "a"}] * 33}, want=413)
check("POST", "/v1/msearch", "/v1/msearch", raw=b"[", want=400)
if STICKER:
    check("GET", "/v1/stickers/{id}", "/v1/stickers/%s" % STICKER, want=200)
    check("POST", "/v1/click", "/v1/click",
          body={"user": USER or "u01", "sticker_id": STICKER, "query": QUERY or ""}, want=200)
check("GET", "/v1/stickers/{id}", "/v1/stickers/18446744073709551615", want=404)
check("GET", "/v1/stickers/{id}", "/v1/stickers/abc", want=400)
check("POST", "/v1/click", "/v1/click", body={"user": "u01"}, want=400)
check("POST", "/v1/click", "/v1/click", body={"user": "u01", "sticker_id": "1"}, want=404)
check("GET", "/healthz", "/healthz", want=200)
check("GET", "/readyz", "/readyz", want=200)
check("GET", "/metrics", "/metrics", want=200)
check("GET", "/openapi.json", "/openapi.json", want=200)
check("GET", "/", "/", want=200)
check("GET", "/images/{path}", "/images/no/such.png", want=404)
check("GET", "/images/{path}", "/images/%2e%2e/x.png", want=404)
for op in sorted(operations - seen):
    fail("%s %s: in the document, never exercised" % (op[1].upper(), op[0]))
if failures:
    sys.exit(1)
print("PASS: %d operations, every response valid against the OpenAPI document" % len(seen))
