"""The module's state in the scene: a parameter node (Slicer's `parameterNodeWrapper`).

What a user set up for a scene (input volume, output segmentation, prompts, model, device,
side convention, precision, data set folder) lives in the scene's parameter node, so a saved
scene restores it; the user's preferences across scenes stay in Slicer's settings
(`settings.ModuleSettings`) and give a new parameter node its first values.

`TeViASegmentParameters` is a plain annotated class; `TeViASegmentParameterNode` is the same
class wrapped by `slicer.parameterNodeWrapper` (Slicer 5.10 and later), or None where that
module is absent (slicer-core, which has no Qt), so the plain parts import and test anywhere.
Widgets of Resources/UI/TeViASegment.ui whose dynamic property "SlicerParameterName" names a
parameter are kept in step with it by `connectGui`.
"""

from __future__ import annotations

import enum
import pathlib

import slicer
from TeViASegmentLib.arguments import DEVICES

__all__ = ["Device", "SideConvention", "TeViASegmentParameters", "TeViASegmentParameterNode",
           "default_dataset_folder", "user_folder", "initial_values"]


class Device(enum.Enum):
    """Where the model runs (values: `arguments.DEVICES`)."""

    AUTO = "auto"
    CUDA = "cuda"
    CPU = "cpu"
    MPS = "mps"

    def label(self) -> str:
        return {"auto": "auto", "cuda": "GPU (CUDA)", "cpu": "CPU", "mps": "GPU (Apple MPS)"}[self.value]


class SideConvention(enum.Enum):
    """Which sides the prompts' "left" and "right" name (values: `tevia.prompts.sides.CONVENTIONS`)."""

    PATIENT = "patient"
    IMAGE = "image"

    def label(self) -> str:
        return {"patient": "patient (radiological: left = patient's left)",
                "image": "image (left = image's left)"}[self.value]


def user_folder(name: str) -> pathlib.Path:
    """A per-user default folder of the module: ~/Documents/TeViA/<name> (~/TeViA/<name> where
    there is no Documents folder). Nothing is created."""
    documents = pathlib.Path.home() / "Documents"
    return (documents if documents.is_dir() else pathlib.Path.home()) / "TeViA" / name


def default_dataset_folder() -> pathlib.Path:
    """Where annotated slices go unless the user chose another folder."""
    return user_folder("training-set")


class TeViASegmentParameters:
    """The module's parameters (types that `slicer.parameterNodeWrapper` serializes in 5.10).

    Attributes:
        inputVolume: the volume to segment.
        outputSegmentation: where new segments go (None: a new segmentation).
        prompts: the prompt text, one prompt per line.
        model: "default", a catalogue model name or a model folder.
        device, convention: see `Device`, `SideConvention`.
        bf16: run the local worker in bfloat16.
        datasetFolder: the training set folder of the annotator loop.
        fineTuneEpochs: training epochs of Fine-tune.
        fineTuneReference: the reference set Fine-tune measures before and after, to detect
            forgetting: a split's CSV of a data set the model was good on (``qata-cov19/val.csv``);
            empty: none (`finetune.reference_set` reads it).
    """

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    prompts: str = ""
    model: str = "default"
    device: Device = Device.AUTO
    convention: SideConvention = SideConvention.PATIENT
    bf16: bool = False
    datasetFolder: pathlib.Path = pathlib.Path()
    fineTuneEpochs: int = 5
    fineTuneReference: pathlib.Path = pathlib.Path()


def initial_values(settings) -> dict:
    """First values of a new parameter node, from the user's settings (`settings.ModuleSettings`)."""
    device, convention = settings.get("device", "auto"), settings.get("convention", "patient")
    folder = settings.get("datasetFolder", "")
    return {
        "model": str(settings.get("model", "default")),
        "device": Device(device) if device in DEVICES else Device.AUTO,
        "convention": SideConvention(convention) if convention in {c.value for c in SideConvention} else SideConvention.PATIENT,
        "bf16": settings.get("precision", "fp32") == "bf16",
        "datasetFolder": pathlib.Path(folder) if folder else default_dataset_folder(),
    }


def _wrapped():
    try:
        from slicer.parameterNodeWrapper import parameterNodeWrapper
    except ImportError:  # slicer-core: no Qt, no parameterNodeWrapper
        return None
    return parameterNodeWrapper(type("TeViASegmentParameterNode", (TeViASegmentParameters,),
                                     {"__doc__": TeViASegmentParameters.__doc__}))


TeViASegmentParameterNode = _wrapped()
