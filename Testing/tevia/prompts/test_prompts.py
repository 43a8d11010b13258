"""Tests for tevia.prompts: normalisation, side convention and the out-of-domain warning.

Real data: the QaTa-COV19 descriptions (train.csv, val.csv), the TotalSegmentator label names
and the orientation of two real CT label maps (NIfTI in RAS, DICOM in LPS), from ../shared/data.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, shared_path

from tevia.inference.spec import ModelSpec
from tevia.prompts import (
    ABBREVIATIONS,
    PreparedPrompt,
    build_vocabulary,
    normalise_prompt,
    prepare_prompt,
    side_mirroring,
    swap_sides,
)

QATA_EXAMPLE = (
    "Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung."
)
BOTH_LOWER = "lower right lung and lower left lung"


def make_spec(side_convention: str, vocabulary: list[str] | None = None) -> ModelSpec:
    """A model spec as Segmenter.load builds it from a model card, for a chest X-ray model."""
    return ModelSpec("qata", "0", (224, 224), 1, "chest x-ray", side_convention, vocabulary or [])


def _descriptions(split: str) -> list[str]:
    with open(shared_path("qata-cov19", f"{split}.csv"), newline="", encoding="utf-8") as f:
        return [row["Description"] for row in csv.DictReader(f)]


def _organ_labels() -> dict[str, int]:
    """TotalSegmentator structure name -> label number (e.g. "liver" -> 5)."""
    path = shared_path("volumes", "totalseg-example-ct", "label_map.json")
    return {name: int(label) for label, name in json.loads(path.read_text())["total"].items()}


@pytest.fixture(scope="module")
def train_descriptions() -> list[str]:
    return _descriptions("train")


@pytest.fixture(scope="module")
def qata_spec(train_descriptions: list[str]) -> ModelSpec:
    return make_spec("image", build_vocabulary(train_descriptions))


# --- normalisation -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "abbreviated, spelled_out, expected",
    [
        ("RUL", "upper right lung", "upper right lung"),
        ("RML", "middle right lung", "middle right lung"),
        ("RLL", "lower right lung", "lower right lung"),
        ("LUL", "upper left lung", "upper left lung"),
        ("LLL", "lower left lung", "lower left lung"),
        ("rll", "Right lower lobe", "lower right lung"),
        ("Rt. lower zone", "right lower lobe", "lower right lung"),
        ("L upper lung", "left upper lung", "upper left lung"),
        ("bilat", "bilateral", "bilateral"),
        ("Bil.", "bilateral", "bilateral"),
        ("R/L lower zones", BOTH_LOWER, BOTH_LOWER),
        ("Bilat. pulmonary infection , 2 infected areas: LLL & RLL.", QATA_EXAMPLE,
         QATA_EXAMPLE.lower()),
    ],
)
def test_abbreviation_gives_the_spelled_out_text(
    abbreviated: str, spelled_out: str, expected: str
) -> None:
    assert normalise_prompt(abbreviated) == normalise_prompt(spelled_out) == expected


def test_case_spaces_and_punctuation_are_tidied() -> None:
    assert normalise_prompt("  LOWER   left lung ,, infection!! ") == "lower left lung, infection."
    assert normalise_prompt("infected areas,upper left lung ;lower right lung") == (
        "infected areas, upper left lung, lower right lung"
    )
    assert normalise_prompt("2.5 cm opacity") == "2.5 cm opacity"


def test_abbreviations_expand_to_training_words(train_descriptions: list[str]) -> None:
    vocabulary = set(build_vocabulary(train_descriptions))
    expanded = {word for phrase in ABBREVIATIONS.values() for word in phrase.split()}
    assert expanded <= vocabulary, sorted(expanded - vocabulary)


def test_normalisation_is_idempotent_on_all_descriptions(train_descriptions: list[str]) -> None:
    texts = set(train_descriptions) | set(_descriptions("val"))
    assert len(texts) == 301
    for text in texts:
        once = normalise_prompt(text)
        assert normalise_prompt(once) == once
        assert once == once.lower() and "  " not in once


def test_docs_abbreviation_table_is_true() -> None:
    table = (REPO / "docs" / "PROMPTS.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|$", table, flags=re.MULTILINE)
    assert len(rows) >= 10
    for typed, normalised in rows:
        assert normalise_prompt(typed) == normalised, typed


@pytest.mark.parametrize("text", ["", "   ", "\n\t ", "...", " , ; ! "])
def test_empty_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="text is empty.*type what to segment"):
        normalise_prompt(text)
    with pytest.raises(ValueError, match="text is empty"):
        prepare_prompt(text, make_spec("image"))


def test_non_text_is_refused() -> None:
    with pytest.raises(TypeError, match="text must be a string, got NoneType"):
        normalise_prompt(None)  # type: ignore[arg-type]


def test_non_ascii_text_is_accepted(qata_spec: ModelSpec) -> None:
    assert normalise_prompt("ＲＬＬ\u3000infection") == "lower right lung infection"
    assert normalise_prompt("lower\u00a0left lung") == "lower left lung"
    prepared = prepare_prompt("lower left lung — près du cœur", qata_spec, convention="image")
    assert prepared.text == "lower left lung près du cœur"
    assert len(prepared.warnings) == 1 and "près, du, cœur" in prepared.warnings[0]
    chinese = prepare_prompt("左下肺感染", qata_spec, convention="image")
    assert chinese.text == "左下肺感染" and "左下肺感染" in chinese.warnings[0]


# --- vocabulary and the out-of-domain warning -------------------------------------------

def test_vocabulary_is_sorted_content_words(qata_spec: ModelSpec) -> None:
    vocabulary = qata_spec.vocabulary
    assert vocabulary == sorted(set(vocabulary))
    anatomy = {"bilateral", "unilateral", "left", "right", "upper", "middle", "lower", "lung"}
    assert anatomy <= set(vocabulary)
    assert not {"and", "the"} & set(vocabulary)
    assert all(word == word.lower() and not word.isdigit() for word in vocabulary)


def test_vocabulary_refuses_an_empty_description() -> None:
    with pytest.raises(ValueError, match=r"descriptions\[1\] is empty"):
        build_vocabulary(["lower left lung", "  "])


@pytest.mark.parametrize("convention", ["image", "patient"])
def test_no_training_description_warns(
    qata_spec: ModelSpec, train_descriptions: list[str], convention: str
) -> None:
    distinct = sorted(set(train_descriptions))
    assert len(distinct) == 278
    warned = [t for t in distinct if prepare_prompt(t, qata_spec, convention=convention).warnings]
    assert warned == []


def test_few_val_descriptions_warn(qata_spec: ModelSpec) -> None:
    distinct = sorted(set(_descriptions("val")))
    warned = {t: prepare_prompt(t, qata_spec).warnings for t in distinct}
    warned = {t: w for t, w in warned.items() if w}
    # Only typos the training text never had ("uooer", "mddle", ...): 5 of 102 when written.
    assert 0 < len(warned) <= 0.1 * len(distinct)
    assert all("not trained for" in w[0] for w in warned.values())


def test_organ_names_warn_and_name_the_words(qata_spec: ModelSpec) -> None:
    assert {"liver", "spleen"} <= set(_organ_labels())
    for organ in ("liver", "spleen"):
        prepared = prepare_prompt(f"{organ} infection", qata_spec)
        assert prepared.warnings == (
            f"the model was not trained for: {organ} (words its training descriptions never "
            "used); the mask may be meaningless for this prompt",
        )
    assert prepare_prompt("RLL infection", qata_spec).warnings == ()


def test_stop_words_and_numbers_do_not_warn(qata_spec: ModelSpec) -> None:
    assert prepare_prompt("infection in the lower left lung, 7 areas", qata_spec).warnings == ()


def test_empty_vocabulary_disables_the_check() -> None:
    assert prepare_prompt("liver", make_spec("image", [])).warnings == ()


# --- sides --------------------------------------------------------------------------------

LEFT, RIGHT, ALONG_AP = (-1.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, -1.0, 0.0)


@pytest.mark.parametrize(
    "convention, direction, expected_text, mirrored",
    [
        ("patient", LEFT, "lower left lung and upper right lung", True),
        ("patient", RIGHT, "lower right lung and upper left lung", False),
        ("patient", None, "lower left lung and upper right lung", True),
        ("patient", ALONG_AP, "lower left lung and upper right lung", True),
        ("image", LEFT, "lower right lung and upper left lung", False),
        ("image", RIGHT, "lower right lung and upper left lung", False),
        ("image", None, "lower right lung and upper left lung", False),
    ],
)
def test_sides_under_each_convention_and_orientation(
    qata_spec: ModelSpec, convention: str, direction, expected_text: str, mirrored: bool
) -> None:
    prepared = prepare_prompt("RLL and left upper lobe", qata_spec, convention, direction)
    assert prepared.text == expected_text
    assert (prepared.mirrored, prepared.convention) == (mirrored, convention)
    assert prepared.warnings == ()


def test_patient_convention_model_mirrors_image_prompts() -> None:
    prepared = prepare_prompt("left lung", make_spec("patient"), "image", column_direction_ras=LEFT)
    assert (prepared.text, prepared.mirrored) == ("right lung", True)


def test_side_note_says_what_was_assumed(qata_spec: ModelSpec) -> None:
    unknown = prepare_prompt("left lung", qata_spec).side_note
    assert "assumed the standard chest X-ray display" in unknown
    known = prepare_prompt("left lung", qata_spec, column_direction_ras=LEFT).side_note
    assert "towards the patient's left" in known
    assert "not left-right" in side_mirroring("patient", "image", ALONG_AP)[1]
    assert "both name image sides" in side_mirroring("image", "image", LEFT)[1]
    no_side = prepare_prompt("bilateral pulmonary infection", qata_spec)
    assert not no_side.mirrored and no_side.side_note.endswith("(the prompt names no side)")


def test_the_explanation_names_the_unit_column_direction() -> None:
    mirrored, why = side_mirroring("patient", "image", (-2.0, 0.0, 0.0))
    assert mirrored and "towards the patient's left (RAS [-1.00, 0.00, 0.00])" in why
    assert "along RAS [0.00, -0.60, 0.80]," in side_mirroring("patient", "image", (0.0, -3.0, 4.0))[1]


@pytest.mark.parametrize(
    "folder, expected_mirrored",
    [("totalseg-example-ct", False), ("totalseg-example-ct-dicom", True)],
)
def test_orientation_of_real_volumes(folder: str, expected_mirrored: bool) -> None:
    """The patient's right organ (liver) lies in the image's left half exactly when we mirror."""
    image = sitk.ReadImage(str(shared_path("volumes", folder, "seg_total.nii.gz")))
    direction_lps = np.array(image.GetDirection()).reshape(3, 3)
    column_direction_ras = direction_lps[:, 0] * np.array([-1.0, -1.0, 1.0])
    labels = sitk.GetArrayViewFromImage(image)  # numpy K, J, I: the column index is I
    liver_column = np.nonzero(labels == _organ_labels()["liver"])[2].mean()
    spleen_column = np.nonzero(labels == _organ_labels()["spleen"])[2].mean()
    mirrored, _ = side_mirroring("patient", "image", column_direction_ras)
    assert mirrored == expected_mirrored == (liver_column < spleen_column)


@pytest.mark.parametrize("bad", [(0, 0, 0), (1, 0), "abc", (float("nan"), 0, 0)])
def test_bad_column_direction_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="column_direction_ras must be 3 finite numbers"):
        side_mirroring("patient", "image", bad)


def test_bad_convention_is_refused() -> None:
    with pytest.raises(ValueError, match="user_convention must be one of .* got 'radiological'"):
        prepare_prompt("left lung", make_spec("image"), convention="radiological")
    with pytest.raises(ValueError, match="model_convention must be one of .* got 'neurological'"):
        prepare_prompt("left lung", make_spec("neurological"))


def test_swap_sides_on_all_descriptions(train_descriptions: list[str]) -> None:
    for text in {normalise_prompt(t) for t in train_descriptions}:
        swapped = swap_sides(text)
        assert re.findall(r"\b(left|right)\b", swapped) == [
            {"left": "right", "right": "left"}[side]
            for side in re.findall(r"\b(left|right)\b", text)
        ]
        assert swap_sides(swapped) == text


# --- truncation and the result ------------------------------------------------------------

def test_long_text_is_truncated_with_a_warning(qata_spec: ModelSpec) -> None:
    long_text = " ".join(["lower left lung infection"] * 25)
    prepared = prepare_prompt(long_text, qata_spec, convention="image")
    assert len(prepared.text.split()) == 64
    assert prepared.warnings == (
        "the prompt has 100 words; only the first 64 were used (up to 'infection'); "
        "shorten it to describe one finding",
    )
    assert len(prepare_prompt(long_text, qata_spec, max_words=10).text.split()) == 10
    with pytest.raises(ValueError, match="max_words must be a positive integer, got 0"):
        prepare_prompt(long_text, qata_spec, max_words=0)


def test_to_dict_is_json_ready(qata_spec: ModelSpec) -> None:
    prepared = prepare_prompt("LLL liver", qata_spec)
    data = json.loads(json.dumps(prepared.to_dict()))
    assert data == {
        "original": "LLL liver",
        "text": "lower right lung liver",
        "convention": "patient",
        "mirrored": True,
        "warnings": list(prepared.warnings),
        "side_note": prepared.side_note,
    }
    assert len(data["warnings"]) == 1
    with pytest.raises(FrozenInstanceError):
        prepared.text = "x"  # type: ignore[misc]
    assert isinstance(prepared, PreparedPrompt)


def test_committed_example_is_a_real_description(train_descriptions: list[str]) -> None:
    assert QATA_EXAMPLE in set(train_descriptions)



# --- with a real model (tiny random weights) on the committed QaTa samples ----------------

SAMPLES = REPO / "Testing" / "data" / "qata_samples"


@pytest.fixture(scope="module")
def segmenter(tiny_model_dir):
    import torch

    from tevia.inference.segmenter import Segmenter

    torch.set_num_threads(1)
    return Segmenter.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def sample_images(segmenter) -> np.ndarray:
    """(4, H, W) float32 in [0, 1]: committed chest X-rays at the model's image size, as the
    training data set gives them."""
    from tevia.training.data.dataset import CSVSegmentationDataset

    data = CSVSegmentationDataset(SAMPLES, "samples", image_size=segmenter.spec.image_size)
    first = sorted(range(len(data)), key=lambda i: data.image_paths[i].name)[:4]
    return np.stack([data[i]["image"][0].numpy() for i in first])


@pytest.mark.parametrize(
    "abbreviated, spelled_out",
    [
        ("RLL infection", "right lower lobe infection"),
        ("Bilat. LUL & RUL", "bilateral upper left lung and upper right lung"),
    ],
)
def test_model_gives_the_same_mask_for_abbreviations(
    segmenter, sample_images, abbreviated: str, spelled_out: str
) -> None:
    short = prepare_prompt(abbreviated, segmenter.spec, convention="image")
    long = prepare_prompt(spelled_out, segmenter.spec, convention="image")
    assert short.text == long.text
    probs = segmenter.predict(sample_images, short.text)
    np.testing.assert_array_equal(probs, segmenter.predict(sample_images, long.text))
    # The model does read the text: the raw abbreviation would give another output.
    assert np.abs(probs - segmenter.predict(sample_images, abbreviated)).max() > 0


def test_model_reads_patient_sides_mirrored(segmenter, sample_images) -> None:
    assert segmenter.spec.side_convention == "image"
    patient = prepare_prompt("RLL infection", segmenter.spec, convention="patient")
    assert (patient.text, patient.mirrored) == ("lower left lung infection", True)
    probs = segmenter.predict(sample_images, patient.text)
    image_left = prepare_prompt("lower left lung infection", segmenter.spec, "image").text
    image_right = prepare_prompt("RLL infection", segmenter.spec, "image").text
    assert image_right == "lower right lung infection"
    np.testing.assert_array_equal(probs, segmenter.predict(sample_images, image_left))
    assert np.abs(probs - segmenter.predict(sample_images, image_right)).max() > 0


def test_model_spec_vocabulary_warns_out_of_domain(segmenter, train_descriptions) -> None:
    assert segmenter.spec.vocabulary == []  # the tiny model lists none: no check
    assert prepare_prompt("liver", segmenter.spec).warnings == ()
    spec = replace(segmenter.spec, vocabulary=build_vocabulary(train_descriptions))
    with open(SAMPLES / "samples.csv", newline="", encoding="utf-8") as f:
        committed = [row["Description"] for row in csv.DictReader(f)]
    assert len(committed) == 20
    assert [t for t in committed if prepare_prompt(t, spec).warnings] == []
    assert "liver" in prepare_prompt("liver lesion", spec).warnings[0]
