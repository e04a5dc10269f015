#!/usr/bin/env python3
"""Checks the invariants of ARCHITECTURE.md that a look at the source can prove (the
layering and the engine boundary have scripts of their own; the rest have tests):

- `#![forbid(unsafe_code)]` at both crate roots;
- nothing is ever pulled: no pull endpoint or pull call anywhere;
- containers are created in two places only, both of which label what they create;
- server threads are named: no bare `thread::spawn` outside the in-container stub
  (which has no threads anyone lists) and test modules;
- only `engine/` knows the Engine's PascalCase JSON.
Exit 1 on the first broken rule, naming file and line."""
import os, re, sys

from rust_source import without_tests

ROOT = sys.argv[1] if len(sys.argv) > 1 else "src"
failures = []

def sources():
    for folder, _, files in os.walk(ROOT):
        for name in sorted(files):
            if name.endswith(".rs"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT), open(path).read()


def line_of(text, index):
    return text.count("\n", 0, index) + 1

files = dict(sources())
for root in ("lib.rs", "main.rs"):
    if "#![forbid(unsafe_code)]" not in files.get(root, ""):
        failures.append(f"{root}: no #![forbid(unsafe_code)]")

CREATORS = {"containers/launcher.rs", "sandbox.rs"}
for path, text in files.items():
    code = without_tests(text)
    for match in re.finditer(r"images/create|fn \w*pull\w*\s*\(|\.\w*pull\w*\s*\(", code):
        failures.append(f"{path}:{line_of(code, match.start())}: a pull ({match.group(0)})")
    for match in re.finditer(r"\.container_create\(", code):
        if path not in CREATORS:
            failures.append(f"{path}:{line_of(code, match.start())}: creates a container "
                            f"outside {sorted(CREATORS)}")
    if path in CREATORS and ".container_create(" in code and "labels::" not in code:
        failures.append(f"{path}: creates containers without our labels")
    if not path.startswith("stub/"):
        for match in re.finditer(r"\bthread::spawn\(", code):
            failures.append(f"{path}:{line_of(code, match.start())}: an unnamed thread "
                            "(use thread::Builder::new().name(..))")
    if not path.startswith("engine/"):
        for match in re.finditer(r"PascalCase", code):
            failures.append(f"{path}:{line_of(code, match.start())}: Engine JSON outside engine/")

for failure in failures:
    print("check-invariants: " + failure)
if failures:
    sys.exit(1)
print(f"check-invariants: {len(files)} files, every checked invariant holds")
