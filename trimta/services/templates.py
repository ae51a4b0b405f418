"""Bounded Jinja templates for HTTP injection: a hostile template can neither exhaust memory nor run forever.

Jinja's sandbox keeps a template away from Python's internals, but not from the
daemon's memory and time: ``{{ 'x'|center(1000000000) }}`` builds a gigabyte in one C
call, ``{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}``
runs for hours, ``{% set a = a ~ a %}`` doubles a string each time. So, on top of the
sandbox (`BoundedSandbox`):

- **Arguments that set an output size are checked before the call**: the widths of
  ``center``, ``indent``, ``ljust``, ``rjust``, ``zfill``, ``expandtabs``, the fields of
  ``format`` / ``%`` / ``str.format``, the sizes of ``*`` (repetition), ``+`` and ``~``
  (concatenation), ``join`` and ``replace`` results, and the size of ``**`` results.
  Nothing a template computes may exceed `Budget.max_chars` characters (strings) or
  `MAX_ITEMS` items (lists).
- **The output is counted while it is rendered** (`render_bounded` consumes Jinja's
  generator piece by piece), so a loop emitting text stops at the budget, not after.
- **A time budget**: every loop iteration, call, operator and filter checks the
  render's deadline (a loop's iterable is wrapped when the template is compiled), so a
  template that runs too long stops with `SecurityError`.

Renders run in a worker thread (`trio.to_thread`), never in the event loop; each
check above also bounds how long a single step can hold the interpreter, so the
event loop keeps its turns.
"""

from __future__ import annotations

import math
import re
import string
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

MAX_ITEMS = 1_000_000  # items of a list (or tuple) a template may build
MAX_POWER_BITS = 4096  # bits of a number a template may compute
MAX_FIELD_WIDTH = 10_000  # a width or precision in a format specification
# How many loop iterations pass between two looks at the clock.
_CLOCK_EVERY = 256


@dataclass(slots=True)
class Budget:
    """What one render may spend: characters of any string it builds, and time."""

    max_chars: int
    deadline: float  # time.monotonic()


_current = threading.local()


def _budget() -> Budget:
    budget: Budget | None = getattr(_current, "budget", None)
    if budget is None:  # rendered outside render_bounded: the defaults
        budget = Budget(max_chars=MAX_ITEMS, deadline=time.monotonic() + 1.0)
        _current.budget = budget
    return budget


def _check_time() -> None:
    if time.monotonic() > _budget().deadline:
        raise SecurityError("the template ran out of time")


def _check_size(size: int, what: str) -> None:
    if size > _budget().max_chars:
        raise SecurityError(f"the template {what} a string longer than {_budget().max_chars} characters")


def _check_items(size: int) -> None:
    if size > MAX_ITEMS:
        raise SecurityError(f"the template builds a list longer than {MAX_ITEMS} items")


def _check_width(width: Any, what: str) -> None:
    if isinstance(width, int) and not isinstance(width, bool) and width > MAX_FIELD_WIDTH:
        raise SecurityError(f"the template asks for {what} of {width}, more than {MAX_FIELD_WIDTH}")


def _length(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return len(str(value))


# printf-style conversions: %[(key)][flags][width][.precision]type
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]")
# str.format specifications: [[fill]align][sign][z][#][0][width][grouping][.precision][type]
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?")


def _check_printf(fmt: str) -> None:
    for width, precision in _PRINTF.findall(fmt):
        for number in (width, precision):
            if number == "*":
                raise SecurityError("the template uses a '*' width in a format")
            if number:
                _check_width(int(number), "a format width")


def _check_format_string(fmt: str) -> None:
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format will say what is wrong
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:
            raise SecurityError("the template uses a nested field in a format")
        match = _FORMAT_SPEC.match(spec)
        if match:
            for number in match.groups():
                if number:
                    _check_width(int(number), "a format width")


