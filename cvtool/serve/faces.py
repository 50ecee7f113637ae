"""verify-face on the server with the faces of each photo remembered: a shell loop comparing one reference
photo against many sends the reference every time, and its detection (the expensive part: dlib's CNN over
an image pyramid) is then done once.

What is kept, per (sha256 of the uploaded bytes, the verifier's key, the pixel limit), is what the face
chain derives from those bytes alone: the faces found (boxes, scores, landmarks, image size) and the
descriptors computed so far, by face number. Nothing is taken from the client but the bytes, and an entry
is found only by the bytes' own hash, so a hit is exactly what recomputing would give (the same decoder,
detector, landmark model and embedder on the same bytes). The verdict itself is always made by
cvtool.pipelines.face.verify, the local CLI's function, over an engine that answers `read`, `find` and
`describe` from the cache where it can: records are the local run's by construction.

Bounded: an LRU of `capacity` entries (a few KB each: boxes, 5 landmarks and 128 floats per face). Decode
failures and failures of the models' sanity checks are not kept (they raise before anything is stored).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections import OrderedDict
from typing import Any


class Upload(os.PathLike):
    """An uploaded image as face.verify sees it: named like a path (so records and errors carry the client's
    name), holding its bytes and their hash."""

    def __init__(self, data: bytes, name: str):
        self.data, self.name = data, name
        self.sha256 = hashlib.sha256(data).hexdigest()

    def __fspath__(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.name


@dataclasses.dataclass
class _Known:
    faces: list  # Face objects as find() / find_main() gave them (descriptor None): copied before use
    descriptors: dict = dataclasses.field(default_factory=dict)  # face number -> descriptor
    searched_from: float | None = None  # find_main's smallest face side searched (None: every level)


MAIN = "main"  # the cache key's mark of a find_main answer: the faces the choice needs, not every face


class _Image:
    """What CachedEngine.read hands to face.verify: the upload, its cache key, and its pixels when decoded."""

    def __init__(self, upload: Upload, key: tuple, rgb=None, known: _Known | None = None):
        self.upload, self.key, self.rgb, self.known = upload, key, rgb, known


class FaceCache:
    """An LRU of _Known by key, with hit/miss counts (shown in /models and /healthz)."""

    def __init__(self, capacity: int = 4096):
        self.capacity = max(0, int(capacity))
        self._items: OrderedDict[tuple, _Known] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> _Known | None:
        with self._lock:
            known = self._items.get(key)
            if known is None:
                self.misses += 1
            else:
                self.hits += 1
                self._items.move_to_end(key)
            return known

    def peek(self, key: tuple) -> bool:
        """Whether `key` is held (not counted as a hit or a miss)."""
        with self._lock:
            return key in self._items

    def put(self, key: tuple, known: _Known) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[key] = known
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def add_descriptor(self, known: _Known, index: int, descriptor) -> None:
        with self._lock:  # an entry evicted meanwhile just gets it for this request
            known.descriptors.setdefault(index, descriptor)

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._items), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}


def _copy(face):
    return dataclasses.replace(face, landmarks=face.landmarks.copy(), descriptor=None, why=None)


class CachedEngine:
    """A FaceEngine for one request: `read`, `find` and `describe` answered from the cache where the bytes
    were seen before, the real engine (under the verifier's lock) otherwise. Everything else is the engine's."""

    def __init__(self, engine, lock: threading.Lock, cache: FaceCache, key: tuple, max_pixels: int):
        self._engine, self._lock, self._cache, self._key, self._max_pixels = engine, lock, cache, key, max_pixels

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def read(self, upload: Upload) -> _Image:
        from cvtool.io.image import decode_image

        key = (upload.sha256, self._key, self._max_pixels)
        if self._cache.peek(key) or self._cache.peek((*key, MAIN)):
            return _Image(upload, key)  # these bytes decoded, under this limit, before: decoded again only if needed
        if not upload.data:
            from cvtool.errors import InputError

            raise InputError("empty file (0 bytes)", upload.name)
        return _Image(upload, key, rgb=decode_image(upload.data, upload.name, max_pixels=self._max_pixels))

    def find(self, images: list[_Image], names: list[str] | None = None) -> list[list]:
        found = []
        for image, name in zip(images, names or [None] * len(images)):
            image.known = self._cache.get(image.key)
            if image.known is None:
                rgb = self._pixels(image)
                with self._lock:
                    faces = self._engine.find([rgb], [name])[0]
                image.known = _Known([_copy(f) for f in faces])
                self._cache.put(image.key, image.known)
            found.append([_copy(f) for f in image.known.faces])
        return found

    def find_main(self, image: _Image, name: str | None = None) -> tuple[list, float | None]:
        """The engine's find_main, cached apart from find's (its faces are only those the choice needs)."""
        key = (*image.key, MAIN)
        image.known = self._cache.get(key)
        if image.known is None:
            rgb = self._pixels(image)
            with self._lock:
                faces, side = self._engine.find_main(rgb, name)
            image.known = _Known([_copy(f) for f in faces], searched_from=side)
            self._cache.put(key, image.known)
        return [_copy(f) for f in image.known.faces], image.known.searched_from

    def _pixels(self, image: _Image):
        if image.rgb is None:
            from cvtool.io.image import decode_image

            image.rgb = decode_image(image.upload.data, image.upload.name, max_pixels=self._max_pixels)
        return image.rgb

    def describe(self, images: list[_Image], faces: list[list], names: list[str] | None = None) -> None:
        names = names or [None] * len(images)
        for image, image_faces, name in zip(images, faces, names):
            missing = [f for f in image_faces if f.index not in image.known.descriptors]
            for face in image_faces:
                if face.index in image.known.descriptors:
                    face.descriptor = image.known.descriptors[face.index].copy()
            if not missing:
                continue
            rgb = self._pixels(image)  # a face of a known photo not described yet (another --face-index)
            with self._lock:
                self._engine.describe([rgb], [missing], [name])  # raises on a descriptor it cannot trust
            for face in missing:
                self._cache.add_descriptor(image.known, face.index, face.descriptor.copy())


def verify(verifier, cache: FaceCache, verifier_key: tuple, a: Upload, b: Upload, *, index_a: int | None,
           index_b: int | None, max_pixels: int) -> dict:
    """The record `cvtool verify-face A B -f json` prints (`ms` this request's), or its InputError."""
    from cvtool.pipelines import face as task

    engine = CachedEngine(verifier.engine, verifier._lock, cache, verifier_key, max_pixels)
    return task.verify(engine, a, b, index_a=index_a, index_b=index_b)
