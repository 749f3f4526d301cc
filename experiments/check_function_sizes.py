"""Count the code lines of every function in pneumoxai and list those over a limit.

A code line is a source line of the function that holds code: blank lines, comment-only
lines and the docstring do not count (nested functions count toward their parent too).

Usage: ``python experiments/check_function_sizes.py [--limit 60] [--top 10] [PATH ...]``;
exits 1 when a function is over the limit. ``tests/test_function_sizes.py`` runs it on the package.
"""

import argparse
import ast
import io
import pathlib
import sys
import tokenize

LIMIT = 60


def _code_lines(source):
    """Line numbers that hold a token other than comments, newlines and indentation."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENCODING, tokenize.ENDMARKER}
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def _docstring_lines(node):
    body = getattr(node, "body", None)
    if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return set(range(body[0].lineno, body[0].end_lineno + 1))
    return set()


def function_sizes(path):
    """``(qualified name, first line, code lines)`` of every function and method in one file."""
    source = pathlib.Path(path).read_text()
    tree = ast.parse(source)
    code = _code_lines(source)
    docstrings = set()
    for node in ast.walk(tree):
        docstrings |= _docstring_lines(node)
    sizes = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            name = f"{prefix}{getattr(child, 'name', '')}"
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = set(range(child.lineno, child.end_lineno + 1)) & code
                sizes.append((name, child.lineno, len(lines - docstrings)))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return sizes


def oversized(paths, limit=LIMIT):
    """``(file, name, line, code lines)`` of every function over ``limit``, largest first."""
    found = []
    for root in paths:
        root = pathlib.Path(root)
        for path in sorted(root.rglob("*.py") if root.is_dir() else [root]):
            found += [(str(path), name, line, n) for name, line, n in function_sizes(path) if n > limit]
    return sorted(found, key=lambda row: -row[3])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=[str(pathlib.Path(__file__).parents[1] / "pneumoxai")])
    parser.add_argument("--limit", type=int, default=LIMIT)
    parser.add_argument("--top", type=int, default=0, help="also list the N longest functions")
    args = parser.parse_args(argv)
    if args.top:
        rows = []
        for root in map(pathlib.Path, args.paths):
            for path in sorted(root.rglob("*.py") if root.is_dir() else [root]):
                rows += [(str(path), name, line, n) for name, line, n in function_sizes(path)]
        for path, name, line, n in sorted(rows, key=lambda row: -row[3])[:args.top]:
            sys.stdout.write(f"{n:4d}  {path}:{line}  {name}\n")
    over = oversized(args.paths, args.limit)
    for path, name, line, n in over:
        sys.stdout.write(f"over {args.limit}: {n:4d}  {path}:{line}  {name}\n")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
