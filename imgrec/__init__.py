"""imgrec: query-by-image similarity search for store inventories (CLI and demo on top of
`encoder`, `indexer` and `search_api`)."""
