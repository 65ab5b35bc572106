"""model.predict against hostile and careless inputs (issue 22): outputs named by input, resume
that checks the input, image size limits from the header, unreadable files, list files, globs
and a killed worker."""
from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.inference import workers
from model.inference.csv_format import read_predictions
from model.predict import main
from model.benchmarks.synthetic import astronaut_head, make_face_video, make_untrained_checkpoint
from pipeline.image_limits import ImageSizeError, check_image_size, image_size

pytestmark = pytest.mark.reliability  # docs/reliability.md names every test here

ROOT = Path(__file__).resolve().parent.parent
AUS = [1, 2, 4, 6, 9, 12, 25, 26]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_untrained_checkpoint(tmp_path_factory.mktemp("ck") / "small.pt", "small", 64,
                                     au_ids=AUS)


def _run(checkpoint: Path, out: Path, *inputs: str, extra=()) -> int:
    return main(["--checkpoint", str(checkpoint), *inputs, "--out", str(out), "--no-progress",
                 *extra])


def png_bomb(width: int, height: int) -> bytes:
    """A valid grey PNG of zeros that declares ``width x height``: one deflate block repeated
    (a 30000 x 30000 one is 1.5 MB on disk, 2.7 GB once OpenCV decodes it as colour)."""
    row = bytes(width + 1)               # filter byte 0, then a row of black pixels
    comp = zlib.compressobj(9)
    head = comp.compress(row) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(row) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.compress(row) + comp.flush(zlib.Z_FINISH)
    n = (width + 1) * height                    # Adler-32 of n zero bytes: a = 1, b = n
    body = head + block * (height - 2) + tail[:-4] + struct.pack(">I", ((n % 65521) << 16) | 1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


def gif_header(width: int, height: int) -> bytes:
    """A GIF89a's signature and logical screen descriptor (no colour table, no image)."""
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b";"


@pytest.mark.parametrize("ending", [".png", ".jpg", ".bmp", ".tif", ".webp", ".ppm", ".pgm",
                                    ".pam", ".pfm", ".ras", ".hdr", ".gif", ".jp2"])
def test_header_size_of_every_format_opencv_writes(ending) -> None:
    picture = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    if ending in (".pfm", ".hdr"):
        picture = picture.astype(np.float32) / 255
    elif ending == ".pgm":
        picture = picture[..., 0]
    try:
        ok, data = cv2.imencode(ending, picture)
    except cv2.error:  # OpenCV before 4.11 writes no GIF (it reads them): the header by hand
        if ending != ".gif":
            raise
        ok, data = True, np.frombuffer(gif_header(53, 37), np.uint8)
    assert ok
    assert image_size(data.tobytes())[1:] == (53, 37)
    assert check_image_size(data.tobytes(), 53 * 37) == (53, 37)
    with pytest.raises(ImageSizeError, match="53 x 37"):
        check_image_size(data.tobytes(), 53 * 37 - 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS read from /proc")
def test_png_bomb_refused_from_its_header_with_bounded_memory(tmp_path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(30000, 30000))
    assert bomb.stat().st_size < 2_000_000
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((40, 60, 3), 90, np.uint8))
    # A fresh process, so the peak RSS is this read's alone: its VmHWM (ru_maxrss would keep
    # the forking pytest process's peak across exec on Linux).
    code = ("import json, sys\n"
            "from pathlib import Path\n"
            "from model.inference.video_io import ImageFrames\n"
            "frames = ImageFrames([Path(sys.argv[1]), Path(sys.argv[2])])\n"
            "shapes = [f.image.shape for f in frames]\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print(json.dumps({'shapes': shapes, 'failures': [e for _, e in frames.failures],\n"
            "    'peak_mb': int(hwm.split()[1]) / 1024}))\n")
    done = subprocess.run([sys.executable, "-c", code, str(bomb), str(good)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["shapes"] == [[40, 60, 3]]                       # the good image still read
    assert len(report["failures"]) == 1
    assert "bomb.png" in report["failures"][0] and "30000 x 30000" in report["failures"][0]
    assert report["peak_mb"] < 500


def test_image_folder_goes_on_past_empty_corrupt_and_oversized_files(checkpoint, tmp_path,
                                                                     capsys) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    canvas = np.full((320, 400, 3), 120, np.uint8)
    canvas[20:300, 60:340] = astronaut_head()
    cv2.imwrite(str(folder / "a_face.png"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    (folder / "b_empty.png").write_bytes(b"")                 # OpenCV 5 raises on 0 bytes
    (folder / "c_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    cv2.imwrite(str(folder / "d_large.png"), np.zeros((400, 600, 3), np.uint8))
    code = _run(checkpoint, tmp_path / "out", "--images", str(folder),
                extra=["--max-pixels", "200000"])
    assert code == 1
    table = read_predictions(tmp_path / "out" / "shots.csv")
    assert table["file"].tolist() == ["a_face.png"]
    summary = json.loads((tmp_path / "out" / "predict_summary.json").read_text())
    bad = {Path(b["file"]).name: b["error"] for b in summary["inputs"][0]["bad_files"]}
    assert sorted(bad) == ["b_empty.png", "c_corrupt.png", "d_large.png"]
    assert "empty" in bad["b_empty.png"] and "600 x 400" in bad["d_large.png"]
    assert "d_large.png" in capsys.readouterr().out


def test_max_pixels_must_be_positive(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", "c.pt", "--images", str(tmp_path), "--out", str(tmp_path / "o"),
              "--max-pixels", "0"])
    assert exit_info.value.code == 2 and "--max-pixels" in capsys.readouterr().err


def test_video_frames_above_the_pixel_limit_are_refused(checkpoint, tmp_path, caplog) -> None:
    video = make_face_video(tmp_path / "clip.avi", 2, size=(320, 300), fps=10.0, face_scale=0.5)
    with caplog.at_level(logging.ERROR):
        assert _run(checkpoint, tmp_path / "out", "--video", str(video),
                    extra=["--max-pixels", "70000"]) == 1
    assert "320 x 300" in caplog.text and "--max-pixels" in caplog.text


def test_same_stem_in_two_folders_and_resume_after_adding_one(checkpoint, tmp_path,
                                                              caplog) -> None:
    rec = tmp_path / "rec"
    (rec / "day1").mkdir(parents=True)
    (rec / "day2").mkdir()
    make_face_video(rec / "day2" / "clip.avi", 2, size=(320, 300), fps=10.0, face_scale=0.5)
    out = tmp_path / "out"
    assert _run(checkpoint, out, "--video", str(rec)) == 0
    assert (out / "day2" / "clip.csv").is_file()
    # day1/clip.avi sorts first: named by order, it would have inherited day2's finished CSV.
    make_face_video(rec / "day1" / "clip.avi", 3, size=(320, 300), fps=10.0, face_scale=0.5)
    assert _run(checkpoint, out, "--video", str(rec)) == 0
    status = {r["input"]: r["status"] for r in
              json.loads((out / "predict_summary.json").read_text())["inputs"]}
    assert status == {str(rec / "day1" / "clip.avi"): "ok", str(rec / "day2" / "clip.avi"): "skipped"}
    assert len(read_predictions(out / "day1" / "clip.csv")) == 3
    assert len(read_predictions(out / "day2" / "clip.csv")) == 2
    sidecar = json.loads((out / "day1" / "clip.meta.json").read_text())["source"]
    assert sidecar["path"] == str((rec / "day1" / "clip.avi").resolve())
    assert sidecar["size"] == (rec / "day1" / "clip.avi").stat().st_size

    # The same file name given twice from two folders: neither takes the other's CSV.
    assert _run(checkpoint, out, "--video", str(rec / "day2" / "clip.avi"),
                str(rec / "day1" / "clip.avi")) == 0
    csvs = sorted(p.name for p in out.glob("clip*.csv"))
    assert len(csvs) == 2 and all(n.startswith("clip-") for n in csvs)

    # Another input whose name is taken by a finished CSV (of an earlier run) gets its own.
    solo = tmp_path / "solo"
    assert _run(checkpoint, solo, "--video", str(rec / "day2" / "clip.avi")) == 0
    assert _run(checkpoint, solo, "--video", str(rec / "day1" / "clip.avi")) == 0
    assert len(read_predictions(solo / "clip.csv")) == 2                   # day2's, untouched
    (tagged,) = solo.glob("clip-*.csv")
    assert len(read_predictions(tagged)) == 3

    # A changed input is redone, not skipped.
    make_face_video(rec / "day2" / "clip.avi", 4, size=(320, 300), fps=10.0, face_scale=0.5)
    assert _run(checkpoint, out, "--video", str(rec)) == 0
    assert len(read_predictions(out / "day2" / "clip.csv")) == 4


def test_list_files_and_glob_errors_are_one_line(checkpoint, tmp_path, capsys) -> None:
    looping = tmp_path / "loop.txt"
    looping.write_text("# names itself\nloop.txt\n")
    binary = tmp_path / "binary.lst"
    binary.write_bytes(b"clip.avi\n\x00\x01\xff\xfe garbage")
    folder = tmp_path / "videos"
    folder.mkdir()
    cases = [(["--video", str(looping)], "names itself"),
             (["--video", str(binary)], "not a text list"),
             (["--video", str(folder), "--glob", str(folder / "*.avi")], "--glob")]
    for argv, message in cases:
        assert _run(checkpoint, tmp_path / "out", *argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_a_killed_worker_fails_its_input_only_and_resume_retries_it(checkpoint, tmp_path,
                                                                    monkeypatch) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name, frames in (("a", 2), ("b_victim", 12), ("c", 2), ("d", 2)):
        make_face_video(folder / f"{name}.avi", frames, size=(320, 300), fps=10.0, face_scale=0.5)
    killed: list[int] = []
    original = workers.job_started

    def kill_victim(name: str, pid: int) -> None:
        original(name, pid)
        if name == "b_victim" and not killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    monkeypatch.setattr(workers, "job_started", kill_victim)
    out = tmp_path / "out"
    assert _run(checkpoint, out, "--video", str(folder), extra=["--jobs", "2"]) == 1
    assert killed
    results = {Path(r["input"]).stem: r for r in
               json.loads((out / "predict_summary.json").read_text())["inputs"]}
    assert results["b_victim"]["status"] == "failed"
    assert "worker process died" in results["b_victim"]["error"]
    assert not (out / "b_victim.csv").exists()
    # Only its input is lost: the batch went on with the others (the one the other worker was
    # processing, stopped with the broken pool, included), in new workers where needed.
    assert {n: r["status"] for n, r in results.items() if n != "b_victim"} == {
        "a": "ok", "c": "ok", "d": "ok"}
    monkeypatch.undo()
    assert _run(checkpoint, out, "--video", str(folder)) == 0                # resume retries it
    statuses = {Path(r["input"]).stem: r["status"] for r in
                json.loads((out / "predict_summary.json").read_text())["inputs"]}
    assert statuses["b_victim"] == "ok"
    assert set(statuses.values()) <= {"ok", "skipped"}
