"""ISIC download against a real HTTP server on loopback: Range resume, size/checksum, safe unzip."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from dermaseg.cli import app
from dermaseg.data.download import Unreachable, download_dataset, fetch, safe_extract
from dermaseg.errors import DermasegError


class RangeHandler(BaseHTTPRequestHandler):
    """Serves `server.files` with `Range: bytes=N-` support; paths in `server.cut` are cut off
    after half their body the first time they are asked for (a broken transfer)."""

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
    httpd.files, httpd.cut, httpd.log = {}, set(), []
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


def test_checksum_mismatch_refused(tmp_path, server):
    server.files["/h.zip"] = b"tampered"
    with pytest.raises(DermasegError, match="SHA-256"):
        fetch(f"{server.base}/h.zip", tmp_path / "h.zip", sha256="0" * 64, progress=False)
    assert not (tmp_path / "h.zip").exists()


def test_http_error_named(tmp_path, server):
    with pytest.raises(DermasegError, match="HTTP 404"):
        fetch(f"{server.base}/absent.zip", tmp_path / "absent.zip", progress=False)


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
    with pytest.raises(Unreachable) as caught:
        download_dataset("isic2016", tmp_path, f"http://127.0.0.1:{port}", progress=False)
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert "by hand" in message and str(tmp_path) in message
    assert "ISBI2016_ISIC_Part1_Training_GroundTruth.zip" in message


def test_hand_downloaded_archives_are_used_offline(tmp_path, synth_dir):
    inputs, truth = _isic2018_training(synth_dir)
    (tmp_path / "ISIC2018_Task1-2_Training_Input.zip").write_bytes(inputs)
    (tmp_path / "ISIC2018_Task1_Training_GroundTruth.zip").write_bytes(truth)
    report = download_dataset(
        "isic2018", tmp_path, "http://127.0.0.1:9", ("training",), progress=False
    )
    assert report.pairs == 3 and report.ok
