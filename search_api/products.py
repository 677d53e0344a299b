"""The `products` resource: a catalog product with its images, a filtered listing, the attributes."""

from __future__ import annotations

from apiflask import APIBlueprint, abort
from sqlalchemy.orm import Session

from indexer.products import list_products, product_id_of
from search_api import answers
from search_api.engine import get_engine
from search_api.schemas import Attributes, ProductAnswer, ProductList, ProductListArgs

bp = APIBlueprint("products", __name__, url_prefix="/v1", tag="Products")

NOT_READY = {503: "No index loaded yet."}


@bp.get("/products/<string:product_id>")
@bp.output(ProductAnswer)
@bp.doc(responses={404: "No such product in the catalog of the index being served.", **NOT_READY})
def get_product(product_id: str) -> dict:
    """A product (by the catalog's product_id) with its images in the generation served."""
    with get_engine().snapshot() as snap:
        view = snap.catalog_view()
        with Session(snap.engine) as session:
            pid = product_id_of(session, product_id)
        record = view.records([pid]).get(pid) if pid is not None else None
        images = view.images_of([pid]).get(pid, []) if record is not None else []
        if not images:
            abort(404, f"product {product_id!r} is not in index generation {snap.generation.id}")
        return {
            **record.as_dict(),
            "images": [answers.image_ref(im) for im in _refs(images)],
            "index": answers.index_info(snap.generation),
        }


@bp.get("/products")
@bp.input(ProductListArgs, location="query", arg_name="args")
@bp.output(ProductList)
@bp.doc(responses={400: "A bad `filter` (`bad_filter`: where and why) or `cursor`.", **NOT_READY})
def list_all(args: dict) -> dict:
    """Products with at least one image, in a stable order, `limit` per page (follow `next_cursor`)."""
    with get_engine().snapshot() as snap:
        view = snap.catalog_view()
        expr = view.parse(args["filter"]) if args["filter"] and args["filter"].strip() else None
        with Session(snap.engine) as session:
            page = list_products(
                session, expr, view.attribute_types, limit=args["limit"], cursor=args["cursor"]
            )
        return {"products": [p.as_dict() for p in page.products], "next_cursor": page.next_cursor}


@bp.get("/attributes")
@bp.output(Attributes)
@bp.doc(responses=NOT_READY)
def get_attributes() -> dict:
    """Filterable attributes for filter controls: strings' values with counts, numbers' min and max."""
    with get_engine().snapshot() as snap:
        facets = [_facet(f) for f in snap.catalog_view().facets()]
        return {"attributes": facets, "index": answers.index_info(snap.generation)}


def _facet(f: dict) -> dict:
    f = dict(f)
    if "values" in f:
        f["value_counts"] = f.pop("values")
    return f


def _refs(images: list[tuple[int, str]]) -> list:
    from indexer.querying import ImageRef

    return [ImageRef(i, path) for i, path in images]
