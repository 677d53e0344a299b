"""The filter language: one syntax for `imgrec query --filter` and the API's `filter=`.

    expr = parse_filter('color = "red" AND price < 50', {"color": "string"})
    # -> And((Compare("color", "=", "red"), Compare("price", "<", 50.0)))

Grammar (keywords case-insensitive)::

    expr       := or
    or         := and ("OR" and)*
    and        := not ("AND" not)*
    not        := "NOT" not | "(" expr ")" | comparison | membership | NAME
    comparison := NAME ("=" | "!=" | "<" | "<=" | ">" | ">=") VALUE
    membership := NAME ["NOT"] "IN" "(" VALUE ("," VALUE)* ")"
    NAME       := identifier [A-Za-z_][A-Za-z0-9_]* | `any name in backticks`
    VALUE      := "string" (JSON escapes) | number | true | false

A bare NAME is shorthand for `NAME = true` (boolean attributes only); `x NOT IN (...)` is
`NOT x IN (...)`. Names are the catalog's attributes and the built-in fields `product_id`, `title`,
`price` (products) and `label` (the image's folder).

Missing values: an item whose product lacks the attribute (or has no product) makes every comparison
and membership on it false, whatever the operator (`color != "red"` does not select an item without
a colour); NOT, AND, OR are then plain boolean logic (`NOT color = "red"` does select it). Both
back-ends (`filter_sql`, `filter_columns`) implement exactly this; strings compare by code point
(SQLite's BINARY collation), numbers as float64.

Parsing uses lark (LALR, its callbacks build the AST during the parse: no parse tree, no recursion,
so a hostile filter cannot exhaust the stack). Every problem raises `FilterError` with its position.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

# -- the AST -----------------------------------------------------------------------------------

Value = str | float | bool
Position = tuple[int, int]  # 1-based (line, column) in the filter text

STRING, NUMBER, BOOLEAN = "string", "number", "boolean"
TYPES = (STRING, NUMBER, BOOLEAN)
OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
BUILTIN_TYPES = {"product_id": STRING, "title": STRING, "price": NUMBER, "label": STRING}
ITEM_FIELDS = frozenset({"label"})  # per image; every other name belongs to the image's product

KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})
MAX_LENGTH = 8000  # characters
MAX_DEPTH = 32  # nested NOT / AND / OR
MAX_VALUES = 1000  # literal values in the whole filter (each is one bound SQL parameter)


@dataclass(frozen=True)
class Compare:
    name: str
    op: str  # one of OPERATORS
    value: Value
    # where it was written (for error messages; not part of the meaning)
    pos: Position | None = field(default=None, compare=False, repr=False)
    value_pos: Position | None = field(default=None, compare=False, repr=False)
    bare: bool = field(default=False, compare=False, repr=False)  # written as a bare boolean name


@dataclass(frozen=True)
class In:
    name: str
    values: tuple[Value, ...]
    pos: Position | None = field(default=None, compare=False, repr=False)
    value_pos: tuple[Position, ...] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Not:
    expr: Expr


@dataclass(frozen=True)
class And:
    parts: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[Expr, ...]


Expr = Compare | In | Not | And | Or


def names_in(expr: Expr) -> set[str]:
    """The field and attribute names an expression reads."""
    return {atom.name for atom in atoms(expr)}


def atoms(expr: Expr) -> list[Compare | In]:
    """The comparisons and memberships of an expression, left to right (no recursion)."""
    out: list[Compare | In] = []
    stack: list[Expr] = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, Not):
            stack.append(e.expr)
        elif isinstance(e, And | Or):
            stack.extend(reversed(e.parts))
        else:
            out.append(e)
    return out


def to_text(expr: Expr) -> str:
    """The filter text of an AST (`parse(to_text(e)) == e`): for echoing a filter back, and tests."""
    if isinstance(expr, Compare):
        return f"{_name_text(expr.name)} {expr.op} {_value_text(expr.value)}"
    if isinstance(expr, In):
        return f"{_name_text(expr.name)} IN ({', '.join(_value_text(v) for v in expr.values)})"
    if isinstance(expr, Not):
        return f"NOT {_operand_text(expr.expr)}"
    keyword = " AND " if isinstance(expr, And) else " OR "
    return keyword.join(_operand_text(p) for p in expr.parts)


def _operand_text(expr: Expr) -> str:
    return f"({to_text(expr)})" if isinstance(expr, And | Or | Not) else to_text(expr)


def _name_text(name: str) -> str:
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and name.lower() not in KEYWORDS
    return name if plain else f"`{name}`"


def _value_text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else json.dumps(value, ensure_ascii=False)


def value_type(value: Value) -> str:
    if isinstance(value, bool):
        return BOOLEAN
    return NUMBER if isinstance(value, float) else STRING


# -- errors ------------------------------------------------------------------------------------


class FilterError(ValueError):
    """A filter that cannot be used: where, why, and (for an unknown name) the names that exist.

    The API answers it with a 400, the CLI exits with status 2; `str(e)` is the whole story, with
    the filter's line and a caret under the problem.
    """

    def __init__(
        self,
        message: str,
        text: str,
        line: int | None = None,
        column: int | None = None,
        known_names: tuple[str, ...] | None = None,
    ):
        self.message = message
        self.line, self.column = line, column
        self.known_names = known_names
        self.caret = _caret(text, line, column) if line is not None and column is not None else ""
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"bad filter{where}: {message}" + (f"\n{self.caret}" if self.caret else ""))

    def as_dict(self) -> dict:
        """The fields of a JSON error body (beside `error` and `message`)."""
        return {
            "line": self.line,
            "column": self.column,
            "caret": self.caret or None,
            "known_names": list(self.known_names) if self.known_names is not None else None,
        }


def _caret(text: str, line: int, column: int, width: int = 60) -> str:
    """The filter's `line`, clipped around `column`, with a caret under that column."""
    lines = text.split("\n")
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    start = max(0, column - 1 - width // 2)
    shown = src[start : start + width]
    prefix = "..." if start else ""
    return f"  {prefix}{shown}\n  {' ' * (len(prefix) + column - 1 - start)}^"


# -- parsing -----------------------------------------------------------------------------------

GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr
        | or_expr OR and_expr           -> or_
?and_expr: not_expr
         | and_expr AND not_expr        -> and_
?not_expr: NOT not_expr                 -> not_
         | "(" or_expr ")"
         | name OP value                -> compare
         | name IN "(" values ")"       -> in_
         | name NOT IN "(" values ")"   -> not_in
         | name                         -> bare
values: value ("," value)*
?value: STRING | NUMBER | TRUE | FALSE
?name: NAME | QUOTED_NAME

OR.2: /or\b/i
AND.2: /and\b/i
NOT.2: /not\b/i
IN.2: /in\b/i
TRUE.2: /true\b/i
FALSE.2: /false\b/i
OP: "!=" | "<=" | ">=" | "=" | "<" | ">"
NAME: /[A-Za-z_][A-Za-z0-9_]*/
QUOTED_NAME: /`[^`\n]+`/
STRING: /"(?:[^"\\\n]|\\.)*"/
NUMBER: /-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?/

%import common.WS
%ignore WS
"""

TERMINAL_WORDS = {
    "OR": "OR",
    "AND": "AND",
    "NOT": "NOT",
    "IN": "IN",
    "OP": "a comparison (= != < <= > >=)",
    "NAME": "a name",
    "QUOTED_NAME": "a name",
    "STRING": "a value",
    "NUMBER": "a value",
    "TRUE": "a value",
    "FALSE": "a value",
    "LPAR": "(",
    "RPAR": ")",
    "COMMA": ",",
    "$END": "the end",
}


def parse_filter(text: str, attribute_types: Mapping[str, str]) -> Expr:
    """Parse `text` and check it against the catalog's attributes (name -> string|number|boolean).

    :raise FilterError: bad syntax, unknown name, wrong type, or over the size limits.
    """
    return check(text, parse(text), attribute_types)


def parse(text: str) -> Expr:
    """The AST of `text`, syntax only (names and types are checked by `check`).

    :raise FilterError: bad syntax, or over the size limits.
    """
    import lark

    if len(text) > MAX_LENGTH:
        raise FilterError(f"the filter is {len(text)} characters long; at most {MAX_LENGTH}", text)
    if not text.strip():
        raise FilterError("the filter is empty", text)
    try:
        return _parser().parse(text).expr
    except _LocatedError as e:
        raise FilterError(e.message, text, e.line, e.column) from None
    except lark.exceptions.UnexpectedCharacters as e:
        raise FilterError(f"unexpected character {text[e.pos_in_stream]!r}", text, e.line, e.column) from None
    except lark.exceptions.UnexpectedToken as e:
        if e.token.type == "$END":
            line, column = _end_position(text)
            raise FilterError(
                f"the filter ends too early; expected {_expected(e)}", text, line, column
            ) from None
        raise FilterError(
            f"unexpected {str(e.token)!r}; expected {_expected(e)}", text, e.token.line, e.token.column
        ) from None


class _LocatedError(Exception):
    """Raised by the parser's callbacks (which do not see the text); `parse` makes a FilterError."""

    def __init__(self, message: str, token: object):
        super().__init__(message)
        self.message, self.line, self.column = message, token.line, token.column


def _end_position(text: str) -> Position:
    lines = text.rstrip().split("\n")
    return len(lines), len(lines[-1]) + 1


def _expected(e: object) -> str:
    words = sorted({TERMINAL_WORDS.get(t, t) for t in getattr(e, "expected", ()) or ()})
    return " or ".join(words) if words else "something else"


@dataclass(frozen=True)
class _Node:
    """A parsed sub-expression and its nesting depth (AND/OR chains of one kind count once)."""

    expr: Expr
    depth: int


@cache
def _parser() -> object:
    """The LALR parser, built once; its callbacks build the AST during the parse."""
    import lark

    class ToAst(lark.Transformer):
        def compare(self, children: list) -> _Node:
            name, op, value = children
            atom = Compare(_name(name), str(op), _value(value), _pos(name), _pos(value))
            return _Node(atom, 1)

        def in_(self, children: list) -> _Node:
            name, _, values = children
            return _Node(In(_name(name), tuple(_value(v) for v in values), _pos(name), _positions(values)), 1)

        def not_in(self, children: list) -> _Node:
            name, _, _, values = children
            atom = In(_name(name), tuple(_value(v) for v in values), _pos(name), _positions(values))
            return _Node(Not(atom), 2)

        def values(self, children: list) -> list:
            return children

        def bare(self, children: list) -> _Node:
            (name,) = children
            return _Node(Compare(_name(name), "=", True, _pos(name), _pos(name), bare=True), 1)

        def not_(self, children: list) -> _Node:
            keyword, inner = children
            return _Node(Not(inner.expr), _deeper(inner.depth + 1, keyword))

        def and_(self, children: list) -> _Node:
            return _combine(And, children)

        def or_(self, children: list) -> _Node:
            return _combine(Or, children)

    return lark.Lark(GRAMMAR, parser="lalr", transformer=ToAst(), maybe_placeholders=False)


def _combine(kind: type[And] | type[Or], children: list) -> _Node:
    """`a AND b AND c` as one And of three parts (the grammar's chain, flattened)."""
    left, keyword, right = children
    parts: list[Expr] = []
    depths = []
    for side in (left, right):
        same = isinstance(side.expr, kind)
        parts.extend(side.expr.parts if same else (side.expr,))
        depths.append(side.depth if same else side.depth + 1)
    return _Node(kind(tuple(parts)), _deeper(max(depths), keyword))


def _deeper(depth: int, token: object) -> int:
    if depth > MAX_DEPTH:
        raise _LocatedError(f"the filter nests more than {MAX_DEPTH} levels deep", token)
    return depth


def _pos(token: object) -> Position:
    return token.line, token.column


def _positions(tokens: list) -> tuple[Position, ...]:
    return tuple(_pos(t) for t in tokens)


def _name(token: object) -> str:
    s = str(token)
    return s[1:-1] if s.startswith("`") else s


