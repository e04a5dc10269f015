#!/usr/bin/env python3
"""Checks two of ARCHITECTURE.md's invariants at the engine's boundary.

Only src/engine/ and src/exec/ name the engine's connections (`UnixStream`,
`Hijacked`): anything else, server/ in particular, stops a command through its
`exec::Cancel`. (src/stub/ runs inside containers, where its sockets are its own: the
sandbox init's exec socket.)

Only src/engine/ looks into the engine's error texts: elsewhere, code matches
`DockerError` variants, never their words. Flags, in every module outside engine/
(test modules excluded):

- a `DockerError::Api { ... }` pattern or value that names its `message` (match on
  `Api { status, .. }`, or ask engine/ for a typed variant);
- `DockerError::InStream(...)` or `DockerError::MountInvalid(...)` with anything but `_`
  (they only carry text; engine/ builds them);
- a text search (`.contains(`, `.starts_with(`, `.find(`, ...) on an error's
  `.to_string()`, or on a command's output decoded with `from_utf8_lossy` (where the
  engine writes why it could not start a process: `engine::exec_refusal` reads it).

Usage: check-engine-boundary.py [SRC]. Exit 1 with one line per finding."""
import os, re, sys

from rust_source import without_tests

ROOT = sys.argv[1] if len(sys.argv) > 1 else "src"
ENGINE = os.path.join(ROOT, "engine")
EXEC = os.path.join(ROOT, "exec")
STUB = os.path.join(ROOT, "stub")
CONNECTION = re.compile(r"\b(?:UnixStream|Hijacked)\b")

SEARCH = r"\.\s*(?:contains|starts_with|ends_with|find|rfind|matches|split_once|strip_prefix|strip_suffix)\s*\("
RULES = [
    (re.compile(r"DockerError::Api\s*\{[^}]*\bmessage\b[^}]*\}", re.S),
     "names the text of an engine error answer (DockerError::Api's message)"),
    (re.compile(r"DockerError::(?:InStream|MountInvalid)\s*\((?!\s*_\s*\))", re.S),
     "takes or builds the text of an engine error (only engine/ may)"),
    (re.compile(r"\b\w*(?:err|error|engine)\w*\b(?:\.\w+\(\))*\.to_string\(\)\s*" + SEARCH, re.S | re.I),
     "searches an error's text"),
    (re.compile(r"from_utf8_lossy\s*\([^;]*?\)\s*" + SEARCH, re.S),
     "searches a command's output for the engine's words (use engine::exec_refusal)"),
]

strip_tests = without_tests

def within(folder, top):
    folder, top = os.path.abspath(folder), os.path.abspath(top)
    return os.path.commonpath([folder, top]) == top

findings = []
for folder, _, files in os.walk(ROOT):
    if within(folder, ENGINE):
        continue
    rules = RULES
    if not within(folder, EXEC) and not within(folder, STUB):
        rules = RULES + [(CONNECTION, "names an engine connection (stop commands through exec::Cancel)")]
    for name in sorted(files):
        if not name.endswith(".rs"):
            continue
        path = os.path.join(folder, name)
        text = strip_tests(open(path).read())
        for pattern, why in rules:
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                findings.append(f"{path}:{line}: {why}: {' '.join(match.group(0).split())[:90]}")

for finding in sorted(findings):
    print(finding)
if findings:
    print("check-engine-boundary: engine error texts or connections are used outside "
          "src/engine/ (and src/exec/ for connections)")
    sys.exit(1)
print("check-engine-boundary: no engine error text read, no engine connection named, "
      "outside their modules")
