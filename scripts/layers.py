#!/usr/bin/env python3
"""Check the library's import graph: layers import only downward, no cycles,
and no file holds more than MAX_CODE_LINES lines of non-test code.

Run from anywhere:  python3 scripts/layers.py        (add --graph to print it)

Each file under crates/shmkit/src is a node. An edge A -> B means A names an
item of B through a `crate::` or `super::` path (in a `use` line or inline),
outside comments, with re-exports followed to the file that defines the item.
Test code (`#[cfg(test)]` modules and items) is left out: a test may build its
fixtures from any layer. Layers are listed bottom first; a file belongs to the
first layer with a matching prefix, and may name only its own layer or lower
ones. Files must not form a cycle, except that a child module may use its
parent module's items (a folder is one unit, as Rust's privacy intends).
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "crates" / "shmkit" / "src"

# Bottom first. Keep in step with the README's "Architecture" section.
LAYERS = [
    ("os", ["os", "crash_point", "stable_hash"]),
    ("error", ["error", "segment/kind"]),
    ("ptr", ["ptr"]),
    ("sync", ["sync"]),
    ("numa", ["numa"]),
    ("segment", ["segment"]),
    ("alloc", ["alloc"]),
    ("containers, named", ["containers", "named"]),
    ("registry", ["registry"]),
    ("local", ["local"]),
    ("crate root", ["lib"]),
]

MAX_CODE_LINES = 900


def module_of(path):
    """`alloc/free_list/mod.rs` -> ("alloc", "free_list")."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def strip_comments(text):
    """Blank out comments and the contents of string and char literals."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if text[i] == "\n" else "")
                    i += 1
        elif (m := re.match(r'b?r(#*)"', text[i:])) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            close = '"' + m.group(1)
            j = text.find(close, i + m.end())
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + len(close)
        elif c == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and (m := re.match(r"'(?:\\.|\\u\{[0-9a-fA-F]+\}|[^\\'])'", text[i:])):
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_test_code(text):
    """Drop `#[cfg(test)]` items (a module, a function, a use line)."""
    out, i = [], 0
    marker = re.compile(r"#\[cfg\((?:test|all\(test[^\]]*|any\(test[^\]]*)\)\]")
    while True:
        m = marker.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : m.start()])
        j = m.end()
        # The item ends at its first `;` (a use line) or its matching brace.
        depth = 0
        while j < len(text):
            c = text[j]
            if c == ";" and depth == 0:
                j += 1
                break
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            j += 1
        i = j


def count_code_lines(path):
    text = strip_test_code(strip_comments(path.read_text()))
    return sum(1 for line in text.splitlines() if line.strip())


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = tree.replace(" ", "").replace("\n", "")
    depth, start = 0, None
    for k, c in enumerate(tree):
        if c == "{":
            if depth == 0:
                start = k
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                prefix, inner, rest = tree[:start], tree[start + 1 : k], tree[k + 1 :]
                items, d, s = [], 0, 0
                for m, ch in enumerate(inner + ","):
                    if ch in "{":
                        d += 1
                    elif ch == "}":
                        d -= 1
                    elif ch == "," and d == 0:
                        if inner[s:m]:
                            items.append(inner[s:m])
                        s = m + 1
                out = []
                for item in items:
                    for sub in expand_use(item):
                        out.extend(expand_use(prefix + sub + rest))
                return out
    return [tree]


class Crate:
    def __init__(self):
        self.files = {module_of(p): p for p in ROOT.rglob("*.rs")}
        self.code = {m: strip_test_code(strip_comments(p.read_text())) for m, p in self.files.items()}
        self.reexports = {m: self._reexports(m) for m in self.files}
        self.macros = {
            name: m
            for m, text in self.code.items()
            for name in re.findall(r"macro_rules!\s*(\w+)", text)
        }

    def absolute(self, module, path):
        """Make a `crate::`/`super::`/`self::` path absolute (a tuple)."""
        parts = path.split("::")
        if parts[0] == "crate":
            return tuple(parts[1:])
        if parts[0] == "self":
            return (*module, *parts[1:])
        if parts[0] == "super":
            here = list(module)
            while parts and parts[0] == "super":
                here, parts = here[:-1], parts[1:]
            return (*here, *parts)
        # A bare path in a module file names one of its child modules.
        if (*module, parts[0]) in self.files:
            return (*module, *parts)
        return None

    def _reexports(self, module):
        found = {}
        for m in re.finditer(r"pub(?:\([^)]*\))?\s+use\s+([^;]+);", self.code[module]):
            for path in expand_use(m.group(1)):
                name = path.split("::")[-1]
                target = self.absolute(module, path)
                if target and name != "*":
                    found[name] = target
        return found

    def resolve(self, path, seen=0):
        """The file that defines `path` (absolute tuple), following re-exports."""
        for cut in range(len(path), -1, -1):
            module = tuple(path[:cut])
            if module in self.files:
                rest = path[cut:]
                if rest and rest[0] in self.reexports[module] and seen < 10:
                    target = self.reexports[module][rest[0]]
                    if target != (*module, rest[0]):
                        return self.resolve(target + tuple(rest[1:]), seen + 1)
                return module
        return None

    def edges(self, module):
        text = self.code[module]
        paths = []
        out_macros = set()
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            paths.extend(expand_use(m.group(1)))
        for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)(!?)", text):
            if m.group(2) and m.group(1).startswith("crate::"):
                # An exported macro lives at the crate root by Rust's rules;
                # its home is the file that defines it.
                home = self.macros.get(m.group(1).split("::")[-1])
                if home is not None and home != module:
                    out_macros.add(home)
                continue
            paths.append(m.group(1))
        out = set()
        for path in paths:
            target = self.absolute(module, path)
            if target is None:
                continue
            file = self.resolve(target)
            if file is not None and file != module:
                out.add(file)
        return out | out_macros


def layer_of(module):
    name = "/".join(module) or "lib"
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "/"):
                return index
    raise SystemExit(f"scripts/layers.py: no layer lists {name}; add it to LAYERS")


def cycles(nodes, graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def main():
    crate = Crate()
    show = "--graph" in sys.argv
    name = lambda m: "/".join(m) or "lib"
    graph = {m: crate.edges(m) for m in crate.files}
    problems = []
    for module in sorted(graph):
        here = layer_of(module)
        for target in sorted(graph[module]):
            if module == () or layer_of(target) <= here:
                continue
            problems.append(
                f"upward: {name(module)} ({LAYERS[here][0]}) -> {name(target)} ({LAYERS[layer_of(target)][0]})"
            )
    # A child module may use its parent's items (`super::`), as Rust's
    # privacy intends: a folder is one unit. Every other cycle is a fault.
    acyclic = {m: {t for t in targets if t != m[: len(t)]} for m, targets in graph.items()}
    for component in cycles(sorted(acyclic), acyclic):
        problems.append("cycle: " + " <-> ".join(name(m) for m in component))
    for module, path in sorted(crate.files.items()):
        lines = count_code_lines(path)
        if lines > MAX_CODE_LINES:
            problems.append(f"too long: {name(module)} holds {lines} lines of non-test code (most {MAX_CODE_LINES})")
    if show:
        for index, (label, _) in enumerate(LAYERS):
            print(f"== layer {index}: {label}")
            for module in sorted(m for m in graph if layer_of(m) == index):
                targets = ", ".join(name(t) for t in sorted(graph[module]))
                print(f"  {name(module)} ({count_code_lines(crate.files[module])} lines) -> {targets}")
    for problem in problems:
        print(problem)
    if problems:
        print(f"scripts/layers.py: {len(problems)} problem(s)")
        return 1
    print(f"scripts/layers.py: {len(graph)} files, {len(LAYERS)} layers, no upward import, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
