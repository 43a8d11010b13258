"""Draw the module and extension icon (128x128 PNG): a CT-like slice with a text bubble
pointing at a highlighted segment. Run: python Utilities/make_icon.py"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 128
REPO = Path(__file__).resolve().parents[1]


def draw_icon() -> Image.Image:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    background = np.zeros((SIZE, SIZE, 4), np.uint8)
    body = ((xx - 64) / 54) ** 2 + ((yy - 72) / 44) ** 2 <= 1
    lungs = ((((xx - 44) / 17) ** 2 + ((yy - 70) / 28) ** 2) <= 1) | ((((xx - 84) / 17) ** 2 + ((yy - 70) / 28) ** 2) <= 1)
    shade = np.clip(150 + 30 * np.sin(xx / 7) * np.cos(yy / 9), 0, 255)
    background[body] = np.stack([shade, shade, shade, np.full_like(shade, 255)], -1)[body]
    background[lungs] = (40, 40, 46, 255)
    segment = (((xx - 84) / 12) ** 2 + ((yy - 80) / 15) ** 2) <= 1
    background[segment] = (235, 120, 40, 255)
    image = Image.fromarray(background, "RGBA").filter(ImageFilter.SMOOTH)
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((4, 4, 76, 36), radius=9, fill=(30, 110, 200, 255), outline=(255, 255, 255, 255), width=2)
    draw.polygon([(52, 34), (72, 34), (82, 62)], fill=(30, 110, 200, 255))
    for row, width in ((14, 56), (24, 40)):
        draw.rounded_rectangle((14, row - 2, 14 + width, row + 3), radius=2, fill=(255, 255, 255, 255))
    return image


if __name__ == "__main__":
    icon = draw_icon()
    for path in (REPO / "TeViASegment" / "Resources" / "Icons" / "TeViASegment.png", REPO / "Resources" / "TeViA.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        icon.save(path, optimize=True)
