#!/usr/bin/env python3
"""Checks that the tests a document names exist.

SECURITY.md's promise table, doc/pitfalls.md's "Guarded by" paragraphs and the other
documents name the tests that keep what they promise: a test file in backticks, then the quoted names of tests
(TEST_CASE) or sections (SECTION) in it. A name that matches none is a promise whose
test was renamed or removed. A quoted name that starts with "..." stands for the end of
a test name (the start as in the name before it). Other quoted text after a file
(a benchmark's row, a document's section) is named after a backticked word that is not
a test file, which ends the file's list.

usage: scripts/check-test-names.py [DOC ...]   (default: README.md, SECURITY.md, doc/*.md)
Exit status 1 when a name matches no test.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEST_FILE = re.compile(r"^[\w./-]+\.(?:cpp|hpp)$")


def test_names():
    """Names of the TEST_CASEs and SECTIONs of each test file, by file name."""
    names = {}
    for path in sorted(ROOT.glob("tests/**/*.[ch]pp")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r'\b(?:TEST_CASE|SECTION)\s*\(\s*((?:"(?:[^"\\]|\\.)*"\s*)+)', text):
            literal = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1)))
            names.setdefault(path.name, set()).add(literal.replace('\\"', '"'))
    return names


def unresolved(doc, names):
    text = (ROOT / doc).read_text(encoding="utf-8")
    # A citation may run across the lines of a paragraph, a list item or a table row,
    # never past it.
    blocks = re.split(r"\n\s*\n|\n(?=\|)|\n(?=\s*(?:\d+\.|[-*]) )", text)
    missing = []
    for block in blocks:
        missing += unresolved_in(re.sub(r"\s*\n\s*", " ", block), names)
    return missing


def unresolved_in(flat, names):
    missing = []
    current = None
    for tok in re.finditer(r"`([^`]+)`|\"([^\"]+)\"|\b[\w/-]+\.md\b", flat):
        if tok.group(1) is None and tok.group(2) is None:
            current = None  # a document named: what follows is its section, not a test
            continue
        if tok.group(1) is not None:
            word = tok.group(1)
            name = pathlib.Path(word).name
            # A test file: one with tests, or one named as tests are (then gone, or renamed).
            is_test = TEST_FILE.match(word) and (name in names or name.endswith("_test.cpp"))
            current = name if is_test else None
            if is_test and name not in names:
                missing.append((name, "(the file)"))
            continue
        quoted = tok.group(2)
        if current is None:
            continue
        if current not in names:
            continue  # reported with the file
        pool = names[current]
        if quoted.startswith(("...", "…")):
            tail = quoted.lstrip(".…").strip()
            ok = any(n.endswith(tail) for n in pool)
        elif quoted.endswith(("...", "…")):
            head = quoted.rstrip(".…").strip()
            ok = any(n.startswith(head) for n in pool)
        else:
            ok = quoted in pool
        if not ok:
            missing.append((current, quoted))
    return missing


def main():
    docs = sys.argv[1:] or ["README.md", "SECURITY.md"] + sorted(
        str(p.relative_to(ROOT)) for p in ROOT.glob("doc/*.md"))
    names = test_names()
    failed = False
    for doc in docs:
        for file, quoted in unresolved(doc, names):
            print(f'{doc}: `{file}` "{quoted}": no test or section of that name')
            failed = True
    if failed:
        sys.exit(1)
    print(f"check-test-names: every test named in {len(docs)} documents exists")


if __name__ == "__main__":
    main()
