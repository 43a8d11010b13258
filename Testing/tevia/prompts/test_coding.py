"""Prompt -> DICOM codes (tevia.prompts.coding.dicom_codes), the codes a DICOM SEG segment carries."""

import pytest

from tevia.prompts.coding import (ALTERED_STRUCTURE, ANATOMICAL_STRUCTURE, BOTH_SIDES, LEFT, REGIONS, RIGHT, TISSUE,
                                  dicom_codes, finding_types)


@pytest.mark.parametrize("prompt, category, type_value, modifier", [
    ("liver", ANATOMICAL_STRUCTURE, "10200004", None),
    ("segment the right lung", ANATOMICAL_STRUCTURE, "39607008", RIGHT),
    ("Left kidney", ANATOMICAL_STRUCTURE, "64033007", LEFT),
    ("heart", ANATOMICAL_STRUCTURE, "80891009", None),
    ("banana", TISSUE, TISSUE.value, None),
    ("liver and spleen", TISSUE, TISSUE.value, None),  # two organs: no single structure
])
def test_organs_named_alone_are_anatomical_structures_with_their_side(prompt, category, type_value, modifier):
    codes = dicom_codes(prompt)
    assert (codes.category, codes.type.value, codes.type_modifier) == (category, type_value, modifier)
    assert codes.region is None


def test_findings_carry_the_organ_and_its_side_as_anatomic_region():
    codes = dicom_codes("Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung")
    assert (codes.category, codes.type) == (ALTERED_STRUCTURE, finding_types()["47351003"][0])
    assert (codes.region, codes.region_modifier) == (REGIONS["lung"].code, BOTH_SIDES)
    assert dicom_codes("lower left lung opacity").region_modifier == LEFT


def test_mirrored_sides_swap_left_and_right():
    assert dicom_codes("left lung", mirror_sides=True).type_modifier == RIGHT
    assert dicom_codes("left lung infection", mirror_sides=True).region_modifier == RIGHT
