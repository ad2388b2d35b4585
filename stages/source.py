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

Cost per run: starting Python and importing the stage (~0.5 s: no Prefect, which took ~1.5 s),
then reading and decoding the source: the four IDX files (a local folder in place, ~0.3 s for
Fashion-MNIST; an S3 prefix or a mirror is downloaded, ~30 MB); an ImageFolder is decoded whole
(about 0.1 ms per small PNG on a local disk, plus one GET per file on S3).
"""

from __future__ import annotations

from pathlib import Path

from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, write_json
from squeeze.data.sources import fingerprint, read_source
from squeeze.data.spec import FetchError
from stages.candidate import stamp_main


def run(root: Path, params: Params) -> None:
    """Write the fingerprint of the data at the source to data/source.json."""
    ws, cfg = Workspace(root), params.ingest
    data = read_source(cfg, ws.state("probe"))
    write_json(ws.source, fingerprint(data.splits, data.classes))


def main() -> None:
    """`dvc repro`'s entry; a source that cannot be read now keeps the last stamp (stamp_main)."""
    stamp_main(run, FetchError, Workspace(Path(".")).source,
               "data the source holds now is seen once it can be read again")  # fmt: skip


if __name__ == "__main__":
    main()
