"""Pretrained CLIP weights from the Hugging Face hub: the cache, the download, offline use.

An open_clip pretrained tag (``ViT-B-16`` / ``openai``) names a file on the Hugging Face hub
(``hf_hub`` in open_clip's ``pretrained.py``: ``org/repo/`` plus a file name, by default
``open_clip_pytorch_model.bin``, where open_clip first tries the ``.safetensors``
alternative, ``open_clip_model.safetensors``). :func:`fetch_pretrained` resolves the tag the
same way, then:

1. looks in the cache (:func:`weights_cache_dir`, the Hugging Face hub layout:
   ``models--<org>--<repo>/snapshots/<commit>/<file>``) and, when the file is there, uses it
   without any network access;
2. otherwise, unless offline mode is on (``HF_HUB_OFFLINE=1``), asks the hub for the file's
   size and downloads it with ``hf_hub_download`` (its progress bars off) while the calling
   thread reports progress to ``log`` ("… 37 % (128.4 of 351.6 MB)", about every 5 % and at
   the end) from the size of the growing ``*.incomplete`` blob;
3. when the file is not cached and cannot be downloaded, raises :class:`MamolInputError`
   saying where the cache is and what to do (internet once, or a checkpoint file).

Nothing here imports torch; huggingface_hub is imported only when a download is needed.
"""
import logging
import os
import posixpath
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from .errors import MamolInputError

LOG = logging.getLogger(__name__)

#: Environment variable naming the weights cache folder (overrides Hugging Face's default).
CACHE_ENV = "MAMOL_WEIGHTS_CACHE"
#: open_clip's default hub file names (open_clip.constants HF_WEIGHTS_NAME / HF_SAFE_WEIGHTS_NAME).
HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"
#: Progress is logged when it has grown by this many percent since the last line.
PROGRESS_STEP = 5
MB = 1e6

