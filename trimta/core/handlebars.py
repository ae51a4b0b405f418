"""Handlebars templates as KumoMTA renders them (handlebars-rust 6, recursive lookup, string helpers).

KumoMTA's inject API offers ``"template_dialect": "Handlebars"``, rendered by the Rust crate
handlebars-rust with ``set_recursive_lookup(true)`` and its ``string_helpers`` feature. No
maintained Python library renders that dialect (see docs/api.md), so this module is an
interpreter of its own: a scanner and parser build a tree once (`compile_template`), and
`Template.render` walks it per recipient. Nothing is compiled to Python, nothing is
``exec``'d; a template can only reach the data it is given.

What it follows, observable in the output, is handlebars-rust's behaviour rather than
handlebars.js's where the two differ:

- ``{{x}}`` escapes HTML (``& < > " ' ` =``) only when the template escapes at all (KumoMTA:
  templates whose name ends in ``.html``); ``{{{x}}}`` and ``{{&x}}`` never do, and, as in
  handlebars-rust, turn escaping on for the rest of the render once they are done.
- Values render as handlebars-rust renders JSON: ``null`` and missing values as nothing,
  ``true``/``false``, numbers as serde_json prints them (``1.0``, ``1e+21``), arrays as
  ``[a, b]``, objects as ``[object]``.
- Paths: ``a.b``, ``a/b``, ``this``, ``./a``, ``../a``, ``@root.a``, ``[any key]``, ``a.0``,
  ``@index``/``@key``/``@first``/``@last`` (``@../index`` one block up), block parameters.
  A plain name not found in the current block is looked up in the enclosing ones
  (recursive lookup).
- Helpers: ``if``/``unless`` (``includeZero``), ``each`` (arrays, objects in key order,
  ``{{else}}``), ``with``, ``lookup``, ``raw``, ``log`` (renders nothing), ``eq ne gt gte lt
  lte and or not len``, and ``lowerCamelCase upperCamelCase snakeCase kebabCase
  shoutySnakeCase shoutyKebabCase titleCase trainCase``. Any other helper name is a render
  error (``Helper not found NAME``), as are sections on a non-helper (``{{#person}}``) and
  handlebars.js's ``{{^x}}`` inverse sections outside a block, which handlebars-rust does
  not parse. Partials and decorators are not supported (a syntax error saying so).
- Whitespace: ``~`` strips, block, ``else`` and comment tags alone on their line take the
  line with them, raw blocks (``{{{{raw}}}}``) and ``\\{{`` escapes.

Budgets (`Limits`) bound what a hostile template can cost: output size, nesting depth,
loop iterations and evaluation steps; an optional `check` callable, called every few
thousand steps, lets the caller add a deadline without this module reading a clock.
Every failure is a `HandlebarsError`: `HandlebarsSyntaxError` (with line and column) when
compiling, `HandlebarsRenderError` (handlebars-rust's wording) or `HandlebarsBudgetError`
when rendering.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "HandlebarsBudgetError",
    "HandlebarsError",
    "HandlebarsRenderError",
    "HandlebarsSyntaxError",
    "Limits",
    "Template",
    "compile_template",
    "escape_html",
]


# --- errors ----------------------------------------------------------------------------


class HandlebarsError(Exception):
    """Any failure of a Handlebars template, compiling or rendering."""


class HandlebarsSyntaxError(HandlebarsError):
    """The template does not parse; `line` and `column` (1-based) say where."""

    def __init__(self, reason: str, line: int, column: int, name: str | None = None) -> None:
        self.reason = reason
        self.line = line
        self.column = column
        self.name = name
        super().__init__(reason, line, column, name)

    def __str__(self) -> str:
        where = f"template \"{self.name}\" " if self.name else ""
        return f"{self.reason} ({where}line {self.line}, column {self.column})"


class HandlebarsRenderError(HandlebarsError):
    """Rendering failed: handlebars-rust's reason, where in the template it happened."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.name: str | None = None
        self.line: int | None = None
        self.column: int | None = None
        super().__init__(reason)

    def __str__(self) -> str:
        if self.line is None:
            return self.reason
        return (f"Error rendering \"{self.name or 'Unnamed template'}\" line {self.line}, "
                f"col {self.column}: {self.reason}")


class HandlebarsBudgetError(HandlebarsRenderError):
    """The render would exceed one of its `Limits`."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What compiling and rendering one template may cost."""

    max_chars: int = 20_000_000  # characters of output
    max_depth: int = 100  # nesting of blocks and subexpressions
    max_iterations: int = 1_000_000  # loop iterations of one render
    max_steps: int = 10_000_000  # elements, parameters and iterations evaluated in one render
    max_value_depth: int = 200  # nesting of a data value the template renders or compares


DEFAULT_LIMITS = Limits()
_CHECK_EVERY = 4096  # steps between two calls of the caller's `check`


# --- the tree ----------------------------------------------------------------------------


