"""Decoding images the reference way, and finding the files that cannot be decoded.

The reference path of DeiT, CPVT and timm is ``Image.open(f).convert('RGB')``: CMYK, grayscale, palette, RGBA,
16-bit and PNG data behind a ``.JPEG`` name all go through it unchanged here. Two things are never done
silently: ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off (a truncated file is an error, not a grey bottom half),
and a bad file is never replaced by another image. ``draft()`` (JPEG decode at a reduced DCT scale, which
changes pixels) is used only when asked for, and the run records it.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import DataError, shown
from .image_set import ImageSet, Sample, fingerprint
from .loader import make_loader

BAD_IMAGE_POLICIES = ("stop", "skip")
# PIL's format name -> the extensions that announce it; anything else is noted as a mismatch.
_FORMAT_EXTENSIONS = {
    "JPEG": (".jpg", ".jpeg"),
    "PNG": (".png",),
    "BMP": (".bmp",),
    "WEBP": (".webp",),
    "TIFF": (".tif", ".tiff"),
    "PPM": (".ppm", ".pgm"),
}


def _decode_error(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def load_rgb(path: Path, draft_size: int | None = None) -> Image.Image:
    """Decode an image to RGB the way the reference code does (``Image.open(...).convert('RGB')``).

    Args:
        path: the image file.
        draft_size: when given, let a JPEG decode at the smallest DCT scale whose both sides stay at least this
            many pixels (faster, different pixels); None decodes at full size.
    """
    try:
        with open(path, "rb") as f:
            img = _open_loaded(f, draft_size)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot decode image {path}: not an image PIL can identify") from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise DataError(f"cannot decode image {path}: {_decode_error(e)}") from None
    return _to_rgb(img)


def _open_loaded(f, draft_size: int | None) -> Image.Image:
    img = Image.open(f)
    if draft_size is not None and img.format == "JPEG":
        img.draft("RGB", (draft_size, draft_size))
    img.load()
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    with warnings.catch_warnings():
        # Palette images with a transparency entry warn on convert; the result is the reference one anyway.
        warnings.simplefilter("ignore", UserWarning)
        return img.convert("RGB")


def decode_rgb(data: bytes, where: str, draft_size: int | None = None) -> Image.Image:
    """``load_rgb`` for image bytes held in a store (a shard member, a parquet row): the same decode, the same
    pixels as the same bytes in a file. ``where`` names the sample in errors."""
    try:
        img = _open_loaded(io.BytesIO(data), draft_size)
    except UnidentifiedImageError:
        raise DataError(f"cannot decode image {shown(where)}: not an image PIL can identify") from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise DataError(f"cannot decode image {shown(where)}: {_decode_error(e)}") from None
    return _to_rgb(img)


def load_sample(image_set: ImageSet, sample: Sample, draft_size: int | None = None) -> Image.Image:
    """The RGB image of one sample: a file under ``image_set.root``, or bytes read from the store."""
    if not sample.loc:
        return load_rgb(image_set.root / sample.relpath, draft_size)
    from .store_reads import read_store_bytes

    return decode_rgb(read_store_bytes(image_set, sample), str(image_set.root / sample.relpath), draft_size)


@dataclass(frozen=True)
class ImageCheck:
    """What a scan found about one file.

    Attributes:
        relpath: path relative to the dataset root.
        problem: why the file cannot be used (empty file, not an image, truncated/corrupt), or None.
        note: an odd but valid file (mode other than RGB, PNG data behind a .JPEG name), or None.
    """

    relpath: str
    problem: str | None = None
    note: str | None = None


def check_image(root: Path, relpath: str, full: bool = True) -> ImageCheck:
    """Check one file: identify it (cheap), and with ``full`` decode every pixel as the evaluation would."""
    path = root / relpath
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ImageCheck(relpath, problem="file not found (or a broken symlink)")
    except OSError as e:
        if e.errno == errno.ELOOP:
            return ImageCheck(relpath, problem="symlink loop (too many levels of symbolic links)")
        return ImageCheck(relpath, problem=f"cannot read: {e.strerror}")
    if size == 0:
        return ImageCheck(relpath, problem="empty file (0 bytes)")
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below; an unreadable file is not a corrupt one)
    except OSError as e:
        return ImageCheck(relpath, problem=f"cannot read: {e.strerror or e}")
    with f:
        return _check_opened(relpath, f, full, relpath)


def _check_opened(relpath: str, f, full: bool, named: str) -> ImageCheck:
    """Identify (and with ``full`` decode) an open image; ``named`` is the file name whose extension is checked."""
    try:
        img = Image.open(f)
        fmt, mode = img.format, img.mode
        if full:
            img.load()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                img.convert("RGB")
    except UnidentifiedImageError:
        return ImageCheck(relpath, problem="not an image (PIL cannot identify it)")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        return ImageCheck(relpath, problem=f"truncated or corrupt: {_decode_error(e)}")
    notes = []
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        notes.append("file name is not valid UTF-8 (shown with \\x escapes)")
    if mode != "RGB":
        notes.append(f"mode {mode}")
    ext = os.path.splitext(named.rsplit("/", 1)[-1])[1].lower()
    if fmt in _FORMAT_EXTENSIONS and ext not in _FORMAT_EXTENSIONS[fmt]:
        notes.append(f"{fmt} data behind a {ext or 'extensionless'} name")
    return ImageCheck(relpath, note=", ".join(notes) or None)


_IDENTIFY_BYTES = 1 << 16  # enough of a shard member to identify an image (retried whole when it is not)


def check_sample(image_set: ImageSet, sample: Sample, full: bool = True) -> ImageCheck:
    """``check_image`` for one sample of any layout: a file on disk, or a store's shard member / row."""
    if not sample.loc:
        return check_image(image_set.root, sample.relpath, full)
    from .store_reads import read_store_bytes

    size = sample.loc[-1]
    if size == 0:
        return ImageCheck(sample.relpath, problem="empty member (0 bytes)")
    if size < 0:
        return ImageCheck(sample.relpath, problem="no image bytes (null)")
    limit = None if full else _IDENTIFY_BYTES
    try:
        data = read_store_bytes(image_set, sample, limit)
        check = _check_opened(sample.relpath, io.BytesIO(data), full, sample.relpath)
        if check.problem and limit is not None and len(data) < size:
            data = read_store_bytes(image_set, sample)  # a header longer than the prefix: judge the whole image
            check = _check_opened(sample.relpath, io.BytesIO(data), full, sample.relpath)
    except DataError as e:
        return ImageCheck(sample.relpath, problem=str(e))
    return check


