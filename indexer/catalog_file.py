"""Read a shop's product catalog (CSV or JSON Lines) for `imgrec index --catalog FILE`.

    catalog = read_catalog("catalog.csv", inventory)
    catalog.products["SKU-1"]     # CatalogProduct: title, url, price, attributes, images
    catalog.attribute_types       # {"color": "string", "size": "number", "organic": "boolean"}
    catalog.problems              # RowProblem(line, reason, ...) for every row left out

One row per image. Columns: `product_id` (required), `image` (required: a path relative to the
inventory folder), `title`, `url`, `price` (a number), and any other column, kept as a typed
attribute. Several rows with one product_id make one product with several images; their product
fields must agree (a cell left empty takes the value of the product's other rows).

Types: JSON Lines values keep their JSON types (a column mixing numbers and text is read as text);
a CSV column is boolean when every non-empty cell is true/false, a number when every one is written
as a JSON number (so 00123 and 12,50 stay text), else text. Empty cells and nulls are missing values.

Nothing bad is fatal to the rest: a row with an empty product_id, a missing, unreadable or duplicate
image, a non-numeric price or fields that contradict the product's other rows is left out and
reported with its line number. Only a file that cannot be read as a catalog at all (no header, no
`product_id` or `image` column, a column named `label`) raises `CatalogError`.

Images are checked against the inventory as the indexer scans it (`indexer.scan`): a path must name
a file the scan finds and can use (inside the inventory, not through a symlinked folder, an image
extension), so the catalog and the index never disagree about which files exist.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from indexer.scan import ScannedFile, scan_inventory

REQUIRED = ("product_id", "image")
PRODUCT_FIELDS = ("title", "url", "price")
RESERVED = {"label": "it is the image's folder, a filter name of its own; rename the column"}
CSV_SUFFIXES = {".csv": None, ".tsv": "\t", ".txt": None}  # None: the header line tells
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
MAX_NAME = 100  # characters in an attribute name

Attribute = str | float | bool


class CatalogError(ValueError):
    """The file cannot be read as a catalog at all (rows are never the cause: see RowProblem)."""


@dataclass(frozen=True)
class RowProblem:
    """A row left out of the catalog, and why."""

    line: int  # 1-based line of the file where the row starts
    reason: str
    product_id: str | None = None
    image: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class CatalogProduct:
    """A product of the catalog: its fields, typed attributes and images (inventory-relative paths)."""

    product_id: str
    title: str | None
    url: str | None
    price: float | None
    attributes: dict[str, Attribute]  # only the attributes it has a value for
    images: tuple[str, ...]  # in the catalog's row order
    lines: tuple[int, ...]  # the line of each image's row

    @property
    def metadata(self) -> dict:
        """Everything but the images, canonical (what `metadata_sha256` digests)."""
        return {
            "product_id": self.product_id,
            "title": self.title,
            "url": self.url,
            "price": self.price,
            "attributes": dict(sorted(self.attributes.items())),
        }

    @property
    def metadata_sha256(self) -> str:
        """Digest of the product's fields and attributes (not its images): a change here alone is
        a metadata-only change, published without embedding anything."""
        return _sha256(self.metadata)


@dataclass(frozen=True)
class Catalog:
    """A validated, typed catalog, ready for the indexer to store."""

    path: Path
    format: str  # csv | jsonl
    rows: int  # data rows read (good and bad)
    products: dict[str, CatalogProduct]  # by product_id, in order of first appearance
    attribute_types: dict[str, str]  # name -> string | number | boolean, in column order
    problems: tuple[RowProblem, ...]
    notes: tuple[str, ...] = ()  # remarks about columns (ignored, or read as text)

    @property
    def image_products(self) -> dict[str, str]:
        """Image path -> product_id."""
        return {image: p.product_id for p in self.products.values() for image in p.images}

    @property
    def sha256(self) -> str:
        """Digest of the whole catalog (products, attributes' types and images): unchanged = nothing to do."""
        return _sha256(
            {
                "types": self.attribute_types,
                "products": [[p.metadata_sha256, list(p.images)] for p in self.products.values()],
            }
        )

    def summary(self) -> str:
        """One paragraph for people: counts, attribute types, problems (as the CLI reports a run)."""
        images = sum(len(p.images) for p in self.products.values())
        types = ", ".join(f"{n} ({t})" for n, t in self.attribute_types.items()) or "none"
        lines = [
            f"catalog {self.path.name}: {self.rows} rows, {len(self.products)} products, {images} images",
            f"attributes: {types}",
            *self.notes,
        ]
        if self.problems:
            lines.append(f"{len(self.problems)} rows left out:")
            lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


# -- reading -----------------------------------------------------------------------------------


def read_catalog(
    path: str | Path, inventory: str | Path, scanned: Iterable[ScannedFile] | None = None
) -> Catalog:
    """Read, check and type the catalog at `path` for the inventory folder `inventory`.

    `scanned`: the indexer's scan of the inventory, when it has one (else the inventory is scanned).

    :raise CatalogError: not readable as a catalog (the message says why).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CatalogError(f"cannot read the catalog {path}: {e.strerror or e}") from None
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    kind = _format_of(path, text)
    raw_rows, columns = _csv_rows(path, text) if kind == "csv" else _jsonl_rows(text)
    _check_columns(columns)

    files = {f.rel_path: f for f in (scanned if scanned is not None else scan_inventory(inventory))}
    root = os.path.realpath(inventory)
    problems: list[RowProblem] = []
    rows: list[_Row] = []
    seen_images: dict[str, int] = {}
    for line, raw in raw_rows:
        if isinstance(raw, str):  # the row could not even be split into fields
            problems.append(RowProblem(line, raw))
            continue
        row, reason = _check_row(line, raw, files, root, seen_images)
        if reason is not None:
            problems.append(RowProblem(line, reason, _text_or_none(raw.get("product_id")), _image_of(raw)))
            continue
        seen_images[row.image] = line
        rows.append(row)

    attribute_names = [c for c in columns if c.lower() not in (*REQUIRED, *PRODUCT_FIELDS)]
    types, notes = _infer_types(attribute_names, rows, kind)
    products = _merge_products(rows, types, problems)
    problems.sort(key=lambda p: p.line)
    return Catalog(path, kind, len(raw_rows), products, types, tuple(problems), tuple(notes))


def _format_of(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES or (suffix not in CSV_SUFFIXES and text.lstrip().startswith("{")):
        if text.lstrip().startswith("["):
            raise CatalogError(f"{path.name} holds a JSON array: write one JSON object per line (JSON Lines)")
        return "jsonl"
    return "csv"


def _csv_rows(path: Path, text: str) -> tuple[list[tuple[int, dict | str]], list[str]]:
    """(line, {column: cell}) per record, or (line, reason) for a record that cannot be split."""
    first_line = text.split("\n", 1)[0]
    delimiter = CSV_SUFFIXES.get(path.suffix.lower()) or max(",;\t", key=first_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise CatalogError(f"{path.name} is empty: the first line must name the columns") from None
    except csv.Error as e:
        raise CatalogError(f"{path.name}: the header line cannot be read: {e}") from None
    columns = [_column_name(c) for c in header]
    for i, c in enumerate(columns, 1):
        if not c:
            raise CatalogError(f"column {i} of the header has no name")
    rows: list[tuple[int, dict | str]] = []
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            rows.append((line, f"bad CSV: {e}"))
            continue
        if not cells or cells == [""]:
            continue  # a blank line
        if len(cells) != len(columns):
            rows.append((line, f"{len(cells)} fields where the header has {len(columns)}"))
            continue
        rows.append((line, dict(zip(columns, cells, strict=True))))
    return rows, columns


def _jsonl_rows(text: str) -> tuple[list[tuple[int, dict | str]], list[str]]:
    rows: list[tuple[int, dict | str]] = []
    columns: dict[str, None] = {}
    for line, source in enumerate(text.split("\n"), 1):
        if not source.strip():
            continue
        try:
            obj = json.loads(source)
        except json.JSONDecodeError as e:
            rows.append((line, f"not valid JSON: {e.msg} (column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            rows.append((line, "not a JSON object"))
            continue
        obj = {_column_name(k): v for k, v in obj.items()}
        columns.update(dict.fromkeys(obj))
        rows.append((line, obj))
    if not rows:
        raise CatalogError("the catalog holds no rows")
    return rows, list(columns)


def _column_name(name: str) -> str:
    name = name.strip()
    return name.lower() if name.lower() in (*REQUIRED, *PRODUCT_FIELDS) else name


def _check_columns(columns: list[str]) -> None:
    seen: set[str] = set()
    for c in columns:
        if c in seen:
            raise CatalogError(f"column {c!r} appears twice")
        seen.add(c)
        if c.lower() in RESERVED:
            raise CatalogError(f"a column cannot be named {c!r}: {RESERVED[c.lower()]}")
        if not c or len(c) > MAX_NAME or "`" in c or any(ch < " " for ch in c) or _has_bad_bytes(c):
            raise CatalogError(
                f"column name {c!r}: use 1 to {MAX_NAME} printable characters, without backticks"
            )
    missing = [c for c in REQUIRED if c not in seen]
    if missing:
        raise CatalogError(
            f"the catalog has no {' and no '.join(missing)} column (found: {', '.join(columns)})"
        )


# -- rows --------------------------------------------------------------------------------------


@dataclass
class _Row:
    line: int
    product_id: str
    image: str
    title: str | None
    url: str | None
    price: float | None
    attributes: dict[str, object] = field(default_factory=dict)  # raw values, typed later


def _check_row(
    line: int, raw: dict, files: dict[str, ScannedFile], root: str, seen_images: dict[str, int]
) -> tuple[_Row | None, str | None]:
    """The row, or the reason it is left out."""
    for name, value in raw.items():
        reason = _bad_value(name, value)
        if reason:
            return None, reason
    product_id = _text_or_none(raw.get("product_id"))
    if product_id is None:
        return None, "empty product_id"
    if isinstance(raw.get("product_id"), float | bool):
        return None, f"product_id {raw['product_id']!r} is not a string or an integer"
    image = _image_of(raw)
    if image is None:
        return None, "no image"
    image, reason = _check_image(image, files, root)
    if reason:
        return None, reason
    if image in seen_images:
        return None, f"image {image} is already listed on line {seen_images[image]}"
    price, reason = _price(raw.get("price"))
    if reason:
        return None, reason
    texts = {}
    for name in ("title", "url"):
        if isinstance(raw.get(name), bool):
            return None, f"{name} must be text, not {raw[name]!r}"
        texts[name] = _text_or_none(raw.get(name))
    attributes = {k: v for k, v in raw.items() if k not in (*REQUIRED, *PRODUCT_FIELDS)}
    return _Row(line, product_id, image, texts["title"], texts["url"], price, attributes), None


def _bad_value(name: str, value: object) -> str | None:
    if isinstance(value, dict | list):
        return f"{name}: lists and objects are not supported (one value per cell)"
    if isinstance(value, str):
        if _has_bad_bytes(value):
            return f"{name}: not valid UTF-8"
        if "\x00" in value:
            return f"{name}: contains a NUL character"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}: {value} is not a finite number"
    return None


def _has_bad_bytes(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes from undecodable bytes
        return True
    return False


def _text_or_none(value: object) -> str | None:
    """A cell as text, None when empty or null (integers from JSON become their digits)."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = _number_text(value) if isinstance(value, int | float) else str(value).strip()
    return text or None


def _image_of(raw: dict) -> str | None:
    value = raw.get("image")
    return value.strip() or None if isinstance(value, str) else None


def _check_image(image: str, files: dict[str, ScannedFile], root: str) -> tuple[str, str | None]:
    """The image's inventory-relative path (normalised), or the reason it cannot be used."""
    if image.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", image):
        return image, f"image {image}: an absolute path; give it relative to the inventory folder"
    rel = posixpath.normpath(image)
    if rel == ".." or rel.startswith("../"):
        return image, f"image {image} points outside the inventory"
    scanned = files.get(rel)
    if scanned is None:
        if os.path.isdir(os.path.join(root, rel)):
            return rel, f"image {rel} is a folder"
        if _through_symlinked_folder(root, rel):
            return rel, f"image {rel} is inside a symlinked folder, which the indexer does not follow"
        return rel, f"image {rel} is not in the inventory"
    if not scanned.usable:
        return rel, f"image {rel}: {scanned.reason}"
    if not os.access(scanned.abs_path, os.R_OK):
        return rel, f"image {rel} is not readable (permission denied)"
    return rel, None


def _through_symlinked_folder(root: str, rel: str) -> bool:
    parts = rel.split("/")[:-1]
    return any(os.path.islink(os.path.join(root, *parts[: i + 1])) for i in range(len(parts)))


def _price(value: object) -> tuple[float | None, str | None]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if isinstance(value, bool):
        return None, f"price {value!r} is not a number"
    if isinstance(value, int | float):
        return float(value), None
    text = str(value).strip()
    try:
        price = float(text)
    except ValueError:
        return None, f"price {text!r} is not a number"
    if not math.isfinite(price):
        return None, f"price {text!r} is not a number"
    return price, None


# -- types and products ------------------------------------------------------------------------


def _infer_types(names: list[str], rows: list[_Row], kind: str) -> tuple[dict[str, str], list[str]]:
    """Each attribute column's type from its non-missing values (see the module docstring)."""
    types: dict[str, str] = {}
    notes: list[str] = []
    for name in names:
        kinds = {_value_kind(r.attributes.get(name), kind) for r in rows} - {None}
        if not kinds:
            notes.append(f"column {name!r} has no values: ignored")
        elif len(kinds) == 1:
            types[name] = kinds.pop()
        else:
            types[name] = "string"
            notes.append(f"column {name!r} mixes {' and '.join(sorted(kinds))} values: read as text")
    return types, notes


def _value_kind(value: object, kind: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if kind == "csv":
        text = value.strip()
        if text.lower() in ("true", "false"):
            return "boolean"
        if JSON_NUMBER.fullmatch(text) and math.isfinite(float(text)):
            return "number"
    return "string"


def _typed(value: object, type_: str) -> Attribute | None:
    """A raw cell as a value of its column's type (None: missing)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if type_ == "string":
        return _text_or_none(value)
    if type_ == "number":
        return float(value)
    return value if isinstance(value, bool) else value.strip().lower() == "true"


def _merge_products(
    rows: list[_Row], types: dict[str, str], problems: list[RowProblem]
) -> dict[str, CatalogProduct]:
    """Products from their rows; a row that contradicts its product's earlier rows is left out."""
    fields: dict[str, dict[str, object]] = {}
    first_line: dict[str, dict[str, int]] = {}
    images: dict[str, list[tuple[str, int]]] = {}
    for row in rows:
        values = {"title": row.title, "url": row.url, "price": row.price}
        values |= {n: _typed(row.attributes.get(n), t) for n, t in types.items()}
        known = fields.setdefault(row.product_id, {})
        lines = first_line.setdefault(row.product_id, {})
        conflicts = [
            f"{name} {_show(values[name])} (line {lines[name]}: {_show(known[name])})"
            for name in values
            if values[name] is not None and known.get(name) is not None and known[name] != values[name]
        ]
        if conflicts:
            problems.append(
                RowProblem(
                    row.line,
                    f"conflicting product fields for {row.product_id}: " + "; ".join(conflicts),
                    row.product_id,
                    row.image,
                )
            )
            continue
        for name, value in values.items():
            if value is not None and known.get(name) is None:
                known[name], lines[name] = value, row.line
        images.setdefault(row.product_id, []).append((row.image, row.line))
    return {
        key: CatalogProduct(
            product_id=key,
            title=values.get("title"),
            url=values.get("url"),
            price=values.get("price"),
            attributes={n: values[n] for n in types if values.get(n) is not None},
            images=tuple(image for image, _ in images[key]),
            lines=tuple(line for _, line in images[key]),
        )
        for key, values in fields.items()
    }


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _number_text(value) if isinstance(value, float) else json.dumps(value, ensure_ascii=False)


def _number_text(x: float | int) -> str:
    return str(int(x)) if isinstance(x, int) or x.is_integer() and abs(x) < 1e16 else repr(x)


def _sha256(obj: object) -> str:
    canonical = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
