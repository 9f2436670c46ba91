"""Download the benchmark files from the Hugging Face hub and lay them out as ``docs/data.md`` says.

``python -m instructedit data fetch --out data`` (or :func:`fetch_data`) downloads each file of
:data:`SOURCES` with ``huggingface_hub``, checks that it parses with this project's own loaders
(in the format and task the split loader reads it with), and moves it into place atomically. Files
already present and readable are kept (``force=True`` downloads them again). Each file's sha256 is
compared with the copy the project's published numbers were measured on; a difference is logged
and reported, not refused (the loaders are the check).

The hub endpoint is ``endpoint=`` or, when that is not given, ``$HF_ENDPOINT`` read at call time
(a mirror, or a local test server). A failed download raises :class:`FetchError` with one line
that names the file, the URL and the reason.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from instructedit.data.formats import convert_rows, detect_format
from instructedit.data.io import read_rows
from instructedit.data.records import RecordError
from instructedit.data.tasks import TASK_FILES, TASKS
from instructedit.io_utils import atomic_replace, sha256_file

from ..errors import UserFacingError

log = logging.getLogger(__name__)

KNOWEDIT_REPO = "zjunlp/KnowEdit"
"""The KnowEdit benchmark (zjunlp, MIT): WikiData-Counterfact, WikiData-Recent, ConvSent, zsRE."""
EASYEDIT_CF_REPO = "HymanH/editing-data"
"""A hub copy of the EasyEdit data bundle's flat CounterFact splits (zjunlp publish the bundle
itself as a zip outside the hub); see docs/data.md for how far it was verified."""
DEFAULT_REVISION = "main"
DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class RemoteFile:
    """One benchmark file: where it goes in the data folder and where it comes from."""

    dest: str          # path under the data folder (the layout of docs/data.md)
    repo_id: str       # a dataset repository on the hub
    path: str          # the file's path in that repository
    format: str        # the loader format it must parse as (instructedit.data.formats)
    sha256: str        # the reference copy's checksum (the data behind docs/results.md)

    @property
    def task(self) -> str:
        return next(task for task, files in TASK_FILES.items() if self.dest in files.values())


# The reference copy (the files docs/results.md was measured on), in ``sha256sum`` format.
REFERENCE_SHA256: dict[str, str] = {dest: digest for digest, dest in (line.split() for line in """
20c225e6299b3c5b2c569bd9103aa212806e0d1e6e0c307de5c379773979b967  counterfact/counterfact-edit.json
bb40e12c7b740d6859e521674cf438f063c7c3e444bc1b449e74cdd0900772d0  counterfact/counterfact-train.json
4feb68cc1f85dcf3b285252a28f2b2193ff69971947619356236953be60ecd1f  counterfact/counterfact-val.json
acdc01922afab1d4122249a2c22ad8c1e0e86506dd7a28eec698f22d175ebf9d  counterfact/knowedit-train_cf.json
5856107412ddeeae2ceea2a15ebd125fd7c86ac8d62b933b095514304a77c73a  recent/recent_train.json
4c21b2d802ac70877c9356439f676ead4bd9eb767c2f34d582df4b5b200e3882  convsent/blender_val.json
bfdab01a2655f5b136e593bc0d1d440cea963a1883510da7b31178855db00804  convsent/blender_test.json
d70ff1f69ddcac101bbe9c6f1d6ee3918bdac96f145d937e90fbbb02fcf85fab  zsre/ZsRE-test-all.json
""".split("\n") if line.strip())}

# data-folder path -> (path in the hub repository, loader format)
_KNOWEDIT_FILES = {
    "counterfact/knowedit-train_cf.json": ("benchmark/wiki_counterfact/train_cf.json", "knowedit"),
    "recent/recent_train.json": ("benchmark/wiki_recent/recent_train.json", "knowedit"),
    "convsent/blender_val.json": ("benchmark/Convsent/blender_val.json", "convsent"),
    "convsent/blender_test.json": ("benchmark/Convsent/blender_test.json", "convsent"),
    "zsre/ZsRE-test-all.json": ("benchmark/ZsRE/ZsRE-test-all.json", "knowedit"),
}
_COUNTERFACT_SPLITS = ("train", "val", "edit")

SOURCES: tuple[RemoteFile, ...] = (
    *(RemoteFile(f"counterfact/counterfact-{split}.json", EASYEDIT_CF_REPO,
                 f"data/counterfact/counterfact-{split}.json", "easyedit-cf",
                 REFERENCE_SHA256[f"counterfact/counterfact-{split}.json"]) for split in _COUNTERFACT_SPLITS),
    *(RemoteFile(dest, KNOWEDIT_REPO, path, fmt, REFERENCE_SHA256[dest])
      for dest, (path, fmt) in _KNOWEDIT_FILES.items()),
)
"""Every benchmark file, in the order they are fetched."""


class FetchError(UserFacingError, RuntimeError):
    """A file could not be downloaded or is not what the loaders expect (one-line message)."""


@dataclass(frozen=True)
class FetchResult:
    """What happened to one file."""

    dest: str
    status: str                 # "downloaded" or "kept" (already present and readable)
    records: int                # records the project's loader reads from it
    sha256: str
    matches_reference: bool     # same bytes as the copy behind the published numbers
    url: str | None = None      # where it was downloaded from (None when kept)

    def to_dict(self) -> dict:
        return asdict(self)


# ----- checks ------------------------------------------------------------------------------------
def check_file(path: str | Path, spec: RemoteFile) -> int:
    """Parse ``path`` as the split loader will read ``spec.dest``; return its record count.

    Raises :class:`RecordError` when it does not parse, is in another format or has no records.
    """
    path = Path(path)
    name = Path(spec.dest).name
    rows = read_rows(path)
    found = detect_format(rows, name)
    if found != spec.format:
        raise RecordError(f"{name}: expected the {spec.format!r} format, the fields say {found!r}")
    records = convert_rows(rows, spec.format, name=name, task=spec.task, drop_empty_probes=True)
    if not records:
        raise RecordError(f"{name}: no records")
    return len(records)


# ----- downloads ---------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """Why a download failed, in a few words (the hub library's messages run to paragraphs)."""
    from huggingface_hub.errors import (
        FileMetadataError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, RemoteEntryNotFoundError):
        return "the repository has no such file (HTTP 404)"
    if isinstance(exc, RevisionNotFoundError):
        return "the repository has no such revision"
    if isinstance(exc, RepositoryNotFoundError):
        return "no such repository, or it is private or gated"
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", None)
        return f"HTTP {status}" if status else _first_line(exc)
    if isinstance(exc, FileMetadataError):
        return "the server does not answer like a Hugging Face hub (no commit or ETag header); check HF_ENDPOINT"
    if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None:
        cause = exc.__cause__
        if isinstance(cause, (HfHubHTTPError, FileMetadataError)):
            return f"the server answered {_reason(cause)}"
        return f"cannot reach the server ({_reason(cause)})"
    return _first_line(exc)


def file_url(spec: RemoteFile, *, revision: str, endpoint: str | None) -> str:
    """The hub URL ``spec`` is downloaded from."""
    from huggingface_hub import hf_hub_url

    return hf_hub_url(spec.repo_id, spec.path, repo_type="dataset", revision=revision, endpoint=endpoint)


def download(spec: RemoteFile, folder: Path, *, revision: str, endpoint: str | None) -> Path:
    """Download ``spec`` into ``folder`` (a staging folder); return the local file."""
    from huggingface_hub import constants, hf_hub_download

    url = file_url(spec, revision=revision, endpoint=endpoint)
    if constants.is_offline_mode():
        raise FetchError(f"cannot download {spec.dest} from {url}: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) "
                         "is set; unset it to download")
    log.info("downloading %s from %s", spec.dest, url)
    try:
        return Path(hf_hub_download(spec.repo_id, spec.path, repo_type="dataset", revision=revision,
                                    endpoint=endpoint, local_dir=folder))
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line naming file, URL and reason
        raise FetchError(f"cannot download {spec.dest} from {url}: {_reason(exc)}") from exc


def select_sources(tasks: Iterable[str] = TASKS, sources: Iterable[RemoteFile] = SOURCES) -> list[RemoteFile]:
    """The files of ``tasks`` (all four by default)."""
    tasks = list(tasks)
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise FetchError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    return [spec for spec in sources if spec.task in tasks]


def fetch_data(out: str | Path = "data", *, tasks: Iterable[str] = TASKS, revision: str = DEFAULT_REVISION,
               endpoint: str | None = None, force: bool = False,
               sources: Iterable[RemoteFile] = SOURCES) -> list[FetchResult]:
    """Download, check and lay out the benchmark files under ``out``; one result per file.

    ``endpoint`` defaults to ``$HF_ENDPOINT`` (read now, not when huggingface_hub was imported),
    then the public hub. Present files that
    the loaders read are kept unless ``force``. Raises :class:`FetchError` on the first file that
    cannot be downloaded or does not parse (files finished before it stay in place).
    """
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    out = Path(out)
    chosen = select_sources(tasks, sources)
    with tempfile.TemporaryDirectory(prefix="instructedit-fetch-") as staging:
        return [_fetch_one(spec, out, Path(staging), revision=revision, endpoint=endpoint, force=force)
                for spec in chosen]


def _fetch_one(spec: RemoteFile, out: Path, staging: Path, *, revision: str, endpoint: str | None,
               force: bool) -> FetchResult:
    dest = out / spec.dest
    if dest.is_file() and not force:
        try:
            records = check_file(dest, spec)
        except (RecordError, OSError) as exc:
            log.warning("%s is present but unreadable (%s); downloading it again", dest, exc)
        else:
            digest = sha256_file(dest)
            return FetchResult(spec.dest, "kept", records, digest, digest == spec.sha256)
    local = download(spec, staging, revision=revision, endpoint=endpoint)
    try:
        records = check_file(local, spec)
    except RecordError as exc:
        raise FetchError(f"downloaded {spec.dest} from {spec.repo_id}/{spec.path}, but it is not what the "
                         f"loaders expect: {exc}") from exc
    digest = sha256_file(local)
    if digest != spec.sha256:
        log.warning("%s differs from the copy the published numbers were measured on (sha256 %s, "
                    "expected %s)", spec.dest, digest[:12], spec.sha256[:12])
    atomic_replace(dest, lambda tmp: shutil.copyfile(local, tmp))
    return FetchResult(spec.dest, "downloaded", records, digest, digest == spec.sha256,
                       file_url(spec, revision=revision, endpoint=endpoint))


def format_results(results: list[FetchResult], out: str | Path) -> str:
    """A short table of what :func:`fetch_data` did."""
    lines = [f"data folder: {out}"]
    width = max((len(r.dest) for r in results), default=0)
    for r in results:
        check = "same as the reference copy" if r.matches_reference else "differs from the reference copy"
        lines.append(f"{r.dest.ljust(width)}  {r.status:<10}  {r.records:>6} records  {check}")
    return "\n".join(lines)


__all__ = ["DEFAULT_ENDPOINT", "DEFAULT_REVISION", "EASYEDIT_CF_REPO", "KNOWEDIT_REPO", "SOURCES", "FetchError", "FetchResult",
           "REFERENCE_SHA256", "RemoteFile", "check_file", "download", "fetch_data", "file_url", "format_results", "select_sources"]
