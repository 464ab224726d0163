"""Image inputs are decoded with size limits: a decompression bomb fails its job cleanly."""

from __future__ import annotations

import pytest

from inferq.core.errors import InputError
from tests.security import png_header_only
from workers.handlers.digits import MAX_IMAGE_PIXELS, image_to_pixels


@pytest.mark.parametrize(
    "side",
    [
        int(MAX_IMAGE_PIXELS**0.5) + 1,  # past our limit, below Pillow's
        10_000,  # past Pillow's warning threshold
        30_000,  # past Pillow's hard limit: it raises its own error
    ],
)
def test_images_past_the_pixel_limit_are_refused_before_decoding(side: int) -> None:
    with pytest.raises(InputError, match="too large"):
        image_to_pixels(png_header_only(side, side))


def test_a_small_image_still_decodes() -> None:
    from tests.factories import holdout, png_of

    pixels = image_to_pixels(png_of(holdout(1)[0][0]["pixels"], size=32))
    assert len(pixels) == 64 and max(pixels) > 8
