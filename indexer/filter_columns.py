"""Filters evaluated on columns in memory: a boolean mask over a generation's items, in milliseconds.

    cols = read_item_columns(session, snap.live_ids())    # once per generation (chunked reads)
    mask = evaluate(expr, cols)                            # (n,) bool, aligned with cols.ids
    allowed = cols.ids[mask]                               # sorted item ids

The search path cannot ask SQLite for half a million ids per query; these arrays answer the same
question (`filter_sql` is the reference: both select exactly the same items) with a few vectorised
numpy operations. Two levels, as in the catalog: `label` per item; product fields and attributes per
product, evaluated on the products' rows and lifted to the items by one gather through
`product_row` (items without a product point at a last row where everything is missing).

Columns: strings are dictionary-encoded (`values` sorted by code point = SQLite's BINARY order, so
`<` on codes is `<` on strings; code -1 = missing), numbers float64 with NaN for missing, booleans a
value array with a `present` mask.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db import VALUE_COLUMNS, AttributeType, Item, Product, ProductAttribute
from indexer.filter_sql import PRODUCT_COLUMNS
from indexer.filters import ITEM_FIELDS, NUMBER, STRING, And, Compare, Expr, In, Not, known_types, names_in

ITEMS = Item.__table__

CHUNK = 50_000  # rows per SELECT when reading columns
FEW_VALUES = 8  # IN lists up to this size are ORed comparisons; longer ones a lookup table


@dataclass(frozen=True)
class StringColumn:
    values: tuple[str, ...]  # distinct, sorted by code point
    codes: np.ndarray  # (rows,) int32 index into `values`; -1 = missing


@dataclass(frozen=True)
class NumberColumn:
    values: np.ndarray  # (rows,) float64; NaN = missing


@dataclass(frozen=True)
class BoolColumn:
    values: np.ndarray  # (rows,) bool
    present: np.ndarray  # (rows,) bool; False = missing


Column = StringColumn | NumberColumn | BoolColumn


@dataclass(frozen=True)
class ItemColumns:
    """The filterable fields of one generation's items, as arrays.

    Item level (n rows, aligned with `ids`): `label`. Product level (p + 1 rows; the last row is
    "no product", everything missing): `product_id`, `title`, `price` and every attribute.
    """

    ids: np.ndarray  # (n,) int64 item ids, sorted
    product_row: np.ndarray  # (n,) intp row of the item's product; p for "no product" (intp: gathers
    # with int32 indices convert them first, 3x slower at 1M)
    product_ids: np.ndarray  # (p,) int64 products.id of each product row, sorted
    item_columns: dict[str, Column]
    product_columns: dict[str, Column]
    types: dict[str, str]  # every filterable name -> string | number | boolean

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (string dictionaries not counted)."""
        arrays = [self.ids, self.product_row, self.product_ids]
        for col in (*self.item_columns.values(), *self.product_columns.values()):
            arrays += [col.codes] if isinstance(col, StringColumn) else [col.values]
            arrays += [col.present] if isinstance(col, BoolColumn) else []
        return sum(a.nbytes for a in arrays)


# -- evaluation --------------------------------------------------------------------------------


def evaluate(expr: Expr, cols: ItemColumns) -> np.ndarray:
    """(n,) bool: which of `cols.ids` match `expr` (checked against `cols.types` beforehand).

    :raise KeyError: `expr` names a column that `cols` was read without.
    """
    unread = names_in(expr) - cols.item_columns.keys() - cols.product_columns.keys()
    if unread:
        raise KeyError(f"columns not read: {sorted(unread)}")
    level, mask = _evaluate(expr, cols)
    return mask if level == "item" else np.take(mask, cols.product_row)


def matching_ids(expr: Expr, cols: ItemColumns) -> np.ndarray:
    """The sorted item ids that match `expr`."""
    return cols.ids[evaluate(expr, cols)]


def _evaluate(expr: Expr, cols: ItemColumns) -> tuple[str, np.ndarray]:
    """("item", (n,) mask) or ("product", (p + 1,) mask): product-only parts stay at product level."""
    if isinstance(expr, Compare | In):
        if expr.name in ITEM_FIELDS:
            return "item", _atom(cols.item_columns[expr.name], expr)
        return "product", _atom(cols.product_columns[expr.name], expr)
    if isinstance(expr, Not):
        level, mask = _evaluate(expr.expr, cols)
        return level, ~mask
    combine = np.logical_and if isinstance(expr, And) else np.logical_or
    parts = [_evaluate(p, cols) for p in expr.parts]
    product = _combine(combine, [m for level, m in parts if level == "product"])
    item = _combine(combine, [m for level, m in parts if level == "item"])
    if item is None:
        return "product", product
    if product is not None:  # product parts combined first (AND/OR commute): one gather, not several
        combine(item, np.take(product, cols.product_row), out=item)
    return "item", item


