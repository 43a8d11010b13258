"""Training with simulated corrective clicks (for networks built with model.click_inputs).

Per training batch: the text-only pass (computed by the caller, with gradients) gives the
first prediction; each image then draws a number of clicks n in 1..max_clicks and gets them
one at a time, each at the centre of the largest error region of the model's own current
prediction (tevia.training.click_simulation.next_click). Between clicks the decoder runs without
gradients and in eval mode (batch norms use their running statistics, as at inference, and
are not updated), on the batch's detached image features: n - 1 decoder passes, no encoder
pass. The caller then decodes once more with all clicks, with gradients.
"""

from __future__ import annotations

import torch

from tevia.training.click_simulation import next_click
from tevia.model.network import TeViANet

__all__ = ["simulate_click_maps", "draw_counts"]


def draw_counts(batch: int, max_clicks: int) -> torch.Tensor:
    """(batch,) click counts drawn uniformly from 1..max_clicks."""
    if max_clicks < 1:
        raise ValueError(f"train.max_clicks must be >= 1, got {max_clicks}")
    return torch.randint(1, max_clicks + 1, (batch,))


def _step(network: TeViANet, maps: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
          active: torch.Tensor) -> None:
    """Adds one corrective click, drawn into `maps` in place (the network's click encoding), for
    each image where `active`."""
    prediction = (logits[:, 0] > 0).cpu().numpy()
    truth = (target[:, 0] > 0.5).cpu().numpy()
    clicks = []
    for b in range(prediction.shape[0]):
        click = next_click(prediction[b], truth[b]) if bool(active[b]) else None
        clicks.append([click] if click is not None else [])
    network.clicks.render(clicks, tuple(maps.shape[-2:]), out=maps)


def simulate_click_maps(network: TeViANet, feats: list[torch.Tensor], text: torch.Tensor, target: torch.Tensor,
                        first_logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Click maps (B, 2, H, W) of counts[b] simulated corrective clicks for image b.

    Args:
        network: the network being trained (its train/eval mode is restored).
        feats: the batch's image features (detached here).
        text: the batch's text (B, T, D).
        target: ground truth (B, 1, H, W) at the input resolution.
        first_logits: the text-only prediction's logits (B, 1, H, W).
        counts: (B,) clicks per image (CPU integers; see `draw_counts`).
    """
    b = target.shape[0]
    maps = torch.zeros(b, 2, *target.shape[-2:], device=target.device)
    feats = [f.detach() for f in feats]
    logits = first_logits.detach()
    was_training = network.training
    network.eval()
    try:
        for k in range(1, int(counts.max()) + 1):
            if k > 1:
                with torch.no_grad():
                    logits = network.decode(feats, text, maps).logits
            _step(network, maps, logits, target, counts >= k)
    finally:
        network.train(was_training)
    return maps