Log = Callable[[str], None]


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def weights_cache_dir() -> Path:
    """The folder that caches pretrained backbone weights (Hugging Face hub cache layout).

    In order of precedence:

    1. ``MAMOL_WEIGHTS_CACHE``: a folder chosen for MaMOL (the CLI flag and the QGIS setting
       set this variable);
    2. ``HF_HUB_CACHE`` (or its old name ``HUGGINGFACE_HUB_CACHE``): Hugging Face's cache;
    3. ``HF_HOME/hub``;
    4. ``$XDG_CACHE_HOME/huggingface/hub``, by default ``~/.cache/huggingface/hub``.

    2–4 are where ``huggingface_hub`` itself caches, so weights that open_clip or another
    Hugging Face tool downloaded before are found without downloading them again. The
    variables are read at each call (not when a module is imported).
    """
    for name in (CACHE_ENV, "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(name)
        if value:
            return Path(os.path.expandvars(os.path.expanduser(value)))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def hub_offline() -> bool:
    """Whether Hugging Face's offline mode is on (``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE``, read now; huggingface_hub itself reads it once at import)."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


@dataclass(frozen=True)
class HubFile:
    """Where a pretrained tag's weights are on the hub, files in the order open_clip tries."""

    repo_id: str
    filenames: Tuple[str, ...]
    revision: Optional[str] = None

    def repo_folder(self, cache: Path) -> Path:
        """The repository's folder in a hub cache (``models--<org>--<name>``)."""
        return Path(cache) / ("models--" + self.repo_id.replace("/", "--"))


def _safe_alternatives(filename: str) -> Tuple[str, ...]:
    # as open_clip.pretrained._get_safe_alternatives
    if filename == HF_WEIGHTS_NAME:
        return (HF_SAFE_WEIGHTS_NAME,)
    if filename.endswith((".bin", ".pth")):
        return (filename[:-4] + ".safetensors",)
    return ()


def _has_safetensors() -> bool:
    import importlib.util
    return importlib.util.find_spec("safetensors") is not None


def hub_file(hf_hub: str) -> HubFile:
    """The hub file of an open_clip ``hf_hub`` entry (``org/repo/`` or ``org/repo/file``),
    resolved as open_clip's ``download_pretrained`` does."""
    repo_id, filename = posixpath.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    names = (_safe_alternatives(filename) if _has_safetensors() else ()) + (filename,)
    return HubFile(repo_id, names)


def pretrained_config(open_clip, arch: str, tag: str) -> Dict[str, object]:
    """open_clip's pretrained config of ``arch`` / ``tag``, or a MamolInputError naming the
    tags there are."""
    config = open_clip.get_pretrained_cfg(arch, tag)
    if not config:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise MamolInputError(
            f"open_clip has no pretrained weights '{tag}' for {arch} (its tags: {tags}).")
    return dict(config)


def one_line(exc: BaseException, limit: int = 240) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"


def cache_entry(path: Path) -> Path:
    """What to delete so that a cached file is downloaded again: its repository folder
    (``models--<org>--<name>``: the snapshot link alone would be relinked to the same
    blob), or the file itself outside a hub cache."""
    for parent in Path(path).parents:
        if parent.name.startswith("models--"):
            return parent
    return Path(path)


def _megabytes(size: float) -> str:
    return f"{size / MB:.1f}"


class DownloadProgress:
    """Turns byte counts into log lines: about every :data:`PROGRESS_STEP` percent and at
    the end ("<label>: 37 % (128.4 of 351.6 MB)"); without a known total, every 50 MB."""

    def __init__(self, label: str, total: Optional[int], log: Log,
                 step: int = PROGRESS_STEP):
        self.label, self.total, self.log, self.step = label, total or None, log, step
        self._last_percent = 0
        self._last_bytes = 0
        self._done = 0

    def _line(self, done: int) -> str:
        if self.total:
            percent = min(100, int(100 * done / self.total))
            return (f"{self.label}: {percent} % ({_megabytes(done)} of "
                    f"{_megabytes(self.total)} MB)")
        return f"{self.label}: {_megabytes(done)} MB"

    def update(self, done: int) -> None:
        """Bytes received so far (a smaller number than before is ignored)."""
        if done <= self._done:
            return
        self._done = done
        if self.total:
            percent = min(100, int(100 * done / self.total))
            if percent >= 100 or percent < self._last_percent + self.step:
                return     # 100 % is said by finish(), once the file is complete
            self._last_percent = percent
        else:
            if done < self._last_bytes + 50 * MB:
                return
            self._last_bytes = done
        self.log(self._line(done))

    def finish(self, size: Optional[int] = None) -> None:
        """The download completed with ``size`` bytes (default: the total)."""
        done = size if size is not None else (self.total or self._done)
        self.total = self.total or done
        self.log(self._line(done))


def largest_incomplete(folder: Path) -> Optional[int]:
    """Size of the largest ``*.incomplete`` file in ``folder`` (huggingface_hub downloads a
    blob as ``blobs/<etag>[.<id>].incomplete``), or None when there is none."""
    try:
        sizes = [entry.stat().st_size for entry in os.scandir(folder)
                 if entry.name.endswith(".incomplete") and entry.is_file()]
    except OSError:
        return None
    return max(sizes) if sizes else None


def run_with_progress(download: Callable[[], str], measure: Callable[[], Optional[int]],
                      progress: DownloadProgress, interval: float = 0.5) -> str:
    """Run ``download`` in a worker thread while this thread feeds ``measure()`` (bytes so
    far) to ``progress``, so ``log`` is only ever called from the caller's thread. Returns
    what ``download`` returns, or raises what it raised."""
    outcome: Dict[str, object] = {}

    def work():
        try:
            outcome["result"] = download()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="mamol-weights-download", daemon=True)
    worker.start()
    while True:
        worker.join(interval)
        if not worker.is_alive():
            break
        size = measure()
        if size is not None:
            progress.update(size)
    if "error" in outcome:
        raise outcome["error"]
    path = str(outcome["result"])
    progress.finish(os.path.getsize(path) if os.path.isfile(path) else None)
    return path


def cached_file(location: HubFile, cache: Path) -> Optional[Path]:
    """The first of ``location``'s files that is in the hub cache ``cache``, read from the
    folder alone (no network)."""
    folder = location.repo_folder(cache)
    if not folder.is_dir():
        return None
    revision = location.revision or "main"
    ref = folder / "refs" / revision
    if ref.is_file():
        revision = ref.read_text(encoding="utf-8").strip()
    for name in location.filenames:
        candidate = folder / "snapshots" / revision / name
        if candidate.is_file():
            return candidate
    return None


