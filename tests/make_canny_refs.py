#!/usr/bin/python3
"""Makes the Canny reference edges in tests/data/canny with Debian's python3-opencv.

Each input is made deterministically here (numpy, fixed seeds) and written as PNG; cv2.Canny
(apertureSize 3, L2gradient False) runs on the RGB array exactly as A1111's canny preprocessor
passes it (3 channels), and on single-channel inputs. cases.txt lists
"input channels low high reference". The C test (tests/unit/test_adapters_preprocess.c) reads
these files only; it does not need python. Run once: /usr/bin/python3 tests/make_canny_refs.py (Debian python, where python3-opencv lives)
"""
import os

import cv2
import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "canny")


def photo(h, w, seed):
    """Smooth shading, a few soft shapes and sensor-like noise."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([120 + 60 * np.sin(x / 17.0), 100 + 50 * np.cos(y / 13.0), 90 + 40 * np.sin((x + y) / 23.0)], -1)
    for _ in range(6):
        cy, cx, rad = r.uniform(0, h), r.uniform(0, w), r.uniform(6, 25)
        col = r.uniform(0, 255, 3)
        m = np.clip((rad - np.hypot(y - cy, x - cx)) / 3.0, 0, 1)[..., None]
        img = img * (1 - m) + col * m
    img += r.normal(0, 12, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def shapes(h, w):
    img = np.full((h, w, 3), 30, np.uint8)
    cv2.rectangle(img, (10, 12), (60, 50), (200, 40, 40), -1)
    cv2.circle(img, (w - 35, h // 2), 22, (40, 220, 90), -1)
    cv2.line(img, (5, h - 5), (w - 5, 8), (250, 250, 250), 2)
    cv2.ellipse(img, (w // 2, h - 25), (30, 12), 25, 0, 360, (60, 60, 230), -1)
    return img


def stripes(h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    g = 128 + 100 * np.sin((x * 0.7 + y * 0.45) / 4.0) * np.exp(-((x - w / 2) ** 2 + (y - h / 2) ** 2) / (2 * 40.0 ** 2))
    return np.clip(np.rint(np.stack([g, 255 - g, g * 0.5 + 60], -1)), 0, 255).astype(np.uint8)


def checker(h, w):
    y, x = np.mgrid[0:h, 0:w]
    g = (((x // 7) + (y // 5)) % 2) * 180 + 40
    return np.stack([g, g, g], -1).astype(np.uint8)


def main():
    os.makedirs(OUT, exist_ok=True)
    rgb = {
        "photo": photo(96, 128, 7),
        "flat": np.full((64, 80, 3), 137, np.uint8),
        "shapes": shapes(90, 120),
        "stripes": stripes(100, 100),
        "checker": checker(60, 84),
        "noise": np.random.default_rng(3).integers(0, 256, (48, 72, 3), dtype=np.uint8),
    }
    thresholds = [(100, 200), (50, 150), (20, 60), (99.5, 200.7), (200, 100)]
    lines = []
    for name, img in rgb.items():
        cv2.imwrite(os.path.join(OUT, name + ".png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        cv2.imwrite(os.path.join(OUT, name + "_gray.png"), gray)
        for lo, hi in thresholds:
            for src, ch, tag in ((img, 3, "rgb"), (gray, 1, "gray")):
                edges = cv2.Canny(src, lo, hi)  # apertureSize=3, L2gradient=False
                ref = "%s_%s_%g_%g.png" % (name, tag, lo, hi)
                cv2.imwrite(os.path.join(OUT, ref), edges)
                inp = name + (".png" if ch == 3 else "_gray.png")
                lines.append("%s %d %g %g %s" % (inp, ch, lo, hi, ref))
    with open(os.path.join(OUT, "cases.txt"), "w") as f:
        f.write("# input channels low high reference  (made by tests/make_canny_refs.py, OpenCV %s)\n" % cv2.__version__)
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
