"""What a build folder holds between runs: completion records, the lock, the sweeps of temporaries
and orphaned media, and the check that OUT may be written at all.

A completion record names the input it was made from (kind, uri, section; size and mtime of a
local file; the parameters of a scene the build makes) and counts as done only while that is still
the item's input (``engine.items``).

The build deletes only what it wrote: temporaries by their names, and orphaned media that a
completion record lists as the build's own. It refuses an OUT that is not empty and not a build
folder, or that holds another recipe's build, unless told to (``force_out``).

On a shared network filesystem correctness rests on atomic renames and ``link()`` only, never on
``flock`` or ``O_APPEND``: records, manifests and archive entries are whole files renamed into
place, and the lock is a file created by ``link()``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from biaudio.engine.types import TEMP_MARKER, WorkItem, is_temp_name, safe_item_id
from biaudio.errors import BiaudioError
from biaudio.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SchemaVersionError,
    manifest_version,
    read_manifest,
)

RECORD_VERSION = 1


STATE = ".state"


MEDIA_DIRS = ("clips", "previews")


class BuildLockedError(BiaudioError):
    """Another build holds OUT's lock."""


def record_path(out_dir: Path, item_id: str) -> Path:
    return Path(out_dir) / STATE / "items" / f"{item_id}.json"


def _rows_files(result: dict) -> set[str]:
    return {r[k] for r in result.get("rows", []) for k in ("video_path", "audio_path", "preview_path") if r.get(k)}


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _read_record(out_dir: Path, item_id: str) -> dict | None:
    path = record_path(out_dir, item_id)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent; a torn record cannot exist (atomic rename), an unreadable one is redone
    if rec.get("record_version") != RECORD_VERSION or rec.get("schema_version") != SCHEMA_VERSION:
        raise SchemaVersionError(str(path), "schema_version",
                                 f"completion record from schema v{rec.get('schema_version')}; this biaudio "
                                 f"writes v{SCHEMA_VERSION}: build into a new folder")
    return rec


class OutDirError(BiaudioError):
    """OUT holds something a build must not take over without being told to."""


