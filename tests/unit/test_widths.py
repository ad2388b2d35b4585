"""benchmarks.widths: one network at several widths, exported and timed together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import widths
from squeeze.data.spec import DataSpec

RESNET = "examples.user_models.ResNet"
INIT = {"in_channels": 3, "num_classes": 10, "blocks": [1, 1]}


def test_each_width_is_exported_counted_and_timed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = DataSpec(("a",) * 10, 16, 16, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(spec.to_json()))
    widths.main(["--class-path", RESNET, "--init", json.dumps(INIT), "--arg", "widths",
                 "--values", "[16, 32]", "[8, 16]", "--spec", str(path), "--warmup", "2",
                 "--runs", "10", "--rounds", "2"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| widths | MACs | p50 ms | p95 ms | speed-up p50 |"
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [c[0] for c in cells] == ["[16, 32]", "[8, 16]"]
    assert cells[0][4] == "1.00×"  # the first setting is the reference
    macs = [int(c[1].replace(",", "")) for c in cells]
    # halving every width quarters the 3×3 convs' MACs (the stem's input stays 3 channels)
    assert 3.0 < macs[0] / macs[1] < 4.0
    assert all(0 < float(c[2]) <= float(c[3]) for c in cells)


def test_a_module_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    from squeeze.config.allowlist import ClassPathRefused

    spec = DataSpec(("a", "b"), 8, 8, 1, (0.5,), (0.25,))
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(spec.to_json()))
    with pytest.raises(ClassPathRefused, match="subprocess"):
        widths.main(["--class-path", "subprocess.run", "--arg", "x", "--values", "1",
                     "--spec", str(path)])  # fmt: skip
