"""Find Banking77 beside the checkout (../shared), or fetch it from its public source."""

from __future__ import annotations

from pathlib import Path

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from cca.errors import StateError
from cca.settings import Settings

SPLITS = ("train", "test")


@retry(
    retry=retry_if_exception_type(httpx.TransportError),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=1, max=8),
    reraise=True,
)
def _download(url: str, dest: Path) -> None:
    with httpx.stream("GET", url, timeout=30, follow_redirects=True) as resp:
        resp.raise_for_status()
        tmp = dest.with_suffix(".part")
        with tmp.open("wb") as fh:
            for chunk in resp.iter_bytes():
                fh.write(chunk)
    tmp.replace(dest)


def banking77_file(settings: Settings, split: str) -> Path:
    """The local CSV for a split (columns text, category), downloading it once if need be."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    local = settings.banking77_dir / f"{split}.csv"
    if local.exists():
        return local
    cached = settings.home / "datasets" / "banking77" / f"{split}.csv"
    if cached.exists():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    url = f"{settings.banking77_url}/{split}.csv"
    try:
        _download(url, cached)
    except httpx.HTTPError as exc:
        raise StateError(
            f"Banking77 {split} split is not in {settings.banking77_dir} and could not be "
            f"fetched from {url}: {exc}"
        ) from exc
    return cached
