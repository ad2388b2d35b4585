"""Stage `source`: stamp the data that `ingest.source` holds now, so that both entry points see
new data the same way.

DVC cannot look into a folder, bucket or URL outside the repo, so this stage is
`always_changed`: `dvc repro` and the flow run it first, every time. It writes data/source.json,
the fingerprint of the decoded data (squeeze.data.sources.fingerprint, the one ingest writes to
data/fingerprint.json). ingest depends on the stamp: the same data, however encoded or named,
gives the same stamp and ingest is skipped; new data changes it and ingest and everything
downstream re-run.

The stamp is taken over the data as ingest reads it: IDX images, and an ImageFolder's files
decoded with Pillow and converted to ingest.channels and ingest.image_size (the class folders'
names are in it too). So the same pixels, however encoded (PNG or lossless WebP, another
compression level), give the same stamp.

It is taken in two steps, so that a run with nothing changed reads no image: first the listing
(squeeze.data.sources.listing_digest: every file's key, size and ETag on S3 or mtime locally;
a mirror's HEAD answers), compared with the one kept in .squeeze/source-listing.json beside the
fingerprint it gave; only when the listing changed is the source read and decoded. A re-encoded
file changes the listing, is decoded, and gives the same fingerprint: data/source.json keeps its
bytes and ingest stays skipped. A file rewritten with the same size and mtime (set back by hand)
is not seen, as by make and rsync; delete .squeeze/source-listing.json to decode anyway.

Cost per run with nothing changed: starting Python and importing the stage (~0.5 s), then the
listing: a stat per file locally (about 2 us each), one request per 1000 objects on S3, four HEAD
requests to a mirror. When the listing changed: reading and decoding the source, the four IDX
files (~0.3 s for Fashion-MNIST; an S3 prefix or a mirror is downloaded, ~30 MB) or every file of
an ImageFolder (about 0.1 ms per small PNG on a local disk, plus one GET per file on S3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, read_json, write_json
from squeeze.data.sources import fingerprint, listing_digest, read_source
from squeeze.data.spec import FetchError
from stages.candidate import stamp_main

LISTING = "source-listing.json"  # under the workspace's scratch state (.squeeze/), not DVC's


def run(root: Path, params: Params) -> None:
    """Write the fingerprint of the data at the source to data/source.json, decoding the data
    only when its listing changed since the last stamp."""
    ws, cfg = Workspace(root), params.ingest
    digest = listing_digest(cfg)  # before reading: a change while reading shows next time
    cached = cached_fingerprint(ws.state(LISTING), digest)
    if cached is None:
        data = read_source(cfg, ws.state("probe"))
        cached = fingerprint(data.splits, data.classes)
        if digest is not None:
            write_json(ws.state(LISTING), {"listing_sha256": digest, "fingerprint": cached})
    write_json(ws.source, cached)  # the same fingerprint gives the same bytes (sorted keys)


def cached_fingerprint(path: Path, digest: str | None) -> dict[str, Any] | None:
    """The fingerprint kept in path for this listing digest; None when there is no digest, no
    cache, an unreadable one or another listing's."""
    if digest is None or not path.exists():
        return None
    try:
        kept = read_json(path)
    except ValueError:  # a torn or hand-edited cache is only a cache: decode again
        return None
    if not isinstance(kept, dict) or kept.get("listing_sha256") != digest:
        return None
    found = kept.get("fingerprint")
    return found if isinstance(found, dict) and "sha256" in found else None


def main() -> None:
    """`dvc repro`'s entry; a source that cannot be read now keeps the last stamp (stamp_main)."""
    stamp_main(run, FetchError, Workspace(Path(".")).source,
               "data the source holds now is seen once it can be read again")  # fmt: skip


if __name__ == "__main__":
    main()
