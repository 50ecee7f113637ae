"""Loaded task objects (cvtool.api), kept warm: an LRU under a memory budget, one load per key at a time.

A key is what decides the loaded weights: (task, model, weights, backend, and for faces the detector
and its settings). Options that only change how results are read from the same network (top_k, conf,
iou, classes, alpha, tile ...: the task table's per-call options) do not load anything: they are *variants* of the
loaded object (its `with_options`) sharing its network and its lock (`variant`), so ten `conf` values cost one model
in memory.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable


def estimate_bytes(obj: Any) -> int:
    """Parameter and buffer bytes of the torch modules a task object holds (its network, and for faces the
    detector and landmark models too), the file size of an onnxruntime network, the bytes of NumPy arrays
    (dlib's 5-point shape predictor is 7 MB of them), a view's once. An estimate: activations and the runtime's
    own memory are not counted, nor what a model loads lazily after this count (`detect:face`'s 68-point
    landmark predictor, 99 MB, on its first landmarks call); what a process-wide cache shares between entries
    is counted in each."""
    import sys

    import numpy as np

    from cvtool.models.onnx_backend import OnnxNetwork

    torch = sys.modules.get("torch")  # a torch module exists only where torch is imported: never import it here
    seen: set[int] = set()
    total = 0

    def visit(value, depth: int) -> None:
        nonlocal total
        if value is None or id(value) in seen or depth > 5:
            return
        seen.add(id(value))
        if torch is not None and isinstance(value, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in (*value.parameters(), *value.buffers()))
            return
        if isinstance(value, OnnxNetwork):
            total += value.nbytes
            return
        if isinstance(value, np.ndarray):
            owner = value.base if isinstance(value.base, np.ndarray) else None  # a view: its array, once
            if owner is None:
                total += value.nbytes
            elif id(owner) not in seen:
                seen.add(id(owner))
                total += owner.nbytes
            return
        if isinstance(value, (str, bytes, int, float, bool)):
            return
        if isinstance(value, (list, tuple)):
            for item in value:
                visit(item, depth + 1)
            return
        attrs = getattr(value, "__dict__", None)
        if attrs is not None and type(value).__module__.startswith("cvtool"):
            for item in attrs.values():
                visit(item, depth + 1)

    visit(obj, 0)
    return total


@dataclass
class Entry:
    key: tuple
    obj: Any
    bytes: int
    loaded_at: float
    seconds_to_load: float
    uses: int = 0
    last_used: float = 0.0
    variants: dict = field(default_factory=dict)


class Registry:
    """Task objects by key. `get(key, build)` returns the loaded object, building it once: a second request
    for the same key waits for the first one's load instead of loading it again; requests for other keys
    are not held up. After each load, least-recently-used entries go until the total fits `budget_bytes`
    (the newest always stays, even alone over budget; a request still holding an evicted object finishes)."""

    def __init__(self, budget_bytes: int, *, on_event: Callable[[str], None] | None = None):
        self.budget_bytes = budget_bytes
        self.on_event = on_event or (lambda message: None)
        self._entries: OrderedDict[tuple, Entry] = OrderedDict()
        self._load_locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self.loads = 0  # how many builds ran (tests: two concurrent first requests load once)

    def _hit(self, key: tuple) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            entry.uses += 1
            entry.last_used = time.time()
        return entry

    def get(self, key: tuple, build: Callable[[], Any]) -> Entry:
        with self._guard:
            entry = self._hit(key)
            if entry is not None:
                return entry
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                entry = self._hit(key)
                if entry is not None:
                    return entry
            start = time.perf_counter()
            obj = build()  # a CvtoolError (unknown model, weights not cached ...) propagates, nothing is kept
            seconds = time.perf_counter() - start
            size = estimate_bytes(obj)
            with self._guard:
                self.loads += 1
                entry = Entry(key, obj, size, time.time(), seconds, uses=1, last_used=time.time())
                self._entries[key] = entry
                self._evict(keep=key)
            self.on_event(f"loaded {_describe_key(key)} in {seconds:.1f} s ({size / 1e6:.1f} MB of parameters; "
                          f"{self.used_bytes / 1e6:.1f} of {self.budget_bytes / 1e6:.0f} MB in use)")
            return entry

    def _evict(self, keep: tuple) -> None:
        while self.used_bytes > self.budget_bytes and len(self._entries) > 1:
            oldest = next(k for k in self._entries if k != keep)
            gone = self._entries.pop(oldest)
            self._load_locks.pop(oldest, None)
            self.on_event(f"unloaded {_describe_key(oldest)} ({gone.bytes / 1e6:.1f} MB) to stay within the "
                          f"memory budget")

    @property
    def used_bytes(self) -> int:
        return sum(e.bytes for e in self._entries.values())

    def variant(self, entry: Entry, options: dict[str, Any], make: Callable[[Any, dict], Any]) -> Any:
        """The entry's object with `options` applied by `make(obj, options)` (the server's: `obj.with_options`),
        made once per distinct option values, then reused."""
        if not options:
            return entry.obj
        vkey: Hashable = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
        with self._guard:
            found = entry.variants.get(vkey)
        if found is None:
            found = make(entry.obj, options)
            with self._guard:
                found = entry.variants.setdefault(vkey, found)
        return found

    def describe(self) -> list[dict]:
        with self._guard:
            entries = list(self._entries.values())
        return [{"task": e.key[0], "model": e.key[1], "weights": e.key[2], "backend": e.key[3],
                 "options": dict(e.key[4]) if len(e.key) > 4 else {}, "name": getattr(e.obj, "name", None),
                 "bytes": e.bytes, "seconds_to_load": round(e.seconds_to_load, 3), "uses": e.uses,
                 "variants": len(e.variants)} for e in entries]


def _describe_key(key: tuple) -> str:
    task, model, weights, backend = key[:4]
    parts = [f"{task} {model or 'default'}"]
    if weights:
        parts.append(f"weights {weights}")
    if backend != "torch":
        parts.append(f"on {backend}")
    return ", ".join(parts)

