"""Tests for pipeline.weights, its command line and scripts/download_weights.py, against a local HTTP server."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline import weights
from pipeline.weights import (
    ChecksumError,
    DownloadError,
    WeightsError,
    WeightsNotFoundError,
    cache_dir,
    cached_path,
    download,
    fetch_zoo,
    resolve_zoo,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "download_weights.py"
PAYLOAD = os.urandom(3 * (1 << 20) + 12345)  # > 3 read chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves server.files; honours 'Range: bytes=N-' unless told not to; can drop a response midway."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404, "not found")
            return
        start, status = 0, 200
        wanted = self.headers.get("Range")
        if wanted and srv.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted)[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # one interrupted response: promise everything, send less
            body, srv.cut_after = body[: srv.cut_after], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {"/model.pkl": PAYLOAD}
        self.honour_range = True
        self.cut_after: int | None = None
        self.requests: list[tuple[str, str | None]] = []

    def url(self, path: str = "/model.pkl") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@dataclasses.dataclass(frozen=True)
class FakeSpec:
    name: str
    zoo_url: str | None
    zoo_sha256: str | None = None
    zoo_filename: str | None = None
    zoo_manual: bool = False


# --------------------------------------------------------------------------- download()


def test_download_complete(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "sub" / "model.pkl"
    assert download(server.url(), dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD), progress=True) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("model.pkl.part").exists()
    assert server.requests == [("/model.pkl", None)]


def test_interrupted_download_resumes_with_range(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "model.pkl"
    part = tmp_path / "model.pkl.part"
    cut = (1 << 20) + 777
    server.cut_after = cut
    with pytest.raises(DownloadError, match=r"interrupted after \d+ .*run it again to resume"):
        download(server.url(), dest, sha256=PAYLOAD_SHA, progress=False)
    assert not dest.exists()
    assert part.read_bytes() == PAYLOAD[:cut]
    download(server.url(), dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.requests[-1] == ("/model.pkl", f"bytes={cut}-")
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()


def test_server_without_range_support_restarts(tmp_path: Path, server: _Server) -> None:
    server.honour_range = False
    dest = tmp_path / "model.pkl"
    (tmp_path / "model.pkl.part").write_bytes(b"\0" * 5000)  # stale bytes that must not be kept
    download(server.url(), dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.requests == [("/model.pkl", "bytes=5000-")]
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_is_finished_without_refetching(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "model.pkl"
    (tmp_path / "model.pkl.part").write_bytes(PAYLOAD)
    download(server.url(), dest, sha256=PAYLOAD_SHA, progress=False)  # server answers 416
    assert dest.read_bytes() == PAYLOAD


def test_bad_checksum_deletes_the_part_file(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "model.pkl"
    with pytest.raises(ChecksumError, match=f"has sha256 {PAYLOAD_SHA}, expected 0+; deleted"):
        download(server.url(), dest, sha256="0" * 64, progress=False)
    assert not dest.exists()
    assert not (tmp_path / "model.pkl.part").exists()


def test_corrupt_part_is_caught_by_the_checksum_then_retried(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "model.pkl"
    part = tmp_path / "model.pkl.part"
    part.write_bytes(b"\xff" * 4096)  # wrong bytes; the server resumes after them
    with pytest.raises(ChecksumError):
        download(server.url(), dest, sha256=PAYLOAD_SHA, progress=False)
    assert not part.exists() and not dest.exists()
    download(server.url(), dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_wrong_size_is_refused(tmp_path: Path, server: _Server) -> None:
    with pytest.raises(
        DownloadError, match=f"server reports {len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}"
    ):
        download(server.url(), tmp_path / "model.pkl", size=len(PAYLOAD) + 1, progress=False)
    assert not (tmp_path / "model.pkl").exists()


def test_http_error_and_bad_scheme(tmp_path: Path, server: _Server) -> None:
    with pytest.raises(DownloadError, match=r"missing\.pkl failed: HTTP 404"):
        download(server.url("/missing.pkl"), tmp_path / "m.pkl", progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="only http and https"):
        download(f"file://{tmp_path}/x", tmp_path / "m.pkl", progress=False)


# --------------------------------------------------------------------------- cache


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLOWFAST_WEIGHTS", str(tmp_path / "w"))
    assert cache_dir() == tmp_path / "w"
    monkeypatch.delenv("SLOWFAST_WEIGHTS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "slowfast_features"


def test_cached_path_layout(tmp_path: Path) -> None:
    spec = FakeSpec("slowfast_r50", "https://x/y/SLOWFAST_8x8_R50.pkl", zoo_filename="SLOWFAST_8x8_R50.pkl")
    assert cached_path(spec, tmp_path) == tmp_path / "slowfast_r50" / "SLOWFAST_8x8_R50.pkl"
    assert cached_path(FakeSpec("m", "https://x/a%20b.pyth?dl=1"), tmp_path) == tmp_path / "m" / "a b.pyth"
    with pytest.raises(WeightsError, match="'m' has no zoo weights"):
        cached_path(FakeSpec("m", None), tmp_path)


def test_fetch_zoo_skips_a_good_cached_file(tmp_path: Path, server: _Server) -> None:
    spec = FakeSpec("fake", server.url(), zoo_sha256=PAYLOAD_SHA, zoo_filename="fake.pkl")
    path = fetch_zoo(spec, cache=tmp_path, progress=False)
    assert path == tmp_path / "fake" / "fake.pkl" and path.read_bytes() == PAYLOAD
    fetch_zoo(spec, cache=tmp_path, progress=False)
    assert len(server.requests) == 1
    path.write_bytes(b"damaged")
    fetch_zoo(spec, cache=tmp_path, progress=False)
    assert len(server.requests) == 2 and path.read_bytes() == PAYLOAD
    fetch_zoo(spec, cache=tmp_path, force=True, progress=False)
    assert len(server.requests) == 3


# --------------------------------------------------------------------------- registry-backed API and CLI


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch, server: _Server, tmp_path: Path):
    """The real registry holding only a zoo model served locally and a model without zoo weights."""
    from pipeline.models import registry

    base = registry.get_spec("slowfast_tiny")
    zoo = dataclasses.replace(
        base, name="served_model", zoo_url=server.url(), zoo_sha256=PAYLOAD_SHA, zoo_filename="SERVED.pkl"
    )
    monkeypatch.setattr(registry, "_REGISTRY", {"served_model": zoo, "slowfast_tiny": base})
    monkeypatch.setenv("SLOWFAST_WEIGHTS", str(tmp_path / "cache"))
    return registry


def test_resolve_zoo_names_the_fetch_command(fake_registry, tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match=re.escape("python -m pipeline.weights served_model")):
        resolve_zoo("served_model")
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError for callers that catch that
        resolve_zoo("served_model")
    with pytest.raises(WeightsError, match="'slowfast_tiny' has no zoo weights"):
        resolve_zoo("slowfast_tiny")
    assert weights.main(["served_model", "--quiet"]) == 0
    assert resolve_zoo("served_model") == tmp_path / "cache" / "served_model" / "SERVED.pkl"
    assert resolve_zoo("served_model").read_bytes() == PAYLOAD


def test_cli_all_list_and_override(
    fake_registry, server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    assert weights.main(["--all", "--cache", str(other), "--quiet"]) == 0  # slowfast_tiny has no zoo URL
    assert (other / "served_model" / "SERVED.pkl").read_bytes() == PAYLOAD
    assert server.requests == [("/model.pkl", None)]
    capsys.readouterr()
    assert weights.main(["--list", "--cache", str(other)]) == 0
    assert re.search(r"served_model\s+cached", capsys.readouterr().out)

    server.files["/mirror/tiny.pyth"] = b"tiny weights"
    argv = ["slowfast_tiny", "--cache", str(other), "--quiet", "--url-override"]
    assert weights.main([*argv, f"slowfast_tiny={server.url('/mirror/tiny.pyth')}"]) == 0
    assert (other / "slowfast_tiny" / "tiny.pyth").read_bytes() == b"tiny weights"


def test_cli_failures(fake_registry, server: _Server, capsys: pytest.CaptureFixture[str]) -> None:
    assert weights.main(["no_such_model", "--quiet"]) == 1
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    assert (
        weights.main(["served_model", "--quiet", "--url-override", f"served_model={server.url('/gone')}"])
        == 1
    )
    err = capsys.readouterr().err
    assert "served_model" in err and "HTTP 404" in err and "1 of 1 download(s) failed" in err
    for argv in (
        [],
        ["served_model", "--url-override", "served_model"],
        ["served_model", "--url-override", "slowfast_tiny=http://x/y"],
        ["served_model", "--all"],
    ):
        with pytest.raises(SystemExit) as info:
            weights.main(argv)
        assert info.value.code == 2, argv


@pytest.mark.parametrize("command", [["-m", "pipeline.weights"], [str(SCRIPT)]], ids=["module", "script"])
def test_cli_runs_as_a_program(server: _Server, tmp_path: Path, command: list[str]) -> None:
    server.files["/tiny.pyth"] = b"abc"
    env = {**os.environ, "SLOWFAST_WEIGHTS": str(tmp_path / "cache")}
    result = subprocess.run(
        [
            sys.executable,
            *command,
            "slowfast_tiny",
            "--url-override",
            f"slowfast_tiny={server.url('/tiny.pyth')}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    path = tmp_path / "cache" / "slowfast_tiny" / "tiny.pyth"
    assert path.read_bytes() == b"abc"
    assert f"slowfast_tiny: {path}" in result.stdout


# --------------------------------------------------------------------------- shared-drive pages (zoo_manual)

DRIVE_PAGE = "https://drive.google.com/file/d/FILEID/view?usp=sharing"


@pytest.fixture
def manual_registry(fake_registry):
    """fake_registry plus a model whose zoo link is a shared-drive page, not a file."""
    base = fake_registry.get_spec("slowfast_tiny")
    manual = dataclasses.replace(
        base, name="drive_model", zoo_url=DRIVE_PAGE, zoo_filename="DRIVE.pyth", zoo_manual=True
    )
    fake_registry._REGISTRY["drive_model"] = manual
    return fake_registry


def test_zoo_manual_needs_a_page_and_a_filename() -> None:
    from pipeline.models import registry

    base = registry.get_spec("slowfast_tiny")
    with pytest.raises(ValueError, match="zoo_manual needs zoo_url"):
        dataclasses.replace(base, zoo_url=DRIVE_PAGE, zoo_manual=True)


def test_resolve_zoo_of_a_drive_page_says_to_bring_the_file(manual_registry, tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as error:
        resolve_zoo("drive_model")
    message = str(error.value)
    expected_path = tmp_path / "cache" / "drive_model" / "DRIVE.pyth"
    assert DRIVE_PAGE in message and "not a direct download" in message
    assert str(expected_path) in message and "download_weights.py" not in message
    expected_path.parent.mkdir(parents=True)
    expected_path.write_bytes(b"brought by hand")
    assert resolve_zoo("drive_model") == expected_path


def test_fetch_zoo_never_downloads_a_drive_page(
    manual_registry, server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = manual_registry.get_spec("drive_model")
    with pytest.raises(WeightsError, match=re.escape(DRIVE_PAGE)):
        fetch_zoo(spec, cache=tmp_path, progress=False)
    cli = weights
    assert cli.main(["drive_model", "--quiet", "--cache", str(tmp_path)]) == 1
    assert DRIVE_PAGE in capsys.readouterr().err
    assert cli.main(["--all", "--quiet", "--cache", str(tmp_path)]) == 0  # --all leaves the page out
    assert "skipped drive_model" in capsys.readouterr().err
    assert cli.main(["--list", "--cache", str(tmp_path)]) == 0
    assert re.search(r"drive_model\s+manual", capsys.readouterr().out)
    # a mirror with the file itself may still be given
    server.files["/mirror/drive.pyth"] = b"mirrored"
    url = server.url("/mirror/drive.pyth")
    assert (
        cli.main(["drive_model", "--quiet", "--cache", str(tmp_path), "--url-override", f"drive_model={url}"])
        == 0
    )
    assert (tmp_path / "drive_model" / "DRIVE.pyth").read_bytes() == b"mirrored"
    assert server.requests[-1] == ("/mirror/drive.pyth", None)
