"""Random but readable text for the offline generators (seeded, from one fixed vocabulary)."""
from __future__ import annotations

import numpy as np

WORDS = (
    "the a of and to in is that for it as with be on not this are or from at which but have an they "
    "you one all we can their has would if will more when who what so up out about into than only "
    "other time new some could these two first then do any like now over such even most made after "
    "also many before through back where much way well down should because each just people how "
    "little good very make world still own see work long get here between both life being under day "
    "same another know while last might great old year off come since against go right used take "
    "three answer question model reward summary post response prompt please explain why think help "
    "write story code math number total step result list first second finally therefore idea plan "
    "travel food music health money family friend city science history game book movie school"
).split()


def sentence(rng: np.random.Generator, low: int = 5, high: int = 20) -> str:
    """One sentence of between `low` and `high` words."""
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(low, high + 1))]
    return " ".join(words).capitalize() + rng.choice([".", "?", "!"])


def paragraph(rng: np.random.Generator, sentences_low: int = 1, sentences_high: int = 4) -> str:
    return " ".join(sentence(rng) for _ in range(rng.integers(sentences_low, sentences_high + 1)))
