"""Request and response schemas (marshmallow, through APIFlask): they make the OpenAPI document."""

from __future__ import annotations

from apiflask import Schema
from apiflask.fields import Boolean, DateTime, Dict, File, Float, Integer, List, Nested, Raw, String
from apiflask.validators import Length, OneOf, Range
from flask import current_app
from marshmallow import INCLUDE, ValidationError


def _k_at_most_max(value: int) -> None:
    top = int(current_app.config["MAX_K"])
    if value > top:
        raise ValidationError(f"must be between 1 and {top}")


def _default_k() -> int:
    return int(current_app.config["DEFAULT_K"])


# Search knobs are bounded so a request cannot buy unbounded work (or overflow FAISS's int fields).
MAX_NPROBE = 65536  # ivf: lists probed; FAISS probes at most nlist (4 sqrt(n): 4,000 at 1M items)
MAX_EF_SEARCH = 4096  # hnsw: candidate list length; the default is 64, recall saturates long before


# --- requests ------------------------------------------------------------------------------


class SearchArgs(Schema):
    k = Integer(
        load_default=_default_k,
        validate=[Range(min=1), _k_at_most_max],
        metadata={"description": "Results wanted (default 10)."},
    )
    label = String(load_default=None, metadata={"description": "Only items with this label."})
    nprobe = Integer(
        load_default=None,
        validate=Range(min=1, max=MAX_NPROBE),
        metadata={
            "description": "ivf indexes: inverted lists probed (more: slower, better recall); ignored by other types."
        },
    )
    ef_search = Integer(
        load_default=None,
        validate=Range(min=1, max=MAX_EF_SEARCH),
        metadata={
            "description": "hnsw indexes: search breadth (more: slower, better recall); ignored by other types."
        },
    )
    filter = String(
        load_default=None,
        metadata={
            "description": 'Only items whose product matches, e.g. `color = "red" AND price < 50` '
            "(docs/products.md; names: /v1/attributes, `product_id`, `title`, `price`, `label`).",
            "example": "price < 50",
        },
    )
    group_by = String(
        load_default=None,
        validate=OneOf(["product", "none"]),
        metadata={
            "description": "`product`: k distinct products, each by its best-matching image (the default "
            "when the index has a catalog); `none`: k images."
        },
    )


class ImageUpload(Schema):
    class Meta:
        unknown = INCLUDE  # other form fields are ignored

    image = File(required=True, metadata={"description": "The query image (JPEG, PNG, WebP, ...)."})


class BatchUpload(Schema):
    class Meta:
        unknown = INCLUDE  # other form fields are ignored

    images = List(
        File(),
        required=True,
        validate=Length(min=1),
        metadata={"description": "Query images; repeat the field."},
    )


# --- responses -----------------------------------------------------------------------------


class IndexInfo(Schema):
    generation = Integer(metadata={"description": "Id of the index generation that answered."})
    model_fingerprint = String()
    created_at = DateTime(metadata={"description": "When this generation was published (UTC)."})
    item_count = Integer()
    metric = String(metadata={"description": "`cosine` or `l2`."})
    score_kind = String(metadata={"description": "`similarity` (higher is closer) or `distance` (lower is)."})
    index_type = String()


class ItemLinks(Schema):
    item_url = String()
    image_url = String()
    thumbnail_url = String()
    similar_url = String()


class Product(Schema):
    id = String(metadata={"description": "The catalog's product_id (SKU)."})
    title = String(allow_none=True)
    url = String(allow_none=True, metadata={"description": "The product's page, from the catalog."})
    price = Float(allow_none=True)
    attributes = Dict(
        keys=String(),
        metadata={"description": "The catalog's other columns: string, number or boolean values."},
    )


class ImageRef(ItemLinks):
    id = Integer()
    path = String(metadata={"description": "Relative to the inventory root."})


class MatchedImage(ItemLinks):
    id = Integer()
    label = String()
    score = Float()


class Result(ItemLinks):
    rank = Integer()
    id = Integer(metadata={"description": "The (best-)matching image's item id."})
    label = String()
    score = Float(metadata={"description": "Similarity or distance, as `score_kind` says."})
    product = Nested(Product, allow_none=True, metadata={"description": "null: the image has no product."})
    matched_image = Nested(
        MatchedImage, metadata={"description": "Grouped answers only: the product's best-matching image."}
    )
    images = List(
        Nested(ImageRef), metadata={"description": "Grouped answers only: the product's other images."}
    )


class Timings(Schema):
    decode_ms = Float(metadata={"description": "Reading and resizing the image."})
    embed_ms = Float(metadata={"description": "Encoder forward (+ novelty) of the batch it rode in."})
    search_ms = Float(metadata={"description": "FAISS search and catalog look-up of that batch."})
    total_ms = Float(metadata={"description": "Whole request, queueing included."})


class QueryInfo(Schema):
    filename = String(allow_none=True)
    width = Integer()
    height = Integer()


