import numpy as np
import pytest
from PIL import Image

from recaption import images
from recaption.images import ImageRejected

from conftest import encode, solid

MAX = 10_000_000


def reason_of(data: bytes, max_pixels: int = MAX) -> str:
    with pytest.raises(ImageRejected) as err:
        images.decode(data, max_pixels)
    return err.value.reason


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        (solid(128, mode="L"), (128, 128, 128)),
        (solid((10, 20, 30), mode="RGB"), (10, 20, 30)),
        (solid((0, 255, 0, 0), mode="RGBA"), (255, 255, 255)),  # transparent -> white
        (solid((0, 255, 0, 255), mode="RGBA"), (0, 255, 0)),
        (solid((0, 0, 0, 0), mode="CMYK"), (255, 255, 255)),
        (solid((50, 255), mode="LA"), (50, 50, 50)),
    ],
)
def test_modes_become_rgb(img, expected):
    fmt = "JPEG" if img.mode == "CMYK" else "PNG"
    out = images.decode(encode(img, fmt), MAX)
    assert out.mode == "RGB"
    assert out.getpixel((3, 3)) == pytest.approx(expected, abs=2)


def test_palette_with_transparency_composites_on_white():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    img.info["transparency"] = 0
    out = images.decode(encode(img, "PNG", transparency=0), MAX)
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    arr = np.full((6, 6), 32896, dtype=np.uint16)  # mid-grey in 16 bits
    img = Image.fromarray(arr)
    out = images.decode(encode(img, "PNG"), MAX)
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (128, 128, 128)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = images.decode(encode(img, "JPEG", exif=exif.tobytes()), MAX)
    assert out.size == (10, 30)


def test_fit_centre_crops_to_square():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (10, 0, 30, 20))  # red centre, black sides
    out = images.fit(img, 8)
    assert out.size == (8, 8)
    assert out.getpixel((0, 4))[0] > 200  # the black sides were cropped away


def test_rejects_empty_not_image_truncated_corrupt():
    assert reason_of(b"") == "empty_file"
    assert reason_of(b"just some text, not pixels") == "not_image"
    jpeg = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    assert reason_of(jpeg[: len(jpeg) // 2]) == "truncated"
    png = bytearray(encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG"))
    png[60:160] = bytes(100)  # zero out part of the compressed data stream: whole, but wrong
    assert reason_of(bytes(png)) == "corrupt"


def test_decompression_bomb_is_refused_before_decoding():
    # 4000 x 4000 = 16 M pixels: under Pillow's own bomb limit, so only decode's
    # max_pixels guard can refuse it. Its data is cut short: a guard applied after
    # decoding would report "truncated" instead.
    assert Image.MAX_IMAGE_PIXELS > 4000 * 4000
    bomb = encode(Image.new("L", (4000, 4000)), "PNG")
    with pytest.raises(ImageRejected) as err:
        images.decode(bomb[: len(bomb) // 2], max_pixels=1_000_000)
    assert err.value.reason == "too_large"
    assert err.value.detail == "4000x4000 exceeds 1000000 pixels"  # decode's, not Pillow's


def test_pixel_hash_ignores_encoding_but_sees_pixels():
    img = solid((1, 2, 3))
    a = images.pixel_sha256(images.decode(encode(img, "PNG"), MAX))
    b = images.pixel_sha256(images.decode(encode(img, "BMP"), MAX))
    assert a == b
    other = solid((1, 2, 4))
    assert images.pixel_sha256(other) != a


def test_png_encoding_is_deterministic():
    img = Image.effect_noise((16, 16), 30).convert("RGB")
    assert images.encode_png(img) == images.encode_png(img.copy())


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180 degrees on display: same size, other pixels
    return encode(Image.linear_gradient("L").convert("RGB"), "JPEG", exif=exif.tobytes())


def animated_webp() -> bytes:
    frames = [solid((10, 20, 30)), solid((200, 20, 30))]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)


@pytest.mark.parametrize(
    ("data", "kept"),
    [
        (encode(Image.linear_gradient("L").convert("RGB"), "JPEG"), True),
        (encode(Image.linear_gradient("L"), "JPEG"), True),  # greyscale: a plain conversion
        (encode(solid((10, 20, 30)), "WEBP"), True),
        (encode(solid((10, 20, 30)), "PNG"), True),
        (rotated_jpeg(), False),  # EXIF orientation applied at decode
        (encode(solid((0, 255, 0, 0), mode="RGBA"), "PNG"), False),  # composited on white
        (encode(solid((10, 20, 30)), "GIF"), False),  # not a kept format
        (animated_webp(), False),  # the bytes would carry every frame
    ],
)
def test_bytes_are_kept_only_when_they_read_back_as_the_decoded_pixels(data, kept):
    img = images.decode(data, MAX)
    assert images.reads_back_as(data, img) is kept


def test_resized_bytes_do_not_read_back():
    data = encode(solid((10, 20, 30), size=(24, 20)), "JPEG")
    assert not images.reads_back_as(data, images.fit(images.decode(data, MAX), 16))


def test_mime_type_from_signature():
    img = solid()
    assert images.mime_type(encode(img, "JPEG")) == "image/jpeg"
    assert images.mime_type(encode(img, "WEBP")) == "image/webp"
    assert images.mime_type(images.encode_png(img)) == "image/png"
