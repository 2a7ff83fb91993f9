"""Decoding images the reference way, and finding the files that cannot be decoded.

The reference path of DeiT, CPVT and timm is ``Image.open(f).convert('RGB')``: CMYK, grayscale, palette, RGBA,
16-bit and PNG data behind a ``.JPEG`` name all go through it unchanged here. Two things are never done
silently: ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off (a truncated file is an error, not a grey bottom half),
and a bad file is never replaced by another image. ``draft()`` (JPEG decode at a reduced DCT scale, which
changes pixels) is used only when asked for, and the run records it.
"""

from __future__ import annotations

import errno
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .layouts import ImageSet, fingerprint

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
            img = Image.open(f)
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot decode image {path}: not an image PIL can identify") from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise DataError(f"cannot decode image {path}: {_decode_error(e)}") from None
    with warnings.catch_warnings():
        # Palette images with a transparency entry warn on convert; the result is the reference one anyway.
        warnings.simplefilter("ignore", UserWarning)
        return img.convert("RGB")


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
    try:
        with f:
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
    ext = os.path.splitext(relpath)[1].lower()
    if fmt in _FORMAT_EXTENSIONS and ext not in _FORMAT_EXTENSIONS[fmt]:
        notes.append(f"{fmt} data behind a {ext} name")
    return ImageCheck(relpath, note=", ".join(notes) or None)


class _CheckDataset(Dataset):
    def __init__(self, root: Path, relpaths: list[str], full: bool):
        self.root, self.relpaths, self.full = root, relpaths, full

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, i: int) -> ImageCheck:
        return check_image(self.root, self.relpaths[i], self.full)


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
    relpaths = [s.relpath for s in image_set.samples]
    loader = DataLoader(
        _CheckDataset(image_set.root, relpaths, full),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
    )
    if progress is not None:
        progress.start("checking images" if full else "identifying images", len(relpaths))
    try:
        for batch in loader:
            yield from batch
            if progress is not None:
                progress.advance(len(batch))
    finally:
        if progress is not None:
            progress.finish()


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
            f"cannot read {image_set.root / rel}: {why}{more} "
            f"(list every problem with `cpvt-eval check-data {image_set.root}`, or pass --on-bad-image skip)"
        )
    if policy == "stop":
        for check in scan_images(image_set, full=False, workers=workers, progress=progress):
            if check.problem:
                raise DataError(
                    f"bad image {image_set.root / check.relpath}: {check.problem} "
                    f"(list every problem with `cpvt-eval check-data {image_set.root}`, or pass --on-bad-image skip)"
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
        raise DataError(f"every image in {image_set.root} is bad ({len(bad)} files); nothing to evaluate")
    # The fingerprint names what is evaluated: the files left out are not part of it.
    image_set.fingerprint = fingerprint(image_set)
