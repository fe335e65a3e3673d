"""What a folder given as a data source holds: its image files (class subfolders as labels), or its
tar shards as one set.

The image scan follows symbolic links to folders (a dataset assembled from links is common) but enters
each folder once, known by its device and inode, and lists each file once: a link back to a parent (a
loop) is not followed, so the scan neither hangs nor repeats images; the real path of a folder or file
is preferred over a linked one. Only regular files are listed (a FIFO or a link to ``/dev/zero`` named
``x.jpg`` would block or never end).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

# Every format the decoder reads (dinolite/data/decode.py): one list for training, eval and visualisation.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# make_shards writes PREFIX-NNNNNN.tar; other writers use PREFIX-NNNN-of-MMMM.tar and the like: the
# part before the last run of digits names the set a shard belongs to.
_NUMBERED_SHARD = re.compile(r"(.*?)\d+(?:\.tar|\.tar\.gz|\.tgz)", re.IGNORECASE)

logger = logging.getLogger(__name__)

FileId = tuple[int, int]  # (st_dev, st_ino)


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def is_shard_file(path: str) -> bool:
    return path.lower().endswith(SHARD_SUFFIXES)


@dataclass
class _Scan:
    """The state of one folder scan: what was entered, what was found, what was left out and why."""

    dirs: set[FileId] = field(default_factory=set)
    files: dict[FileId, tuple[bool, str]] = field(default_factory=dict)  # id -> (reached by a link, path)
    linked_dirs: list[str] = field(default_factory=list)  # symlinks to folders, followed after the real tree
    skipped_dirs: list[str] = field(default_factory=list)  # links to folders already entered
    repeated_files: list[str] = field(default_factory=list)
    not_regular: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def add_file(self, file_id: FileId, path: str, linked: bool) -> None:
        kept = self.files.get(file_id)
        if kept is None:
            self.files[file_id] = (linked, path)
        elif (linked, path) < kept:  # the real path first, then the first in path order
            self.files[file_id] = (linked, path)
            self.repeated_files.append(kept[1])
        else:
            self.repeated_files.append(path)

    def walk(self, directory: str) -> None:
        """List ``directory`` and the real folders under it; links to folders are queued, not followed."""
        stack = [directory]
        while stack:
            current = stack.pop()
            try:
                device = os.stat(current).st_dev
                entries = sorted(os.scandir(current), key=lambda e: e.name, reverse=True)
            except OSError as exc:
                self.unreadable.append(f"{current} ({exc.strerror})")
                continue
            for entry in entries:
                self._visit(entry, device, stack)

    def _visit(self, entry: os.DirEntry, device: int, stack: list[str]) -> None:
        try:
            linked = entry.is_symlink()
            if entry.is_dir():  # follows a link
                if linked:
                    self.linked_dirs.append(entry.path)
                else:
                    info = entry.stat()  # not (device, inode): a subfolder may be a mount point
                    if self._enter(entry.path, (info.st_dev, info.st_ino)):
                        stack.append(entry.path)
            elif is_image_file(entry.name):
                if not entry.is_file():  # a FIFO, a device, a dangling link
                    self.not_regular.append(entry.path)
                elif linked:
                    info = entry.stat()
                    self.add_file((info.st_dev, info.st_ino), entry.path, True)
                else:  # a regular file lies on its folder's device: its inode is known without a stat
                    self.add_file((device, entry.inode()), entry.path, False)
        except OSError as exc:
            self.unreadable.append(f"{entry.path} ({exc.strerror})")

    def _enter(self, path: str, dir_id: FileId) -> bool:
        if dir_id in self.dirs:
            self.skipped_dirs.append(path)
            return False
        self.dirs.add(dir_id)
        return True

    def follow_links(self) -> None:
        """Enter each linked folder not entered yet (in path order), its real subfolders first."""
        while self.linked_dirs:
            self.linked_dirs.sort(reverse=True)
            path = self.linked_dirs.pop()
            try:
                info = os.stat(path)
            except OSError as exc:
                self.unreadable.append(f"{path} ({exc.strerror})")
                continue
            if self._enter(path, (info.st_dev, info.st_ino)):
                self.walk(path)

    def report(self, root: Path) -> None:
        for items, what in (
            (self.skipped_dirs, "links to folders already scanned (loops or duplicates), not followed"),
            (self.repeated_files, "files reached a second time (hard or symbolic links), counted once"),
            (self.not_regular, "image names that are not regular files (FIFO, device, dangling link), left out"),
            (self.unreadable, "entries that could not be read, left out"),
        ):
            if items:
                logger.warning("image folder %s: %d %s, e.g. %s", root, len(items), what, sorted(items)[:3])


def folder_images(root: Path) -> tuple[list[str], list[int], list[str]]:
    """Image files under ``root`` (recursive, sorted), their labels and the class names.

    When every image lies inside a subfolder, the first-level subfolder is the class (ImageFolder
    convention); otherwise the folder is unlabelled and labels are -1. Each folder is entered once and
    each file listed once, however many links lead to it (see the module docstring); what was left out
    is logged as a warning.
    """
    scan = _Scan()
    root_info = os.stat(root)
    scan.dirs.add((root_info.st_dev, root_info.st_ino))
    scan.walk(str(root))
    scan.follow_links()
    scan.report(root)
    files = sorted(path for _, path in scan.files.values())
    prefix = len(os.path.join(str(root), ""))  # every path was built as root + os.sep + ...
    relative = [f[prefix:] for f in files]
    if files and all(os.sep in rel for rel in relative):
        classes = sorted({rel.split(os.sep, 1)[0] for rel in relative})
        index = {name: i for i, name in enumerate(classes)}
        labels = [index[rel.split(os.sep, 1)[0]] for rel in relative]
    else:
        classes, labels = [], [-1] * len(files)
    return files, labels, classes


def shard_set_prefix(name: str) -> Optional[str]:
    """The set a numbered shard file name belongs to (``train-000012.tar`` -> ``train-``); None when the
    name carries no number."""
    match = _NUMBERED_SHARD.fullmatch(name)
    return match.group(1) if match else None


def folder_shards(directory: str) -> list[str]:
    """The shard files (``.tar``, ``.tar.gz``, ``.tgz``) of ``directory``, sorted; ``[]`` when none.

    A folder is one shard set: numbered shards of two prefixes (``train-000000.tar`` beside
    ``val-000000.tar``, as ``make_shards --prefix`` writes them) are refused with a ``ValueError`` naming
    both, so that validation shards never leak into training; so is one name under two suffixes
    (``s-000000.tar`` beside ``s-000000.tar.gz``).
    """
    names = sorted(
        entry.name
        for entry in os.scandir(directory)
        if is_shard_file(entry.name) and not entry.name.startswith(".") and entry.is_file()
    )
    stems: dict[str, str] = {}
    for name in names:  # shard-000000.tar beside shard-000000.tar.gz: the same shard twice, likely
        stem = name[: -len(next(suffix for suffix in SHARD_SUFFIXES if name.lower().endswith(suffix)))]
        if stem in stems:
            raise ValueError(
                f"folder {directory!r} holds {stems[stem]!r} and {name!r}: the same shard in two forms? Remove one, "
                "or name the shards to use with a pattern"
            )
        stems[stem] = name
    sets: dict[str, list[str]] = {}
    for name in names:
        prefix = shard_set_prefix(name)
        if prefix is not None:
            sets.setdefault(prefix, []).append(name)
    if len(sets) > 1:
        described = "; ".join(
            f"{prefix!r}: {len(members)} shard(s), {members[0]} .. {members[-1]}" for prefix, members in sets.items()
        )
        first = next(iter(sets))
        raise ValueError(
            f"folder {directory!r} holds {len(sets)} shard sets ({described}): which one is the data is ambiguous. "
            f"Name one set with a pattern, e.g. {os.path.join(directory, first + '*.tar')!r}, or move the others out"
        )
    return [os.path.join(directory, name) for name in names]


def describe_folder(directory: str, limit: int = 5) -> str:
    """``it holds N entries: a.txt, b/, ...`` for an error message about a folder without usable data."""
    names = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in os.scandir(directory))
    if not names:
        return "it is empty"
    return f"it holds {len(names)} entr{'y' if len(names) == 1 else 'ies'}: {', '.join(names[:limit])}" + (
        ", ..." if len(names) > limit else ""
    )
