"""Local cache of model-zoo weights, and a resumable, checksummed HTTP(S) downloader.

Cache layout: ``<cache>/<model name>/<zoo filename>``, where ``<cache>`` is ``$SLOWFAST_WEIGHTS`` or
``~/.cache/slowfast_features``. Downloads go to ``<file>.part`` (resumed with a Range request when a
partial file is there) and are renamed into place only once complete and checksummed.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import PipelineError
from pipeline.models.registry import get_spec
from pipeline.outputs import file_sha256

__all__ = [
    "ChecksumError",
    "DownloadError",
    "ENV_VAR",
    "WeightsError",
    "WeightsNotFoundError",
    "ZooSpec",
    "cache_dir",
    "cached_path",
    "download",
    "download_command",
    "fetch_zoo",
    "manual_download_hint",
    "resolve_zoo",
]

log = logging.getLogger(__name__)

ENV_VAR = "SLOWFAST_WEIGHTS"
DEFAULT_CACHE = Path("~/.cache/slowfast_features")
_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class WeightsError(PipelineError):
    """Zoo weights that cannot be found or fetched."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """The weights are not in the cache; the message says which command fetches them."""


class DownloadError(WeightsError):
    """A download that failed; a partial file is kept for resuming unless it is known to be bad."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected sha256 (the partial file is deleted)."""


class ZooSpec(Protocol):
    """The fields of pipeline.models.registry.ModelSpec that the cache uses."""

    @property
    def name(self) -> str: ...
    @property
    def zoo_url(self) -> str | None: ...
    @property
    def zoo_sha256(self) -> str | None: ...
    @property
    def zoo_filename(self) -> str | None: ...
    @property
    def zoo_manual(self) -> bool: ...


def cache_dir() -> Path:
    """The weights cache: $SLOWFAST_WEIGHTS, else ~/.cache/slowfast_features."""
    value = os.environ.get(ENV_VAR)
    return Path(value).expanduser() if value else DEFAULT_CACHE.expanduser()


def _url_filename(url: str) -> str:
    """Last path component of url ('' if none)."""
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name


def cached_path(spec: ZooSpec, cache: Path | None = None, *, url: str | None = None) -> Path:
    """Where spec's weights live in the cache (whether or not they are there yet)."""
    filename = spec.zoo_filename or _url_filename(url or spec.zoo_url or "")
    if not filename:
        raise WeightsError(f"model {spec.name!r} has no zoo weights (no zoo_filename or zoo_url)")
    return (cache if cache is not None else cache_dir()) / spec.name / filename


def download_command(name: str) -> str:
    """The shell command that fetches a model's weights."""
    return f"python -m pipeline.weights {name}"


def manual_download_hint(spec: ZooSpec, path: Path) -> str:
    """How to bring weights whose zoo link is a web page (shared drive) rather than a file."""
    return (
        f"the zoo link of {spec.name!r} is a web page, not a direct download: open {spec.zoo_url} in a "
        f"browser, download {spec.zoo_filename} and put it at {path} (or pass model.checkpoint=<its path>)"
    )


