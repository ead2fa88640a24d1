"""ISIC download against a real HTTP server on loopback: Range resume, size/checksum, safe unzip."""

from __future__ import annotations

import hashlib
import io
import shutil
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dermaseg.cli import app
from dermaseg.data.download import Unreachable, _receive, download_dataset, fetch, safe_extract
from dermaseg.errors import DermasegError
from helpers.badinputs import run_cli


class RangeHandler(BaseHTTPRequestHandler):
    """Serves `server.files` with `Range: bytes=N-` support; paths in `server.cut` are cut off
    after half their body the first time they are asked for (a broken transfer); paths in
    `server.no_length` are sent without Content-Length (HTTP/1.0: the end is the close)."""

    def do_GET(self):  # noqa: N802
        body = self.server.files.get(self.path)
        self.server.log.append((self.path, self.headers.get("Range")))
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng := self.headers.get("Range"):
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        if self.path not in self.server.no_length:
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if self.path in self.server.cut:
            self.server.cut.discard(self.path)
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.files, httpd.cut, httpd.no_length, httpd.log = {}, set(), set(), []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zipped:
        for name, data in entries.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def _isic2018_training(synth_dir) -> tuple[bytes, bytes]:
    images = sorted(synth_dir.glob("*.jpg"))[:3]
    inputs = {
        f"ISIC2018_Task1-2_Training_Input/ISIC_{i:07d}.jpg": p.read_bytes()
        for i, p in enumerate(images)
    }
    inputs["ISIC2018_Task1-2_Training_Input/LICENSE.txt"] = b"CC-BY-NC"
    truth = {
        f"ISIC2018_Task1_Training_GroundTruth/ISIC_{i:07d}_segmentation.png": p.with_name(
            p.stem + "_segmentation.png"
        ).read_bytes()
        for i, p in enumerate(images)
    }
    return _zip(inputs), _zip(truth)