def _value(token: object) -> Value:
    kind, s = token.type, str(token)
    if kind == "TRUE":
        return True
    if kind == "FALSE":
        return False
    if kind == "NUMBER":
        x = float(s)
        if not math.isfinite(x):
            raise _LocatedError(f"the number {s} is out of range", token)
        return x
    try:
        return json.loads(s)
    except json.JSONDecodeError as e:
        raise _LocatedError(f"bad string {s}: {e.msg}", token) from None


# -- checking ----------------------------------------------------------------------------------


def known_types(attribute_types: Mapping[str, str]) -> dict[str, str]:
    """Every name a filter may use, with its type: the built-in fields, then the attributes."""
    return {**BUILTIN_TYPES, **{n: t for n, t in attribute_types.items() if n not in BUILTIN_TYPES}}


def check(text: str, expr: Expr, attribute_types: Mapping[str, str]) -> Expr:
    """`expr` itself, once every name is known and every value has its name's type.

    :raise FilterError: at the offending name or value, naming the types (or the known names).
    """
    types = known_types(attribute_types)
    found = atoms(expr)
    n_values = sum(1 if isinstance(a, Compare) else len(a.values) for a in found)
    if n_values > MAX_VALUES:
        raise FilterError(f"the filter holds {n_values} values; at most {MAX_VALUES}", text)
    for atom in found:
        _check_atom(text, atom, types)
    return expr


