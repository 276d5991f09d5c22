#!/usr/bin/env python3
"""Checks the layering of Shepherd's crates, file by file.

    python3 scripts/check-layers.py          # every rule; exit 1 on a breach
    python3 scripts/check-layers.py --graph  # and print each file's imports

1. No circles: in every crate, no source file depends (through `use`,
   `crate::…`, `super::…` or `self::…` paths, re-exports included) on a
   file that depends back on it, directly or around a longer loop. A
   parent module's file counts like any other: a child that needs what its
   parent defines is a circle; put the shared part in a file of its own.
2. Edges on top, domain below: in `crates/server`, no domain module
   (anything outside `http/` and the composition root `cluster/`) imports
   an edge (`http/`) or the root, and no edge imports the root.

Paths are read from the source with comments and string literals removed;
doc links do not count.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (crate, module prefixes that are edges, module prefixes that are the root)
LAYERS = {
    "server": {"edges": ["http"], "root": ["cluster"]},
}


def strip(text):
    """Source without comments, string and char literals (same length)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            close = '"' + m.group(1)
            j = text.find(close, i + len(m.group(0)))
            j = n if j < 0 else j + len(close)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i:j + 1]))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", text[i:i + 12]):
            m = re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", text[i:i + 12])
            out.append(" " * len(m.group(0)))
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def modules_of(src_dir):
    """Module path (a tuple) -> file, for every .rs file of a crate's src."""
    mods = {}
    for dirpath, _, names in os.walk(src_dir):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, src_dir)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]):
                rel = []
            if rel and rel[0] == "bin":
                continue
            mods[tuple(rel)] = path
    return mods


def inline_mods(text):
    """(start, end, name) of each inline `mod name { … }` block."""
    spans = []
    for m in re.finditer(r"\bmod\s+([A-Za-z_][A-Za-z0-9_]*)\s*\{", text):
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        spans.append((m.start(), j, m.group(1)))
    return spans


def use_paths(tree):
    """The paths of one `use` tree: `a::{b, c::{d as e}}` -> a::b, a::c::d."""
    tree = re.sub(r"\s+as\s+[A-Za-z_][A-Za-z0-9_]*", "", tree)
    tree = re.sub(r"\s+", "", tree)
    out = []

    def split_top(t):
        items, depth, start = [], 0, 0
        for j, ch in enumerate(t):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(t[start:j])
                start = j + 1
        items.append(t[start:])
        return [i for i in items if i]

    def walk(prefix, t):
        i = t.find("{")
        if i < 0:
            out.append(prefix + t)
            return
        head, inner = t[:i], t[i + 1:t.rfind("}")]
        for item in split_top(inner):
            walk(prefix + head, item)

    for item in split_top(tree):
        walk("", item)
    return [p.rstrip(":") for p in out]


def resolve(mods, here, path):
    """The module (a key of `mods`) a path from module `here` reaches, or None."""
    parts = [p for p in path.split("::") if p]
    if not parts:
        return None
    if parts[0] == "crate":
        base, parts = (), parts[1:]
    elif parts[0] in ("self", "super"):
        base = here
        while parts and parts[0] in ("self", "super"):
            if parts[0] == "super":
                base = base[:-1]
            parts = parts[1:]
    elif here + (parts[0],) in mods:
        base = here  # a child module named without `self::`
    else:
        return None  # another crate, std, or a local item
    best = base if base in mods else None
    cur = base
    for p in parts:
        cur = cur + (p,)
        if cur in mods:
            best = cur
        else:
            break
    return best


