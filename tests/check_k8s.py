#!/usr/bin/env python3
"""check_k8s.py -- validates the Kubernetes manifests of deploy/k8s offline (ctest check.k8s).

    check_k8s.py K8S_DIR SCHEMA_JSON [--dockerfile FILE] [--secrets DIR]

K8S_DIR holds kustomization.yaml (its resources and configMapGenerator are read as kustomize
would) and push-job.yaml. Every object is validated against the vendored Kubernetes JSON
schemas (tests/fixtures/k8s-schema) made strict: an unknown field is an error, as with
`kubectl apply --validate=strict`. Then the cross-checks a schema cannot make:
  - a workload's selector matches its pod labels; a Service's and a PodDisruptionBudget's
    selector matches the pods of a workload; a StatefulSet's serviceName is a headless Service
    selecting its pods; a shard StatefulSet has a PDB allowing one replica down and a required
    anti-affinity on kubernetes.io/hostname that selects its own pods;
  - every ConfigMap, Secret, key and volume a pod references exists (ConfigMaps in the
    manifests; Secrets in the files deploy/k8s/secrets.sh makes, given with --secrets);
  - each daemon's effective config (the mounted file plus the command's --flags, $(POD_NAME)
    expanded per replica) names files that are mounted (and, for secrets, keys that exist),
    listens on exactly the container's ports, and probes point at its admin or HTTP port or
    test its ready-file; every container has resource requests and limits;
  - the broker's shard and profile endpoints, the replica's primary, the push topology and
    the load-profiles Job name the StatefulSets' pod DNS names (POD.SERVICE) on the ports
    those pods listen on, every replica of every shard in shard order; the CURVE known-servers
    files list exactly those endpoints;
  - runAsUser / fsGroup equal the uid of deploy/Dockerfile's user.
Each problem is printed as "FILE: KIND/NAME: message"; exit 1 if any, 0 otherwise.
Needs python3-yaml and python3-jsonschema (scripts/deps.sh).
"""
import copy
import json
import os
import re
import sys

try:
    import jsonschema
    import yaml
except ImportError as e:  # pragma: no cover
    sys.exit("check_k8s: %s: install python3-yaml and python3-jsonschema (scripts/deps.sh)" % e)

SCHEMA_OF = {
    ("v1", "ConfigMap"): "io.k8s.api.core.v1.ConfigMap",
    ("v1", "Service"): "io.k8s.api.core.v1.Service",
    ("v1", "PersistentVolumeClaim"): "io.k8s.api.core.v1.PersistentVolumeClaim",
    ("apps/v1", "StatefulSet"): "io.k8s.api.apps.v1.StatefulSet",
    ("apps/v1", "Deployment"): "io.k8s.api.apps.v1.Deployment",
    ("policy/v1", "PodDisruptionBudget"): "io.k8s.api.policy.v1.PodDisruptionBudget",
    ("batch/v1", "Job"): "io.k8s.api.batch.v1.Job",
}
WORKLOADS = ("StatefulSet", "Deployment", "Job")
# Kubernetes' resource.Quantity grammar (apimachinery/pkg/api/resource/quantity.go).
QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
                      r"(([KMGTPE]i)|[mkMGTPE]|[eE][+-]?[0-9]+)?$")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")

problems = []


def bad(where, msg):
    problems.append("%s: %s" % (where, msg))


# ---- loading ------------------------------------------------------------------------------


