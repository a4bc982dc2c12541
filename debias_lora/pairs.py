"""GSM8K answers -> 6 response variants per question -> preference pairs for the three pair modes.

A GSM8K answer is reasoning lines with calculator marks `<<expr=result>>` (each mark is followed by the
displayed result) and a final line `#### <number>`. Per question we render

    3 styles       concise (the final computation lines and the answer), detailed plain (every step
                   as a prose sentence), detailed markdown (## headers, bullet steps, bold answer)
  x 2 correctness  correct, incorrect (one calculator result is off by a small slip, the slip is
                   carried through every later step that uses it, and the final answer is wrong)

and build about 3 pairs per question per mode:

    style        same correctness; chosen = the plainer/shorter style, rejected = the more
                 markdown-rich/verbose one (concise<plain, concise<markdown, plain<markdown; the
                 correctness of each pair alternates with the question index, so half are correct)
    correctness  same style; chosen = correct, rejected = incorrect (one pair per style)
    cross        chosen = correct in the plainer style, rejected = incorrect in the more stylish one
                 (concise vs plain, concise vs markdown, plain vs markdown)
"""
from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import harness

STYLES = ("concise", "detailed_plain", "detailed_markdown")   # RM-Bench order: least to most styled
MODES = ("style", "correctness", "cross")
STYLE_PAIRS = ((0, 1), (0, 2), (1, 2))                        # (plainer, more stylish) style indices

MARK = re.compile(r"<<([^<>]*)>>")
# A number as written in prose: 1,234.5 or 12 or 0.25 (no sign: a minus is an operator or a dash).
NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?![\w])")


@dataclass
class Solution:
    """A GSM8K answer: reasoning lines (calculator marks kept) and the final answer as written."""
    steps: list[str]
    final: str


def parse_answer(answer: str) -> Solution:
    """Split a GSM8K answer into its reasoning lines and the text after `####`."""
    lines = [line.strip() for line in answer.strip().split("\n")]
    finals = [i for i, line in enumerate(lines) if line.startswith("####")]
    if not finals:
        raise ValueError(f"not a GSM8K answer (no '#### <number>' line): {answer[-80:]!r}")
    final = lines[finals[-1]][4:].strip()
    steps = [line for line in lines[:finals[-1]] if line]
    if not steps or not final:
        raise ValueError(f"GSM8K answer without reasoning or final number: {answer[-80:]!r}")
    return Solution(steps, final)


def clean(line: str) -> str:
    """A reasoning line with its calculator marks removed (the displayed results stay)."""
    return re.sub(r"[ \t]+", " ", MARK.sub("", line)).strip()


def parse_number(text: str) -> float | None:
    """The value of a number as written (commas, $ and % ignored); None when it is not a number."""
    try:
        return float(text.replace(",", "").replace("$", "").replace("%", "").strip())
    except ValueError:
        return None


