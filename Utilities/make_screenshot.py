"""Render Resources/Screenshot1.png: a real chest X-ray with a segment overlay and its prompt.

Usage: python Utilities/make_screenshot.py IMAGE MASK "PROMPT" "CAPTION"
(MASK: a 0/255 PNG, e.g. a QaTa-COV19 ground-truth mask or a `tevia predict` output).
"""

import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def render(image_path: str, mask_path: str, prompt: str, caption: str, out: Path) -> None:
    image = np.asarray(Image.open(image_path).convert("L"))
    mask = np.asarray(Image.open(mask_path).convert("L")) > 127
    overlay = np.zeros((*mask.shape, 4))
    overlay[mask] = (0.95, 0.45, 0.1, 0.55)
    figure, axis = plt.subplots(figsize=(6.4, 5.2), dpi=100)
    axis.imshow(image, cmap="gray")
    axis.imshow(overlay)
    axis.contour(mask, levels=[0.5], colors=["#f07020"], linewidths=1.2)
    axis.set_axis_off()
    axis.set_title("\n".join(textwrap.wrap(f"Prompt: {prompt}", 60)), fontsize=10, loc="left")
    figure.text(0.01, 0.01, caption, fontsize=8, color="#444444")
    figure.tight_layout()
    figure.savefig(out)


if __name__ == "__main__":
    render(*sys.argv[1:5], REPO / "Resources" / "Screenshot1.png")
