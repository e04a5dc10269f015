#!/usr/bin/env python3
"""Checks the crate's layering: builds the graph of `crate::`, `super::` and `self::`
paths between module files (test modules excluded), prints every import cycle, and
every import of a higher layer by a lower one (LAYERS, ARCHITECTURE.md's code map from
the bottom up). Exit 1 if there is either. `--graph` prints the graph."""
import os, re, sys

from rust_source import without_tests

ROOT = sys.argv[1] if len(sys.argv) > 1 else "src"

def module_of(path):
    parts = os.path.relpath(path, ROOT)[:-3].split("/")
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)

modules = {}
for folder, _, files in os.walk(ROOT):
    for name in files:
        if name.endswith(".rs"):
            path = os.path.join(folder, name)
            module = module_of(path)
            if module in (("main",), ("lib",)):
                continue
            modules[module] = path

def resolve(segments):
    """The deepest module named by a path's leading segments."""
    for length in range(len(segments), 0, -1):
        if tuple(segments[:length]) in modules:
            return tuple(segments[:length])
    return None

strip_tests = without_tests

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^{}]*)\}")

graph = {module: set() for module in modules}
for module, path in modules.items():
    text = strip_tests(open(path).read())
    def base(kind):
        """The module a path starting with `crate`, `self` or `super` is relative to."""
        return {"crate": [], "self": list(module), "super": list(module[:-1])}[kind]
    found = []
    for kind, rest, items in GROUP.findall(text):
        prefix = base(kind) + [s for s in rest.split("::") if s]
        for item in items.split(","):
            item = item.strip().split(" as ")[0].strip()
            if item and item != "self":
                found.append(prefix + [s for s in item.split("::") if s])
            elif item == "self":
                found.append(prefix)
    for kind, rest in PATH.findall(text):
        found.append(base(kind) + [s for s in rest.split("::") if s])
    for segments in found:
        target = resolve(segments)
        # A module's own parents (`super::` items of a `mod.rs`) are not imports of it.
        if target and module[: len(target)] != target:
            graph[module].add(target)

# The layers, from the bottom up: a module may import its own layer and those below.
LAYERS = [
    ("codec",),
    ("engine", "stub", "cli/help"),
    ("error", "containers/profile"),
    ("config", "exec"),
    ("containers",),
    ("run", "sandbox", "files", "detached", "history", "expiry", "snapshot", "volume", "tenants", "cluster"),
    ("server",),
    ("cli",),
]

def layer(module):
    """The layer of a module: that of its longest listed prefix."""
    best = None
    for rank, names in enumerate(LAYERS):
        for entry in names:
            parts = tuple(entry.split("/"))
            if module[: len(parts)] == parts and (best is None or len(parts) > best[1]):
                best = (rank, len(parts))
    return None if best is None else best[0]

upward = []
for module in sorted(graph):
    if layer(module) is None:
        upward.append(f"{'::'.join(module)} is in no layer (add it to LAYERS)")
        continue
    for target in sorted(graph[module]):
        if layer(target) is not None and layer(target) > layer(module):
            upward.append(f"{'::'.join(module)} (layer {layer(module)}) imports "
                          f"{'::'.join(target)} (layer {layer(target)})")

# Tarjan's strongly connected components.
index, low, stack, on_stack, sccs, counter = {}, {}, [], set(), [], [0]
def connect(node):
    index[node] = low[node] = counter[0]
    counter[0] += 1
    stack.append(node)
    on_stack.add(node)
    for other in graph[node]:
        if other not in index:
            connect(other)
            low[node] = min(low[node], low[other])
        elif other in on_stack:
            low[node] = min(low[node], index[other])
    if low[node] == index[node]:
        component = []
        while True:
            other = stack.pop()
            on_stack.discard(other)
            component.append(other)
            if other == node:
                break
        if len(component) > 1:
            sccs.append(component)
sys.setrecursionlimit(10000)
for node in sorted(graph):
    if node not in index:
        connect(node)
name = lambda m: "::".join(m)
if "--graph" in sys.argv:
    for node in sorted(graph):
        print(f"{name(node)} -> {', '.join(sorted(name(t) for t in graph[node]))}")
for line in upward:
    print("layering: " + line)
if sccs:
    for component in sccs:
        members = set(component)
        print("import cycle among: " + ", ".join(sorted(name(m) for m in component)))
        for m in sorted(component):
            inside = sorted(name(t) for t in graph[m] if t in members)
            print(f"  {name(m)} -> {', '.join(inside)}")
    sys.exit(1)
if upward:
    sys.exit(1)
print(f"check-modules: {len(graph)} modules in {len(LAYERS)} layers, no import cycle, "
      "no import of a higher layer")