class SearchAnswer(Schema):
    index = Nested(IndexInfo)
    score_kind = String()
    k = Integer()
    label = String(allow_none=True)
    filter = String(allow_none=True)
    group_by = String(metadata={"description": "`product` or `none`: what the results are."})
    exact = Boolean(
        metadata={"description": "false: an approximate index answered, closer items may be missing."}
    )
    query = Nested(QueryInfo)
    results = List(Nested(Result))
    novelty_percentile = Float(
        allow_none=True,
        metadata={"description": "How unusual the query is against the inventory (0-100; null if unknown)."},
    )
    timings = Nested(Timings)
    batch_size = Integer(metadata={"description": "Images embedded together with this one."})


class BatchEntry(Schema):
    status = Integer(metadata={"description": "200, or the error status of this image alone."})
    query = Nested(QueryInfo)
    results = List(Nested(Result))
    novelty_percentile = Float(allow_none=True)
    timings = Nested(Timings)
    error = String(metadata={"description": "Only on failure: the error kind."})
    message = String(metadata={"description": "Only on failure: what went wrong."})


class BatchAnswer(Schema):
    index = Nested(IndexInfo)
    score_kind = String()
    k = Integer()
    label = String(allow_none=True)
    filter = String(allow_none=True)
    group_by = String(metadata={"description": "`product` or `none`: what the results are."})
    exact = Boolean(
        metadata={"description": "false: an approximate index answered, closer items may be missing."}
    )
    answers = List(Nested(BatchEntry), metadata={"description": "One per image, in upload order."})
    total_ms = Float()


class Item(ItemLinks):
    id = Integer()
    label = String()
    path = String(metadata={"description": "Relative to the inventory root."})
    width = Integer()
    height = Integer()
    sha256 = String()
    index = Nested(IndexInfo)


class SimilarAnswer(Schema):
    index = Nested(IndexInfo)
    score_kind = String()
    k = Integer()
    label = String(allow_none=True)
    filter = String(allow_none=True)
    group_by = String(metadata={"description": "`product` or `none`: what the results are."})
    exact = Boolean(
        metadata={"description": "false: an approximate index answered, closer items may be missing."}
    )
    item = Nested(Item)
    results = List(Nested(Result))
    timings = Nested(Timings)


class Health(Schema):
    status = String()


class Ready(Schema):
    status = String()
    index = Nested(IndexInfo)
    reload_error = String(allow_none=True)


class ModelInfo(Schema):
    fingerprint = String(metadata={"description": "sha256 of the model's weights, graph and config."})
    kind = String(metadata={"description": "autoencoder | pretrained (or a kind registered by a plugin)."})
    name = String(metadata={"description": "The preset or architecture trained (`imgrec train --model`)."})
    arch = String(metadata={"description": "Architecture: the autoencoder's, or the pretrained backbone(s)."})
    runtime = String(metadata={"description": "What runs it: onnx (onnxruntime), torch, or python."})
    image_size = Integer(metadata={"description": "Square input side, pixels."})
    dim = Integer(metadata={"description": "Vector length."})


class Stats(Schema):
    index = Nested(IndexInfo)
    items = Integer()
    dim = Integer()
    metric = String()
    score_kind = String()
    index_type = String()
    model = Nested(
        ModelInfo, metadata={"description": "The encoder that embeds queries (the index's own model)."}
    )
    created_at = DateTime()
    index_age_seconds = Float()
    generation = Integer()
    eval_figures = Dict(allow_none=True, metadata={"description": "Evaluation figures recorded at indexing."})
    labels = Dict(keys=String(), values=Integer(), metadata={"description": "Live items per label."})
    engine = Dict(metadata={"description": "Loaded at, reloads, micro-batching settings and counts."})
    limits = Dict()
    novelty_available = Boolean(
        metadata={
            "description": "Answers carry a novelty percentile (the model has a reference and it is enabled)."
        }
    )


class ProductAnswer(Product):
    images = List(Nested(ImageRef), metadata={"description": "Its images in the generation served."})
    index = Nested(IndexInfo)


class ProductListArgs(Schema):
    filter = String(
        load_default=None,
        metadata={"description": "Only products matching this filter (docs/products.md)."},
    )
    limit = Integer(load_default=20, validate=Range(min=1, max=100), metadata={"description": "Page size."})
    cursor = String(
        load_default=None,
        metadata={"description": "`next_cursor` of the previous page."},
    )


class ProductList(Schema):
    products = List(Nested(Product))
    next_cursor = String(allow_none=True, metadata={"description": "null: this was the last page."})


class AttributeValue(Schema):
    value = Raw(metadata={"description": "A string or a boolean."})
    count = Integer(metadata={"description": "Products with this value."})


class Attribute(Schema):
    name = String()
    type = String(metadata={"description": "string | number | boolean"})
    values = List(
        Nested(AttributeValue),
        attribute="value_counts",  # a dict's own `values` method would stand in for a missing key
        data_key="values",
        metadata={"description": "Strings and booleans: the most frequent."},
    )
    more_values = Boolean(metadata={"description": "Strings: more values exist than listed."})
    min = Float(allow_none=True, metadata={"description": "Numbers only."})
    max = Float(allow_none=True, metadata={"description": "Numbers only."})
    count = Integer(metadata={"description": "Numbers only: products that have a value."})


class Attributes(Schema):
    attributes = List(Nested(Attribute))
    index = Nested(IndexInfo)
