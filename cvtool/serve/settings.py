"""`cvtool serve`'s settings, and their defaults, which the CLI's options show (standard library only: the CLI
imports this module without the `serve` extra)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    token: Optional[str] = None
    allow_paths: Optional[Path] = None
    max_bytes: int = 50 * 1024**2
    max_pixels: int = 100_000_000
    device: str = "auto"
    memory_budget: int = 4 * 1024**3
    preload: list[str] = field(default_factory=list)  # TASK:MODEL (a model name, or a weights/checkpoint file)
    galleries: dict[str, str] = field(default_factory=dict)  # name -> directory of known people
    face_cache: int = 4096  # verify-face: photos whose faces and descriptors are remembered (by their bytes' hash)
    max_batch: int = 8  # classify/detect/segment: most requests in one forward pass (1: each request alone)
    batch_wait_ms: float = 5.0  # how long a batch waits for more requests after its first
    max_batch_pixels: int = 8 * 1024**2  # a batch's network inputs in all (their activations); one larger runs alone
    log: bool = True

    def to_json(self) -> str:
        data = dict(self.__dict__)
        data["allow_paths"] = str(self.allow_paths) if self.allow_paths else None
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        data = json.loads(text)
        data["allow_paths"] = Path(data["allow_paths"]) if data["allow_paths"] else None
        return cls(**data)


def size_text(n: int) -> str:
    """A byte count as `--max-bytes` / `--memory-budget` take it (security.parse_size reads it back)."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


DEFAULTS = Settings()