def _not_available(arch: str, tag: str, cache: Path, reason: str) -> MamolInputError:
    return MamolInputError(
        f"The open_clip weights '{tag}' for {arch} are not in the weights cache '{cache}' "
        f"and cannot be downloaded ({reason}). Run once with internet access to download "
        f"them there, set {CACHE_ENV} to a folder that already holds them, or give the "
        "backbone weights as a checkpoint file.")


def _metadata(location: HubFile) -> Tuple[str, Optional[int]]:
    """The first of ``location``'s files the hub has, and its size; a 'not found' moves on to
    the next file (as open_clip does), any other failure is raised."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    try:
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:  # huggingface_hub < 0.23
        from huggingface_hub.utils import EntryNotFoundError
    last: Optional[BaseException] = None
    for name in location.filenames:
        try:
            meta = get_hf_file_metadata(hf_hub_url(location.repo_id, name,
                                                   revision=location.revision))
        except EntryNotFoundError as exc:
            last = exc
            continue
        return name, getattr(meta, "size", None)
    raise last or RuntimeError(f"no file of {location.repo_id}")


def download(location: HubFile, cache: Path, label: str, log: Log,
             interval: float = 0.5) -> Path:
    """Download ``location`` into the hub cache ``cache``, reporting progress to ``log``."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (are_progress_bars_disabled, disable_progress_bars,
                                       enable_progress_bars)
    name, size = _metadata(location)
    log(f"{label}: {location.repo_id}/{name}"
        + (f", {_megabytes(size)} MB" if size else "") + f", into {cache}")
    blobs = location.repo_folder(cache) / "blobs"
    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        path = run_with_progress(
            lambda: hf_hub_download(location.repo_id, name, revision=location.revision,
                                    cache_dir=str(cache), library_name="open_clip",
                                    library_version=_open_clip_version()),
            lambda: largest_incomplete(blobs),
            DownloadProgress(label, size, log), interval)
    finally:
        if not bars_were_off:
            enable_progress_bars()
    return Path(path)


def _open_clip_version() -> Optional[str]:
    return getattr(sys.modules.get("open_clip"), "__version__", None)


def fetch_pretrained(open_clip, arch: str, tag: str, *, log: Optional[Log] = None
                     ) -> Tuple[Path, Dict[str, object]]:
    """The local weights file of open_clip's ``arch`` / ``tag`` and the tag's config.

    From the cache when it is there (no network access at all); else downloaded from the
    Hugging Face hub with progress lines to ``log``. Raises :class:`MamolInputError` when
    the file is not cached and cannot be downloaded (offline mode, no network)."""
    say = log or LOG.info
    config = pretrained_config(open_clip, arch, tag)
    if config.get("file"):
        return Path(str(config["file"])), config
    cache = weights_cache_dir()
    label = f"Downloading {arch} '{tag}' weights from the Hugging Face hub"
    if not config.get("hf_hub"):
        return _fetch_from_url(open_clip, arch, tag, config, cache, say), config
    location = hub_file(str(config["hf_hub"]))
    found = cached_file(location, cache)
    if found is not None:
        say(f"Using the cached {arch} '{tag}' weights {found}")
        return found, config
    if hub_offline():
        raise _not_available(arch, tag, cache, "HF_HUB_OFFLINE is set")
    try:
        return download(location, cache, label, say), config
    except MamolInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - network, HTTP and disk failures alike
        raise _not_available(arch, tag, cache, one_line(exc)) from exc


def _fetch_from_url(open_clip, arch: str, tag: str, config: Dict[str, object], cache: Path,
                    say: Log) -> Path:
    """A tag with only a URL (none in open_clip 3.3): open_clip's own download into
    ``cache`` (its own progress bar, none in the log)."""
    url = str(config.get("url") or "")
    target = cache / posixpath.basename(url)
    if target.is_file():
        say(f"Using the cached {arch} '{tag}' weights {target}")
    elif hub_offline():
        raise _not_available(arch, tag, cache, "HF_HUB_OFFLINE is set")
    else:
        say(f"Downloading {arch} '{tag}' weights from {url} into {cache}")
    try:
        return Path(open_clip.download_pretrained(config, prefer_hf_hub=False,
                                                  cache_dir=str(cache)))
    except Exception as exc:  # noqa: BLE001
        raise _not_available(arch, tag, cache, one_line(exc)) from exc
