"""Drawing results for people: colour overlays and indexed (palette) masks. Renderers never run models."""

from __future__ import annotations

import io

import numpy as np


def class_palette(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map (bits of the class index spread over R, G, B): class 0 is black,
    neighbouring classes get very different colours, and VOC tools show our masks correctly."""
    palette = np.zeros((n, 3), np.uint8)
    for index in range(n):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float, palette: np.ndarray | None = None) -> np.ndarray:
    """Blend class colours over the photo; background (class 0) pixels stay untouched."""
    palette = class_palette() if palette is None else palette
    colours = palette[labels].astype(np.float32)
    blended = rgb.astype(np.float32) * (1 - alpha) + colours * alpha
    out = np.where((labels > 0)[..., None], blended, rgb.astype(np.float32))
    return (out + 0.5).astype(np.uint8)


def indexed_png(labels: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """An 8-bit palette PNG whose pixel values are the class indices (what VOC and most tools expect)."""
    from PIL import Image

    if labels.max(initial=0) > 255:
        raise ValueError("an indexed PNG holds at most 256 classes")
    palette = class_palette() if palette is None else palette
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


# COCO's 17 body keypoints, as pairs of indices to join (nose, eyes, ears, shoulders, elbows, wrists,
# hips, knees, ankles).
COCO_SKELETON = [(0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (5, 11), (6, 12),
                 (11, 12), (11, 13), (13, 15), (12, 14), (14, 16)]


def _chain(first: int, last: int, closed: bool = False) -> list[tuple[int, int]]:
    links = [(i, i + 1) for i in range(first, last)]
    return links + [(last, first)] if closed else links


# The iBUG 300-W 68-point face outline: jaw, brows, nose bridge and base, eyes, outer and inner lips.
FACE_68_SKELETON = (_chain(0, 16) + _chain(17, 21) + _chain(22, 26) + _chain(27, 30) + _chain(31, 35)
                    + _chain(36, 41, True) + _chain(42, 47, True) + _chain(48, 59, True) + _chain(60, 67, True))
SKELETONS = {17: COCO_SKELETON, 68: FACE_68_SKELETON}  # by number of points; others are drawn as dots only


def draw_detections(rgb: np.ndarray, detections: list[dict], palette: np.ndarray | None = None) -> np.ndarray:
    """Boxes with "label score" tags (or a detection's own "text"), line width and text scaled to the
    image, text readable on any colour (black or white by the tag's brightness); keypoints and their
    skeleton (COCO body or 68-point face) when present."""
    import cv2

    palette = class_palette() if palette is None else palette
    out = np.ascontiguousarray(rgb.copy())
    h, w = out.shape[:2]
    thickness = max(1, round(0.002 * (h + w)))
    font_scale = max(0.35, thickness / 3)
    for det in detections:
        colour = tuple(int(c) for c in palette[(det["index"] * 7 + 1) % len(palette)])
        x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        text = det.get("text") or f"{det['label']} {det['score']:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, max(1, thickness // 2))
        top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1  # inside the box at the top edge
        cv2.rectangle(out, (x1, top), (x1 + tw + 4, top + th + base + 2), colour, -1)
        ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        cv2.putText(out, text, (x1 + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink,
                    max(1, thickness // 2), cv2.LINE_AA)
        points = det.get("keypoints")
        if points:
            for a, b in SKELETONS.get(len(points), []):
                if points[a][2] > 0 and points[b][2] > 0:
                    cv2.line(out, (int(points[a][0]), int(points[a][1])), (int(points[b][0]), int(points[b][1])),
                             colour, thickness, cv2.LINE_AA)
            for x, y, visible in points:
                if visible > 0:
                    cv2.circle(out, (int(x), int(y)), max(1, thickness // 2 + 1), (255, 255, 255), -1, cv2.LINE_AA)
    return out


def draw_caption(rgb: np.ndarray, text: str) -> np.ndarray:
    """`text` in the top-left corner on a dark band, sized to the image (a classified video frame)."""
    import cv2

    out = np.ascontiguousarray(rgb.copy())
    h, w = out.shape[:2]
    thickness = max(1, round(0.002 * (h + w)))
    font_scale = max(0.35, thickness / 2.5)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    cv2.rectangle(out, (0, 0), (min(w, tw + 8), min(h, th + base + 8)), (0, 0, 0), -1)
    cv2.putText(out, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def draw_tracks(rgb: np.ndarray, detections: list[dict], trails: dict[int, list[tuple[float, float]]],
                lines: list[list[float]] = (), zones: list[list[float]] = (), caption: str = "",
                palette: np.ndarray | None = None) -> np.ndarray:
    """Tracked boxes tagged "#ID label score", each id in its own colour with its trail (its recent box
    centres), the counting lines and zones (polygons, x1,y1,x2,y2,...) and a caption (the counts)."""
    import cv2

    palette = class_palette() if palette is None else palette

    def colour(track_id: int) -> tuple[int, ...]:
        return tuple(int(c) for c in palette[(track_id * 7 + 1) % len(palette)])

    tagged = [{**d, "index": d["track_id"], "text": f"#{d['track_id']} {d['label']} {d['score']:.2f}"}
              for d in detections]
    out = draw_detections(rgb, tagged, palette)
    h, w = out.shape[:2]
    thickness = max(1, round(0.002 * (h + w)))
    for track_id, points in trails.items():
        if len(points) > 1:
            pts = np.round(np.asarray(points)).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(out, [pts], False, colour(track_id), thickness, cv2.LINE_AA)
    for line in lines:
        x1, y1, x2, y2 = (int(round(v)) for v in line)
        cv2.line(out, (x1, y1), (x2, y2), (255, 255, 0), thickness + 1, cv2.LINE_AA)
        cv2.circle(out, (x1, y1), thickness + 2, (255, 255, 0), -1, cv2.LINE_AA)  # where the line starts
    for zone in zones:
        pts = np.round(np.asarray(zone, dtype=float).reshape(-1, 2)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [pts], True, (0, 255, 255), thickness + 1, cv2.LINE_AA)
    return draw_caption(out, caption) if caption else out
