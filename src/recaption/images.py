"""Decode untrusted image bytes into a normalised RGB image, or say why not.

Every image that enters the dataset goes through `decode`: size checked before
any pixel is decoded (a decompression bomb never allocates), EXIF orientation
applied, every mode (greyscale, RGBA, palette, CMYK, 16-bit) brought to 8-bit RGB.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageRejected(Exception):
    """An image that cannot enter the dataset; `reason` is one of the reject reasons."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode encoded image bytes to an RGB image with EXIF orientation applied.

    Raises:
        ImageRejected: reason empty_file, not_image, too_large, truncated or corrupt.
    """
    if not data:
        raise ImageRejected("empty_file", "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_image", "not a recognised image format") from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageRejected("too_large", str(exc)) from exc
    except Exception as exc:  # a malformed header can raise almost anything
        raise ImageRejected("corrupt", f"{type(exc).__name__}: {exc}") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected("too_large", f"{width}x{height} exceeds {max_pixels} pixels")
    try:
        img.load()
    except OSError as exc:
        reason = "truncated" if "truncat" in str(exc).lower() else "corrupt"
        raise ImageRejected(reason, str(exc)) from exc
    except Exception as exc:
        raise ImageRejected("corrupt", f"{type(exc).__name__}: {exc}") from exc
    # A broken EXIF block is not worth losing the image over.
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Bring any PIL mode to 8-bit RGB; transparency is composited onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: PIL's own convert clips at 255 instead of scaling.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def fit(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` and centre-crop to a square."""
    if img.size == (size, size):
        return img
    return ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)


def fitted_array(data: bytes, size: int) -> np.ndarray:
    """uint8 (size, size, 3) of an image already in the dataset (normalised at ingest),
    fitted to `size` when it is not that size already."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.array(fit(img, size))  # a writable copy, ready for torch.from_numpy


# Formats whose bytes may enter the dataset as they came (`data.store: original`): every
# reader of the dataset decodes them with Pillow.
KEPT_FORMATS = ("JPEG", "PNG", "WEBP")


def reads_back_as(data: bytes, img: Image.Image) -> bool:
    """Whether `data`, opened and converted to RGB as the stages read the dataset, gives
    exactly `img`'s pixels: then the bytes can be stored as they came instead of a PNG.

    False for other formats, for animations (the bytes would carry every frame), and
    whenever `decode` changed more than a plain RGB conversion does (a resize, EXIF
    orientation, transparency composited on white, 16-bit scaled). Call it only on
    bytes `decode` accepted: the size guard is not repeated.
    """
    with Image.open(io.BytesIO(data)) as raw:
        if raw.format not in KEPT_FORMATS or getattr(raw, "n_frames", 1) != 1:
            return False
        if raw.size != img.size:
            return False
        return raw.convert("RGB").tobytes() == img.tobytes()


def mime_type(data: bytes) -> str:
    """The MIME type of dataset image bytes (PNG, JPEG or WebP), from their signature."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


def encode_png(img: Image.Image) -> bytes:
    """Lossless, deterministic PNG bytes (no metadata chunks)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def pixel_sha256(img: Image.Image) -> str:
    """Hash of the decoded pixels (mode and size included), independent of the encoding."""
    digest = hashlib.sha256(f"{img.mode} {img.width}x{img.height}\n".encode())
    digest.update(img.tobytes())
    return digest.hexdigest()