def check_out_dir(out_dir: Path, recipe_name: str | None = None, force: bool = False) -> None:
    """Refuse an OUT the build must not write into.

    Always: a folder written by another schema version (its records and manifest cannot be mixed).
    Unless ``force``: a non-empty folder that no build wrote (its files are someone else's), and a
    build folder of another recipe (its manifest would be replaced). ``recipe_name=None`` checks
    only the schema version.
    """
    state = out_dir / STATE / "build.json"
    if state.is_file():
        try:
            info = json.loads(state.read_text())
        except ValueError:
            info = {}
        v = info.get("schema_version")
        if v != SCHEMA_VERSION:
            raise SchemaVersionError(str(out_dir), "schema_version",
                                     f"this folder was built with manifest schema v{v}; this biaudio writes "
                                     f"v{SCHEMA_VERSION}. Build into a new --out folder"
                                     + (f", or run `biaudio upgrade {out_dir}` first." if v == 1 else "."))
        other = info.get("recipe")
        if recipe_name is not None and not force and other and other != recipe_name:
            raise OutDirError(str(out_dir), "other_recipe",
                              f"this folder holds a build of recipe {other!r}; building {recipe_name!r} into it "
                              "would replace its manifest. Use another --out, or --force-out to build here anyway")
    elif recipe_name is not None and not force and out_dir.is_dir():
        # a run killed before it wrote build.json leaves only .state/ (the lock): still ours
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name != STATE)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise OutDirError(str(out_dir), "not_a_build_folder",
                              f"the folder is not empty ({len(foreign)} {'entry' if len(foreign) == 1 else 'entries'}: {shown}) "
                              "and no biaudio build "
                              "wrote it. Use a new or empty --out, or --force-out to build here anyway")
    if (out_dir / MANIFEST_NAME).is_file():
        read_manifest(out_dir, columns=["clip_id"])  # raises SchemaVersionError for an unknown version
        if manifest_version(out_dir) == 1:
            raise SchemaVersionError(str(out_dir), "schema_version",
                                     f"manifest.parquet is schema v1; this biaudio writes v{SCHEMA_VERSION}: run "
                                     f"`biaudio upgrade {out_dir}` first, or build into a new --out folder.")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid`` (clock ticks since boot), so a reused pid is not taken for the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Lock:
    """OUT/.state/lock: held while a build runs.

    Taken with an atomic ``link()`` of a file that names this process (host, boot id, pid, its
    start time, a random token): the link either creates the name or fails, on a local disk and on
    NFS alike, where ``flock`` may be local to one client or a silent no-op. A lock whose holder is
    dead -- same host and boot, process gone -- is taken over (a SIGKILLed build does not block the
    next one). A lock held from another host cannot be checked and is refused, naming its holder;
    remove the file when that build is known to be dead.
    """

    def __init__(self, out_dir: Path):
        self.path = out_dir / STATE / "lock"
        self.token: str | None = None

    def __enter__(self) -> _Lock:
        import socket
        import uuid

        self.path.parent.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        me = {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid, "proc_start": _proc_start(pid),
              "token": uuid.uuid4().hex, "since": round(time.time(), 3)}
        tmp = self.path.with_name(f".lock-{me['token']}{TEMP_MARKER}{pid}")
        tmp.write_text(json.dumps(me, sort_keys=True))
        try:
            for _ in range(5):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    pass
                holder = self._holder()
                if holder.get("token") == me["token"]:  # also when NFS reported EEXIST for our own link
                    self.token = me["token"]
                    return self
                if holder and not self._dead(holder, me):
                    where = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
                    raise BuildLockedError(str(self.path.parent.parent), "locked",
                                           f"another build ({where}) is writing this folder; if it is dead, "
                                           f"remove {self.path}")
                self._break(holder)
            raise BuildLockedError(str(self.path.parent.parent), "locked", "could not take the lock (contended)")
        finally:
            tmp.unlink(missing_ok=True)

    def _holder(self) -> dict:
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return {}
        try:
            info = json.loads(text)
            return info if isinstance(info, dict) else {"legacy": text}
        except ValueError:
            return {"legacy": text}  # an older biaudio's flock'ed "pid" file

    def _dead(self, holder: dict, me: dict) -> bool:
        if "legacy" in holder:  # older builds held it with flock: free when flock can be taken
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                return False
            finally:
                os.close(fd)
        if holder.get("host") != me["host"] or holder.get("boot_id") != me["boot_id"]:
            return bool(holder.get("boot_id")) and holder.get("host") == me["host"]  # same host, rebooted
        pid = int(holder.get("pid", -1))
        return not _pid_alive(pid) or (holder.get("proc_start") is not None and _proc_start(pid) != holder["proc_start"])

    def _break(self, holder: dict) -> None:
        """Move a dead holder's lock away; if a live build took the lock meanwhile, put its lock back."""
        aside = self.path.with_name(f".lock-stale-{os.getpid()}{TEMP_MARKER}{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text(errors="replace"))
        except (OSError, ValueError):
            moved = {}
        if isinstance(moved, dict) and moved.get("token") and moved.get("token") != holder.get("token"):
            try:
                os.link(aside, self.path)  # not the dead one: give it back
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        if self.token is not None and self._holder().get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.token = None


def _sweep_temps(out_dir: Path, items: list[WorkItem] | None = None) -> int:
    """Delete temporary files left by a killed run (they are never part of a finished output).

    Only names the build itself gives its temporaries are touched, so a folder shared with other
    tools (or a user's hidden files) loses nothing: in .state/items/ (the build's own) every hidden
    or ``.tmp-`` file; in clips/ and previews/ hidden files tagged ``.tmp-`` and the stages'
    ``.<clip id>-XXXX`` temporaries of the build's items; in OUT itself only ``.tmp-`` names.
    """
    ids = sorted({i for it in items or () for i in (it.item_id, safe_item_id(it.source_id))}, key=len, reverse=True)
    clip_temp = re.compile(rf"^\.(?:{'|'.join(re.escape(i) for i in ids)})_\d+[-.]") if ids else None
    n = 0
    for d in (*MEDIA_DIRS, STATE + "/items", ""):
        folder = out_dir / d
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if d == STATE + "/items":
                ours = is_temp_name(p.name)
            elif d:
                ours = p.name.startswith(".") and (TEMP_MARKER in p.name
                                                   or (clip_temp is not None and bool(clip_temp.match(p.name))))
            else:
                ours = TEMP_MARKER in p.name
            if p.is_file() and ours:
                p.unlink(missing_ok=True)
                n += 1
    return n


def _sweep_orphans(out_dir: Path, records: list[dict], referenced: set[str]) -> int:
    """Delete media the build wrote for an item that no manifest row references any more (an item
    redone with fewer clips, a clip dropped after rendering): only files a completion record lists
    as the build's own are candidates, so a file the build did not write is never deleted, whatever
    its name."""
    n = 0
    for rec in records:
        for rel in set(rec.get("files") or ()) | _rows_files(rec.get("result") or {}):
            parts = Path(rel).parts
            if rel in referenced or len(parts) != 2 or parts[0] not in MEDIA_DIRS or parts[1].startswith("."):
                continue
            p = out_dir / rel
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                n += 1
    return n
