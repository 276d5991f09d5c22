#!/usr/bin/env python3
"""Checks that every relative link resolves.

    python3 scripts/check-links.py            # the Markdown sources
    python3 scripts/check-links.py BOOK_DIR   # and the built book's HTML

Sources: README.md, ARCHITECTURE.md, bench/RESULTS.md and docs/**/*.md.
A link must name a file that exists, and an anchor (#part) a heading of
that file. A page of the book (docs/) may link only inside docs/ (the book
is published without the rest of the repository), and every page it links
must be in docs/SUMMARY.md (mdBook builds nothing else). In the built book
every href and src must name a file there, and every #anchor an id.
"""
import html.parser
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def slug(heading):
    """A heading's anchor as GitHub and mdBook make it."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    out = []
    for ch in text:
        if ch.isalnum() or ch in "-_":
            out.append(ch)
        elif ch.isspace():
            out.append("-")
    return "".join(out)


def strip_code(text):
    """Text without fenced blocks and inline code (links there are examples)."""
    out, fence = [], None
    for line in text.split("\n"):
        m = re.match(r"^\s*(```+|~~~+)", line)
        if m:
            if fence is None:
                fence = m.group(1)[:3]
            elif line.strip().startswith(fence):
                fence = None
            out.append("")
            continue
        out.append("" if fence else re.sub(r"`[^`]*`", "``", line))
    return "\n".join(out)


def anchors_of(path, cache={}):
    if path not in cache:
        ids, seen = set(), {}
        with open(path, encoding="utf-8") as f:
            for line in strip_code(f.read()).split("\n"):
                m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
                if m:
                    s = slug(m.group(1))
                    n = seen.get(s, 0)
                    seen[s] = n + 1
                    ids.add(s if n == 0 else f"{s}-{n}")
        cache[path] = ids
    return cache[path]


def sources():
    files = [os.path.join(ROOT, f) for f in ("README.md", "ARCHITECTURE.md", "bench/RESULTS.md")]
    for dirpath, _, names in os.walk(DOCS):
        files += [os.path.join(dirpath, n) for n in names if n.endswith(".md")]
    return sorted(f for f in files if os.path.exists(f))


def summary_pages():
    with open(os.path.join(DOCS, "SUMMARY.md"), encoding="utf-8") as f:
        return {os.path.normpath(os.path.join(DOCS, t)) for t in LINK.findall(f.read())}


def check_sources():
    errors = []
    in_book = summary_pages()
    for src in sources():
        with open(src, encoding="utf-8") as f:
            text = strip_code(f.read())
        rel_src = os.path.relpath(src, ROOT)
        for lineno, line in enumerate(text.split("\n"), 1):
            for target in LINK.findall(line):
                if EXTERNAL.match(target):
                    continue
                where = f"{rel_src}:{lineno}: {target}"
                path, _, anchor = target.partition("#")
                full = os.path.normpath(os.path.join(os.path.dirname(src), path)) if path else src
                if not os.path.exists(full):
                    errors.append(f"{where}: no such file")
                    continue
                if src.startswith(DOCS + os.sep):
                    if not full.startswith(DOCS + os.sep):
                        errors.append(f"{where}: a book page links outside docs/")
                        continue
                    if full.endswith(".md") and full not in in_book:
                        errors.append(f"{where}: {os.path.relpath(full, ROOT)} is not in docs/SUMMARY.md")
                if anchor and full.endswith(".md") and anchor not in anchors_of(full):
                    errors.append(f"{where}: no heading #{anchor}")
    for page in sorted(in_book):
        if not os.path.exists(page):
            errors.append(f"docs/SUMMARY.md: {os.path.relpath(page, ROOT)}: no such file")
    return errors


class Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("href", "src") and value:
                self.refs.append(value)


def check_book(book):
    errors, parsed = [], {}

    def parse(path):
        if path not in parsed:
            p = Refs()
            with open(path, encoding="utf-8") as f:
                p.feed(f.read())
            parsed[path] = p
        return parsed[path]

    pages = [os.path.join(d, n) for d, _, ns in os.walk(book) for n in ns if n.endswith(".html")]
    if not pages:
        return [f"{book}: no HTML pages (did mdBook run?)"]
    for page in sorted(pages):
        for ref in parse(page).refs:
            if EXTERNAL.match(ref) or ref.startswith("/"):
                continue  # another site, or this one's root (the 404 page's), not a relative link
            path, _, anchor = ref.partition("#")
            path = path.split("?", 1)[0]
            full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if os.path.isdir(full):
                full = os.path.join(full, "index.html")
            where = f"{os.path.relpath(page, book)}: {ref}"
            if not os.path.exists(full):
                errors.append(f"{where}: no such file in the book")
            elif anchor and full.endswith(".html") and anchor not in parse(full).ids:
                errors.append(f"{where}: no id #{anchor}")
    return errors


def main():
    errors = check_sources()
    if len(sys.argv) > 1:
        errors += check_book(sys.argv[1])
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"check-links: {len(errors)} broken link(s)", file=sys.stderr)
        sys.exit(1)
    print("check-links: every relative link resolves")


if __name__ == "__main__":
    main()
