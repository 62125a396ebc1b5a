"""Atomic file and folder writes: readers never see a half-written file or folder.

A file is written to a temp file in the same folder and renamed over the target (`os.replace`
is atomic on POSIX); a folder is built beside the target and renamed into place.
"""

import os
import shutil
import tempfile
from typing import Callable, IO


def atomic_write(path: str, write_fn: Callable[[IO[bytes]], None]) -> None:
  """Calls `write_fn(binary file)` on a temp file beside `path`, then renames it to `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.',
                             suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      write_fn(f)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write_bytes(path: str, data: bytes) -> None:
  atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> None:
  atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def atomic_dir(directory: str, write_fn: Callable[[str], None]) -> None:
  """Calls `write_fn(temp folder)`, then renames the folder to `directory` (replacing an old one)."""
  directory = os.path.abspath(directory)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix='.' + os.path.basename(directory) + '.tmp-')
  old = None
  try:
    write_fn(tmp)
    if os.path.exists(directory):
      old = tempfile.mkdtemp(dir=parent, prefix='.' + os.path.basename(directory) + '.old-')
      os.rmdir(old)
      os.replace(directory, old)
    os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if old and os.path.exists(old) and not os.path.exists(directory):
      os.replace(old, directory)
    raise
  if old:
    shutil.rmtree(old, ignore_errors=True)