def _combine(combine: np.ufunc, masks: list[np.ndarray]) -> np.ndarray | None:
    if not masks:
        return None
    out = masks[0].copy()
    for m in masks[1:]:
        combine(out, m, out=out)
    return out


def _atom(col: Column, atom: Compare | In) -> np.ndarray:
    if isinstance(col, StringColumn):
        return _string_atom(col, atom)
    if isinstance(col, NumberColumn):
        return _number_atom(col.values, atom)
    values = (atom.value,) if isinstance(atom, Compare) else atom.values
    if isinstance(atom, Compare) and atom.op == "!=":
        return col.present & (col.values != atom.value)
    out = np.zeros(len(col.values), bool)
    for v in set(values):
        out |= col.values == v
    return out & col.present


def _string_atom(col: StringColumn, atom: Compare | In) -> np.ndarray:
    codes, values = col.codes, col.values
    if isinstance(atom, In):
        found = [i for i in (_code_of(values, v) for v in set(atom.values)) if i is not None]
        if len(found) <= FEW_VALUES:
            out = np.zeros(len(codes), bool)
            for i in found:
                out |= codes == i
            return out
        table = np.zeros(len(values) + 1, bool)  # the last entry answers code -1 (missing)
        table[found] = True
        return np.take(table, codes)
    v, op = atom.value, atom.op
    if op in ("=", "!="):
        i = _code_of(values, v)
        if op == "=":
            return codes == i if i is not None else np.zeros(len(codes), bool)
        return (codes != i) & (codes >= 0) if i is not None else codes >= 0
    if op == "<":
        return (codes >= 0) & (codes < bisect.bisect_left(values, v))
    if op == "<=":
        return (codes >= 0) & (codes < bisect.bisect_right(values, v))
    if op == ">":
        return codes >= bisect.bisect_right(values, v)
    return codes >= bisect.bisect_left(values, v)  # >=


def _code_of(values: Sequence[str], v: str) -> int | None:
    i = bisect.bisect_left(values, v)
    return i if i < len(values) and values[i] == v else None


def _number_atom(x: np.ndarray, atom: Compare | In) -> np.ndarray:
    if isinstance(atom, In):
        return np.isin(x, np.asarray(atom.values, np.float64))  # NaN is never in the list
    v, op = atom.value, atom.op
    if op == "!=":
        return (x != v) & ~np.isnan(x)
    return {"=": np.equal, "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[op](
        x, v
    )


# -- building ----------------------------------------------------------------------------------


def read_item_columns(
    session: Session,
    ids: np.ndarray,
    names: Iterable[str] | None = None,
    items: sa.Table = ITEMS,
) -> ItemColumns:
    """The columns of the items `ids` (a generation's live ids), read CHUNK rows at a time.

    `names` limits the columns read (default: every filterable name). Items are read by their range
    of ids, products by their range of product ids: no statement carries one parameter per item.
    Call it inside one read transaction (`indexer.db.read_snapshot`) for a consistent generation.

    :raise LookupError: an id is not in the catalog.
    :raise KeyError: `names` holds a name that is neither a field nor an attribute.
    """
    ids = _sorted_unique(np.asarray(ids, np.int64))
    attribute_types = dict(session.execute(sa.select(AttributeType.name, AttributeType.type)).all())
    types = known_types(attribute_types)
    wanted = set(types) if names is None else set(names)
    if wanted - set(types):
        raise KeyError(f"no such filterable names: {sorted(wanted - set(types))}")

    # SQLite does the dictionary encoding: one row per label, with the ids of its items
    n = len(ids)
    item_product = np.full(n, -1, np.int64)
    label_codes = np.full(n, -1, np.int32)
    labels: list[str] = []
    query = sa.select(items.c.label, _joined(items.c.id), _joined(sa.func.coalesce(items.c.product_id, -1)))
    for page in _pages(session, query.group_by(items.c.label), items.c.id, ids):
        got, code_of = _grouped_ids([r[1] for r in page], first_code=len(labels))
        at, keep = _rows_at(ids, got)
        label_codes[at] = code_of[keep]
        item_product[at] = _parse_ids(",".join(r[2] for r in page))[keep]
        labels.extend(r[0] for r in page)
    if (label_codes < 0).any():
        missing = ids[label_codes < 0]
        raise LookupError(f"{len(missing)} item ids are not in the catalog (first: {int(missing[0])})")

    product_ids = _sorted_unique(item_product[item_product >= 0])
    product_row = np.searchsorted(product_ids, item_product).astype(np.intp)
    product_row[item_product < 0] = len(product_ids)

    item_columns: dict[str, Column] = {}
    if "label" in wanted:
        item_columns["label"] = _string_column(labels, label_codes)
    product_columns = {
        name: _read_product_column(session, product_ids, name, types[name])
        for name in sorted(wanted - ITEM_FIELDS)
    }
    return ItemColumns(ids, product_row, product_ids, item_columns, product_columns, types)


