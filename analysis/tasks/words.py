"""Every fixed piece of text the task templates use: instruction prefixes, IOI names, country list.

Kept in one place so that the task generators and the offline word tokenizer
(`analysis.tokenizer.build_word_tokenizer`) always agree on the vocabulary.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources

# method.md 1.1/1.2/1.6: the instruction prefix of the shipped CSVs (the scripts set it to "", the data has it).
ARITH_PREFIX = ("Calculate the result of the following arithmetic expression and provide only the final "
                "answer: ")
SEQUENCE_PREFIX = "Derive the following sequence: "
LCM_PREFIX = "Calculate the least common multiple (LCM) of two numbers. "
FUNCTION_TEXT = "There is a function y=5x+75. Given x=1,2,3,4, y=80,85,90,"
COMPARISON_TEXT = "Is 121 > 112? Answer: Yes No"
IOI_TEXT = "Robert needed brush, Kelly wanted pan, Daniel handed brush to"
ANALOGY_TEXT = "If Abkhazia corresponds to Sukhumi, then Moldova corresponds to"

# Complex IOI [rebuttal]: first names and everyday objects, all common English words so that most
# tokenizers keep them as one token after a space.
IOI_NAMES = (
    "Robert", "Kelly", "Daniel", "Mary", "John", "James", "Sarah", "Michael", "Laura", "David",
    "Emma", "Thomas", "Anna", "Paul", "Lisa", "Mark", "Kevin", "Jessica", "Brian", "Amy",
    "Steven", "Rachel", "Jason", "Alice", "Peter", "Susan", "George", "Karen", "Eric", "Helen",
)
IOI_OBJECTS = (
    "brush", "pan", "book", "pen", "cup", "ball", "key", "bag", "hat", "box",
    "lamp", "knife", "spoon", "plate", "phone", "coat", "shoe", "map", "rope", "bell",
)
# Verbs of the two "want" clauses and of the hand-over clause.
IOI_WANT_VERBS = ("needed", "wanted")
IOI_GIVE_VERB = "handed"


@lru_cache(maxsize=1)
def countries() -> tuple[tuple[str, str], ...]:
    """(country, capital) pairs shipped in analysis/data/countries.csv, in file order."""
    text = resources.files("analysis").joinpath("data/countries.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    return tuple((r["country"].strip(), r["capital"].strip()) for r in rows)


def template_texts() -> list[str]:
    """Sample texts that together contain every word and punctuation mark any task prompt uses."""
    texts = [ARITH_PREFIX + "(41 + 29) * 3 = 41 - 29 / 2 =", SEQUENCE_PREFIX + "152, 157, 162, 167,",
             LCM_PREFIX + "LCM(20, 160) = 160, LCM(8, 64) =", FUNCTION_TEXT, COMPARISON_TEXT,
             IOI_TEXT, ANALOGY_TEXT, " ".join(IOI_NAMES), " ".join(IOI_OBJECTS),
             " ".join(IOI_WANT_VERBS + (IOI_GIVE_VERB,))]
    texts += [f"{country} {capital}" for country, capital in countries()]
    return texts
