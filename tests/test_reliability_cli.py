"""Issue 13, bad input to the CLI: refused up front with one line and exit code 2; valid float images accepted."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from test_cli import files_in, run, write_inputs
from test_finetune import write_disc_layout

from napari_samsp.store import AnnotationStore

REPO = Path(__file__).resolve().parents[1]


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith("samsp: warning:")]
    assert len(lines) == 1 and lines[0].startswith("samsp: error:"), err
    return lines[0]


# ----------------------------------------------------------------------------- 7 / 12: a folder with one odd image


def test_folder_with_a_two_channel_image_writes_nothing(tmp_path, capsys):
    inputs = tmp_path / "in"
    write_inputs(inputs)  # two good images sort first
    tifffile.imwrite(inputs / "z_two_channels.tif", np.zeros((40, 50, 2), np.uint16))
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", inputs, "-o", out, "--model", "micro", "--threads", "1")
    assert code == 2
    line = _one_error(err)
    assert "z_two_channels.tif" in line and "2 channels" in line
    assert files_in(out) == []


def test_float64_image_with_large_finite_values_is_segmented(tmp_path, capsys):
    inputs = tmp_path / "in"
    write_inputs(inputs)
    big = np.linspace(-1e300, 1e300, 60 * 80).reshape(60, 80)
    big[20:40, 30:50] = 5e299
    tifffile.imwrite(inputs / "c_big.tif", big)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "segment", inputs, "-o", out, "--model", "micro", "--threads", "1")
    assert code == 0, err
    assert files_in(out) == ["a_gray.png", "b_rgb.png", "c_big.png"]
    assert "done: 3 images segmented" in stdout  # the summary


# ----------------------------------------------------------------------------- 8: numbers refused up front


@pytest.mark.parametrize(
    "argv, words",
    [
        (["segment", "{img}", "-o", "{tmp}/o", "--passes", "0"], "--passes must be 1"),
        (["finetune", "--data", "{data}", "-o", "{tmp}/m.safetensors", "--steps", "-5"], "--steps must be 1"),
        (["finetune", "--data", "{data}", "-o", "{tmp}/m.safetensors", "--val-split", "1.5"], "--val-split"),
        (["improve", "--data", "{data}", "--unlabeled", "{img}", "-o", "{tmp}/m.safetensors", "--rounds", "-1"], "--rounds must be 1"),
        (["improve", "--data", "{data}", "--unlabeled", "{img}", "-o", "{tmp}/m.safetensors", "--steps", "-1"], "--steps must be 1"),
        (["finetune", "--data", "{data}", "-o", "{tmp}/m.pth"], ".safetensors"),
        (["improve", "--data", "{data}", "--unlabeled", "{img}", "-o", "{tmp}/m.pth"], ".safetensors"),
    ],
)
def test_bad_numbers_and_names_are_refused_before_any_work(tmp_path, capsys, argv, words):
    data = write_disc_layout(tmp_path / "data", n=3)
    write_inputs(tmp_path / "in")
    fill = {"img": tmp_path / "in" / "a_gray.png", "data": data, "tmp": tmp_path}
    code, stdout, err = run(capsys, *[a.format(**fill) for a in argv], "--model", "micro", "--threads", "1")
    assert code == 2
    assert words in _one_error(err)
    assert stdout == ""  # no progress line: nothing was started
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("m.*"))


def test_improve_on_a_store_of_empty_masks_is_refused(tmp_path, capsys):
    store = AnnotationStore(tmp_path / "store")
    for i in range(3):
        img = np.full((20, 30), 10 * i + 5, np.uint8)
        store.add(img, np.zeros((20, 30), np.uint8), name=f"e{i}", allow_empty=True)
    write_inputs(tmp_path / "in")
    code, stdout, err = run(capsys, "improve", "--data", tmp_path / "store", "--unlabeled", tmp_path / "in",
                            "-o", tmp_path / "m.safetensors", "--model", "micro", "--threads", "1")
    assert code == 2 and stdout == ""
    assert "empty" in _one_error(err)


# ----------------------------------------------------------------------------- 11: sentences, not guts


def test_output_path_that_is_a_file_is_refused(tmp_path, capsys):
    write_inputs(tmp_path / "in")
    (tmp_path / "out").write_text("not a folder")
    code, _, err = run(capsys, "segment", tmp_path / "in", "-o", tmp_path / "out", "--model", "micro", "--threads", "1")
    assert code == 2 and "is an existing file" in _one_error(err)
    assert (tmp_path / "out").read_text() == "not a folder"


def test_text_file_named_png_is_refused_in_words(tmp_path, capsys):
    inputs = tmp_path / "in"
    write_inputs(inputs)
    (inputs / "notes.png").write_text("this is a text file\n")
    code, _, err = run(capsys, "segment", inputs, "-o", tmp_path / "out", "--model", "micro", "--threads", "1")
    line = _one_error(err)
    assert code == 2 and "notes.png" in line and "not a PNG file" in line and "backend" not in line
    assert files_in(tmp_path / "out") == []


def _png_header_claiming(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims a huge size (the data is one row): what the bomb guard sees first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b""))


def test_decompression_bomb_message_says_how_to_go_on(tmp_path, capsys):
    _png_header_claiming(tmp_path / "huge.png", 30000, 30000)
    code, _, err = run(capsys, "segment", tmp_path / "huge.png", "-o", tmp_path / "out", "--model", "micro", "--threads", "1")
    line = _one_error(err)
    assert code == 2 and "convert it to TIFF" in line and "SAMSP_MAX_IMAGE_PIXELS" in line


def test_read_only_output_folder_is_refused_in_words(tmp_path, capsys):
    write_inputs(tmp_path / "in")
    if os.geteuid() == 0:  # root writes in any mode-0555 folder; /sys refuses even root
        locked = Path("/sys")
        try:
            import tempfile

            tempfile.TemporaryFile(dir=locked).close()
            pytest.skip("no folder here refuses writes by root")
        except OSError:
            pass
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
    code, stdout, err = run(capsys, "segment", tmp_path / "in", "-o", locked / "samsp_out", "--model", "micro",
                            "--threads", "1")
    line = _one_error(err)
    assert code == 2 and stdout == ""
    assert "cannot write in" in line and "choose a folder you can write to" in line and "Errno" not in line