def strict(node):
    """No unknown fields: additionalProperties false on every object schema with properties."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)


def load_validators(path):
    with open(path, encoding="utf-8") as f:
        defs = json.load(f)["definitions"]
    strict(defs)
    checker = jsonschema.FormatChecker()

    @checker.checks("quantity")
    def is_quantity(v):
        return not isinstance(v, str) or bool(QUANTITY.match(v))

    out = {}
    for key, name in SCHEMA_OF.items():
        if name not in defs:
            sys.exit("check_k8s: %s has no %s" % (path, name))
        schema = {"$ref": "#/definitions/" + name, "definitions": defs}
        out[key] = jsonschema.Draft7Validator(schema, format_checker=checker)
    return out


def leaves(err):
    """The specific reasons below a oneOf (the schemas wrap every reference in one with
    {"type": "null"}): every error of the branch that went deepest, recursively."""
    if not err.context:
        yield err
        return
    branches = {}
    for e in err.context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)
    best = max(branches.values(),
               key=lambda es: max((len(e.absolute_path), e.validator != "type") for e in es))
    for e in best:
        yield from leaves(e)


class Obj:
    def __init__(self, doc, src):
        self.doc, self.src = doc, src
        self.kind = doc.get("kind")
        meta = doc.get("metadata") or {}
        self.name = meta.get("name") or meta.get("generateName") or "?"

    def __str__(self):
        return "%s: %s/%s" % (self.src, self.kind, self.name)


def load_all(k8s_dir, validators):
    kpath = os.path.join(k8s_dir, "kustomization.yaml")
    with open(kpath, encoding="utf-8") as f:
        kust = yaml.safe_load(f)
    files = list(kust.get("resources") or [])
    for extra in ("push-job.yaml",):
        if os.path.exists(os.path.join(k8s_dir, extra)) and extra not in files:
            files.append(extra)
    objs = []
    for rel in files:
        path = os.path.join(k8s_dir, rel)
        if not os.path.isfile(path):
            bad("kustomization.yaml", "resource %s does not exist" % rel)
            continue
        with open(path, encoding="utf-8") as f:
            try:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as e:
                bad(rel, "not YAML: %s" % e)
                continue
        for d in docs:
            o = Obj(d, rel)
            v = validators.get((d.get("apiVersion"), o.kind))
            if v is None:
                bad(o, "apiVersion %s kind %s has no vendored schema" % (d.get("apiVersion"),
                                                                         o.kind))
                continue
            for e in sorted((x for top in v.iter_errors(d) for x in leaves(top)),
                            key=lambda e: [str(p) for p in e.absolute_path]):
                bad(o, "schema: at /%s: %s" % ("/".join(str(p) for p in e.absolute_path),
                                               e.message))
            objs.append(o)
    # configMapGenerator, as kustomize renders it (names as given: disableNameSuffixHash)
    opts = kust.get("generatorOptions") or {}
    if not opts.get("disableNameSuffixHash"):
        bad("kustomization.yaml", "generatorOptions.disableNameSuffixHash must be true "
            "(push-job.yaml, created outside kustomize, names the ConfigMaps)")
    for g in kust.get("configMapGenerator") or []:
        data = {}
        for spec in g.get("files") or []:
            key, _, rel = spec.partition("=") if "=" in spec else (os.path.basename(spec), "",
                                                                   spec)
            p = os.path.join(k8s_dir, rel)
            if not os.path.isfile(p):
                bad("kustomization.yaml", "configMapGenerator %s: %s does not exist" %
                    (g.get("name"), rel))
                continue
            with open(p, encoding="utf-8") as f:
                data[key] = f.read()
        objs.append(Obj({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": g.get("name")}, "data": data},
                        "kustomization.yaml"))
    return objs


# ---- pods, selectors, references ----------------------------------------------------------


def pod_labels(o):
    return ((o.doc.get("spec") or {}).get("template", {}).get("metadata") or {}).get(
        "labels") or {}


def pod_spec(o):
    return (o.doc.get("spec") or {}).get("template", {}).get("spec") or {}


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def label_selector(sel):
    sel = sel or {}
    if sel.get("matchExpressions"):
        return None  # not used here: every selector of deploy/k8s is matchLabels
    return sel.get("matchLabels") or {}


def parse_conf(text):
    conf = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        k, sep, v = line.partition("=")
        if sep:
            conf[k.strip()] = v.strip()
    return conf


def host_port(addr):
    """'tcp://h:p', 'http://h:p/x' or 'h:p' -> (h, int p)."""
    m = re.match(r"^(?:[a-z]+://)?([^:/]+):([0-9]+)(?:/.*)?$", addr)
    return (m.group(1), int(m.group(2))) if m else (None, None)


class Pod:
    """One workload's pod template, with its volumes resolved to files."""

    def __init__(self, o, cms, secrets):
        self.o, self.spec, self.labels = o, pod_spec(o), pod_labels(o)
        self.volumes = {}
        for v in self.spec.get("volumes") or []:
            self.volumes[v["name"]] = self.resolve_volume(v, cms, secrets)

    def resolve_volume(self, v, cms, secrets):
        """{relative path: content or None (secret not given)} or 'dir' for writable dirs."""
        if "configMap" in v:
            return self.files_of("ConfigMap", v["configMap"], cms)
        if "secret" in v:
            return self.files_of("Secret", dict(v["secret"], name=v["secret"].get(
                "secretName")), secrets)
        if "projected" in v:
            out = {}
            for s in v["projected"].get("sources") or []:
                for kind, table in (("configMap", cms), ("secret", secrets)):
                    if kind in s:
                        out.update(self.files_of("ConfigMap" if kind == "configMap" else
                                                 "Secret", s[kind], table))
            return out
        return "dir"

    def files_of(self, kind, ref, table):
        name = ref.get("name")
        if table is not None and name not in table:
            bad(self.o, "%s %s is not in the manifests%s" % (
                kind, name, "" if kind == "ConfigMap" else " (secrets.sh)"))
            return {}
        data = table.get(name, {}) if table is not None else None
        out = {}
        items = ref.get("items")
        if items is None:
            if data is None:
                bad(self.o, "%s %s: mount with items, so its keys can be checked" % (kind, name))
                return {}
            return dict(data)
        for it in items:
            if data is not None and it["key"] not in data:
                bad(self.o, "%s %s has no key %s" % (kind, name, it["key"]))
            out[it["path"]] = data.get(it["key"]) if data is not None else None
        return out

    def mounted(self, c, path):
        """(kind, content) of the file at path in container c: ('file', text|None), ('dir',
        None) for a writable volume, (None, None) when nothing mounted holds it."""
        best = None
        for m in c.get("volumeMounts") or []:
            mp = m["mountPath"].rstrip("/")
            if path == mp or path.startswith(mp + "/"):
                if best is None or len(mp) > len(best[0]):
                    best = (mp, m)
        if best is None:
            return None, None
        mp, m = best
        vol = self.volumes.get(m["name"])
        if vol is None:
            return None, None
        if vol == "dir":
            return "dir", m.get("readOnly", False)
        rel = path[len(mp) + 1:]
        if rel in vol:
            return "file", vol[rel]
        return None, None