# Methods of str whose first argument is an output width.
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _check_method(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    target = getattr(obj, "__wrapped__", obj)  # str.format comes wrapped by the sandbox
    owner = getattr(target, "__self__", None)
    name = getattr(target, "__name__", "")
    if not isinstance(owner, str):
        return
    if name in _WIDTH_METHODS:
        width = args[0] if args else kwargs.get("width", kwargs.get("tabsize"))
        if name == "expandtabs":
            width = (width if isinstance(width, int) else 8) * owner.count("\t")
        _check_width(width, f"{name}() a width")
    elif name in ("format", "format_map"):
        _check_format_string(owner)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        places = owner.count(args[0]) if args[0] else len(owner) + 1
        _check_size(len(owner) + places * len(args[1]), "builds by replace()")
    elif name == "join" and args:
        items = args[0]
        if isinstance(items, (list, tuple, str, range)):
            _check_size(sum(map(_length, items)) + len(owner) * max(0, len(items) - 1), "joins")


# --- filters ------------------------------------------------------------------------------


def _bounded_filters(filters: Mapping[str, Any]) -> dict[str, Any]:
    """Jinja's filters, those whose output size depends on an argument checked first."""
    out = dict(filters)

    def wrap(name: str, check: Any) -> None:
        original = filters[name]

        def bounded(*args: Any, **kwargs: Any) -> Any:
            _check_time()
            check(*args, **kwargs)
            result = original(*args, **kwargs)
            if isinstance(result, str):
                _check_size(len(result), f"builds with {name}")
            return result

        for attribute in ("jinja_pass_arg",):  # pass_context / pass_environment markers
            if hasattr(original, attribute):
                setattr(bounded, attribute, getattr(original, attribute))
        out[name] = bounded

    def center(value: Any, width: int = 80) -> None:
        _check_width(width, "center a width")

    def indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
        size = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        _check_size(len(str(s)) + size * (str(s).count("\n") + 1), "indents")
        _check_width(size, "indent a width")

    def format_(value: Any, *args: Any, **kwargs: Any) -> None:
        _check_printf(str(value))

    def join(*args: Any, **kwargs: Any) -> None:
        # do_join(eval_ctx, value, d="", attribute=None)
        value = args[1] if len(args) > 1 else kwargs.get("value", ())
        separator = args[2] if len(args) > 2 else kwargs.get("d", "")
        if isinstance(value, (list, tuple, str, range)):
            _check_size(sum(map(_length, value)) + len(str(separator)) * max(0, len(value) - 1), "joins")

    def replace(*args: Any, **kwargs: Any) -> None:
        # do_replace(eval_ctx, s, old, new, count=None)
        if len(args) >= 4:
            s, old, new = str(args[1]), str(args[2]), str(args[3])
            _check_size(len(s) + (s.count(old) if old else len(s) + 1) * len(new), "builds by replace")

    def wordwrap(s: Any, width: int = 79, *args: Any, **kwargs: Any) -> None:
        pass

    def batch(value: Any, linecount: int, *args: Any, **kwargs: Any) -> None:
        _check_width(linecount, "batches of")

    for name, check in (("center", center), ("indent", indent), ("format", format_), ("join", join),
                        ("replace", replace), ("wordwrap", wordwrap), ("batch", batch)):
        if name in filters:
            wrap(name, check)
    for name in filters:
        if name not in ("center", "indent", "format", "join", "replace", "wordwrap", "batch"):
            wrap(name, lambda *args, **kwargs: None)
    return out


# --- the environment --------------------------------------------------------------------


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``~`` (concatenation) to the environment's size-checked version."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _bounded_loop(iterable: Any) -> Iterator[Any]:
    """A loop's iterable, looking at the clock every few iterations."""
    for n, item in enumerate(iterable):
        if n % _CLOCK_EVERY == 0:
            _check_time()
        yield item


class BoundedSandbox(SandboxedEnvironment):
    """Jinja's sandbox with size and time budgets on everything a template computes."""

    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = _bounded_filters(self.filters)
        self.filters["_bounded_loop"] = _bounded_loop

    def bounded_concat(self, parts: Iterable[Any]) -> str:
        _check_time()
        texts = [str(p) for p in parts]
        _check_size(sum(map(len, texts)), "concatenates")
        return "".join(texts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_time()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and n > 0:
                    if isinstance(seq, str):
                        _check_size(len(seq) * n, "repeats")
                    else:
                        _check_items(len(seq) * n)
            if (isinstance(left, int) and isinstance(right, int)
                    and left.bit_length() + right.bit_length() > MAX_POWER_BITS):
                raise SecurityError("the template computes a number too large")
        elif operator == "**" and isinstance(left, (int, float)) and isinstance(right, int) and abs(left) > 1:
            if right * math.log2(abs(left)) > MAX_POWER_BITS:
                raise SecurityError("the template computes a power too large")
        elif operator == "+":
            if isinstance(left, str) and isinstance(right, str):
                _check_size(len(left) + len(right), "concatenates")
            elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
                _check_items(len(left) + len(right))
        elif operator == "%" and isinstance(left, str):
            _check_printf(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        _check_method(__obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str):
            _check_size(len(result), "builds")
        elif isinstance(result, (list, tuple)):
            _check_items(len(result))
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_time()
        return super().getitem(obj, argument)

    def compile_bounded(self, source: str) -> Any:
        """A template whose every loop looks at the clock (`_bounded_loop` around each iterable)."""
        tree = self.parse(source)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "_bounded_loop", [], [], None, None, lineno=loop.lineno)
        return self.from_string(tree)


def render_bounded(template: Any, context: Mapping[str, Any], *, max_chars: int, time_s: float) -> str:
    """Render `template` within `max_chars` of output (counted as it is produced) and `time_s`.

    Raises `SecurityError` when the template needs more (or any error the template
    itself raises). Call it from a worker thread: it holds the thread until done.
    """
    _current.budget = Budget(max_chars=max_chars, deadline=time.monotonic() + time_s)
    try:
        out: list[str] = []
        size = 0
        for piece in template.generate(context):
            size += len(piece)
            if size > max_chars:
                raise SecurityError(f"the template renders more than {max_chars} characters")
            out.append(piece)
        _check_time()
        return "".join(out)
    finally:
        _current.budget = None
