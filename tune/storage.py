"""Where a study's Ray Tune folder lives: checkpoints, trial results and Ray's experiment state.

By default `mlruns/ray/<study>` on this machine. `--storage URI` (YAML `storage:`, else $TUNE_STORAGE) puts
it on a folder every machine of a cluster mounts (an absolute path, NFS) or in an object store, through the
pyarrow filesystems Ray itself uses: `s3://bucket/prefix` (credentials from the AWS environment variables or
files; an S3-API server of your own with `?endpoint_override=HOST:PORT&scheme=http`), `gs://bucket/prefix`.
Readers (`tune export`, the summary, `--resume`) list and read through the same filesystem,
and copy the checkpoints they use to `mlruns/checkpoints/` on this machine.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from trainables.config import UserError

LOCAL = Path("mlruns") / "ray"  # the default: this machine's disk
FETCHED = Path("mlruns") / "checkpoints"  # checkpoints read from remote storage, copied here


@dataclass(frozen=True)
class Storage:
    uri: str  # as the user gave it (or the local default, absolute)
    fs: pafs.FileSystem
    root: str  # the path of the studies' folder on `fs`

    @property
    def shown(self) -> str:
        """The URI without credentials (an S3 URI may carry access_key= and secret_key=): to print and record."""
        return re.sub(r"([?&])(access_key|secret_key|session_token)=[^&]*", r"\1\2=***", self.uri)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def study(self, name: str) -> str:
        """The study's Ray folder, a path on `fs`."""
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def files(self, folder: str) -> list[str]:
        """Every file under `folder` (recursively), as paths on `fs`."""
        selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
        return [i.path for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]

    def read_text(self, path: str) -> str:
        with self.fs.open_input_stream(path) as f:
            return f.read().decode()

    def local_path(self, folder: str) -> Path:
        """A folder of the storage as a folder on this machine: itself when local, else a copy (fetched once)."""
        if self.local:
            return Path(folder)
        copy = FETCHED.resolve() / folder.removeprefix(self.root.rstrip("/") + "/")
        if not (copy / ".complete").is_file():
            copy.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(folder, str(copy), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
            (copy / ".complete").touch()
        return copy


def resolve(uri: str | None = None) -> Storage:
    """--storage / YAML `storage:`, else $TUNE_STORAGE, else mlruns/ray. UserError for a URI pyarrow cannot open."""
    uri = uri or os.environ.get("TUNE_STORAGE") or None
    if uri is None:
        return Storage(str(LOCAL.resolve()), pafs.LocalFileSystem(), str(LOCAL.resolve()))
    if "://" not in uri:  # a folder: absolute, so that every node and a later command agree on it
        path = str(Path(uri).expanduser().resolve())
        return Storage(path, pafs.LocalFileSystem(), path)
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"storage {uri.split('?')[0]}: {str(e).splitlines()[0]}") from None
    storage = Storage(uri, fs, path)
    try:  # credentials, endpoint and bucket, checked before anything runs
        storage.exists(path)
    except OSError as e:
        raise UserError(f"storage {storage.shown}: {str(e).splitlines()[0]}") from None
    return storage


def study_storage(name: str, given: str | None = None, uri: str | None = None) -> Storage:
    """Where the study `name` keeps its Ray folder: `given` (--storage), else what the study was run with (its
    parent run's `storage` param in the MLflow store `uri`), else $TUNE_STORAGE, else mlruns/ray."""
    if given is None and uri is not None:
        from tune.tracking import study_params

        given = study_params(name, uri).get("storage")
        if given and ("://" not in given and not Path(given).is_dir() or "=***" in given):
            given = None  # another machine's folder, or a URI whose credentials were not recorded
    return resolve(given if given not in (None, "None") else None)