def check_volume_mounts(pod):
    for c in (pod.spec.get("initContainers") or []) + (pod.spec.get("containers") or []):
        for m in c.get("volumeMounts") or []:
            if m["name"] not in pod.volumes:
                bad(pod.o, "container %s mounts volume %s, which the pod does not have" %
                    (c["name"], m["name"]))


def check_resources(pod):
    for c in (pod.spec.get("initContainers") or []) + (pod.spec.get("containers") or []):
        r = c.get("resources") or {}
        for what in ("requests", "limits"):
            got = r.get(what) or {}
            for res in ("cpu", "memory"):
                if res not in got:
                    bad(pod.o, "container %s has no %s.%s" % (c["name"], what, res))


def check_user(pod, uid):
    sc = pod.spec.get("securityContext") or {}
    if not sc.get("runAsNonRoot"):
        bad(pod.o, "securityContext.runAsNonRoot is not true")
    if uid is not None:
        for k in ("runAsUser", "fsGroup"):
            if sc.get(k) != uid:
                bad(pod.o, "securityContext.%s is %s, not the image user's uid %d "
                    "(deploy/Dockerfile)" % (k, sc.get(k), uid))


# ---- the daemons ----------------------------------------------------------------------------

DAEMON_FILES = {  # settings naming a file the daemon reads (r) or a directory it writes (w)
    "index": "r", "admin-token-file": "r", "curve-key": "r", "curve-allow": "r",
    "curve-servers": "r", "api-keys": "r",
    "data": "w", "db": "w", "checkpoint-root": "w", "pid-file": "w", "ready-file": "w",
}
LISTEN = ("listen", "admin", "http", "zmq")  # settings of the ports a daemon binds


