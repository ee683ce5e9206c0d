#!/usr/bin/env python3
"""check_readme.py README MANIFEST TESTS_CMAKELISTS

Every command the README shows (each line of its ```sh blocks, continuation lines joined, comments
dropped) must be run by a test: tests/readme_commands.txt names, for each command, the ctest
test(s) that run it. This checks, so that the README and the tests cannot drift apart:
  - every README command has an entry, and every entry is still a README command;
  - every test an entry names is registered in tests/CMakeLists.txt, and its script exists;
  - the command's shape appears in those tests' scripts: its subcommand (persrv search,
    builder push ...), the script it runs (demo.sh ...), each --option it passes, and for curl
    the endpoint path, each query parameter name and each JSON member it sends.
Prints the table of README commands and their tests (the list the issue asks for) with -v.
"""
import json
import os
import re
import shlex
import sys

README, MANIFEST, CMAKELISTS = sys.argv[1:4]
VERBOSE = "-v" in sys.argv[4:]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(CMAKELISTS)))
failures = []


def norm(s):
    return " ".join(s.split())


def strip_comment(line):
    """Drop a trailing '# ...' comment outside quotes."""
    q = None
    for i, ch in enumerate(line):
        if q:
            if ch == q:
                q = None
        elif ch in "'\"":
            q = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def readme_commands(path):
    cmds, block, buf = [], False, ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("```"):
                block = line.strip() == "```sh" if not block else False
                continue
            if not block:
                continue
            line = strip_comment(line).rstrip()
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            line = norm(buf + line)
            buf = ""
            if line:
                cmds.append(line)
    return cmds


def manifest(path):
    """{command: [tests]} from lines 'TEST[,TEST...] <TAB> command'."""
    m = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if "\t" not in line:
                failures.append("%s:%d: not 'tests<TAB>command'" % (path, n))
                continue
            tests, cmd = line.split("\t", 1)
            m[norm(cmd)] = [tests.strip()] if tests.startswith("manual:") else \
                [t.strip() for t in tests.split(",") if t.strip()]
    return m


def test_scripts(path):
    """{test name: [script paths]} from the add_test calls of tests/CMakeLists.txt."""
    text = open(path, encoding="utf-8").read()
    out = {}
    for m in re.finditer(r"add_test\(NAME\s+(\S+)\s+COMMAND\s+([^)]*)\)", text, re.S):
        name, cmd = m.group(1), m.group(2)
        paths = []
        for tok in cmd.split():
            tok = tok.replace("${CMAKE_CURRENT_SOURCE_DIR}", os.path.join(ROOT, "tests"))
            tok = tok.replace("${PROJECT_SOURCE_DIR}", ROOT).replace("${CMAKE_SOURCE_DIR}", ROOT)
            if tok.endswith((".sh", ".py")) and os.path.exists(tok):
                paths.append(tok)
        out[name] = paths
    return out


def read_with_sourced(path, depth=0):
    """A script's text and that of the scripts it sources (". lib.sh") beside it."""
    text = open(path, encoding="utf-8", errors="replace").read()
    if depth < 2:
        for m in re.finditer(r'^\s*(?:\.|source)\s+"?\$\(dirname "\$0"\)"?/([\w.-]+\.sh)', text,
                             re.M):
            p = os.path.join(os.path.dirname(path), m.group(1))
            if os.path.exists(p):
                text += read_with_sourced(p, depth + 1)
    return text


def features(cmd):
    """What a test running `cmd` must show: (description, regex) pairs."""
    try:
        toks = shlex.split(cmd.replace("$(", "( "), posix=True)
    except ValueError:
        toks = cmd.split()
    feats = []
    for i, t in enumerate(toks):
        base = os.path.basename(t)
        if t.startswith("--"):
            opt = t.split("=", 1)[0]
            feats.append((opt, re.escape(opt) + r"\b"))
        elif base.endswith(".sh") and "/" in t:
            feats.append((t, re.escape("/" + base) + r"\b"))
        elif base in ("persrv", "builder", "$B") and i + 1 < len(toks) and \
                not toks[i + 1].startswith("-"):
            sub = toks[i + 1]
            feats.append(("%s %s" % (base, sub), r"\b" + re.escape(sub) + r"\b"))
    if toks and toks[0] == "curl":
        for t in toks:
            if "://" in t or t.startswith("/"):
                url = t.split("://", 1)[-1]
                url = url[url.rfind(")") + 1:] if ")" in url else url  # http://$(...)/path
                path = "/" + url.split("/", 1)[1] if "/" in url else url if url.startswith("/") else "/"
                p, _, q = path.partition("?")
                p = re.sub(r"/[0-9]+$", "/", p)  # /v1/stickers/<id>: the endpoint
                if p != "/":
                    feats.append((p, re.escape(p)))
                for kv in filter(None, q.split("&")):
                    k = kv.split("=", 1)[0]
                    feats.append(("param " + k, r"\b" + re.escape(k) + r"="))
            elif t.startswith("{"):
                try:
                    for k in json.loads(t):
                        feats.append(("member " + k, r"\b" + re.escape(k) + r"\b"))
                except ValueError:
                    pass
        if "-X" in toks:
            feats.append(("-X POST", r"-X POST|POST"))
        if "-H" in toks:
            h = toks[toks.index("-H") + 1].split(":")[0]
            feats.append(("header " + h, re.escape(h)))
    return feats


cmds = readme_commands(README)
man = manifest(MANIFEST)
scripts = test_scripts(CMAKELISTS)
seen = set()
rows = []
for c in cmds:
    if c in seen:
        continue
    seen.add(c)
    tests = man.get(c)
    if not tests:
        failures.append("README command not run by any test (add it to %s with the test that "
                        "runs it): %s" % (os.path.relpath(MANIFEST, ROOT), c))
        continue
    text = ""
    if tests[0].startswith("manual:"):
        rows.append((c, ["(not in ctest: " + tests[0][7:].strip() + ")"]))
        continue
    if tests == ["CI"]:
        ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
        if c.split()[0] not in ci:
            failures.append("%s: marked CI, but .ci/run does not run it" % c)
        rows.append((c, ["CI (.ci/run)"]))
        continue
    for t in tests:
        if t not in scripts:
            failures.append("%s: no test %s in tests/CMakeLists.txt" % (c, t))
            continue
        if not scripts[t]:
            failures.append("%s: test %s runs no script this check can read" % (c, t))
        for p in scripts[t]:
            text += read_with_sourced(p)
    for what, rx in features(c):
        if text and not re.search(rx, text):
            failures.append("%s: %s does not appear in %s" % (c, what, ", ".join(tests)))
    rows.append((c, tests))
for c in man:
    if c not in seen:
        failures.append("%s lists a command the README no longer shows: %s"
                        % (os.path.relpath(MANIFEST, ROOT), c))
if VERBOSE or failures:
    for c, tests in rows:
        print("%-40s %s" % (",".join(tests), c))
for f in failures:
    print("FAIL: " + f, file=sys.stderr)
if failures:
    sys.exit(1)
print("PASS: %d README commands, each run by a test" % len(rows))
