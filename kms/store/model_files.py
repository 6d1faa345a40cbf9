"""Trained model directories shared between machines through Django's storage API.

The trainer writes a run's files under ``KMS_MODELS_DIR`` and publishes them as one tar
archive into the ``STORAGES`` alias named by ``KMS_MODEL_STORAGE`` (e.g. ``default``, the S3
bucket of the uploaded files). A web or worker node that serves the run and lacks the
directory fetches the archive into its own ``KMS_MODELS_DIR`` on first use, so no volume is
shared between machines. Unset (the default), the directory on local disk is the only copy,
as on a single machine.

Every node keeps the same ``KMS_MODELS_DIR`` path, because runs record absolute paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import storages

logger = logging.getLogger(__name__)

PREFIX = "models"
MARKER = "config.json"  # every saved transformers / sentence-transformers directory has one
_fetch_lock = threading.Lock()


class ModelFilesUnavailable(RuntimeError):
    """The archive is in the store but could not be fetched or unpacked; says why."""


def _storage():
    alias = settings.KMS_MODEL_STORAGE
    return storages[alias] if alias else None


def storage_name(directory: Path) -> str | None:
    """``models/<path under KMS_MODELS_DIR>.tar``; None for a directory outside it (a
    packaged base model, which every node has)."""
    try:
        relative = Path(directory).resolve().relative_to(settings.KMS_MODELS_DIR)
    except ValueError:
        return None
    return f"{PREFIX}/{relative.as_posix()}.tar" if relative.parts else None


@contextlib.contextmanager
def _node_lock(directory: Path) -> Iterator[None]:
    """One fetch per directory on this node, across processes (gunicorn and Celery workers
    after a promotion): the others wait and find it present."""
    with open(directory.parent / f".{directory.name}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def present(directory: Path) -> bool:
    return (Path(directory) / MARKER).is_file()


def publish(directory: Path) -> str | None:
    """Archive ``directory`` into the model store; returns its storage name, or None when no
    store is configured or the directory is not a run's (nothing to share)."""
    storage, name = _storage(), storage_name(directory)
    if storage is None or name is None:
        return None
    if not present(directory):
        raise ModelFilesUnavailable(f"{directory} has no {MARKER}: nothing to publish.")
    with tempfile.TemporaryFile() as archive:
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for path in sorted(Path(directory).rglob("*")):
                tar.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
        archive.seek(0)
        if storage.exists(name):
            storage.delete(name)
        saved = storage.save(name, File(archive, name=Path(name).name))
    if saved != name:  # another publisher of the same run in between: nodes look for name
        storage.delete(saved)
        raise ModelFilesUnavailable(f"{name} was saved as {saved}; publish the run again.")
    logger.info("Published model files %s as %s", directory, saved)
    return saved


def ensure_local(directory: Path) -> bool:
    """True when ``directory`` holds a model here, fetching it from the store if needed.

    Unpacked into a sibling temporary directory and renamed into place, so a reader never
    sees half a model and two processes fetching at once both end with one whole copy.
    """
    directory = Path(directory)
    if present(directory):
        return True
    storage, name = _storage(), storage_name(directory)
    if storage is None or name is None:
        return False
    directory.parent.mkdir(parents=True, exist_ok=True)
    with _fetch_lock, _node_lock(directory):
        if present(directory):
            return True
        try:
            if not storage.exists(name):
                return False
            with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".fetch-") as tmp:
                staging = Path(tmp) / "model"
                with storage.open(name, "rb") as stream, \
                        tarfile.open(fileobj=stream, mode="r|") as tar:
                    tar.extractall(staging, filter="data")
                if not present(staging):
                    raise ModelFilesUnavailable(f"The archive {name} holds no {MARKER}.")
                if present(directory):  # another process was faster
                    return True
                if directory.exists():  # an empty or partial directory left by a crash
                    shutil.rmtree(directory)
                staging.rename(directory)
        except ModelFilesUnavailable:
            raise
        except Exception as exc:  # OSError, tarfile, any storage backend's (botocore) errors
            if present(directory):  # another process won the race
                return True
            raise ModelFilesUnavailable(
                f"Fetching the model files {name} into {directory} failed: {exc}. Check "
                "KMS_MODEL_STORAGE and its credentials; the trainer published them there."
            ) from exc
    logger.info("Fetched model files %s into %s", name, directory)
    return True
