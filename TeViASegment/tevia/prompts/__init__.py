"""Text prompts as the model reads them: normalisation, side convention, out-of-domain warning.

A user's prompt goes through three steps before the text encoder sees it
(:func:`prepare_prompt`):

1. :func:`normalise_prompt` rewrites abbreviations and variants ("RLL", "bilat", "Rt",
   "right lower lobe", upper case, stray spaces and punctuation) to the words of the
   training descriptions ("lower right lung", "bilateral", ...).
2. :func:`side_mirroring` decides whether "left" and "right" must be swapped: the user may
   name the patient's sides while the model's training text named the image's sides (QaTa),
   and which is which depends on the image orientation.
3. Content words the training descriptions never used (``spec.vocabulary``, built by
   :func:`build_vocabulary`) give a warning that the model was not trained for them.

See docs/PROMPTS.md for the conventions and the abbreviation table.
"""

from tevia.prompts.normalise import ABBREVIATIONS, STOP_WORDS, build_vocabulary, normalise_prompt
from tevia.prompts.prepare import PreparedPrompt, prepare_prompt
from tevia.prompts.sides import CONVENTIONS, side_mirroring, swap_sides

__all__ = [
    "ABBREVIATIONS",
    "CONVENTIONS",
    "STOP_WORDS",
    "PreparedPrompt",
    "build_vocabulary",
    "normalise_prompt",
    "prepare_prompt",
    "side_mirroring",
    "swap_sides",
]