class _Rule:
    """A path segment that is not a name: ``../``, ``@root``, ``@``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


UP = _Rule("..")
ROOT = _Rule("@root")
LOCAL = _Rule("@")
Seg = Union[str, _Rule]


@dataclass(frozen=True, slots=True)
class Path:
    raw: str
    segs: tuple[Seg, ...]
    local: tuple[int, str] | None = None  # (levels up, name) of ``@name``


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any


@dataclass(frozen=True, slots=True)
class Call:
    """A helper call or a value: ``name params... key=value...``."""

    name: str | Path | Call  # an identifier (helper), or, alone, a path or a subexpression
    params: tuple[Param, ...] = ()
    hash: tuple[tuple[str, Param], ...] = ()

    @property
    def name_only(self) -> bool:
        return not self.params and not self.hash


Param = Union[Path, Literal, Call]


@dataclass(slots=True)
class Text:
    text: str
    line: int = 0
    column: int = 0


@dataclass(slots=True)
class Expr:
    call: Call
    raw: bool  # {{{x}}} or {{&x}}
    line: int = 0
    column: int = 0


@dataclass(slots=True)
class Block:
    call: Call
    block_params: tuple[str, ...] = ()
    body: list[Node] = field(default_factory=list)
    inverse: list[Node] | None = None
    line: int = 0
    column: int = 0


Node = Union[Text, Expr, Block]


# --- scanning ------------------------------------------------------------------------------

_WS = " \t\n\r"  # pest's WHITESPACE in handlebars-rust's grammar
# Unicode White_Space, what Rust's str::trim_* remove
_UWS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
       "\u2028\u2029\u202f\u205f\u3000"
_TEXT_STOP = re.compile(r"\\|\{\{")
_NUMBER = re.compile(r"-?[0-9]+\.?[0-9]*(?:E-?[0-9]+)?")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _symbol_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "-_$:") or not c.isascii()


class _Fail(Exception):
    """A grammar alternative that does not match, and how far it got."""

    def __init__(self, pos: int, reason: str) -> None:
        self.pos = pos
        self.reason = reason


@dataclass(slots=True)
class _Tag:
    kind: str  # expr, html, open, else, chain, close, raw_open, raw_close, comment
    start: int
    end: int
    call: Call | None = None
    block_params: tuple[str, ...] = ()
    close_name: str = ""
    omit_pre: bool = False
    omit_pro: bool = False


@dataclass(slots=True)
class _Piece:
    """Text between tags (escapes already applied)."""

    text: str
    start: int
    raw_block: bool = False


class _Parser:
    def __init__(self, source: str, name: str | None, limits: Limits) -> None:
        self.src = source
        self.n = len(source)
        self.name = name
        self.limits = limits
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", source)]

    # -- positions and errors

    def line_col(self, pos: int) -> tuple[int, int]:
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, pos - self._line_starts[lo] + 1

    def error(self, pos: int, reason: str) -> HandlebarsSyntaxError:
        line, col = self.line_col(pos)
        return HandlebarsSyntaxError(reason, line, col, self.name)

    # -- low level

    def ws(self, p: int) -> int:
        while p < self.n and self.src[p] in _WS:
            p += 1
        return p

    def lit(self, p: int, text: str) -> int:
        if not self.src.startswith(text, p):
            raise _Fail(p, f"expected {text!r}")
        return p + len(text)

    def identifier(self, p: int) -> tuple[str, int]:
        q = p
        while q < self.n and _symbol_char(self.src[q]):
            q += 1
        if q == p:
            raise _Fail(p, "expected a name")
        return self.src[p:q], q

    def tilde(self, p: int) -> tuple[bool, int]:
        if p < self.n and self.src[p] == "~":
            return True, p + 1
        return False, p

    # -- paths: path_current? (@root sep)? @? (../)* item (sep item)*

    def path_item(self, p: int) -> tuple[str, int]:
        if p < self.n and self.src[p] == "[":
            q = self.src.find("]", p + 1)
            if q < 0:
                raise _Fail(p, "expected ']'")
            return self.src[p + 1:q], q + 1
        return self.identifier(p)

    def path(self, p: int) -> tuple[Path, int]:
        src, start = self.src, p
        segs: list[Seg] = []
        if src.startswith("this", p) and src[p + 4:p + 5] in ("/", ".") and p + 4 < self.n:
            p += 5
        elif src.startswith("./", p):
            p += 2
        if src.startswith("@root", p) and p + 5 < self.n and src[p + 5] in "/.":
            segs.append(ROOT)
            p += 6
        if p < self.n and src[p] == "@":
            segs.append(LOCAL)
            p += 1
        while src.startswith("..", p) and p + 2 < self.n and src[p + 2] in "/.":
            segs.append(UP)
            p += 3
        name, p = self.path_item(p)
        names = [name]
        while p < self.n and src[p] in "./":
            try:
                name, q = self.path_item(p + 1)
            except _Fail:
                break
            names.append(name)
            p = q
        segs.extend(n for n in names if n != "this")
        local = None
        if segs and segs[0] is LOCAL:
            level = 0
            while level + 1 < len(segs) and segs[level + 1] is UP:
                level += 1
            if level + 1 < len(segs) and isinstance(segs[level + 1], str):
                local = (level, str(segs[level + 1]))
        return Path(src[start:p], tuple(segs), local), p

    # -- literals

    def string_literal(self, p: int) -> tuple[int, bool]:
        quote = self.src[p]
        q = p + 1
        while q < self.n:
            c = self.src[q]
            if c == quote:
                return q + 1, quote == "'"
            if c == "\\":
                nxt = self.src[q + 1:q + 2]
                if nxt and nxt in (quote + "\\/bfnrt"):
                    q += 2
                    continue
                if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", self.src[q + 2:q + 6]):
                    q += 6
                    continue
                raise _Fail(q, "invalid escape in a string")
            q += 1
        raise _Fail(p, "unterminated string")

    def literal_end(self, p: int) -> int:
        """The end of the literal at `p` (grammar only), or `_Fail`."""
        src = self.src
        c = src[p:p + 1]
        if c in ("\"", "'"):
            return self.string_literal(p)[0]
        if c == "[":
            q = self.ws(p + 1)
            if src[q:q + 1] != "]" and src[q:q + 1] != ",":
                q = self.ws(self.literal_end(q))
            while src[q:q + 1] == ",":
                q = self.ws(self.literal_end(self.ws(q + 1)))
            return self.lit(q, "]")
        if c == "{":
            q = self.ws(p + 1)

            def member(q: int) -> int:
                if src[q:q + 1] != "\"" and src[q:q + 1] != "'":
                    raise _Fail(q, "expected a string")
                q = self.ws(self.string_literal(q)[0])
                q = self.ws(self.lit(q, ":"))
                return self.ws(self.literal_end(q))

            if src[q:q + 1] in ("\"", "'"):
                q = member(q)
            while src[q:q + 1] == ",":
                q = member(self.ws(q + 1))
            return self.lit(q, "}")
        m = _NUMBER.match(src, p)
        if m and not (m.end() < self.n and _symbol_char(src[m.end()])):
            return m.end()
        for word in ("null", "true", "false"):
            if src.startswith(word, p) and not (p + len(word) < self.n and _symbol_char(src[p + len(word)])):
                return p + len(word)
        raise _Fail(p, "expected a literal")

    def literal_value(self, p: int, q: int) -> Any:
        text = self.src[p:q]
        if text[0] == "'":
            inner = text[1:-1].replace("\\'", "'").replace("\"", "\\\"")
            text = f"\"{inner}\""
        try:
            value = json.loads(text)
            _check_json(value)
        except (ValueError, UnicodeEncodeError, RecursionError):
            raise self.error(p, f"invalid parameter {self.src[p:q]!r}") from None
        return value

    # -- parameters, hashes, expressions

    def keyword_at(self, p: int) -> bool:
        for word in ("as", "else"):
            if self.src.startswith(word, p) and not (p + len(word) < self.n and _symbol_char(self.src[p + len(word)])):
                return True
        return False

    def param(self, p: int, depth: int) -> tuple[Param, int]:
        if self.keyword_at(p):
            raise _Fail(p, "unexpected keyword")
        try:
            q = self.literal_end(p)
        except _Fail:
            pass
        else:
            return Literal(self.literal_value(p, q)), q
        if p < self.n and self.src[p] == "(":
            return self.subexpression(p, depth)
        return self.path(p)

    def hash_pair(self, p: int, depth: int) -> tuple[str, Param, int]:
        key, q = self.identifier(p)
        q = self.ws(q)
        q = self.lit(q, "=")
        value, q = self.param(self.ws(q), depth)
        return key, value, q

    def arguments(self, p: int, depth: int) -> tuple[list[Param], dict[str, Param], int]:
        """(hash|param)* from `p`; returns where the last one ended."""
        params: list[Param] = []
        hashes: dict[str, Param] = {}
        while True:
            q = self.ws(p)  # optional, as pest's implicit whitespace
            try:
                key, value, r = self.hash_pair(q, depth)
                hashes.pop(key, None)
                hashes[key] = value
                p = r
                continue
            except _Fail:
                pass
            try:
                value, r = self.param(q, depth)
            except _Fail:
                return params, hashes, p
            params.append(value)
            p = r

    def subexpression(self, p: int, depth: int) -> tuple[Call, int]:
        if depth >= self.limits.max_depth:
            raise self.error(p, f"expressions nested deeper than {self.limits.max_depth} levels")
        q = self.ws(self.lit(p, "("))
        call: Call | None = None
        try:
            name, r = self.identifier(q)
            params, hashes, r = self.arguments(r, depth + 1)
            if params or hashes:
                call = Call(name, tuple(params), tuple(hashes.items()))
                q = r
        except _Fail:
            pass
        if call is None:
            path, q = self.path(q)
            call = Call(path)
        q = self.lit(self.ws(q), ")")
        return call, q

    def expression_body(self, p: int, helper_only: bool = False) -> tuple[Call, int]:
        """``(identifier (hash|param)+) | name``; `helper_only`: the exp_line of a block."""
        try:
            name, q = self.identifier(p)
            params, hashes, q = self.arguments(q, 1)
            if params or hashes or helper_only:
                return Call(name, tuple(params), tuple(hashes.items())), q
        except _Fail:
            if helper_only:
                raise
        if p < self.n and self.src[p] == "(":
            return self.subexpression(p, 1)
        path, q = self.path(p)
        return Call(path), q

    def block_params(self, p: int) -> tuple[tuple[str, ...], int]:
        q = self.ws(p)
        if not (self.src.startswith("as", q) and not (q + 2 < self.n and _symbol_char(self.src[q + 2]))):
            return (), p
        q = self.lit(self.ws(q + 2), "|")
        first, q = self.identifier(self.ws(q))
        names = [first]
        r = self.ws(q)
        try:
            second, r = self.identifier(r)
            names.append(second)
        except _Fail:
            pass
        q = self.lit(self.ws(r), "|")
        return tuple(names), q

    def close(self, p: int, end: str) -> tuple[bool, int]:
        """Optional ``~``, then `end`."""
        q = self.ws(p)
        omit, q = self.tilde(q)
        q = self.ws(q)
        return omit, self.lit(q, end)

    # -- tags

    def tag(self, p: int) -> _Tag:
        """The tag starting at `p` (``{{``)."""
        src = self.src
        if src.startswith("{{{{", p):
            return self.raw_open(p)
        if src.startswith("{{!", p):
            return self.comment(p)
        failures: list[_Fail] = []
        if src.startswith("{{{", p):
            try:  # {{{~ x ~}}}
                q = self.ws(p + 3)
                pre, q = self.tilde(q)
                call, q = self.expression_body(self.ws(q))
                pro, q = self.close(q, "}}}")
                return _Tag("html", p, q, call, omit_pre=pre, omit_pro=pro)
            except _Fail as exc:
                failures.append(exc)
        q = self.ws(p + 2)
        pre, q = self.tilde(q)
        q = self.ws(q)
        c = src[q:q + 1]
        try:
            if c == "{":  # {{~{ x }~}}
                call, r = self.expression_body(self.ws(q + 1))
                r = self.lit(self.ws(r), "}")
                pro, r = self.close(r, "}}")
                return _Tag("html", p, r, call, omit_pre=pre, omit_pro=pro)
            if c == "&":
                r = self.ws(q + 1)
                if src[r:r + 1] == "(":
                    call, r = self.subexpression(r, 1)
                else:
                    path, r = self.path(r)
                    call = Call(path)
                pro, r = self.close(r, "}}")
                return _Tag("html", p, r, call, omit_pre=pre, omit_pro=pro)
            if c == "#":
                r = self.ws(q + 1)
                if src[r:r + 1] == ">":
                    raise self.error(p, "partials are not supported")
                if src[r:r + 1] == "*":
                    raise self.error(p, "decorators are not supported")
                call, r = self.expression_body(r, helper_only=True)
                names, r = self.block_params(r)
                pro, r = self.close(r, "}}")
                return _Tag("open", p, r, call, names, omit_pre=pre, omit_pro=pro)
            if c == "/":
                r = self.ws(q + 1)
                name = ""
                try:
                    name, r = self.identifier(r)
                except _Fail:
                    pass
                pro, r = self.close(r, "}}")
                return _Tag("close", p, r, close_name=name, omit_pre=pre, omit_pro=pro)
            if c == ">":
                raise self.error(p, "partials are not supported")
            if c == "*":
                raise self.error(p, "decorators are not supported")
            if src.startswith("else", q) or c == "^":
                r = self.ws(q + (1 if c == "^" else 4))
                try:
                    pro, s = self.close(r, "}}")
                    return _Tag("else", p, s, omit_pre=pre, omit_pro=pro)
                except _Fail:
                    pass
                try:
                    call, s = self.expression_body(r, helper_only=True)
                    names, s = self.block_params(s)
                    pro, s = self.close(s, "}}")
                    return _Tag("chain", p, s, call, names, omit_pre=pre, omit_pro=pro)
                except _Fail:
                    pass  # not an else tag: perhaps a path like else.x
            call, r = self.expression_body(q)
            pro, r = self.close(r, "}}")
            return _Tag("expr", p, r, call, omit_pre=pre, omit_pro=pro)
        except _Fail as exc:
            failures.append(exc)
        worst = max(failures, key=lambda f: f.pos)
        raise self.error(worst.pos, f"invalid handlebars syntax: {self.at_end(worst)}")

    def at_end(self, failure: _Fail) -> str:
        return f"unexpected end of input, {failure.reason}" if failure.pos >= self.n else failure.reason

    def comment(self, p: int) -> _Tag:
        q = self.ws(p + 3)
        if self.src.startswith("--", q):
            end = self.src.find("--}}", q + 2)
            if end >= 0:
                return _Tag("comment", p, end + 4)
        end = self.src.find("}}", p + 3)
        if end < 0:
            raise self.error(p, "invalid handlebars syntax: unterminated comment")
        return _Tag("comment", p, end + 2)

    def raw_open(self, p: int) -> _Tag:
        try:
            q = self.ws(p + 4)
            pre, q = self.tilde(q)
            call, q = self.expression_body(self.ws(q), helper_only=True)
            names, q = self.block_params(q)
            pro, q = self.close(q, "}}}}")
        except _Fail as exc:
            raise self.error(exc.pos, f"invalid handlebars syntax: {self.at_end(exc)}") from None
        return _Tag("raw_open", p, q, call, names, omit_pre=pre, omit_pro=pro)

    def raw_close(self, p: int) -> _Tag:
        try:
            q = self.ws(p + 4)
            pre, q = self.tilde(q)
            q = self.lit(self.ws(q), "/")
            name = ""
            try:
                name, q = self.identifier(self.ws(q))
            except _Fail:
                pass
            pro, q = self.close(q, "}}}}")
        except _Fail as exc:
            raise self.error(exc.pos, f"invalid handlebars syntax: {self.at_end(exc)}") from None
        return _Tag("raw_close", p, q, close_name=name, omit_pre=pre, omit_pro=pro)

    # -- text

    def text(self, p: int, raw_block: bool) -> tuple[str, int]:
        """Text from `p` to the next tag (``{{``; in a raw block ``{{{{``), escapes applied."""
        src, out = self.src, []
        stop = "{{{{" if raw_block else "{{"
        q = p
        while q < self.n:
            c = src[q]
            if c == "\\":
                run = q
                while run < self.n and src[run] == "\\":
                    run += 1
                if src.startswith("{{", run):
                    if run - q == 1:  # \{{ (or \{{{{): literal braces
                        width = 4 if src.startswith("{{{{", run) else 2
                        out.append(src[run:run + width])
                        q = run + width
                        continue
                    out.append(src[q + 1:run])  # \\{{: one backslash less, then the tag
                    q = run
                    if not raw_block or src.startswith("{{{{", run):
                        break
                    out.append("{{")
                    q = run + 2
                    continue
                out.append(src[q:run])
                q = run
                continue
            if src.startswith(stop, q):
                break
            # plain text up to the next backslash or brace pair
            m = _TEXT_STOP.search(src, q + 1)
            r = m.start() if m else self.n
            out.append(src[q:r])
            q = r
        return "".join(out), q

    # -- the whole template

    def lex(self) -> list[_Tag | _Piece]:
        items: list[_Tag | _Piece] = []
        p = 0
        while p < self.n:
            if self.src.startswith("{{", p):
                tag = self.tag(p)
                items.append(tag)
                p = tag.end
                if tag.kind == "raw_open":
                    # handlebars-rust's grammar skips whitespace before a raw block's text
                    q = self.ws(p)
                    text, r = self.text(q, raw_block=True)
                    if r >= self.n:
                        raise self.error(r, "invalid handlebars syntax: unclosed raw block")
                    items.append(_Piece(text, q, raw_block=True))
                    closing = self.raw_close(r)
                    items.append(closing)
                    p = closing.end
            else:
                text, q = self.text(p, raw_block=False)
                if q == p:  # a lone "{{" that text() stops at: cannot happen, but never loop
                    raise self.error(p, "invalid handlebars syntax")
                items.append(_Piece(text, p))
                p = q
        return items

    def standalone(self, tag: _Tag) -> tuple[bool, bool]:
        """(alone on its line, preceded only by blanks on it) as handlebars-rust decides."""
        src, q = self.src, tag.end
        while q < self.n and src[q] in " \t":
            q += 1
        if not (q < self.n and src[q] in "\n\r") and tag.end != self.n:
            return False, False
        q = tag.start
        while q > 0 and src[q - 1] in " \t":
            q -= 1
        leading = q == 0 or src[q - 1] in "\n\r"
        return tag.start == 0 or leading, leading

    def whitespace(self, items: list[_Tag | _Piece]) -> None:
        """Apply ``~`` and standalone-line stripping to the text pieces, in place."""
        omit_pro = False
        trim_line = False
        for i, item in enumerate(items):
            previous = items[i - 1] if i else None
            if isinstance(item, _Piece):
                blank = all(c in _WS for c in item.text) and not item.raw_block
                if omit_pro:
                    item.text = item.text.lstrip(_UWS)
                    if blank:
                        continue  # handlebars-rust drops such a gap without looking at it
                elif trim_line:
                    text = item.text.lstrip(" \t")
                    item.text = text[2:] if text.startswith("\r\n") else text[1:] if text.startswith("\n") else text
                if not item.raw_block:
                    trim_line = False
                continue
            if item.kind != "comment":
                if item.omit_pre and isinstance(previous, _Piece):
                    previous.text = previous.text.rstrip(_UWS)
                omit_pro = item.omit_pro
            if item.kind in ("expr", "html"):
                continue
            trim_line, leading = self.standalone(item)
            if leading and isinstance(previous, _Piece):
                previous.text = previous.text.rstrip(" \t")

    def parse(self) -> list[Node]:
        items = self.lex()
        self.whitespace(items)
        root: list[Node] = []
        # (the block, the list nodes go to, the tag that opened it, seen a plain else)
        stack: list[tuple[Block, list[Node], _Tag, bool]] = []
        target = root
        for item in items:
            if isinstance(item, _Piece):
                if item.text:
                    line, col = self.line_col(item.start)
                    target.append(Text(item.text, line, col))
                continue
            line, col = self.line_col(item.start)
            kind = item.kind
            if kind == "comment":
                continue
            if kind in ("expr", "html"):
                assert item.call is not None
                target.append(Expr(item.call, kind == "html", line, col))
            elif kind in ("open", "raw_open"):
                if len(stack) >= self.limits.max_depth:
                    raise self.error(item.start, f"blocks nested deeper than {self.limits.max_depth} levels")
                assert item.call is not None
                block = Block(item.call, item.block_params, line=line, column=col)
                target.append(block)
                stack.append((block, block.body, item, False))
                target = block.body
            elif kind in ("else", "chain"):
                if not stack or stack[-1][2].kind == "raw_open":
                    raise self.error(item.start, "invalid handlebars syntax: {{else}} outside a block")
                block, _, opener, seen_else = stack[-1]
                if seen_else:
                    raise self.error(item.start, "invalid handlebars syntax: expected the end of the block after {{else}}")
                current = block
                while current.inverse is not None:  # the last link of an else chain
                    last = current.inverse[0]
                    assert isinstance(last, Block)
                    current = last
                if kind == "else":
                    current.inverse = []
                    target = current.inverse
                    stack[-1] = (block, target, opener, True)
                else:
                    assert item.call is not None
                    link = Block(item.call, item.block_params, line=line, column=col)
                    current.inverse = [link]
                    target = link.body
                    stack[-1] = (block, target, opener, False)
            elif kind in ("close", "raw_close"):
                if not stack:
                    raise self.error(item.start, "invalid handlebars syntax: a block is closed that was never opened")
                block, _, opener, _ = stack.pop()
                name = block.call.name
                opened = name if isinstance(name, str) else ""
                if opened != item.close_name:
                    raise self.error(item.start, f"helper {json.dumps(opened)} was opened, but "
                                                 f"{json.dumps(item.close_name)} is closing")
                target = stack[-1][1] if stack else root
        if stack:
            block, _, opener, _ = stack[-1]
            raise self.error(self.n, f"invalid handlebars syntax: the block {{{{#{block.call.name}}}}} "
                                     f"(line {block.line}) is never closed")
        return root


def _check_json(value: Any) -> None:
    """Refuse what serde_json would not hold: lone surrogates."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, list):
        for v in value:
            _check_json(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            k.encode("utf-8")
            _check_json(v)


# --- values ----------------------------------------------------------------------------------

_ESCAPES = str.maketrans({"<": "&lt;", ">": "&gt;", "\"": "&quot;", "&": "&amp;", "'": "&#x27;",
                          "`": "&#x60;", "=": "&#x3D;"})


def escape_html(text: str) -> str:
    """handlebars-rust's (and handlebars.js's) HTML escape."""
    return text.translate(_ESCAPES)


_U64 = 2**64
_I64 = 2**63


def _as_number(value: Any) -> int | float | None:
    """The value as serde_json holds a number (big integers as floats), None if not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and not -_I64 <= value < _U64:
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return value


def format_float(f: float) -> str:
    """A float as serde_json prints it: the shortest digits that read back (as Python's repr),
    in plain notation from 1e-5 to below 1e16 (``1.0``, ``0.00001``), else ``1e+16``,
    ``1.5e-7`` (zmij 1.0.23, the formatter of the serde_json KumoMTA builds with)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f == 0:
        return "-0.0" if math.copysign(1.0, f) < 0 else "0.0"
    sign = "-" if f < 0 else ""
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:e([+-]\d+))?", repr(abs(f)))
    assert m is not None
    whole, frac, exp = m.group(1), m.group(2) or "", int(m.group(3) or 0)
    digits = (whole + frac).lstrip("0")
    k = exp - len(frac)
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits = stripped
    length = len(digits)
    kk = length + k
    if k >= 0 and kk <= 16:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 16:
        text = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif length == 1:
        text = f"{digits}e{kk - 1:+d}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1:+d}"
    return sign + text


def render_value(value: Any, limits: Limits = DEFAULT_LIMITS, depth: int = 0) -> str:
    """A value as handlebars-rust renders JSON."""
    if depth > limits.max_value_depth:
        raise HandlebarsBudgetError(f"a value nested deeper than {limits.max_value_depth} levels")
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    number = _as_number(value)
    if number is not None:
        return str(number) if isinstance(number, int) else format_float(number)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render_value(v, limits, depth + 1) for v in value) + "]"
    if isinstance(value, Mapping):
        return "[object]"
    return str(value)


def truthy(value: Any, include_zero: bool = False) -> bool:
    """handlebars-rust's truthiness: false, null, 0, "", [] and {} are false."""
    if isinstance(value, bool):
        return value
    number = _as_number(value)
    if number is not None:
        f = float(number)
        if include_zero:
            return not math.isnan(f)
        return math.isfinite(f) and abs(f) >= 2.2250738585072014e-308
    if value is None:
        return False
    if isinstance(value, (str, list, tuple, Mapping)):
        return len(value) > 0
    return True


def _json_equal(a: Any, b: Any, limits: Limits, depth: int = 0) -> bool:
    """serde_json's Value equality: 1 and 1.0 differ, objects compare by keys."""
    if depth > limits.max_value_depth:
        raise HandlebarsBudgetError(f"a value nested deeper than {limits.max_value_depth} levels")
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    na, nb = _as_number(a), _as_number(b)
    if na is not None or nb is not None:
        return (na is not None and nb is not None and isinstance(na, int) == isinstance(nb, int)
                and na == nb)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_json_equal(x, y, limits, depth + 1) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k], limits, depth + 1) for k in a)
    return bool(type(a) is type(b) and a == b)


def _parse_number(text: str) -> int | float | None:
    if not _JSON_NUMBER.fullmatch(text):
        return None
    return _as_number(json.loads(text))


def _compare(a: Any, b: Any) -> int | None:
    """handlebars-rust's ordering for gt/gte/lt/lte: numbers, strings, booleans; a number
    and a string that reads as a number; anything else is unordered (None)."""
    if isinstance(a, bool) and isinstance(b, bool):
        return (a > b) - (a < b)
    na, nb = _as_number(a), _as_number(b)
    if na is None and isinstance(a, str) and nb is not None:
        na = _parse_number(a)
    elif nb is None and isinstance(b, str) and na is not None:
        nb = _parse_number(b)
    elif isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    if na is None or nb is None:
        return None
    if isinstance(na, float) and math.isnan(na) or isinstance(nb, float) and math.isnan(nb):
        return None
    return (na > nb) - (na < nb)


# --- the string helpers (heck 0.5's case conversions) ---------------------------------------


def _lower(word: str) -> str:
    out = []
    for i, c in enumerate(word):
        out.append("ς" if c == "Σ" and i == len(word) - 1 else c.lower())
    return "".join(out)


def _upper(word: str) -> str:
    return "".join(c.upper() for c in word)


def _capitalize(word: str) -> str:
    return word[:1].upper() + _lower(word[1:]) if word else ""


def _split_alnum(text: str) -> list[str]:
    """Rust's ``split(|c| !c.is_alphanumeric())``."""
    words, current = [], []
    for c in text:
        if c.isalnum():
            current.append(c)
        else:
            words.append("".join(current))
            current = []
    words.append("".join(current))
    return words


def _case(text: str, word: Callable[[int, str], str], boundary: str) -> str:
    return boundary.join(word(i, w) for i, w in enumerate(_words_of(text)))


def _words_of(text: str) -> list[str]:
    """heck's words: split on what is not alphanumeric, then where the case changes
    (``fooBar`` -> foo, Bar; ``XMLHttp`` -> XML, Http)."""
    out: list[str] = []
    for word in _split_alnum(text):
        init, mode, n = 0, 0, len(word)
        for i, c in enumerate(word):
            if i + 1 >= n:
                out.append(word[init:])
                break
            nxt = word[i + 1]
            next_mode = 1 if c.islower() else 2 if c.isupper() else mode
            if next_mode == 1 and nxt.isupper():
                out.append(word[init:i + 1])
                init, mode = i + 1, 0
            elif mode == 2 and c.isupper() and nxt.islower():
                out.append(word[init:i])
                init, mode = i, 0
            else:
                mode = next_mode
    return out


STRING_HELPERS: dict[str, tuple[str, Callable[[str], str]]] = {
    # helper name: (handlebars-rust's function name, for its error messages; conversion)
    "lowerCamelCase": ("lower_camel_case",
                       lambda s: _case(s, lambda i, w: _lower(w) if i == 0 else _capitalize(w), "")),
    "upperCamelCase": ("upper_camel_case", lambda s: _case(s, lambda i, w: _capitalize(w), "")),
    "snakeCase": ("snake_case", lambda s: _case(s, lambda i, w: _lower(w), "_")),
    "kebabCase": ("kebab_case", lambda s: _case(s, lambda i, w: _lower(w), "-")),
    "shoutySnakeCase": ("shouty_snake_case", lambda s: _case(s, lambda i, w: _upper(w), "_")),
    "shoutyKebabCase": ("shouty_kebab_case", lambda s: _case(s, lambda i, w: _upper(w), "-")),
    "titleCase": ("title_case", lambda s: _case(s, lambda i, w: _capitalize(w), " ")),
    "trainCase": ("train_case", lambda s: _case(s, lambda i, w: _capitalize(w), "-")),
}


# --- rendering ---------------------------------------------------------------------------------


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(slots=True)
class _Val:
    """A value as handlebars-rust's ScopedJson: where in the data it is (`path`), if anywhere."""

    value: Any
    path: list[str] | None = None
    missing: bool = False

    @property
    def json(self) -> Any:
        return None if self.missing else self.value


@dataclass(slots=True)
class _BlockContext:
    base_path: list[str] = field(default_factory=list)
    base_value: Any = MISSING
    params: dict[str, tuple[bool, Any]] = field(default_factory=dict)  # name: (is a path, path or value)
    locals: dict[str, Any] = field(default_factory=dict)


def _block_for(value: _Val) -> _BlockContext:
    if value.path is not None:
        return _BlockContext(base_path=list(value.path))
    return _BlockContext(base_value=value.json)


_INDEX = re.compile(r"\+?[0-9]+")


def _get(data: Any, key: str) -> Any:
    """One step into `data` (MISSING if absent); a non-number index of an array raises."""
    if isinstance(data, (list, tuple)):
        if not _INDEX.fullmatch(key):
            raise HandlebarsRenderError(f"Cannot access array/vector with string index, {key}")
        index = int(key)
        return data[index] if index < len(data) else MISSING
    if isinstance(data, Mapping):
        return data.get(key, MISSING)
    return MISSING


@dataclass(slots=True)
class _Helper:
    name: str
    params: list[_Val]
    hash: dict[str, _Val]
    block: Block | None

    def param(self, index: int, helper: str, name: str | None = None) -> _Val:
        if index >= len(self.params):
            if name is not None:
                raise HandlebarsRenderError(
                    f"Helper/Decorator {helper} param with name {name} required but not found")
            raise HandlebarsRenderError(f"Helper/Decorator {helper} param at index {index} required but not found")
        return self.params[index]

    @property
    def body(self) -> list[Node] | None:
        return self.block.body if self.block is not None else None

    @property
    def inverse(self) -> list[Node] | None:
        return self.block.inverse if self.block is not None else None


_LOG_LEVELS = frozenset({"error", "warn", "info", "debug", "trace"})
_BINARY: dict[str, Callable[[Any, Any, Limits], bool]] = {
    "eq": lambda a, b, limits: _json_equal(a, b, limits),
    "ne": lambda a, b, limits: not _json_equal(a, b, limits),
    "gt": lambda a, b, limits: _compare(a, b) == 1,
    "gte": lambda a, b, limits: _compare(a, b) in (0, 1),
    "lt": lambda a, b, limits: _compare(a, b) == -1,
    "lte": lambda a, b, limits: _compare(a, b) in (0, -1),
}
# Helpers that compute a value (handlebars-rust's call_inner); the others only write.
_VALUE_HELPERS = frozenset({"lookup", "len", "not", "and", "or", *_BINARY})
HELPERS = frozenset({"if", "unless", "each", "with", "raw", "log", *_VALUE_HELPERS, *STRING_HELPERS})


class _Renderer:
    def __init__(self, root: Any, *, escape: bool, limits: Limits, check: Callable[[], None] | None) -> None:
        self.root = root
        self.limits = limits
        self.check = check
        self.disable_escape = not escape
        self.blocks: list[_BlockContext] = [_BlockContext()]  # innermost last
        self.out: list[str] = []
        self.size = 0
        self.steps = 0
        self.iterations = 0

    # -- budgets and output

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise HandlebarsBudgetError(f"the template takes more than {self.limits.max_steps} steps")
        if self.check is not None and self.steps % _CHECK_EVERY == 0:
            self.check()

    def write(self, text: str) -> None:
        self.size += len(text)
        if self.size > self.limits.max_chars:
            raise HandlebarsBudgetError(f"the template renders more than {self.limits.max_chars} characters")
        self.out.append(text)

    def escaped(self, text: str) -> str:
        return text if self.disable_escape else escape_html(text)

    # -- templates

    def nodes(self, nodes: list[Node]) -> None:
        for node in nodes:
            self.step()
            try:
                if isinstance(node, Text):
                    self.write(node.text)
                elif isinstance(node, Expr):
                    self.expression(node)
                else:
                    self.helper(node.call, node)
            except HandlebarsRenderError as exc:
                if exc.line is None:
                    exc.line, exc.column = node.line, node.column
                raise

    def expression(self, node: Expr) -> None:
        if node.raw:
            self.disable_escape = True
        call = node.call
        if call.name_only and not isinstance(call.name, str):
            value = self.expand(call.name)
            name = call.name.raw if isinstance(call.name, Path) else render_value(value.json, self.limits)
            if name in HELPERS:
                self.helper(Call(name), None)
            elif not value.missing:
                self.write(self.escaped(render_value(value.value, self.limits)))
        else:
            self.helper(call, None)
        if node.raw:
            # as handlebars-rust does: escaping is on after a {{{ }}}, whatever it was before
            self.disable_escape = False

    # -- paths

    def expand(self, param: Param) -> _Val:
        self.step()
        if isinstance(param, Literal):
            return _Val(param.value)
        if isinstance(param, Call):
            return self.call_for_value(param)
        if param.local is not None:
            level, name = param.local
            if level < len(self.blocks):
                value = self.blocks[-1 - level].locals.get(name, MISSING)
                if value is not MISSING:
                    return _Val(value)
            return _Val(None, missing=True)
        return self.navigate(param.segs)

    def navigate(self, segs: tuple[Seg, ...]) -> _Val:
        depth = 0
        from_root = False
        holder: tuple[_BlockContext, tuple[bool, Any]] | None = None
        for seg in segs:
            if isinstance(seg, str):
                for block in reversed(self.blocks):
                    if seg in block.params:
                        holder = (block, block.params[seg])
                        break
                break
            if seg is ROOT:
                from_root = True
                break
            if seg is UP:
                depth += 1
            else:
                break
        names = [s for s in segs if isinstance(s, str)]
        if holder is not None:
            block, (is_path, target) = holder
            rest = names[1:]
            if is_path:
                return self.absolute(block.base_path + list(target) + rest, segs)
            return self.local_value(target, rest)
        if depth > 0:
            blk = self.blocks[-1 - depth] if depth < len(self.blocks) else self.blocks[-1]
            if blk.base_value is not MISSING:
                return self.local_value(blk.base_value, names)
            return self.absolute(blk.base_path + names, segs)
        if from_root:
            return self.absolute(names, segs)
        front = self.blocks[-1]
        if front.base_value is not MISSING:
            return self.local_value(front.base_value, names)
        return self.absolute(front.base_path + names, segs)

    def local_value(self, value: Any, names: list[str]) -> _Val:
        for name in names:
            value = _get(value, name)
            if value is MISSING:
                return _Val(None, missing=True)
        return _Val(value)

    def absolute(self, paths: list[str], segs: tuple[Seg, ...]) -> _Val:
        if len(segs) == 1 and isinstance(segs[0], str):
            # recursive lookup: a plain name not found here is looked for in the enclosing
            # scopes, dropping the path's segment before the name one at a time
            while paths:
                value = self.root
                for name in paths:
                    try:
                        value = _get(value, name)
                    except HandlebarsRenderError:
                        value = MISSING
                    if value is MISSING:
                        break
                if value is not MISSING:
                    return _Val(value, path=paths)
                if len(paths) == 1:
                    return _Val(None, missing=True)
                del paths[-2]
            return _Val(None, missing=True)
        value = self.root
        for name in paths:
            value = _get(value, name)
            if value is MISSING:
                return _Val(None, missing=True)
        return _Val(value, path=paths)

    # -- helpers

    def arguments(self, call: Call, block: Block | None) -> _Helper:
        name = call.name
        assert isinstance(name, str)
        params = [self.expand(p) for p in call.params]
        hashes = {key: self.expand(p) for key, p in call.hash}
        return _Helper(name, params, hashes, block)

    def call_for_value(self, call: Call) -> _Val:
        """A subexpression: a helper's value, or what it writes, as a string."""
        if isinstance(call.name, Path):
            name = call.name.raw
        else:
            assert isinstance(call.name, str)
            name = call.name
        h = self.arguments(Call(name, call.params, call.hash), None)
        if name not in HELPERS:
            raise HandlebarsRenderError(f"Helper not found {name}")
        if name in _VALUE_HELPERS:
            return _Val(self.value_of(h))
        saved_out, saved_escape = self.out, self.disable_escape
        self.out, self.disable_escape = [], True
        try:
            self.call(h)
            text = "".join(self.out)
        finally:
            self.out, self.disable_escape = saved_out, saved_escape
        return _Val(text)

    def helper(self, call: Call, block: Block | None) -> None:
        h = self.arguments(call, block)
        if h.name not in HELPERS:
            raise HandlebarsRenderError(f"Helper not found {h.name}")
        self.call(h)

    def value_of(self, h: _Helper) -> Any:
        name = h.name
        if name in _BINARY:
            a = h.param(0, name).json
            b = h.param(1, name).json
            return _BINARY[name](a, b, self.limits)
        if name == "not":
            return not truthy(h.param(0, name).json)
        if name == "and":
            return all(truthy(p.json) for p in h.params)
        if name == "or":
            return any(truthy(p.json) for p in h.params)
        if name == "len":
            value = h.param(0, name, "x").json
            if isinstance(value, str):
                return len(value.encode("utf-8"))
            if isinstance(value, (list, tuple, Mapping)):
                return len(value)
            return 0
        assert name == "lookup"
        collection = h.param(0, name).json
        index = h.param(1, name).json
        if isinstance(collection, (list, tuple)):
            number = _as_number(index)
            if isinstance(number, int) and 0 <= number < len(collection):
                return collection[number]
            return None
        if isinstance(collection, Mapping) and isinstance(index, str):
            return collection.get(index)
        return None

    def call(self, h: _Helper) -> None:
        name = h.name
        if name in ("if", "unless"):
            condition = h.param(0, "if").json
            zero = h.hash.get("includeZero")
            value = truthy(condition, zero is not None and zero.json is True)
            if name == "unless":
                value = not value
            chosen = h.body if value else h.inverse
            if chosen is not None:
                self.nodes(chosen)
        elif name == "each":
            self.each(h)
        elif name == "with":
            self.with_(h)
        elif name == "raw":
            if h.body is not None:
                self.nodes(h.body)
        elif name == "log":
            level = h.hash.get("level")
            text = level.json if level is not None and isinstance(level.json, str) else "info"
            if text.lower() not in _LOG_LEVELS:
                raise HandlebarsRenderError(f"Invalid logging level: {text}")
        elif name in STRING_HELPERS:
            function, convert = STRING_HELPERS[name]
            word = h.params[0].json if h.params else None
            if not isinstance(word, str):
                raise HandlebarsRenderError(f"Helper/Decorator {function} param with name 0 type mismatch for string")
            self.write(convert(word))
        elif name in _BINARY or name in ("not", "and", "or"):
            result = self.value_of(h)
            if h.block is None:
                self.write("true" if result else "false")
            else:
                chosen = h.body if result else h.inverse
                if chosen is not None:
                    self.nodes(chosen)
        else:  # lookup, len: their value, escaped
            self.write(self.escaped(render_value(self.value_of(h), self.limits)))

    def iterate(self) -> None:
        self.iterations += 1
        if self.iterations > self.limits.max_iterations:
            raise HandlebarsBudgetError(f"the template loops more than {self.limits.max_iterations} times")
        self.step()

    def each(self, h: _Helper) -> None:
        value = h.param(0, "each")
        body = h.body
        if body is None:
            return
        data = value.json
        names = h.block.block_params if h.block is not None else ()
        items: list[tuple[Any, Any]]
        if isinstance(data, (list, tuple)) and (data or h.inverse is None):
            items = list(enumerate(data))
            is_object = False
        elif isinstance(data, Mapping) and (data or h.inverse is None):
            items = sorted(data.items(), key=lambda kv: str(kv[0]))  # serde_json's maps are sorted
            is_object = True
        else:
            if h.inverse is not None:
                self.nodes(h.inverse)
            return
        block = _block_for(value)
        self.blocks.append(block)
        try:
            for i, (key, item) in enumerate(items):
                self.iterate()
                block.locals = {"first": i == 0, "last": i == len(items) - 1, "index": i}
                if is_object:
                    block.locals["key"] = key
                if value.path is not None:
                    block.base_path = value.path + [str(key)]
                else:
                    block.base_value = item
                if names:
                    block.params = {names[0]: (True, []) if value.path is not None else (False, item)}
                    if len(names) > 1:
                        block.params[names[1]] = (False, key)
                self.nodes(body)
        finally:
            self.blocks.pop()

    def with_(self, h: _Helper) -> None:
        value = h.param(0, "with")
        if truthy(value.json):
            block = _block_for(value)
            names = h.block.block_params if h.block is not None else ()
            if len(names) == 1:
                block.params = {names[0]: (True, []) if value.path is not None else (False, value.json)}
            self.blocks.append(block)
            try:
                if h.body is not None:
                    self.nodes(h.body)
            finally:
                self.blocks.pop()
        elif h.inverse is not None:
            self.nodes(h.inverse)


# --- the API --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled template: parse once, render per recipient."""

    nodes: tuple[Node, ...]
    name: str | None = None
    escape: bool = False  # HTML-escape {{x}} (KumoMTA: for templates named *.html)
    limits: Limits = DEFAULT_LIMITS

    def render(self, data: Any, *, limits: Limits | None = None,
               check: Callable[[], None] | None = None) -> str:
        """The output for `data` (a JSON-like value). Raises `HandlebarsRenderError` (or its
        `HandlebarsBudgetError`); `check`, called every few thousand steps, may raise to stop."""
        renderer = _Renderer(data, escape=self.escape, limits=limits or self.limits, check=check)
        try:
            renderer.nodes(list(self.nodes))
        except HandlebarsRenderError as exc:
            exc.name = self.name
            raise
        except RecursionError:
            raise HandlebarsBudgetError("the template nests too deeply to render") from None
        return "".join(renderer.out)


def compile_template(source: str, name: str | None = None, *, escape: bool | None = None,
                     limits: Limits = DEFAULT_LIMITS) -> Template:
    """Parse `source`; `HandlebarsSyntaxError` (with line and column) if it does not parse.

    `escape` defaults to KumoMTA's rule: HTML-escape when `name` ends with ``.html``.
    """
    if escape is None:
        escape = bool(name and name.endswith(".html"))
    try:
        nodes = _Parser(source, name, limits).parse()
    except RecursionError:
        raise HandlebarsSyntaxError("the template nests too deeply", 1, 1, name) from None
    return Template(tuple(nodes), name, escape, limits)
