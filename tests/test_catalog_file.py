"""Reading catalog files (CSV, JSON Lines): products, typed attributes, and every bad row reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from indexer.catalog_file import CatalogError, read_catalog
from indexer.scan import scan_inventory

IMAGES = [
    "shirts/red-1.jpg",
    "shirts/red-2.jpg",
    "shirts/blue-1.jpg",
    "hats/h1.png",
    "hats/h2.png",
    "hats/h3.png",
]


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    """Six tiny images, a text file, a symlinked folder and a symlink to an image outside."""
    root = tmp_path / "inventory"
    for i, rel in enumerate(IMAGES):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(root / rel)
    (root / "notes.txt").write_text("not an image")
    os.symlink(root / "shirts", root / "linked")
    Image.new("RGB", (4, 4)).save(tmp_path / "elsewhere.jpg")
    os.symlink(tmp_path / "elsewhere.jpg", root / "outside.jpg")
    return root


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_products_images_and_types(tmp_path, inventory):
    path = write(
        tmp_path,
        "catalog.csv",
        "product_id,image,title,url,price,color,size,organic,ean\n"
        "SKU-1,shirts/red-1.jpg,Red shirt,https://shop/1,19.90,red,40,true,00123\n"
        "SKU-1,shirts/red-2.jpg,,,,,,,\n"  # a further image: empty cells take the product's values
        'SKU-2,./shirts/blue-1.jpg,"Blue, long",,35,blue,42.5,FALSE,4006381333931\n'
        "SKU-3,hats/h1.png,Hat,,,,,,\n",
    )
    catalog = read_catalog(path, inventory)
    assert catalog.format == "csv" and catalog.rows == 4 and catalog.problems == ()
    assert catalog.attribute_types == {
        "color": "string",
        "size": "number",
        "organic": "boolean",
        "ean": "string",
    }
    one = catalog.products["SKU-1"]
    assert (one.title, one.url, one.price) == ("Red shirt", "https://shop/1", 19.9)
    assert one.attributes == {"color": "red", "size": 40.0, "organic": True, "ean": "00123"}
    assert one.images == ("shirts/red-1.jpg", "shirts/red-2.jpg") and one.lines == (2, 3)
    two = catalog.products["SKU-2"]
    assert two.title == "Blue, long" and two.images == ("shirts/blue-1.jpg",)
    assert two.attributes == {"color": "blue", "size": 42.5, "organic": False, "ean": "4006381333931"}
    assert catalog.products["SKU-3"].attributes == {} and catalog.products["SKU-3"].price is None
    assert list(catalog.products) == ["SKU-1", "SKU-2", "SKU-3"]
    assert catalog.image_products["shirts/red-2.jpg"] == "SKU-1"
    assert "3 products, 4 images" in catalog.summary() and "organic (boolean)" in catalog.summary()


def test_jsonl_keeps_json_types(tmp_path, inventory):
    rows = [
        {"product_id": "A", "image": "hats/h1.png", "price": 5, "tags": "x", "weight": 1.5, "sale": True},
        {"product_id": "A", "image": "hats/h2.png", "sale": True},
        {"product_id": 17, "image": "hats/h3.png", "tags": "42", "weight": None, "code": 7},
        {"product_id": "B", "image": "shirts/red-1.jpg", "code": "x7"},
    ]
    path = write(tmp_path, "catalog.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    catalog = read_catalog(path, inventory)
    assert catalog.format == "jsonl" and catalog.problems == ()
    assert catalog.attribute_types == {
        "tags": "string",
        "weight": "number",
        "sale": "boolean",
        "code": "string",
    }
    assert catalog.notes == ("column 'code' mixes number and string values: read as text",)
    assert catalog.products["A"].price == 5.0 and catalog.products["A"].images == (
        "hats/h1.png",
        "hats/h2.png",
    )
    assert catalog.products["17"].attributes == {"tags": "42", "code": "7"}
    assert catalog.products["B"].attributes == {"code": "x7"}


def test_every_bad_row_is_reported_and_the_rest_kept(tmp_path, inventory):
    path = write(
        tmp_path,
        "catalog.csv",
        "product_id,image,title,price,color\n"
        "SKU-1,shirts/red-1.jpg,Red shirt,19.90,red\n"  # 2 good
        ",shirts/red-2.jpg,No id,1,red\n"  # 3
        "SKU-2,shirts/missing.jpg,Gone,1,red\n"  # 4
        "SKU-3,hats/h1.png,Hat,cheap,red\n"  # 5
        "SKU-1,shirts/red-2.jpg,Another title,19.9,red\n"  # 6
        "SKU-4,shirts/red-1.jpg,Dup,1,red\n"  # 7
        "SKU-5,notes.txt,Text,1,red\n"  # 8
        "SKU-6,linked/red-1.jpg,Via link,1,red\n"  # 9
        "SKU-7,outside.jpg,Outside,1,red\n"  # 10
        "SKU-8,../elsewhere.jpg,Up,1,red\n"  # 11
        "SKU-9,/etc/passwd,Abs,1,red\n"  # 12
        "SKU-10,hats,Folder,1,red\n"  # 13
        "SKU-11,hats/h2.png,Too,many,fields,here\n"  # 14
        'SKU-12,"hats/h2.png"x,Bad quote,1,red\n'  # 15
        "SKU-13,hats/h3.png,Hat 3,inf,red\n"  # 16
        "SKU-1,shirts/blue-1.jpg,,19.9,blue\n"  # 17: conflicting colour
        "SKU-14,hats/h2.png,Good,2,green\n",  # 18 good
    )
    catalog = read_catalog(path, inventory)
    reasons = {p.line: p.reason for p in catalog.problems}
    assert reasons == {
        3: "empty product_id",
        4: "image shirts/missing.jpg is not in the inventory",
        5: "price 'cheap' is not a number",
        6: 'conflicting product fields for SKU-1: title "Another title" (line 2: "Red shirt")',
        7: "image shirts/red-1.jpg is already listed on line 2",
        8: "image notes.txt: not an image file extension",
        9: "image linked/red-1.jpg is inside a symlinked folder, which the indexer does not follow",
        10: "image outside.jpg: symlink points outside the inventory",
        11: "image ../elsewhere.jpg points outside the inventory",
        12: "image /etc/passwd: an absolute path; give it relative to the inventory folder",
        13: "image hats is a folder",
        14: "6 fields where the header has 5",
        15: "bad CSV: ',' expected after '\"'",
        16: "price 'inf' is not a number",
        17: 'conflicting product fields for SKU-1: color "blue" (line 2: "red")',
    }
    assert [p.line for p in catalog.problems] == sorted(reasons)
    sixth = next(p for p in catalog.problems if p.line == 6)
    assert (sixth.product_id, sixth.image) == ("SKU-1", "shirts/red-2.jpg")
    assert set(catalog.products) == {"SKU-1", "SKU-14"}
    assert catalog.products["SKU-1"].images == ("shirts/red-1.jpg",)
    assert catalog.rows == 17
    assert "15 rows left out:\n  line 3: empty product_id" in catalog.summary()


def test_jsonl_bad_lines(tmp_path, inventory):
    text = "\n".join(
        [
            json.dumps({"product_id": "A", "image": "hats/h1.png", "size": 1}),
            "{not json",
            "[1, 2]",
            json.dumps({"product_id": "B", "image": "hats/h2.png", "size": [1, 2]}),
            json.dumps({"product_id": 1.5, "image": "hats/h3.png"}),
            json.dumps({"product_id": "C", "image": "hats/h3.png", "title": True}),
            json.dumps({"product_id": "D", "image": "shirts/red-1.jpg", "title": "a\u0000b"}),
            json.dumps({"product_id": "E", "image": "shirts/red-2.jpg", "price": "12.5"}),
        ]
    )
    catalog = read_catalog(write(tmp_path, "c.ndjson", text), inventory)
    assert {p.line: p.reason for p in catalog.problems} == {
        2: "not valid JSON: Expecting property name enclosed in double quotes (column 2)",
        3: "not a JSON object",
        4: "size: lists and objects are not supported (one value per cell)",
        5: "product_id 1.5 is not a string or an integer",
        6: "title must be text, not True",
        7: "title: contains a NUL character",
    }
    assert set(catalog.products) == {"A", "E"} and catalog.products["E"].price == 12.5


def test_undecodable_bytes_spoil_only_their_row(tmp_path, inventory):
    path = tmp_path / "catalog.csv"
    path.write_bytes(
        b"\xef\xbb\xbfproduct_id,image,color\n"  # with a byte-order mark, as spreadsheets write
        b"A,hats/h1.png,caf\xe9\n"  # Latin-1, not UTF-8
        b"B,hats/h2.png,caf\xc3\xa9\n"
    )
    catalog = read_catalog(path, inventory)
    assert [(p.line, p.reason) for p in catalog.problems] == [(2, "color: not valid UTF-8")]
    assert catalog.products["B"].attributes == {"color": "café"}


def test_semicolons_and_tabs(tmp_path, inventory):
    semi = read_catalog(write(tmp_path, "c.csv", "product_id;image;price\nA;hats/h1.png;3\n"), inventory)
    tabs = read_catalog(write(tmp_path, "c.tsv", "product_id\timage\tprice\nA\thats/h1.png\t3\n"), inventory)
    assert semi.products["A"].price == tabs.products["A"].price == 3.0


def test_csv_type_inference(tmp_path, inventory):
    path = write(
        tmp_path,
        "catalog.csv",
        "product_id,image,n,b,zip,mixed,empty,words\n"
        "A,hats/h1.png,-1.5e2,TRUE,01234,1,,x\n"
        "B,hats/h2.png,0,false,12345,yes,, \n"
        "C,hats/h3.png,,,,,,\n",
    )
    catalog = read_catalog(path, inventory)
    assert catalog.attribute_types == {
        "n": "number",
        "b": "boolean",
        "zip": "string",
        "mixed": "string",
        "words": "string",
    }
    assert catalog.products["A"].attributes == {
        "n": -150.0,
        "b": True,
        "zip": "01234",
        "mixed": "1",
        "words": "x",
    }
    assert catalog.products["B"].attributes == {"n": 0.0, "b": False, "zip": "12345", "mixed": "yes"}
    assert "column 'empty' has no values: ignored" in catalog.notes


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("c.csv", "", "is empty"),
        ("c.csv", "product_id,title\nA,x\n", "has no image column"),
        ("c.csv", "sku,image\nA,hats/h1.png\n", "has no product_id column"),
        ("c.csv", "product_id,image,label\nA,hats/h1.png,x\n", "cannot be named 'label'"),
        ("c.csv", "product_id,image,color,color\nA,hats/h1.png,x,y\n", "'color' appears twice"),
        ("c.csv", "product_id,image,,x\nA,hats/h1.png,1,2\n", "column 3 of the header has no name"),
        ("c.csv", "product_id,image,`odd`\nA,hats/h1.png,1\n", "without backticks"),
        ("c.json", '[{"product_id": "A"}]', "holds a JSON array"),
        ("c.jsonl", "\n\n", "holds no rows"),
    ],
)
def test_files_that_are_not_catalogs(tmp_path, inventory, name, text, message):
    with pytest.raises(CatalogError, match=message):
        read_catalog(write(tmp_path, name, text), inventory)


def test_a_missing_catalog_file(tmp_path, inventory):
    with pytest.raises(CatalogError, match="cannot read the catalog"):
        read_catalog(tmp_path / "nope.csv", inventory)


def test_header_names_are_matched_loosely(tmp_path, inventory):
    catalog = read_catalog(
        write(tmp_path, "c.csv", " Product_ID , IMAGE ,Title\nA,hats/h1.png,T\n"), inventory
    )
    assert catalog.products["A"].title == "T"


def test_digests_tell_metadata_changes_from_image_changes(tmp_path, inventory):
    def read(text: str):
        return read_catalog(write(tmp_path, "c.csv", "product_id,image,title,color\n" + text), inventory)

    base = read("A,hats/h1.png,Hat,red\nB,hats/h2.png,Cap,blue\n")
    reordered_cells = read_catalog(
        write(
            tmp_path, "d.csv", "image,color,product_id,title\nhats/h1.png,red,A,Hat\nhats/h2.png,blue,B,Cap\n"
        ),
        inventory,
    )
    new_image = read("A,hats/h1.png,Hat,red\nA,hats/h3.png,,\nB,hats/h2.png,Cap,blue\n")
    new_title = read("A,hats/h1.png,Hat!,red\nB,hats/h2.png,Cap,blue\n")
    digest = {k: p.metadata_sha256 for k, p in base.products.items()}
    assert {k: p.metadata_sha256 for k, p in reordered_cells.products.items()} == digest
    assert reordered_cells.sha256 == base.sha256
    assert {k: p.metadata_sha256 for k, p in new_image.products.items()} == digest  # images only
    assert new_image.sha256 != base.sha256
    assert new_title.products["A"].metadata_sha256 != digest["A"]
    assert new_title.products["B"].metadata_sha256 == digest["B"]
    assert (
        len(digest["A"]) == 64
        and read("A,hats/h1.png,Hat,red\nB,hats/h2.png,Cap,blue\n").sha256 == base.sha256
    )


def test_the_indexers_scan_can_be_passed_in(tmp_path, inventory):
    scanned = [f for f in scan_inventory(inventory) if f.rel_path != "hats/h1.png"]  # as if deleted
    catalog = read_catalog(
        write(tmp_path, "c.csv", "product_id,image\nA,hats/h1.png\nB,hats/h2.png\n"), inventory, scanned
    )
    assert [str(p) for p in catalog.problems] == ["line 2: image hats/h1.png is not in the inventory"]
    assert list(catalog.products) == ["B"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file: permissions cannot be tested")
def test_an_unreadable_image(tmp_path, inventory):
    (inventory / "hats/h1.png").chmod(0)
    catalog = read_catalog(write(tmp_path, "c.csv", "product_id,image\nA,hats/h1.png\n"), inventory)
    assert [str(p) for p in catalog.problems] == [
        "line 2: image hats/h1.png is not readable (permission denied)"
    ]