def format_number(value: float, like: str = "") -> str:
    """`value` written like `like` (comma grouping kept); integers without decimals, else <= 2 decimals."""
    if abs(value - round(value)) < 1e-9:
        text = f"{int(round(value)):,}" if "," in like else str(int(round(value)))
    else:
        text = f"{value:,.2f}" if "," in like else f"{value:.2f}"
        text = text.rstrip("0").rstrip(".")
    return text


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def safe_eval(expression: str) -> float | None:
    """Value of an arithmetic expression (numbers, + - * / // % **, parentheses); None otherwise."""
    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 20:
                raise ValueError("exponent too large")
            return _OPS[type(node.op)](left, right)
        raise ValueError(f"not arithmetic: {ast.dump(node)}")
    try:
        value = walk(ast.parse(expression.replace(",", "").replace("x", "*").strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None
    return value if math.isfinite(value) else None


def _key(value: float) -> float:
    return round(value, 6)


def _slipped(value: float, rng: np.random.Generator) -> float:
    """A plausible arithmetic slip of `value`: 1-9 units off (at most half the value, so a small number
    stays small), or one step of its leading decimal place for a decimal."""
    if abs(value - round(value)) < 1e-9:
        delta = float(rng.integers(1, min(9, max(1, int(abs(value)) // 2)) + 1))
    else:
        delta = 10.0 ** math.floor(math.log10(abs(value))) if value else 0.1
    sign = 1.0 if value - delta <= 0 < value or rng.random() < 0.5 else -1.0
    return round(value + sign * delta, 6)


def _replace_numbers(text: str, changed: dict) -> str:
    """Every prose number whose value was changed by the slip, rewritten to its slipped value."""
    def sub(match):
        value = parse_number(match.group(1))
        if value is not None and _key(value) in changed:
            return format_number(changed[_key(value)], match.group(1))
        return match.group(0)
    return NUMBER.sub(sub, text)


def _slip_at(solution: Solution, target: int, rng: np.random.Generator) -> Solution | None:
    """The solution with calculator mark number `target` (0-based over all marks) slipped and the slip
    carried through: later marks whose expression uses a changed value are recomputed, later prose
    numbers equal to a changed value are rewritten, and the final answer follows. None if the mark's
    result is not a number."""
    changed: dict[float, float] = {}
    index = -1
    slip_line = None
    new_steps = []
    for line_no, line in enumerate(solution.steps):
        pieces = re.split(r"(<<[^<>]*>>)", line)       # prose, mark, prose, mark, ...
        out = []
        for piece in pieces:
            if not piece.startswith("<<"):
                # Prose after the slip: values changed so far are rewritten (the slip line's own prose
                # before its mark keeps the right inputs).
                out.append(_replace_numbers(piece, changed) if slip_line is not None else piece)
                continue
            index += 1
            expression, _, result_text = piece[2:-2].rpartition("=")
            result = parse_number(result_text)
            if index < target or result is None:
                out.append(piece)
                if result is not None and slip_line is not None:
                    changed.pop(_key(result), None)
                continue
            if index == target:
                new_result = _slipped(result, rng)
                slip_line = line_no
            else:
                new_expression = _replace_numbers(expression, changed)
                new_result = safe_eval(new_expression) if new_expression != expression else result
                if new_result is None:                  # cannot recompute: leave this step as it was
                    out.append(piece)
                    continue
                new_result = round(new_result, 6)
                expression = new_expression
            if _key(new_result) != _key(result):
                changed[_key(result)] = new_result
            else:                                       # a fresh computation of an unchanged value
                changed.pop(_key(result), None)
            out.append(f"<<{expression}={format_number(new_result, result_text)}>>")
        new_steps.append("".join(out))
    if slip_line is None:
        return None
    final_value = parse_number(solution.final)
    final = solution.final
    if final_value is not None and _key(final_value) in changed:
        final = format_number(changed[_key(final_value)], solution.final)
    return Solution(new_steps, final)


def make_incorrect(solution: Solution, rng: np.random.Generator) -> Solution:
    """An incorrect version of `solution`: an arithmetic slip in one calculator step, carried through
    consistently, with a wrong final answer. Marks are tried in random order until the slip reaches the
    final answer; an answer without such a mark gets its final number (and that number in the last
    reasoning line) slipped instead."""
    n_marks = sum(len(MARK.findall(step)) for step in solution.steps)
    final_value = parse_number(solution.final)
    for target in rng.permutation(n_marks):
        wrong = _slip_at(solution, int(target), rng)
        if wrong is not None and wrong.final != solution.final:
            return wrong
    if final_value is None:
        raise ValueError(f"cannot make an incorrect answer: final answer {solution.final!r} is not a number")
    new_value = _slipped(final_value, rng)
    changed = {_key(final_value): new_value}
    steps = solution.steps[:-1] + [_replace_numbers(solution.steps[-1], changed)]
    return Solution(steps, format_number(new_value, solution.final))


# -----------------------------------------------------------------------------
# the three styles

_LOWER_STARTS = {"The", "This", "That", "These", "Those", "She", "He", "They", "It", "In", "After", "So",
                 "Then", "We", "There", "Each", "With", "If", "To", "For", "Since", "Her", "His", "Their",
                 "A", "An", "Now", "Adding", "Subtracting", "Multiplying", "Dividing", "Thus", "Therefore",
                 "When", "Together", "Both", "All", "One", "At", "On", "From", "By", "Of", "And", "But"}
_CONNECTORS = ("First", "Next", "Then", "After that", "Building on that", "Continuing")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _lower_start(text: str) -> str:
    text = re.sub(r"^(So|Then|Thus|Therefore),? ", "", text)
    text = text[:1].upper() + text[1:]
    first, _, rest = text.partition(" ")
    return (first.lower() + " " + rest) if first in _LOWER_STARTS else text


def render(solution: Solution, style: str) -> str:
    """The response text of `solution` in one of STYLES."""
    steps = [_sentence(clean(step)) for step in solution.steps]
    if style == "concise":
        return " ".join(steps[-2:]) + f" The answer is {solution.final}."
    if style == "detailed_plain":
        sentences = []
        for i, step in enumerate(steps):
            if len(steps) > 1 and i == len(steps) - 1:
                connector = "Finally"
            else:
                connector = _CONNECTORS[min(i, len(_CONNECTORS) - 1)]
            sentences.append(f"{connector}, {_lower_start(step)}")
        return ("Let's work through this problem carefully, one step at a time, so that every "
                "quantity is accounted for.\n\n" + " ".join(sentences) + "\n\n"
                "Putting all of these steps together, we can conclude that the final answer is "
                f"{solution.final}.")
    if style == "detailed_markdown":
        bullets = "\n".join(f"- **Step {i + 1}:** {step}" for i, step in enumerate(steps))
        return ("## Solution\n\nLet's work through this problem step by step.\n\n### Steps\n\n"
                f"{bullets}\n\n### Final Answer\n\nThe answer is **{solution.final}**.")
    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


def question_variants(question_id: str, question: str, answer: str, seed: int = 0) -> list[dict]:
    """The 6 variants of one GSM8K row (3 styles x correct/incorrect), STYLES order, correct first.

    Row: question_id, prompt, style, style_index, correct, response, final_answer."""
    solution = parse_answer(answer)
    rng = np.random.default_rng([seed, *question_id.encode()])
    wrong = make_incorrect(solution, rng)
    rows = []
    for index, style in enumerate(STYLES):
        for correct, sol in ((True, solution), (False, wrong)):
            rows.append({"question_id": question_id, "prompt": question, "style": style,
                         "style_index": index, "correct": correct, "response": render(sol, style),
                         "final_answer": sol.final})
    return rows


def question_pairs(variants: list[dict], question_index: int) -> list[dict]:
    """The pairs of one question's 6 variants for every mode (3 per mode)."""
    table = {(v["style_index"], v["correct"]): v for v in variants}
    first = variants[0]

    def pair(mode, chosen, rejected):
        c, r = table[chosen], table[rejected]
        return {"question_id": first["question_id"], "mode": mode, "prompt": first["prompt"],
                "chosen": c["response"], "rejected": r["response"],
                "chosen_style": c["style"], "rejected_style": r["style"],
                "chosen_correct": c["correct"], "rejected_correct": r["correct"]}

    pairs = []
    for k, (plain, stylish) in enumerate(STYLE_PAIRS):
        correct = (question_index + k) % 2 == 0     # half the style pairs correct, half incorrect
        pairs.append(pair("style", (plain, correct), (stylish, correct)))
    for style in range(len(STYLES)):
        pairs.append(pair("correctness", (style, True), (style, False)))
    for plain, stylish in STYLE_PAIRS:
        pairs.append(pair("cross", (plain, True), (stylish, False)))
    return pairs


def build(rows: list[dict], split: str, seed: int = 0) -> tuple[list[dict], list[dict], list[str]]:
    """GSM8K rows {question, answer[, id]} -> (variants, pairs, skipped question ids with reasons)."""
    variants, pairs, skipped = [], [], []
    for i, row in enumerate(rows):
        question_id = str(row.get("id", f"{split}-{i}"))
        try:
            rows_i = question_variants(question_id, row["question"], row["answer"], seed)
        except (ValueError, KeyError) as error:
            skipped.append(f"{question_id}: {error}")
            continue
        variants += rows_i
        pairs += question_pairs(rows_i, i)
    return variants, pairs, skipped


def read_jsonl(path, remade_by: str) -> list[dict]:
    """The rows of a JSON-lines file; a missing file, or a line that is not a JSON object, exits naming the
    file, the line and the command that remakes it."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist; run `{remade_by}`")
    return [row for _, row in harness.read_jsonl(path, f"run `{remade_by}`")]


def load_pairs(path, mode: str | None = None, remade_by: str = "python build_pairs.py") -> list[dict]:
    """Pairs of a JSONL written by build_pairs.py, optionally only those of one mode."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown pair mode {mode!r}; expected one of {MODES}")
    rows = read_jsonl(path, remade_by)
    if not rows or any(not {"mode", "chosen", "rejected", "prompt"} <= set(r) for r in rows):
        raise SystemExit(f"error: {path} is empty or is not a pairs file of build_pairs.py (rows with mode, prompt, "
                         f"chosen and rejected); run `{remade_by}`")
    return [r for r in rows if mode is None or r["mode"] == mode]
