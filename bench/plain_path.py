"""The plain way to run a TeViANet: the reference computation its fast paths must match.

`TeViANet.encode_image` + `decode` take fast paths (channels_last tensors on the CPU, torch's
pixel_shuffle and a depthwise convolution for the head's upsampling, cached position codes).
:func:`plain_forward` computes the same network without them: contiguous (NCHW) tensors
throughout, MONAI's own upsampling module, position codes computed afresh. The tests prove the
fast paths equal it (Testing/tevia/inference/test_fast_paths.py); bench_engine.py times it as the
reference code's way of running this architecture. Neither the engine nor training uses it.
"""

from __future__ import annotations

import torch

from tevia.model.network import NetworkOutput, TeViANet

__all__ = ["plain_forward"]


def plain_forward(network: TeViANet, image: torch.Tensor, text: torch.Tensor) -> NetworkOutput:
    """``network(image, text)`` without the fast paths.

    Args:
        network: a TeViANet (any mode, any dtype).
        image: (B, in_channels, H, W) in [0, 1], H and W divisible by 32.
        text: (B, T, D) text hidden states, or (1, T, D) broadcast over the batch.

    Returns:
        The NetworkOutput: logits (B, 1, H, W), head features, per-stage text.
    """
    feats = network.encoder(network.normalise(image).contiguous())
    if network.neck is not None:
        feats = [n(f) for n, f in zip(network.neck, feats)]
    feats = [f.contiguous() for f in feats]
    if text.shape[0] == 1 and image.shape[0] > 1:
        text = text.expand(image.shape[0], -1, -1)
    x, stage_text = feats[3], []
    for i, stage in enumerate(network.stages):
        x, t = stage(x.contiguous(), feats[2 - i], text, network.prototype.modulation(i), fresh_positions=True)
        stage_text.append(t)
    head = network.head_act(network.upsample(x.contiguous()))
    return NetworkOutput(network.out(head), head, stage_text)
