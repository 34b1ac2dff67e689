#!/usr/bin/env python3
"""Finds import cycles between the top-level modules of a crate (docs/architecture.md,
"Layers"): an edge A -> B for every `crate::B` that a file under module A names. Prints each
cycle (a strongly connected group of two or more modules) with one edge that closes it, and
exits 1 if there is any.

    scripts/module-cycles.py [crate src dir, default node/src]
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "node/src"
ROOTS = {"lib.rs", "main.rs"}


def module_of(path):
    rel = os.path.relpath(path, src)
    first = rel.split(os.sep)[0]
    return None if first in ROOTS else first.removesuffix(".rs")


def strip_comments_and_tests(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    test_module = re.search(r"#\[cfg\(test\)\]\s*(pub(\(\w+\))?\s+)?mod\s", text)
    return text[: test_module.start()] if test_module else text


edges = {}
witness = {}
for dirpath, _, files in os.walk(src):
    for name in files:
        if not name.endswith(".rs") or name == "tests.rs" or name.endswith("_tests.rs"):
            continue
        path = os.path.join(dirpath, name)
        here = module_of(path)
        if here is None:
            continue
        edges.setdefault(here, set())
        with open(path, encoding="utf-8") as f:
            text = strip_comments_and_tests(f.read())
        # `crate::x`, and `crate::{x, y::z}` in a use.
        named = set(re.findall(r"\bcrate::(\w+)", text))
        for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
            named |= set(re.findall(r"(?:^|[,{\s])(\w+)", group))
        for there in named - {here, "self"}:
            edges[here].add(there)
            witness.setdefault((here, there), path)

# Tarjan's strongly connected components.
index, low, stack, on_stack, groups = {}, {}, [], set(), []


def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
        if w not in edges:
            continue
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        group = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            group.append(w)
            if w == v:
                break
        if len(group) > 1:
            groups.append(sorted(group))


sys.setrecursionlimit(10000)
for v in sorted(edges):
    if v not in index:
        visit(v)

for group in groups:
    print("cycle: " + " <-> ".join(group))
    for a in group:
        for b in sorted(edges[a] & set(group)):
            print(f"  {a} -> {b}  ({witness[(a, b)]})")
if groups:
    sys.exit(1)
print(f"no import cycle among the {len(edges)} top-level modules of {src}")