class _CheckDataset(Dataset):
    def __init__(self, image_set: ImageSet, full: bool):
        self.image_set, self.full = image_set, full

    def __len__(self) -> int:
        return len(self.image_set.samples)

    def __getitem__(self, i: int) -> ImageCheck:
        return check_sample(self.image_set, self.image_set.samples[i], self.full)


def _as_list(batch):
    return batch


def scan_images(image_set: ImageSet, full: bool = True, workers: int = 0, progress=None, batch_size: int = 32):
    """Check every image of ``image_set`` (in parallel with ``workers``); yield one ``ImageCheck`` per image.

    Args:
        image_set: the images to check.
        full: decode every pixel (finds truncated files); False only identifies the files (empty, not an image).
        workers: DataLoader worker processes.
        progress: an object with ``start(label, total)``, ``advance(n)`` and ``finish()`` (the engine's hook).
    """
    loader = make_loader(_CheckDataset(image_set, full), batch_size, workers, collate_fn=_as_list)
    if progress is not None:
        progress.start("checking images" if full else "identifying images", len(image_set.samples))
    try:
        for batch in loader:
            yield from batch
            if progress is not None:
                progress.advance(len(batch))
    finally:
        if progress is not None:
            progress.finish()


def _quoted(text: str) -> str:
    """A path as a shell would need it in the check-data hint (patterns hold braces)."""
    text = shown(text)
    return f"'{text}'" if any(c in text for c in " {}*?[]'\"") else text


def apply_bad_image_policy(image_set: ImageSet, policy: str = "stop", workers: int = 0, progress=None) -> None:
    """Find bad images before any cell is evaluated.

    ``stop``: identify every file (cheap) and raise on the first problem, naming the file; a file that only
    fails when fully decoded (truncated) still stops the first data pass, before any result is written.
    ``skip``: decode every file once, drop the bad ones from ``image_set`` and record them in
    ``image_set.skipped``; never replace a file by another.
    """
    if policy not in BAD_IMAGE_POLICIES:
        raise DataError(f"--on-bad-image must be stop or skip, got {policy!r}")
    if policy == "stop" and image_set.unreadable:
        rel, why = image_set.unreadable[0]
        more = f" (+{len(image_set.unreadable) - 1} more)" if len(image_set.unreadable) > 1 else ""
        raise DataError(
            f"cannot read {shown(image_set.root / rel)}: {why}{more} "
            f"(list every problem with `cpvt-eval check-data {_quoted(image_set.source)}`, "
            "or pass --on-bad-image skip)"
        )
    if policy == "stop":
        for check in scan_images(image_set, full=False, workers=workers, progress=progress):
            if check.problem:
                raise DataError(
                    f"bad image {shown(image_set.root / check.relpath)}: {check.problem} "
                    f"(list every problem with `cpvt-eval check-data {_quoted(image_set.source)}`, "
                    "or pass --on-bad-image skip)"
                )
        return
    bad = {c.relpath: c.problem for c in scan_images(image_set, True, workers, progress) if c.problem}
    # Folders that could not be listed are left out like bad files: listed in skipped.tsv, counted in n_skipped.
    image_set.skipped.extend(image_set.unreadable)
    image_set.unreadable = []
    if not bad and not image_set.skipped:
        return
    image_set.skipped.extend((rel, bad[rel]) for rel in sorted(bad))
    image_set.samples = [s for s in image_set.samples if s.relpath not in bad]
    if not image_set.samples:
        raise DataError(
            f"nothing to evaluate in {shown(image_set.source)}: every image is bad or unreadable ({len(bad)} bad "
            f"image(s), {len(image_set.skipped) - len(bad)} unreadable folder(s)/shard(s)/row group(s))"
        )
    # The fingerprint names what is evaluated: the files left out are not part of it.
    image_set.fingerprint = fingerprint(image_set)
