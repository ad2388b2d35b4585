"""Write a Fashion-MNIST subset as an ImageFolder of PNG files: real images in the layout users
bring (train/<class>/*.png and test/<class>/*.png, or only <class>/*.png).

Folder names are the class names of params.yaml's ingest.classes with "/" made "-"
("T-shirt-top"); sorted, they are ImageFolder's label order, not Fashion-MNIST's. Files are
named by their index in the IDX file, so the same arguments write the same files.

    python -m examples.fmnist_imagefolder DEST [--train-per-class N] [--test-per-class N] [--rgb32]
                                               [--flat]

--rgb32 writes 3-channel 32x32 PNGs (the 28x28 grey image scaled bilinearly, in RGB), else
the 28x28 grayscale originals. Without --train-per-class / --test-per-class every image is
written (70,000 files, about a minute).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from squeeze.data.idx import read_split
from squeeze.data.sources import SYSTEM_DIR
from squeeze.data.splits import stratified_indices

PROJECT = Path(__file__).resolve().parents[1]


def folder_names() -> list[str]:
    """The class folders' names, in Fashion-MNIST's label order."""
    classes = yaml.safe_load((PROJECT / "params.yaml").read_text())["ingest"]["classes"]
    assert classes, "params.yaml's ingest.classes names Fashion-MNIST's classes"
    return [name.replace("/", "-") for name in classes]


def to_png_image(pixels: np.ndarray, rgb32: bool) -> Image.Image:
    """One (28, 28, 1) Fashion-MNIST image as a Pillow image: grey 28x28, or RGB 32x32."""
    image = Image.fromarray(pixels[..., 0], "L")
    if rgb32:
        image = image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    return image


def write_imagefolder(
    dest: Path,
    train_per_class: int | None = 20,
    test_per_class: int | None = 10,
    *,
    rgb32: bool = False,
    flat: bool = False,
    source: Path = SYSTEM_DIR,
    seed: int = 0,
) -> Path:
    """Write a stratified Fashion-MNIST subset (None: all images) as PNG files under dest:
    dest/train/<class>/<index>.png and dest/test/<class>/<index>.png, or with flat
    dest/<class>/train-<index>.png and dest/<class>/test-<index>.png. Returns dest."""
    names = folder_names()
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        data = read_split(source, split)
        for index in stratified_indices(data.labels, per_class, rng):
            name = names[data.labels[index]]
            folder = dest / name if flat else dest / split / name
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"{split}-{index:05d}" if flat else f"{index:05d}"
            to_png_image(data.images[index], rgb32).save(folder / f"{stem}.png")
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--train-per-class", type=int, default=None)
    parser.add_argument("--test-per-class", type=int, default=None)
    parser.add_argument("--rgb32", action="store_true", help="3-channel 32x32 PNGs")
    parser.add_argument("--flat", action="store_true", help="<class>/* without train/ test/")
    args = parser.parse_args()
    write_imagefolder(
        args.dest, args.train_per_class, args.test_per_class, rgb32=args.rgb32, flat=args.flat
    )


if __name__ == "__main__":
    main()
