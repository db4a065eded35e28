r"""SHA-256 checksums of the weights the benchmarks ship (one ``SHA256SUMS`` file per folder).

Each folder of shipped weights lists ``<hex digest>  <file name>`` per line, in the format
of ``sha256sum``; a training script writes it, and loading checks it before any tensor is
read, so a truncated or edited file is named instead of silently loaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256", "read_checksums", "verify_checksums", "write_checksums"]

SUMS = "SHA256SUMS"


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_checksums(folder: str | Path) -> dict[str, str]:
    """The ``{file name: digest}`` map listed in ``folder/SHA256SUMS``."""
    listed = {}
    for line in (Path(folder) / SUMS).read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            listed[name.strip().lstrip("*")] = digest
    return listed


def verify_checksums(folder: str | Path, retrain: str) -> dict[str, str]:
    """Check every file listed in ``folder/SHA256SUMS``; raise ``ValueError`` naming mismatches.

    ``retrain`` is the command that rebuilds the folder (quoted in the error). Returns the
    ``{file name: digest}`` map that was verified.
    """
    folder = Path(folder)
    listed = read_checksums(folder)
    bad = {name: (digest, sha256(folder / name) if (folder / name).exists() else "missing")
           for name, digest in listed.items()
           if not (folder / name).exists() or sha256(folder / name) != digest}
    if bad:
        raise ValueError(f"checksum mismatch in {folder} (listed, actual): {bad}; retrain with "
                         f"`{retrain}` or restore the files")
    return listed


def write_checksums(folder: str | Path, names) -> None:
    """Write ``folder/SHA256SUMS`` listing ``names`` (files inside ``folder``)."""
    folder = Path(folder)
    (folder / SUMS).write_text("".join(f"{sha256(folder / n)}  {n}\n" for n in names))
