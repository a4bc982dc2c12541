"""Generated GSM8K-style rows (`question`, `answer`) in the real published format, for the debias folder.

Each answer is the GSM8K layout: one reasoning line per step with calculator marks
`a op b = <<a op b=c>>c`, then a final line `#### <number>`. Two or three steps per problem (add,
subtract, multiply, divide), seeded and reproducible.

Every quantity (except small counts like "4 boxes") is a three-digit multiple of 10, and so is every
intermediate result (110..980). The tiny model's byte-level BPE writes the last digit of a three-digit
number as a token of its own, so an arithmetic slip of a few units (what debias_lora/build_pairs.py
plants in its incorrect variants, carried through the later steps) shows as a final-digit token other
than "0". That is the stand-in, for the tiny offline reward model, of the arithmetic check a real
reward model does: correctness becomes a feature it can learn in a few hundred steps, next to the
markdown style feature.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import harness

NAMES = ["Sam", "Ann", "Tom", "Mia", "Leo", "Eva", "Max", "Zoe", "Ben", "Ivy"]
ITEMS = ["apples", "books", "coins", "cards", "stamps", "pens", "shells", "cups"]


LOW, HIGH = 110, 980   # every result stays three-digit, even after a slip of up to 9


def _tens(rng: np.random.Generator, low: int, high: int) -> int:
    """A multiple of 10 in [low, high] (low <= high)."""
    return 10 * int(rng.integers(-(-low // 10), high // 10 + 1))


def _ok(*results: int) -> bool:
    return all(LOW <= r <= HIGH and r % 10 == 0 for r in results)


def _draw(rng: np.random.Generator, kind: int, name: str, item: str):
    """One draw of a problem of `kind`: (question, lines, final, results) (results may be out of range)."""
    if kind == 0:  # buy more, give some away
        a, b, c = _tens(rng, 100, 500), _tens(rng, 100, 400), _tens(rng, 100, 600)
        s1, s2 = a + b, a + b - c
        question = (f"{name} has {a} {item}. {name} buys {b} more {item} and then gives {c} {item} to a "
                    f"friend. How many {item} does {name} have left?")
        lines = [f"After buying, {name} has {a} + {b} = <<{a}+{b}={s1}>>{s1} {item}.",
                 f"After giving some away, {name} has {s1} - {c} = <<{s1}-{c}={s2}>>{s2} {item} left."]
        return question, lines, s2, (s1, s2)
    if kind == 1:  # boxes times size, minus sold
        k = int(rng.integers(2, 10))
        a, c = _tens(rng, 100, HIGH // k), _tens(rng, 100, 700)
        s1, s2 = a * k, a * k - c
        question = (f"A box holds {a} {item}. {name} fills {k} boxes and sells {c} {item}. "
                    f"How many {item} are left?")
        lines = [f"The {k} boxes hold {a} * {k} = <<{a}*{k}={s1}>>{s1} {item}.",
                 f"After selling, {s1} - {c} = <<{s1}-{c}={s2}>>{s2} {item} are left."]
        return question, lines, s2, (s1, s2)
    if kind == 2:  # earn per day, spend, then earn a bonus
        k = int(rng.integers(2, 10))
        a, c, d = _tens(rng, 100, HIGH // k), _tens(rng, 100, 700), _tens(rng, 100, 400)
        s1, s2, s3 = a * k, a * k - c, a * k - c + d
        question = (f"{name} earns {a} dollars a day for {k} days, spends {c} dollars on food and then "
                    f"gets a bonus of {d} dollars. How many dollars does {name} have?")
        lines = [f"In {k} days {name} earns {a} * {k} = <<{a}*{k}={s1}>>{s1} dollars.",
                 f"After the food, {name} has {s1} - {c} = <<{s1}-{c}={s2}>>{s2} dollars.",
                 f"With the bonus, {name} has {s2} + {d} = <<{s2}+{d}={s3}>>{s3} dollars."]
        return question, lines, s3, (s1, s2, s3)
    # kind 3: share equally, then everyone gets more
    k = int(rng.integers(2, 5))
    share, b = _tens(rng, LOW, HIGH // k), _tens(rng, 100, 500)
    a, s2 = k * share, share + b
    question = (f"{name} has {a} {item} and shares them equally among {k} friends. Then each friend "
                f"gets {b} more {item}. How many {item} does each friend have?")
    lines = [f"Sharing equally, each friend gets {a} / {k} = <<{a}/{k}={share}>>{share} {item}.",
             f"Then each friend has {share} + {b} = <<{share}+{b}={s2}>>{s2} {item}."]
    return question, lines, s2, (a, share, s2)


def _problem(rng: np.random.Generator) -> tuple[str, list[str], int]:
    """(question, reasoning lines with calculator marks, final answer) of one random word problem."""
    name, item = str(rng.choice(NAMES)), str(rng.choice(ITEMS))
    kind = int(rng.integers(0, 4))
    while True:  # redraw until every result is a three-digit multiple of 10
        question, lines, final, results = _draw(rng, kind, name, item)
        if _ok(*results):
            return question, lines, final


def generate_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` GSM8K rows {question, answer} (answer = reasoning lines + `#### <number>`)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        question, lines, final = _problem(rng)
        rows.append({"question": question, "answer": "\n".join(lines) + f"\n#### {final}"})
    return rows


def write_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    """Write `n` generated rows to `path` as GSM8K's JSONL (atomically); returns the path."""
    path = Path(path)
    with harness.atomic_path(path) as tmp, open(tmp, "w") as f:
        for row in generate_rows(n, seed):
            f.write(json.dumps(row) + "\n")
    return path


if __name__ == "__main__":
    for row in generate_rows(3):
        print(row["question"])
        print(row["answer"], end="\n\n")
