"""The filter language: what parses to what, and every bad filter's error with its position."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.filters import (
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_VALUES,
    And,
    Compare,
    FilterError,
    In,
    Not,
    Or,
    names_in,
    parse,
    parse_filter,
    to_text,
)

TYPES = {"color": "string", "size": "number", "in_stock": "boolean", "Size (EU)": "number"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ('color = "red"', Compare("color", "=", "red")),
        ("price >= 10", Compare("price", ">=", 10.0)),
        ("price < -2.5e1", Compare("price", "<", -25.0)),
        ("price != .5", Compare("price", "!=", 0.5)),
        ("in_stock = false", Compare("in_stock", "=", False)),
        ("in_stock", Compare("in_stock", "=", True)),
        ("IN_STOCK = TRUE", Compare("IN_STOCK", "=", True)),
        ('color IN ("red", "blue")', In("color", ("red", "blue"))),
        ("size in (1,2 , 3)", In("size", (1.0, 2.0, 3.0))),
        ('color NOT IN ("red")', Not(In("color", ("red",)))),
        ('NOT color = "red"', Not(Compare("color", "=", "red"))),
        ("not not in_stock", Not(Not(Compare("in_stock", "=", True)))),
        ("`Size (EU)` > 40", Compare("Size (EU)", ">", 40.0)),
        ('title = "say \\"hi\\"\\n\\u00e9"', Compare("title", "=", 'say "hi"\né')),
        ('label = "été ☂"', Compare("label", "=", "été ☂")),
        (
            "a = 1 AND b = 2 AND c = 3",
            And((Compare("a", "=", 1.0), Compare("b", "=", 2.0), Compare("c", "=", 3.0))),
        ),
        (
            "a = 1 OR b = 2 AND c = 3",  # AND binds tighter than OR
            Or((Compare("a", "=", 1.0), And((Compare("b", "=", 2.0), Compare("c", "=", 3.0))))),
        ),
        (
            "(a = 1 OR b = 2) AND c = 3",
            And((Or((Compare("a", "=", 1.0), Compare("b", "=", 2.0))), Compare("c", "=", 3.0))),
        ),
        (
            "NOT a = 1 AND b = 2",  # NOT binds tightest
            And((Not(Compare("a", "=", 1.0)), Compare("b", "=", 2.0))),
        ),
        ("((((a = 1))))", Compare("a", "=", 1.0)),
        ("android = 1 and order = 2", And((Compare("android", "=", 1.0), Compare("order", "=", 2.0)))),
        ("a=1\n  AND\tb=2", And((Compare("a", "=", 1.0), Compare("b", "=", 2.0)))),
    ],
)
def test_parse(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    "text, message, line, column",
    [
        ("", "the filter is empty", None, None),
        ("   ", "the filter is empty", None, None),
        ('color = "red" AND', "ends too early", 1, 18),
        ("color =", "ends too early; expected a value", 1, 8),
        ('color == "red"', "unexpected '='", 1, 8),
        ('color = "red" price < 3', "unexpected 'price'", 1, 15),
        ("(color = 1", "expected ) or OR", 1, 11),
        ("color = 1)", "unexpected ')'", 1, 10),
        ("color @ 1", "unexpected character '@'", 1, 7),
        ("color = 'red'", 'unexpected character "\'"', 1, 9),
        ('color = "red', "unexpected character '\"'", 1, 9),
        ('color = "a\\qb"', "bad string", 1, 9),
        ("price > 1e999", "out of range", 1, 9),
        ("color IN ()", "unexpected ')'", 1, 11),
        ("a = 1 AND\n  b = = 2", "unexpected '='", 2, 7),
    ],
)
def test_syntax_errors(text, message, line, column):
    with pytest.raises(FilterError) as e:
        parse(text)
    assert message in e.value.message
    assert (e.value.line, e.value.column) == (line, column)
    if line is not None:
        caret = e.value.caret.split("\n")
        assert caret[1].index("^") == column + 1  # under the column, after the 2-space indent
        assert str(e.value).startswith(f"bad filter (line {line}, column {column}): ")


def test_caret_points_at_the_offending_value_on_its_line():
    text = 'color = "red"\nAND price > "cheap"'
    with pytest.raises(FilterError) as e:
        parse_filter(text, TYPES)
    assert (e.value.line, e.value.column) == (2, 13)
    assert e.value.caret == '  AND price > "cheap"\n              ^'
    assert 'price is a number, but "cheap" is a string' in str(e.value)


@pytest.mark.parametrize(
    "text, message, column",
    [
        ('price > "x"', 'price is a number, but "x" is a string', 9),
        ("color = 42", 'color is a string, but 42 is a number (write "42" in double quotes)', 9),
        ('color IN ("a", 3)', "color is a string, but 3 is a number", 16),
        ("in_stock = 1", "in_stock is a boolean, but 1 is a number", 12),
        ("in_stock > false", "in_stock is a boolean: only = and != apply to it, not >", 1),
        ("label = true", "label is a string, but true is a boolean", 9),
        ("color", "color is a string: compare it with a value", 1),
        ('size > 1 OR size > "x"', 'size is a number, but "x" is a string', 20),
    ],
)
def test_type_errors(text, message, column):
    with pytest.raises(FilterError) as e:
        parse_filter(text, TYPES)
    assert message in e.value.message
    assert e.value.column == column
    assert e.value.known_names is None


def test_unknown_name_lists_the_known_ones_and_suggests():
    with pytest.raises(FilterError) as e:
        parse_filter('price < 5 AND colr = "red"', TYPES)
    assert e.value.known_names == (
        "product_id",
        "title",
        "price",
        "label",
        "color",
        "size",
        "in_stock",
        "Size (EU)",
    )
    assert "unknown name 'colr'; did you mean 'color'?" in e.value.message
    assert (e.value.line, e.value.column) == (1, 15)
    assert e.value.as_dict()["known_names"][:4] == ["product_id", "title", "price", "label"]


def test_builtin_names_are_known_without_attributes():
    assert parse_filter('product_id = "SKU-1" AND title >= "A" AND price < 3 AND label = "x"', {})


def test_limits():
    with pytest.raises(FilterError, match="characters long"):
        parse("a = 1 OR " * (MAX_LENGTH // 9 + 1) + "a = 1")
    deep = "NOT " * MAX_DEPTH + "a = 1"
    with pytest.raises(FilterError, match="nests more than"):
        parse(deep)
    assert parse("NOT " * (MAX_DEPTH - 1) + "a = 1")
    nested = "(" * 40 + "a = 1 AND (b = 1 OR " * 20 + "c = 1" + ")" * 20 + ")" * 40
    with pytest.raises(FilterError, match="nests more than"):
        parse(nested)
    many = "size IN (" + ", ".join(["1"] * (MAX_VALUES + 1)) + ")"
    with pytest.raises(FilterError, match="values; at most"):
        parse_filter(many, TYPES)


def test_names_in():
    assert names_in(parse('a = 1 AND NOT (b = 2 OR c IN ("x")) OR a = 3')) == {"a", "b", "c"}


# -- round trip: any AST prints to a filter that parses back to it --------------------------

names = st.sampled_from(["color", "size", "in_stock", "Size (EU)", "and", "x_1"])
values = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
ops = st.sampled_from(["=", "!=", "<", "<=", ">", ">="])
atoms = st.one_of(
    st.builds(Compare, names, ops, values),
    st.builds(In, names, st.lists(values, min_size=1, max_size=4).map(tuple)),
)


def _flat(kind):
    return lambda parts: kind(
        tuple(p for part in parts for p in (part.parts if isinstance(part, kind) else (part,)))
    )


exprs = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.lists(inner, min_size=2, max_size=3).map(_flat(And)),
        st.lists(inner, min_size=2, max_size=3).map(_flat(Or)),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(exprs)
def test_to_text_round_trips(expr):
    assert parse(to_text(expr)) == expr
