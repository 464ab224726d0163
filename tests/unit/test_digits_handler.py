from __future__ import annotations

import pytest
import torch

from inferq.core.artifacts import pack, unpack
from inferq.core.errors import ArtifactError, InputError, ModelError
from inferq.core.handlers import handler_class, handler_names
from tests.factories import png_of
from workers.handlers.digits import DigitsHandler, dataset, fit


@pytest.fixture(scope="module")
def handler() -> DigitsHandler:
    split = dataset()
    net = fit(split.train_x, split.train_y, seed=0, epochs=15)
    data, sha = pack(net.state_dict(), {"architecture": "DigitsNet"})
    tensors, metadata = unpack(data, sha)
    loaded = DigitsHandler(torch.device("cpu"))
    loaded.load(tensors, metadata)
    return loaded


def test_digits_is_registered_as_an_entry_point() -> None:
    assert "digits" in handler_names()
    assert handler_class("digits") is DigitsHandler
    assert handler_class("tests.fixture_models.slow:SlowDigits").name == "slow-digits"
    with pytest.raises(ModelError):
        handler_class("no-such-model")
    with pytest.raises(ModelError):
        handler_class("inferq.core.settings:Settings")


def test_artifact_digest_is_checked_before_loading() -> None:
    data, sha = pack({"w": torch.ones(2)}, {"k": "v"})
    tensors, metadata = unpack(data, sha)
    assert metadata == {"k": "v"} and torch.equal(tensors["w"], torch.ones(2))
    with pytest.raises(ArtifactError, match="digest"):
        unpack(data, "0" * 64)
    with pytest.raises(ArtifactError, match="safetensors"):
        unpack(b"garbage", __import__("hashlib").sha256(b"garbage").hexdigest())


def test_predicts_a_batch_of_pixels_and_images_alike(handler: DigitsHandler) -> None:
    split = dataset()
    pixels = [list(map(float, x)) for x in split.holdout_x[:40]]
    batch = [handler.prepare({"pixels": p}) for p in pixels[:20]]
    batch += [handler.prepare({"image": png_of(p, size=64)}) for p in pixels[20:]]
    outputs = handler.predict(batch)
    labels = [o["label"] for o in outputs]
    accuracy = sum(int(a == b) for a, b in zip(labels, split.holdout_y[:40], strict=True)) / 40
    assert accuracy >= 0.85
    assert all(abs(sum(o["probabilities"]) - 1) < 1e-3 for o in outputs)


def test_a_light_on_dark_image_is_read_the_same(handler: DigitsHandler) -> None:
    pixels = list(map(float, dataset().holdout_x[0]))
    dark_ink = handler.predict([handler.prepare({"image": png_of(pixels, ink_dark=True)})])
    light_ink = handler.predict([handler.prepare({"image": png_of(pixels, ink_dark=False)})])
    assert dark_ink[0]["label"] == light_ink[0]["label"]


@pytest.mark.parametrize("image", ["!!!", "aGVsbG8=", "iVBORw0KGgoAAAAN" + "A" * 20])
def test_undecodable_images_raise_input_error(handler: DigitsHandler, image: str) -> None:
    with pytest.raises(InputError):
        handler.prepare({"image": image})


def test_decompression_bombs_are_refused(handler: DigitsHandler) -> None:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (5000, 5000), 255).save(buffer, format="PNG")
    with pytest.raises(InputError, match="too large"):
        handler.prepare({"image": base64.b64encode(buffer.getvalue()).decode()})