def effective_config(pod, c, pod_name):
    """(daemon, {setting: value}) from `DAEMON --config FILE --key value ...`."""
    cmd = list(c.get("command") or []) + list(c.get("args") or [])
    if not cmd or cmd[0] not in ("shard", "broker", "profile"):
        return None, None
    cmd = [a.replace("$(POD_NAME)", pod_name) for a in cmd]
    conf, i = {}, 1
    while i < len(cmd):
        a = cmd[i]
        if a.startswith("--") and i + 1 < len(cmd):
            key, val = a[2:], cmd[i + 1]
            if "=" in key:
                key, val = key.split("=", 1)
                i -= 1
            if key == "config":
                kind, text = pod.mounted(c, val)
                if kind != "file" or text is None:
                    bad(pod.o, "container %s: --config %s is not a mounted ConfigMap file" %
                        (c["name"], val))
                else:
                    conf = dict(parse_conf(text), **conf)
            else:
                conf[key] = val
            i += 2
        else:
            bad(pod.o, "container %s: unexpected argument %s" % (c["name"], a))
            i += 1
    return cmd[0], conf


def port_of(c, port):
    for p in c.get("ports") or []:
        if port == p.get("name") or port == p.get("containerPort"):
            return p.get("containerPort")
    return None


def check_daemon(pod, c, daemon, conf, pod_name, secrets_given):
    where = "%s (pod %s, container %s)" % (pod.o, pod_name, c["name"])
    for key, mode in DAEMON_FILES.items():
        if key not in conf:
            continue
        path = conf[key]
        target = path if mode == "r" else os.path.dirname(path.rstrip("/"))
        kind, content = pod.mounted(c, target)
        if mode == "r" and key == "index":
            kind, content = pod.mounted(c, os.path.dirname(path))
            if kind != "dir":
                bad(where, "%s = %s: no volume is mounted there" % (key, path))
        elif mode == "r":
            if kind != "file":
                bad(where, "%s = %s: not a mounted file" % (key, path))
            elif content is None and secrets_given:
                bad(where, "%s = %s: its Secret key is missing" % (key, path))
        elif kind != "dir" or content:
            bad(where, "%s = %s: not on a writable volume" % (key, path))
    bound = {}
    for key in LISTEN:
        if key in conf:
            h, p = host_port(conf[key])
            if h not in ("0.0.0.0", "*", "[::]"):
                bad(where, "%s = %s: listens on %s, unreachable from other pods" %
                    (key, conf[key], h))
            bound[key] = p
    ports = {p.get("containerPort") for p in c.get("ports") or []}
    for key, p in bound.items():
        if p not in ports:
            bad(where, "%s = %s: port %s is not a containerPort" % (key, conf[key], p))
    for p in ports - set(bound.values()):
        bad(where, "containerPort %s: the daemon does not listen on it" % p)
    for probe in PROBES:
        pr = c.get(probe)
        if not pr:
            if probe != "startupProbe":
                bad(where, "no %s" % probe)
            continue
        if "httpGet" in pr:
            port = port_of(c, pr["httpGet"].get("port"))
            path = pr["httpGet"].get("path")
            if port is None:
                bad(where, "%s: port %s is not a container port" % (probe,
                                                                   pr["httpGet"].get("port")))
            elif probe == "readinessProbe":
                if not (path == "/readyz" and port == bound.get("http")):
                    bad(where, "readinessProbe: GET %s on port %s is not the HTTP door's "
                        "/readyz" % (path, port))
            elif not (path == "/healthz" and port == bound.get("admin")):
                bad(where, "%s: GET %s on port %s is not the admin port's /healthz" %
                    (probe, path, port))
        elif "exec" in pr:
            cmd = pr["exec"].get("command") or []
            if cmd[:2] != ["test", "-e"] or cmd[2:] != [conf.get("ready-file")]:
                bad(where, "%s: %s does not test the ready-file %s" %
                    (probe, " ".join(cmd), conf.get("ready-file")))
        else:
            bad(where, "%s: neither httpGet nor exec" % probe)
    if c.get("livenessProbe") and "httpGet" not in c["livenessProbe"]:
        bad(where, "livenessProbe must ask the admin port")