def resolve_zoo(name: str, *, cache: Path | None = None) -> Path:
    """Path of the cached zoo weights of model name; WeightsNotFoundError says how to fetch them."""
    spec = get_spec(name)
    if not spec.zoo_url and not spec.zoo_filename:
        raise WeightsError(f"model {name!r} has no zoo weights; pass a checkpoint path instead")
    path = cached_path(spec, cache)
    if not path.is_file() and spec.zoo_manual:
        raise WeightsNotFoundError(
            f"weights of {name!r} are not in the cache; {manual_download_hint(spec, path)}"
        )
    if not path.is_file():
        env_hint = f" --cache {path.parent.parent}" if cache is not None else ""
        raise WeightsNotFoundError(
            f"weights of {name!r} are not in the cache ({path}); fetch them with: "
            f"{download_command(name)}{env_hint}"
        )
    return path


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool) -> Any:
    """A tqdm byte counter (disabled when not enabled)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        leave=False,
    )


def _open(url: str, start: int, timeout: float) -> http.client.HTTPResponse:
    """GET url, asking for bytes from start on when start > 0."""
    request = urllib.request.Request(url, headers={"User-Agent": "slowfast-feature-extractor"})
    if start > 0:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)  # scheme checked by download()


def _remote_total(response: http.client.HTTPResponse, start: int) -> int | None:
    """Full size of the remote file from Content-Range / Content-Length, if the server says."""
    content_range = response.headers.get("Content-Range")
    if content_range and (m := _CONTENT_RANGE.fullmatch(content_range.strip())) and m[3] != "*":
        return int(m[3])
    length = response.headers.get("Content-Length")
    return int(length) + start if length and length.isdigit() else None


def _fetch_into(part: Path, url: str, *, size: int | None, progress: bool, timeout: float) -> None:
    """Append the rest of url to part (restarting it if the server ignores the Range request)."""
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:
        log.warning("partial file %s is larger than expected (%d > %d); restarting", part, start, size)
        part.unlink()
        start = 0
    try:
        response = _open(url, start, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start > 0:  # range not satisfiable: the part file may already be complete
            total = None
            if (cr := e.headers.get("Content-Range")) and (m := re.fullmatch(r"bytes \*/(\d+)", cr.strip())):
                total = int(m[1])
            if total is None:
                total = size
            if total == start:
                return
            log.warning("server refused to resume %s at byte %d; restarting", url, start)
            part.unlink()
            _fetch_into(part, url, size=size, progress=progress, timeout=timeout)
            return
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"download of {url} failed: {reason}") from e

    with response:
        if start > 0 and response.status != 206:
            log.info("server does not resume %s (HTTP %d); downloading from the start", url, response.status)
            start = 0
        elif start > 0:
            m = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
            if not m or int(m[1]) != start:
                raise DownloadError(
                    f"download of {url} failed: asked for bytes {start}- but got "
                    f"{response.headers.get('Content-Range')!r}"
                )
            log.info("resuming %s at byte %d", url, start)
        total = _remote_total(response, start)
        if size is not None and total is not None and total != size:
            raise DownloadError(f"download of {url} failed: server reports {total} bytes, expected {size}")
        received = start
        with (
            open(part, "ab" if start > 0 else "wb") as out,
            _progress_bar(total or size, start, part.name.removesuffix(".part"), progress) as bar,
        ):
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, OSError) as e:
                if isinstance(e, http.client.IncompleteRead) and e.partial:
                    out.write(e.partial)  # keep every byte received, for the resume
                    received += len(e.partial)
                raise DownloadError(
                    f"download of {url} interrupted after {received} bytes ({type(e).__name__}); "
                    f"run it again to resume from {part}"
                ) from e
        if total is not None and received != total:
            raise DownloadError(
                f"download of {url} interrupted after {received} of {total} bytes; "
                f"run it again to resume from {part}"
            )


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download url to dest via dest.part (resumable), check size and sha256, then rename atomically."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"download of {url} refused: only http and https URLs are supported")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_into(part, url, size=size, progress=progress, timeout=timeout)

    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink()
        raise DownloadError(f"download of {url} has {got_size} bytes, expected {size}; deleted it")
    if sha256 is not None:
        got = file_sha256(part)
        if got.lower() != sha256.lower():
            part.unlink()
            raise ChecksumError(f"download of {url} has sha256 {got}, expected {sha256}; deleted it")
    os.replace(part, dest)
    log.info("downloaded %s -> %s (%d bytes)", url, dest, got_size)
    return dest


def fetch_zoo(
    spec: ZooSpec,
    *,
    cache: Path | None = None,
    url: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Make sure spec's zoo weights are in the cache (from url when given, else spec.zoo_url)."""
    source = url or spec.zoo_url
    if not source:
        raise WeightsError(f"model {spec.name!r} has no zoo URL; pass one with --url-override")
    dest = cached_path(spec, cache, url=source)
    if spec.zoo_manual and url is None:
        if dest.is_file() and not force:
            log.info("%s: already cached at %s", spec.name, dest)
            return dest
        raise WeightsError(manual_download_hint(spec, dest))
    if dest.is_file() and not force:
        if spec.zoo_sha256 is None or file_sha256(dest).lower() == spec.zoo_sha256.lower():
            log.info("%s: already cached at %s", spec.name, dest)
            return dest
        log.warning("%s: cached file %s has the wrong sha256; downloading again", spec.name, dest)
    if force:
        dest.with_name(dest.name + ".part").unlink(missing_ok=True)
    return download(source, dest, sha256=spec.zoo_sha256, progress=progress)
