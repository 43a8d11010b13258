"""The model card (README.md) of a model fine-tuned from Slicer (TeViASegmentLib.finetune)."""

from __future__ import annotations

from typing import Any

__all__ = ["model_card", "summary", "held_out_change"]

_ROWS = (("held_out", "your held-out volumes"), ("reference", "the reference set (forgetting)"))


def summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The figures of a `tevia evaluate` metrics.json that the card reports."""
    if not metrics:
        return None
    return {key: metrics.get(key) for key in ("dice_global", "dice_mean", "n", "data", "split", "eval_size")}


def _dice(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("dice_global") is None:
        return "not measured"
    return f"{entry['dice_global']:.4f} / {entry['dice_mean']:.4f}"


def held_out_change(info: dict[str, Any]) -> str:
    """One line for the user: Dice on the held-out volumes before and after fine-tuning (from the
    new model's model.json), e.g. "On 117 held-out slices (radiopaedia-2): pooled Dice 0.55 -> 0.78
    (mean over slices 0.50 -> 0.74)."; "" when it was not measured."""
    tuning = info.get("fine_tuning") or {}
    before, after = (tuning.get("evaluations") or {}).get("held_out_before"), \
        (tuning.get("evaluations") or {}).get("held_out_after")
    if not before or not after or before.get("dice_global") is None or after.get("dice_global") is None:
        return ""
    volumes = ", ".join(tuning.get("held_out_volumes", []))
    return (f"On {after['n']} held-out slices ({volumes}): pooled Dice {before['dice_global']:.2f} -> "
            f"{after['dice_global']:.2f} (mean over slices {before['dice_mean']:.2f} -> {after['dice_mean']:.2f}).")


def model_card(info: dict[str, Any], settings: Any) -> str:
    """Markdown: what the model is, what it was made from, and Dice before and after."""
    tuning, parent = info["fine_tuning"], info["parent"]
    evaluations = tuning["evaluations"]
    lines = [
        f"# {info['name']} {info['version']}",
        "",
        f"Fine-tuned in 3D Slicer (TeViA Segment, Fine-tune) from **{parent['name']} {parent['version']}** "
        f"on the training set `{tuning['dataset']}`. Research use only; the parent model's card and licence "
        f"apply ({info.get('licence') or 'see the parent model'}).",
        "",
        "## Data",
        f"- trained on {tuning['train_slices']} slices of {len(tuning['train_volumes'])} volume(s): "
        f"{', '.join(tuning['train_volumes'])}",
        f"- held out for validation, whole volumes (never single slices): {tuning['held_out_slices']} slices of "
        f"{len(tuning['held_out_volumes'])} volume(s): {', '.join(tuning['held_out_volumes'])}",
        f"- {tuning['epochs']} epoch(s), batch {settings.batch_size}, learning rate {settings.lr}; the epoch with "
        "the best held-out Dice is kept",
        f"- descriptions name {info.get('side_convention', 'image')} sides (the export converted the prompts)",
        "",
        "## Dice before and after (pooled / mean over slices)",
        "",
        f"| measured on | {parent['name']} {parent['version']} (before) | this model (after) |",
        "|---|---|---|",
    ]
    for key, label in _ROWS:
        before, after = evaluations.get(f"{key}_before"), evaluations.get(f"{key}_after")
        if before or after:
            where = f" ({before['data']}, {before['split']}, n={before['n']})" if key == "reference" and before else ""
            lines.append(f"| {label}{where} | {_dice(before)} | {_dice(after)} |")
    if "reference_before" not in evaluations:
        lines += ["", "No reference set was given: forgetting of what the parent model could do was not measured."]
    lines += ["", "Held-out Dice comes from a few volumes of the same annotator: it shows the direction, "
              "not a general accuracy.", ""]
    return "\n".join(lines)