def replicas_of(o):
    return (o.doc.get("spec") or {}).get("replicas", 1)


def check(k8s_dir, schema, dockerfile, secrets_dir):
    validators = load_validators(schema)
    objs = load_all(k8s_dir, validators)
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o.kind, {})
        if o.name in by_kind[o.kind]:
            bad(o, "defined twice")
        by_kind[o.kind][o.name] = o
    cms = {n: (o.doc.get("data") or {}) for n, o in by_kind.get("ConfigMap", {}).items()}
    secrets = None
    if secrets_dir:
        secrets = {}
        for d in sorted(os.listdir(secrets_dir)):
            p = os.path.join(secrets_dir, d)
            if os.path.isdir(p) and not d.startswith("."):
                secrets[d] = {}
                for k in sorted(os.listdir(p)):
                    with open(os.path.join(p, k), encoding="utf-8") as f:
                        secrets[d][k] = f.read()
    uid = None
    if dockerfile:
        with open(dockerfile, encoding="utf-8") as f:
            m = re.search(r"useradd[^\n]*--uid (\d+)", f.read())
        if not m:
            bad(dockerfile, "no `useradd --uid N`: the manifests need a numeric user")
        else:
            uid = int(m.group(1))

    workloads = [o for k in WORKLOADS for o in by_kind.get(k, {}).values()]
    pods = {}
    for o in workloads:
        sel = label_selector((o.doc.get("spec") or {}).get("selector"))
        if o.kind != "Job" and not matches(sel, pod_labels(o)):
            bad(o, "selector %s does not match its pod labels %s" % (sel, pod_labels(o)))
        pods[(o.kind, o.name)] = pod = Pod(o, cms, secrets)
        for t in o.doc["spec"].get("volumeClaimTemplates") or []:
            pod.volumes[t["metadata"]["name"]] = "dir"
        check_volume_mounts(pod)
        check_resources(pod)
        check_user(pod, uid)
        for v in pod.spec.get("volumes") or []:
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in by_kind.get("PersistentVolumeClaim", {}):
                bad(o, "volume %s: PersistentVolumeClaim %s is not in the manifests" %
                    (v["name"], claim))

    def selected(sel):
        return [o for o in workloads if o.kind != "Job" and matches(sel, pod_labels(o))]

    for svc in by_kind.get("Service", {}).values():
        sel = (svc.doc.get("spec") or {}).get("selector") or {}
        hits = selected(sel)
        if not hits:
            bad(svc, "selector %s matches no workload's pods" % sel)
        for p in (svc.doc.get("spec") or {}).get("ports") or []:
            tp = p.get("targetPort", p.get("port"))
            for w in hits:
                if not any(port_of(c, tp) for c in pod_spec(w).get("containers") or []):
                    bad(svc, "targetPort %s is not a port of %s/%s" % (tp, w.kind, w.name))
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        sel = label_selector((pdb.doc.get("spec") or {}).get("selector"))
        if not selected(sel):
            bad(pdb, "selector %s matches no workload's pods" % sel)

    # DNS names of the StatefulSets' pods: POD.SERVICE -> (StatefulSet, ordinal)
    dns = {}
    for sts in by_kind.get("StatefulSet", {}).values():
        svc_name = sts.doc["spec"].get("serviceName")
        svc = by_kind.get("Service", {}).get(svc_name)
        if svc is None:
            bad(sts, "serviceName %s is not a Service of the manifests" % svc_name)
        else:
            if svc.doc["spec"].get("clusterIP") != "None":
                bad(sts, "serviceName %s is not a headless Service (clusterIP: None)" % svc_name)
            if not matches(svc.doc["spec"].get("selector") or {}, pod_labels(sts)):
                bad(sts, "its Service %s does not select its pods" % svc_name)
        for i in range(replicas_of(sts)):
            dns["%s-%d.%s" % (sts.name, i, svc_name)] = (sts, i)

    # every daemon's config, per pod (a StatefulSet's replicas differ by $(POD_NAME))
    daemons = {}  # (kind, name) -> [(pod name, daemon, conf)]
    for (kind, name), pod in pods.items():
        n = replicas_of(pod.o) if kind == "StatefulSet" else 1
        for i in range(n):
            pod_name = "%s-%d" % (name, i) if kind == "StatefulSet" else name + "-xxxxx"
            for c in pod.spec.get("containers") or []:
                d, conf = effective_config(pod, c, pod_name)
                if d is None:
                    continue
                check_daemon(pod, c, d, conf, pod_name, secrets is not None)
                daemons.setdefault((kind, name), []).append((pod_name, d, conf, c))

    def shard_sts():
        out = {}
        for (kind, name), lst in daemons.items():
            if kind == "StatefulSet" and lst[0][1] == "shard":
                out[int(lst[0][2].get("shard", "0"))] = (by_kind["StatefulSet"][name], lst[0])
        return out

    shards = shard_sts()
    for num, (sts, (_, _, conf, _)) in shards.items():
        if int(conf.get("shards", "1")) != len(shards):
            bad(sts, "shards = %s, but the manifests have %d shard StatefulSets" %
                (conf.get("shards"), len(shards)))
        sel = label_selector(sts.doc["spec"]["selector"])
        if not any(matches(label_selector(p.doc["spec"].get("selector")), pod_labels(sts)) and
                   p.doc["spec"].get("maxUnavailable") == 1
                   for p in by_kind.get("PodDisruptionBudget", {}).values()):
            bad(sts, "no PodDisruptionBudget with maxUnavailable 1 selects its pods")
        terms = (((pod_spec(sts).get("affinity") or {}).get("podAntiAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution") or [])
        if not any(t.get("topologyKey") == "kubernetes.io/hostname" and
                   matches(label_selector(t.get("labelSelector")), pod_labels(sts))
                   for t in terms):
            bad(sts, "no required pod anti-affinity on kubernetes.io/hostname over its own "
                "pods (%s)" % sel)

    def endpoint(where, what, addr, want_daemon, port_key):
        """addr must be POD.SERVICE:PORT of a StatefulSet pod running want_daemon on the port
        of its setting port_key. Returns (StatefulSet, ordinal) or None."""
        h, p = host_port(addr)
        if h not in dns:
            bad(where, "%s %s: %s is not a StatefulSet pod's DNS name (POD.SERVICE)" %
                (what, addr, h))
            return None
        sts, i = dns[h]
        lst = [x for x in daemons.get(("StatefulSet", sts.name), []) if x[0] == h.split(".")[0]]
        if not lst or lst[0][1] != want_daemon:
            bad(where, "%s %s: pod %s does not run the %s" % (what, addr, h, want_daemon))
            return None
        _, _, conf, _ = lst[0]
        lp = host_port(conf.get(port_key, ""))[1]
        if p != lp:
            bad(where, "%s %s: %s listens on %s (%s), not %s" % (what, addr, h, lp, port_key, p))
        return sts, i

    def expect_all_replicas(where, what, groups):
        """groups: per shard in order, the endpoints' (sts, ordinal) lists."""
        if len(groups) != len(shards):
            bad(where, "%s names %d shards, the manifests have %d" % (what, len(groups),
                                                                      len(shards)))
        for num, g in enumerate(groups):
            if num not in shards:
                continue
            sts = shards[num][0]
            got = sorted(i for s, i in g if s is sts)
            if len(got) != len(g) or got != list(range(replicas_of(sts))):
                bad(where, "%s: shard %d must list the %d replicas of StatefulSet %s" %
                    (what, num, replicas_of(sts), sts.name))

    for (kind, name), lst in daemons.items():
        for pod_name, d, conf, c in lst:
            where = "%s/%s (pod %s)" % (kind, name, pod_name)
            if d == "broker":
                groups = []
                for grp in conf.get("shards", "").split(","):
                    g = []
                    for addr in grp.split("|"):
                        r = endpoint(where, "shards", addr, "shard", "listen")
                        if r:
                            g.append(r)
                    groups.append(g)
                expect_all_replicas(where, "shards", groups)
                for key in ("profile-replicas", "profile-primary"):
                    for addr in filter(None, conf.get(key, "").split("|")):
                        r = endpoint(where, key, addr, "profile", "listen")
                        if r and key == "profile-primary":
                            role = daemons[("StatefulSet", r[0].name)][0][2].get("role")
                            if role != "primary":
                                bad(where, "profile-primary %s is a %s" % (addr, role))
            if d == "profile" and conf.get("role") == "replica":
                addr = conf.get("primary", "")
                endpoint(where, "primary", addr, "profile", "listen")
            servers = conf.get("curve-servers")
            if servers and secrets is not None:
                kind_, text = pods[(kind, name)].mounted(c, servers)
                if kind_ == "file" and text is not None:
                    want = set()
                    if d == "broker":
                        want = set(conf.get("shards", "").replace(",", "|").split("|"))
                        want |= set(filter(None, conf.get("profile-replicas", "").split("|")))
                        want |= set(filter(None, conf.get("profile-primary", "").split("|")))
                    elif d == "profile":
                        want = {conf.get("primary")}
                    have = {ln.split()[0] for ln in text.splitlines() if ln.strip()}
                    for a in sorted(want - have):
                        bad(where, "curve-servers has no key for %s" % a)

    # the push topology (conf/topology.json, through the ConfigMap the push Job mounts)
    for (kind, name), pod in pods.items():
        for c in pod.spec.get("containers") or []:
            for m in c.get("volumeMounts") or []:
                vol = pod.volumes.get(m["name"])
                if not isinstance(vol, dict) or "topology.json" not in vol:
                    continue
                where = "%s/%s (topology.json)" % (kind, name)
                try:
                    topo = json.loads(vol["topology.json"])
                except ValueError as e:
                    bad(where, "not JSON: %s" % e)
                    continue
                groups = [[r for r in (endpoint(where, "shards", u, "shard", "admin")
                                       for u in grp) if r] for grp in topo.get("shards", [])]
                expect_all_replicas(where, "topology shards", groups)
                script = " ".join(c.get("command") or [])
                broker = by_kind.get("Service", {}).get("broker-admin")
                if "broker-admin" in script and broker is None:
                    bad(where, "the push script asks Service broker-admin, which is missing")
                bports = {bp.get("port") for bp in (broker.doc["spec"].get("ports") if broker
                                                    else [])}
                for p in re.findall(r"broker-admin.*?:(\d+)", script, re.S):
                    if int(p) not in bports:
                        bad(where, "the push script's broker admin port %s is not Service "
                            "broker-admin's" % p)
    # the load-profiles Job's admin URL
    for (kind, name), pod in pods.items():
        for c in pod.spec.get("containers") or []:
            for e in c.get("env") or []:
                if e.get("name") == "PERSRV_PROFILE_ADMIN":
                    r = endpoint("%s/%s" % (kind, name), "PERSRV_PROFILE_ADMIN", e["value"],
                                 "profile", "admin")
                    if r and daemons[("StatefulSet", r[0].name)][0][2].get("role") != "primary":
                        bad("%s/%s" % (kind, name), "PERSRV_PROFILE_ADMIN is not the primary")


def main(argv):
    args, opts = [], {}
    i = 1
    while i < len(argv):
        if argv[i] in ("--dockerfile", "--secrets"):
            opts[argv[i][2:]] = argv[i + 1]
            i += 2
        else:
            args.append(argv[i])
            i += 1
    if len(args) != 2:
        sys.exit(__doc__)
    check(args[0], args[1], opts.get("dockerfile"), opts.get("secrets"))
    for p in problems:
        print(p)
    print("check_k8s: %d problem(s) in %s" % (len(problems), args[0]))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
