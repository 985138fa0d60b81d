"""Secret keys kept under ``CCA_HOME/secrets``: the PII pseudonym HMAC key and the HS256 token
key. Created once, never rotated silently: a new key would orphan every pseudonym and token.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cca.errors import ConfigError
from cca.fsync import fsync_dir


def load_or_create_key(path: Path) -> bytes:
    """A random 32-byte key created once (mode 0600) and reused, so tokens stay stable.

    Published whole (written to a private temporary file, then hard-linked into place), so
    processes starting together all read the same key, never a file still being written: two
    service workers once read an empty HS256 key that way and refused every token.
    """
    if path.exists():
        return _read_key(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(key.hex())
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails if another process published first
        fsync_dir(path.parent)  # the name survives a power cut: a new key would orphan tokens
    except FileExistsError:  # another process won the race: use its key
        return _read_key(path)
    finally:
        tmp.unlink(missing_ok=True)
    return key


def _read_key(path: Path) -> bytes:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:  # UnicodeDecodeError included
        key = b""
    if len(key) < 16:
        raise ConfigError(f"{path} does not hold a key of at least 16 bytes in hex; "
                         "delete it to create a new one (tokens and hashes made with the old "
                         "key stop matching)")
    return key
