"""Result grids: the query on top, k captioned results below."""

from PIL import Image

from indexer.grids import draw_grid


def test_draw_grid_size_grows_with_rows():
    img = Image.new("RGB", (50, 30), (255, 0, 0))
    one_row = draw_grid(img, "query", [(img, "#1 0.9\na")] * 5, thumb=64)
    two_rows = draw_grid(img, "query", [(img, "#1 0.9\na")] * 10, thumb=64, columns=5)
    assert one_row.width == two_rows.width == 5 * (64 + 6) + 6
    assert two_rows.height > one_row.height


def test_draw_grid_shows_missing_images_grey():
    grid = draw_grid(None, "query", [(None, "#1\nmissing")], thumb=32)
    assert grid.getpixel((10, 10)) == (200, 200, 200)