def _check_atom(text: str, atom: Compare | In, types: dict[str, str]) -> None:
    line, column = atom.pos or (None, None)
    kind = types.get(atom.name)
    if kind is None:
        close = difflib.get_close_matches(atom.name, list(types), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise FilterError(
            f"unknown name {atom.name!r}{hint} (known: {', '.join(types)})", text, line, column, tuple(types)
        )
    if isinstance(atom, Compare) and atom.bare:
        if kind != BOOLEAN:
            raise FilterError(
                f"{atom.name} is a {kind}: compare it with a value, e.g. {atom.name} = ...",
                text,
                line,
                column,
            )
        return
    if isinstance(atom, Compare) and kind == BOOLEAN and atom.op not in ("=", "!="):
        raise FilterError(
            f"{atom.name} is a boolean: only = and != apply to it, not {atom.op}", text, line, column
        )
    values = (atom.value,) if isinstance(atom, Compare) else atom.values
    where = (atom.value_pos,) if isinstance(atom, Compare) else atom.value_pos
    for i, v in enumerate(values):
        if value_type(v) == kind:
            continue
        hint = (
            f' (write "{_number_text(v)}" in double quotes)'
            if kind == STRING and value_type(v) == NUMBER
            else ""
        )
        vline, vcolumn = where[i] if where else (line, column)
        raise FilterError(
            f"{atom.name} is a {kind}, but {_show(v)} is a {value_type(v)}{hint}", text, vline, vcolumn
        )


def _number_text(v: Value) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _show(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return _number_text(v) if isinstance(v, float) else json.dumps(v, ensure_ascii=False)
