"""The memory policy: the whole dataset is held in memory, so ingest reads a dataset that fits in
half of this machine's memory, and refuses a larger one before decoding it.
"""

from __future__ import annotations

import os
from pathlib import Path

from squeeze.data.spec import DataError

# Memory ingest needs per image, as a multiple of its H*W*C pixel bytes: the source's arrays, the
# stratified subsets, the train/val split and the copy safetensors makes while saving a split.
COPIES_IN_MEMORY = 4


PER_IMAGE_OVERHEAD = 1024  # bytes: its path, list entries and GX's row of statistics


def memory_limit() -> int:
    """Bytes ingest may hold: half of this machine's physical memory, or half of its
    container's limit (cgroup v2 memory.max) when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        cap = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        cap = "max"
    if cap.isdigit():
        total = min(total, int(cap))
    return total // 2


def bytes_per_image(height: int, width: int, channels: int) -> int:
    """Rough memory ingest needs per image of the configured size."""
    return height * width * channels * COPIES_IN_MEMORY + PER_IMAGE_OVERHEAD


def check_memory(count: int, height: int, width: int, channels: int, where: str) -> None:
    """Refuse, before decoding, a dataset that would not fit in memory_limit(): squeeze holds
    the whole dataset in memory (a dataset larger than that is out of scope for now)."""
    per_image = bytes_per_image(height, width, channels)
    need, limit = count * per_image, memory_limit()
    if need > limit:
        raise DataError(
            f"{where}: {count} images of {height}x{width}x{channels} need about "
            f"{need / 2**30:.1f} GiB in memory (~{per_image} bytes per image), more than "
            f"ingest's limit of {limit / 2**30:.1f} GiB (half of this machine's memory): squeeze "
            "holds the whole dataset in memory; use a smaller ingest.image_size, a source with "
            "fewer images, or a machine with more memory"
        )