PATH = re.compile(r"(?<![A-Za-z0-9_:])((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def imports(mods, key, path):
    with open(path, encoding="utf-8") as f:
        text = strip(f.read())
    spans = inline_mods(text)

    def scope(pos):
        inner = key
        for start, end, name in spans:
            if start <= pos < end:
                inner = inner + (name,)
        return inner

    found = set()
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        here = scope(m.start())
        for p in use_paths(m.group(1)):
            target = resolve(mods, here, p)
            if target is not None:
                found.add(target)
    for m in PATH.finditer(text):
        target = resolve(mods, scope(m.start()), m.group(1))
        if target is not None:
            found.add(target)
    for m in re.finditer(r"(?<![A-Za-z0-9_:])([a-z_][a-z0-9_]*)::", text):
        if key + (m.group(1),) in mods and not text[max(0, m.start() - 4):m.start()].endswith("mod "):
            found.add(key + (m.group(1),))
    found.discard(key)
    # A file's own inline modules are the file.
    return {t for t in found if t != key}


def cycles(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(100000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def name(key):
    return "::".join(key) or "(crate root)"


def check(root, show=False):
    """Every breach under `root`/crates, as lines."""
    errors = []
    crates_dir = os.path.join(root, "crates")
    for crate in sorted(os.listdir(crates_dir)):
        src = os.path.join(crates_dir, crate, "src")
        if not os.path.isdir(src):
            continue
        mods = modules_of(src)
        graph = {k: imports(mods, k, p) for k, p in mods.items()}
        # The crate root declares modules and re-exports; that is not a layer.
        root_deps = graph.pop((), set())
        for k in graph:
            graph[k].discard(())
        if show:
            for k in sorted(graph):
                print(f"{crate}: {name(k)} -> {', '.join(name(t) for t in sorted(graph[k]))}")
        for comp in cycles(graph):
            errors.append(f"crates/{crate}: a circle among {len(comp)} files: " + ", ".join(name(k) for k in comp))
        rules = LAYERS.get(crate)
        if rules:
            def under(k, prefixes):
                return bool(k) and k[0] in prefixes
            for k, targets in sorted(graph.items()):
                for t in sorted(targets):
                    if under(t, rules["root"]) and not under(k, rules["root"]):
                        errors.append(f"crates/{crate}: {name(k)} imports the composition root {name(t)}")
                    elif under(t, rules["edges"]) and not under(k, rules["edges"] + rules["root"]):
                        errors.append(f"crates/{crate}: domain module {name(k)} imports the edge {name(t)}")
        del root_deps
    return errors


def self_test():
    """The check finds what it must: a circle, a domain module importing an
    edge, an edge importing the root; and passes a clean crate."""
    import tempfile

    files = {
        "crates/server/src/lib.rs": "pub mod cluster; pub mod http; pub mod service;",
        "crates/server/src/cluster/mod.rs": "use crate::http::router;",
        "crates/server/src/http/mod.rs": "pub mod state; use crate::service::tasks::Tasks; pub fn router() {}",
        "crates/server/src/http/state.rs": "// nothing",
        "crates/server/src/service/mod.rs": "pub mod tasks; pub mod codes;",
        "crates/server/src/service/tasks.rs": "use super::codes::Code; pub struct Tasks;",
        "crates/server/src/service/codes.rs": "pub struct Code; fn f() { crate::service::tasks::Tasks; }",
        "crates/other/src/lib.rs": "mod a; mod b;",
        "crates/other/src/a.rs": "// `use crate::b::X;` in a comment is no import\nconst S: &str = \"crate::b::X\";",
        "crates/other/src/b.rs": "use crate::a::Y;",
    }
    with tempfile.TemporaryDirectory() as root:
        def write(extra):
            for path, text in {**files, **extra}.items():
                os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
                with open(os.path.join(root, path), "w") as f:
                    f.write(text)
        write({})
        errors = check(root)
        assert any("circle among 2 files: service::codes, service::tasks" in e for e in errors), errors
        assert len(errors) == 1, errors
        write({
            "crates/server/src/service/codes.rs": "pub struct Code; fn f() { crate::http::state::AppState; }",
            "crates/server/src/http/state.rs": "use crate::cluster::Cluster;",
        })
        errors = check(root)
        assert any("domain module service::codes imports the edge http::state" in e for e in errors), errors
        assert any("http::state imports the composition root cluster" in e for e in errors), errors
        write({"crates/server/src/service/codes.rs": "pub struct Code;", "crates/server/src/http/state.rs": "// nothing"})
        assert check(root) == [], check(root)


def main():
    if "--self-test" in sys.argv[1:]:
        self_test()
        print("check-layers: the self-test finds a circle, a domain module importing an edge and an edge importing the root")
    errors = check(ROOT, show="--graph" in sys.argv[1:])
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"check-layers: {len(errors)} breach(es)", file=sys.stderr)
        sys.exit(1)
    print("check-layers: no circles; edges on top, domain below")


if __name__ == "__main__":
    main()