def test_download_resumes_unpacks_and_checks(tmp_path, server, synth_dir):
    inputs, truth = _isic2018_training(synth_dir)
    server.files["/2018/ISIC2018_Task1-2_Training_Input.zip"] = inputs
    server.files["/2018/ISIC2018_Task1_Training_GroundTruth.zip"] = truth
    server.cut.add("/2018/ISIC2018_Task1-2_Training_Input.zip")
    result = CliRunner().invoke(
        app,
        [
            "data",
            "download",
            "isic2018",
            "-o",
            str(tmp_path),
            "--url-base",
            server.base,
            "--split",
            "training",
            "--no-checksum",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "3 pairs checked" in result.output and "no problem found" in result.output
    ranges = [r for path, r in server.log if path.endswith("Training_Input.zip")]
    assert ranges[0] is None and ranges[1] == f"bytes={len(inputs) // 2}-"  # resumed
    assert (tmp_path / "ISIC2018_Task1-2_Training_Input.zip").read_bytes() == inputs
    assert not list(tmp_path.glob("*.part"))
    again = download_dataset(
        "isic2018", tmp_path, server.base, ("training",), verify_checksum=False, progress=False
    )
    assert again.ok and len(server.log) == 3  # nothing fetched or unpacked twice
    # the unpacked folders and the zips deleted, the hidden markers left: fetched and unpacked
    for path in tmp_path.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif not path.name.startswith("."):
            path.unlink()
    anew = download_dataset(
        "isic2018", tmp_path, server.base, ("training",), verify_checksum=False, progress=False
    )
    assert anew.ok and anew.pairs == 3 and len(server.log) == 5


def test_broken_transfer_resumes_on_next_run(tmp_path, server):
    body = bytes(range(256)) * 400
    server.files["/f.zip"] = body
    server.cut.add("/f.zip")
    with pytest.raises(DermasegError, match="run the same command again to resume"):
        fetch(f"{server.base}/f.zip", tmp_path / "f.zip", retries=0, progress=False)
    assert (tmp_path / "f.zip.part").stat().st_size == len(body) // 2
    sha = hashlib.sha256(body).hexdigest()
    path = fetch(f"{server.base}/f.zip", tmp_path / "f.zip", sha256=sha, progress=False)
    assert path.read_bytes() == body
    assert server.log[-1] == ("/f.zip", f"bytes={len(body) // 2}-")


def test_complete_part_file_is_finished_without_refetch(tmp_path, server):
    server.files["/g.zip"] = b"abc" * 100
    (tmp_path / "g.zip.part").write_bytes(b"abc" * 100)
    assert fetch(f"{server.base}/g.zip", tmp_path / "g.zip", progress=False).read_bytes() == (
        b"abc" * 100
    )


def test_part_longer_than_the_file_restarts(tmp_path, server):
    server.files["/s.zip"] = b"abc" * 100
    (tmp_path / "s.zip.part").write_bytes(b"x" * 400)  # the server answers 416 to bytes=400-
    assert fetch(f"{server.base}/s.zip", tmp_path / "s.zip", progress=False).read_bytes() == (
        b"abc" * 100
    )
    assert server.log == [("/s.zip", "bytes=400-"), ("/s.zip", None)]
    assert not (tmp_path / "s.zip.part").exists()


def test_cut_transfer_of_unknown_size_is_not_taken_for_the_zip(tmp_path, server):
    body = _zip({"a.txt": bytes(range(256)) * 200, "b.txt": b"b" * 5000})
    server.files["/u.zip"] = body
    server.cut.add("/u.zip")
    server.no_length.add("/u.zip")
    with pytest.raises(DermasegError, match="run the same command again to resume"):
        fetch(f"{server.base}/u.zip", tmp_path / "u.zip", retries=0, progress=False)
    assert not (tmp_path / "u.zip").exists()
    assert (tmp_path / "u.zip.part").stat().st_size == len(body) // 2
    assert fetch(f"{server.base}/u.zip", tmp_path / "u.zip", progress=False).read_bytes() == body


def test_unsized_answer_that_is_no_zip_is_refused(tmp_path, server):
    server.files["/p.zip"] = b"<html>please log in</html>"
    server.no_length.add("/p.zip")
    with pytest.raises(DermasegError, match="not a zip; kept as .*p.zip.bad"):
        fetch(f"{server.base}/p.zip", tmp_path / "p.zip", progress=False)
    assert not (tmp_path / "p.zip").exists() and not (tmp_path / "p.zip.part").exists()


def test_damaged_zip_is_moved_aside_and_fetched_afresh(tmp_path, server, synth_dir):
    inputs, truth = _isic2018_training(synth_dir)
    server.files["/2018/ISIC2018_Task1-2_Training_Input.zip"] = inputs
    server.files["/2018/ISIC2018_Task1_Training_GroundTruth.zip"] = truth
    archive = tmp_path / "ISIC2018_Task1-2_Training_Input.zip"
    archive.write_bytes(inputs[: len(inputs) // 2])  # e.g. promoted by an older version
    args = ("isic2018", tmp_path, server.base, ("training",))
    with pytest.raises(DermasegError) as caught:
        download_dataset(*args, verify_checksum=False, progress=False)
    assert "not a valid zip archive" in str(caught.value)
    assert f"moved to {archive}.bad; run again to download it afresh" in str(caught.value)
    assert not archive.exists() and (tmp_path / f"{archive.name}.bad").exists()
    report = download_dataset(*args, verify_checksum=False, progress=False)
    assert report.ok and report.pairs == 3 and archive.read_bytes() == inputs


def test_corrupt_member_is_named_and_nothing_is_unpacked(tmp_path):
    last = b"L" * 3000
    data = _zip({"top/a.txt": b"first member\n" * 50, "top/b.txt": last})
    archive = tmp_path / "c.zip"
    archive.write_bytes(data.replace(last, b"M" + last[1:]))  # stored: the CRC no longer fits
    out = tmp_path / "out"
    with pytest.raises(DermasegError, match=r"c.zip: member 'top/b.txt' is corrupt \(Bad CRC-32\)"):
        safe_extract(archive, out, progress=False)
    assert list(out.rglob("*")) == []  # neither the first member nor the temporary folder
    (out / ".dermaseg-killed.unpack" / "top").mkdir(parents=True)  # left by a killed run
    archive.write_bytes(data)
    assert safe_extract(archive, out, progress=False) == 2
    assert sorted(p.name for p in out.rglob("*")) == ["a.txt", "b.txt", "top"]


def test_checksum_mismatch_refused(tmp_path, server):
    server.files["/h.zip"] = b"tampered"
    with pytest.raises(DermasegError, match="SHA-256"):
        fetch(f"{server.base}/h.zip", tmp_path / "h.zip", sha256="0" * 64, progress=False)
    assert not (tmp_path / "h.zip").exists()


def test_http_error_named(tmp_path, server):
    with pytest.raises(DermasegError, match="HTTP 404"):
        fetch(f"{server.base}/absent.zip", tmp_path / "new" / "absent.zip", progress=False)
    assert not (tmp_path / "new").exists()


def test_path_traversal_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"ok/a.txt": b"fine", "../evil.txt": b"escape"}))
    out = tmp_path / "out"
    with pytest.raises(DermasegError, match="outside"):
        safe_extract(archive, out, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (out / "ok" / "a.txt").exists()
    absolute = tmp_path / "abs.zip"
    absolute.write_bytes(_zip({"/tmp/evil_abs.txt": b"escape"}))
    with pytest.raises(DermasegError, match="outside"):
        safe_extract(absolute, out, progress=False)
    (tmp_path / "notzip.zip").write_bytes(b"not a zip")
    with pytest.raises(DermasegError, match="not a valid zip"):
        safe_extract(tmp_path / "notzip.zip", out, progress=False)


def test_without_network_fails_fast_with_instructions(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    out = tmp_path / "isic2016"
    with pytest.raises(Unreachable) as caught:
        download_dataset("isic2016", out, f"http://127.0.0.1:{port}", progress=False)
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert "by hand" in message and str(out) in message
    assert not out.exists()  # no empty folder left behind
    assert "ISBI2016_ISIC_Part1_Training_GroundTruth.zip" in message


def test_hand_downloaded_archives_are_used_offline(tmp_path, synth_dir):
    inputs, truth = _isic2018_training(synth_dir)
    (tmp_path / "ISIC2018_Task1-2_Training_Input.zip").write_bytes(inputs)
    (tmp_path / "ISIC2018_Task1_Training_GroundTruth.zip").write_bytes(truth)
    report = download_dataset(
        "isic2018", tmp_path, "http://127.0.0.1:9", ("training",), progress=False
    )
    assert report.pairs == 3 and report.ok


@pytest.mark.parametrize("args,message", [
    (["--timeout", "-1"], "--timeout must be > 0"),
    (["--timeout", "0"], "--timeout must be > 0"),
    (["--url-base", "not a url"], "--url-base 'not a url': not an http(s) URL"),
    (["--split", "validation"], "isic2016 has no validation split (available: training, test)"),
])
def test_download_usage_errors(tmp_path, args, message):
    out = tmp_path / "out"
    code, output = run_cli("data", "download", "isic2016", "-o", out, *args)
    assert code == 2 and message in output and "Traceback" not in output, output
    assert not out.exists()


def test_download_into_a_file_is_a_clear_error(tmp_path, server):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, output = run_cli("data", "download", "isic2018", "-o", blocker, "--url-base",
                           server.base, "--split", "training", "--no-checksum")
    assert code == 1 and "a-file: not a folder" in output and "Traceback" not in output, output
    assert server.log == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_not_reported_as_a_broken_transfer():
    """ENOSPC was caught as a network break: retried 3 times, then "run again to resume"."""
    with pytest.raises(DermasegError, match="/dev/full: cannot write .*free some space"):
        _receive(io.BytesIO(b"x" * 4096), Path("/dev/full"), 1, None, progress=False)