def _read_product_column(session: Session, product_ids: np.ndarray, name: str, kind: str) -> Column:
    """One product-level column: p + 1 rows (the last: no product), for `product_ids` (sorted)."""
    if name in PRODUCT_COLUMNS:
        products = Product.__table__
        key, value, scope = products.c.id, products.c[PRODUCT_COLUMNS[name]], sa.true()
    else:
        a = ProductAttribute.__table__
        key, value, scope = a.c.product_id, a.c[VALUE_COLUMNS[kind]], a.c.name == name
    rows = len(product_ids) + 1
    if kind == NUMBER:  # (key, value) rows: REAL -> text in group_concat would round
        values = np.full(rows, np.nan)
        for page in _pages(session, sa.select(key, value).where(scope, value.is_not(None)), key, product_ids):
            at, keep = _rows_at(product_ids, [r[0] for r in page])
            values[at] = np.asarray([r[1] for r in page], np.float64)[keep]
        return NumberColumn(values)
    # strings and booleans: one row per distinct value, with the ids that have it
    codes = np.full(rows, -1, np.int32)
    distinct: list = []
    query = sa.select(value, _joined(key)).where(scope, value.is_not(None)).group_by(value)
    for page in _pages(session, query, key, product_ids):
        got, code_of = _grouped_ids([r[1] for r in page], first_code=len(distinct))
        at, keep = _rows_at(product_ids, got)
        codes[at] = code_of[keep]
        distinct.extend(r[0] for r in page)
    if kind == STRING:
        return _string_column(distinct, codes)
    flags = np.asarray([bool(v) for v in distinct] + [False])
    return BoolColumn(flags[codes], codes >= 0)  # code -1 picks the trailing False


def _joined(column: sa.ColumnElement) -> sa.ColumnElement:
    """group_concat of an integer column: one string instead of a row per value (~5x faster)."""
    return sa.func.group_concat(column)


def _grouped_ids(id_texts: list[str], first_code: int) -> tuple[np.ndarray, np.ndarray]:
    """The ids of a page of grouped rows, parsed at once, and the code (group number) of each id."""
    counts = np.fromiter((t.count(",") + 1 for t in id_texts), np.int64, len(id_texts))
    codes = np.repeat(np.arange(first_code, first_code + len(id_texts), dtype=np.int32), counts)
    return _parse_ids(",".join(id_texts)), codes


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique for int ids, by sorting (numpy's hash-based unique is ~10x slower at 1M)."""
    if len(a) > 1 and not bool(np.all(a[1:] > a[:-1])):
        a = np.sort(a)
        a = a[np.concatenate(([True], a[1:] != a[:-1]))]
    return a


def _parse_ids(text: str | None) -> np.ndarray:
    return np.fromstring(text, dtype=np.int64, sep=",") if text else np.zeros(0, np.int64)


def _rows_at(sorted_ids: np.ndarray, got: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in `sorted_ids` of those of `got` that are there, and which of `got` are."""
    got_a = np.asarray(got, np.int64)
    if not len(sorted_ids):
        return np.zeros(0, np.intp), np.zeros(len(got_a), bool)
    at = np.searchsorted(sorted_ids, got_a)
    keep = sorted_ids[np.minimum(at, len(sorted_ids) - 1)] == got_a
    return at[keep], keep


def _string_column(distinct: list[str], codes: np.ndarray) -> StringColumn:
    """A string column from distinct values and codes into them: re-coded in sorted value order."""
    order = sorted(range(len(distinct)), key=distinct.__getitem__)
    rank = np.empty(len(distinct) + 1, np.int32)
    rank[order] = np.arange(len(distinct), dtype=np.int32)
    rank[-1] = -1  # code -1 (missing) stays -1
    return StringColumn(tuple(distinct[i] for i in order), np.take(rank, codes))


def _pages(session: Session, query: sa.Select, key: sa.ColumnElement, wanted: np.ndarray) -> Iterator[list]:
    """Rows of `query` whose `key` lies within [wanted[0], wanted[-1]], fetched CHUNK at a time.

    One statement (compiled from `query`, three bound parameters whatever the number of ids) run on
    the DB-API cursor and streamed with `fetchmany`: plain tuples, ~2x faster than result rows at
    1M items. Rows arrive in any order (the caller places them by key): SQLite never sorts.
    """
    if not len(wanted):
        return
    connection = session.connection()
    compiled = query.where(key >= int(wanted[0]), key <= int(wanted[-1])).compile(dialect=connection.dialect)
    params = tuple(compiled.params[name] for name in compiled.positiontup)
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.execute(str(compiled), params)
        while rows := cursor.fetchmany(CHUNK):
            yield rows
    finally:
        cursor.close()
