"""The project's own questions for replicating SVD on one machine: two-step arithmetic word problems.

Run as:  python scripts/make_questions.py [--seed 24] [--out data] [--check]

Writes, deterministically from --seed, three disjoint sets of {"id", "question", "answer"} rows:
  replicate_seeds.jsonl   the seed questions (their answers feed only the report's judge precision table)
  replicate_select.jsonl  a selection split, for choosing settings without touching the eval set
  replicate_eval.jsonl    the held-out eval set

Each question takes two operations on small numbers ("A shop has 37 apples and sells 12, then buys
25. How many apples does it have now?"): SmolLM2-135M-Instruct solves such questions some of the time
but not always, so there is room both for its judges to sort right from wrong and for fine-tuning to
help. No question appears in two sets (compared as the seed loader compares questions: up to case
and whitespace); the script refuses to write sets that overlap. --check regenerates the sets and
exits 1 unless the files in --out hold exactly them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZES = {"seeds": 600, "select": 100, "eval": 300}

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mateo", "Nora"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "beads"]


def _a_minus_b_plus_c(r: random.Random) -> tuple[int, int, int]:
    a = r.randint(20, 99)
    return a, r.randint(2, a - 1), r.randint(2, 60)


def _a_minus_b_minus_c(r: random.Random) -> tuple[int, int, int]:
    a = r.randint(30, 99)
    b = r.randint(2, a - 12)
    return a, b, r.randint(2, a - b - 1)


def _a_times_b_minus_c(r: random.Random) -> tuple[int, int, int]:
    a, b = r.randint(3, 12), r.randint(3, 12)
    return a, b, r.randint(1, a * b - 1)


def _a_times_b_plus_c(r: random.Random) -> tuple[int, int, int]:
    return r.randint(3, 12), r.randint(3, 12), r.randint(2, 50)


# (template, how its three numbers are drawn, the answer); {n} a name, {i} an item
TEMPLATES = [
    ("A shop has {a} {i} and sells {b}, then buys {c} more. How many {i} does the shop have now?", _a_minus_b_plus_c,
     lambda a, b, c: a - b + c),
    ("{n} has {a} {i}, gives {b} to a friend and then finds {c} more. How many {i} does {n} have now?",
     _a_minus_b_plus_c, lambda a, b, c: a - b + c),
    ("A bus carries {a} passengers. At the first stop {b} get off and {c} get on. How many passengers are on the "
     "bus now?", _a_minus_b_plus_c, lambda a, b, c: a - b + c),
    ("{n} had {a} dollars, spent {b} dollars on lunch and {c} dollars on a book. How many dollars does {n} have "
     "left?", _a_minus_b_minus_c, lambda a, b, c: a - b - c),
    ("A jar holds {a} {i}. {n} takes out {b} and then {c} more. How many {i} are left in the jar?",
     _a_minus_b_minus_c, lambda a, b, c: a - b - c),
    ("A box holds {a} {i}. {n} buys {b} boxes and gives away {c} {i}. How many {i} does {n} have left?",
     _a_times_b_minus_c, lambda a, b, c: a * b - c),
    ("A hall has {a} rows of {b} chairs, and {c} chairs are taken. How many chairs are free?", _a_times_b_minus_c,
     lambda a, b, c: a * b - c),
    ("{n} reads {a} pages a day for {b} days, then {c} more pages. How many pages has {n} read in all?",
     _a_times_b_plus_c, lambda a, b, c: a * b + c),
    ("A farmer packs {a} bags with {b} {i} each and has {c} {i} left over. How many {i} did the farmer have?",
     _a_times_b_plus_c, lambda a, b, c: a * b + c),
    ("What is {a} - {b} + {c}?", _a_minus_b_plus_c, lambda a, b, c: a - b + c),
    ("What is {a} times {b} minus {c}?", _a_times_b_minus_c, lambda a, b, c: a * b - c),
]  # fmt: skip


def same_question(question: str) -> str:
    """What two questions share when the seed loader counts them as one (case and whitespace aside)."""
    return " ".join(question.split()).casefold()


def make(seed: int, sizes: dict[str, int] = SIZES) -> dict[str, list[dict]]:
    """The three sets, drawn from one stream so that no question is drawn twice."""
    r = random.Random(seed)
    seen: set[str] = set()
    questions = []
    while len(questions) < sum(sizes.values()):
        template, draw, solve = TEMPLATES[r.randrange(len(TEMPLATES))]
        a, b, c = draw(r)
        question = template.format(a=a, b=b, c=c, n=r.choice(NAMES), i=r.choice(ITEMS))
        if same_question(question) in seen:
            continue
        seen.add(same_question(question))
        questions.append((question, str(solve(a, b, c))))
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = [
            {"id": f"replicate-{name}-{k:04d}", "question": q, "answer": a}
            for k, (q, a) in enumerate(questions[start : start + size])
        ]
        start += size
    check_disjoint(out)
    return out


def check_disjoint(sets: dict[str, list[dict]]) -> None:
    """ValueError naming the first question found in two sets (or twice in one)."""
    where: dict[str, str] = {}
    for name, rows in sets.items():
        for row in rows:
            key = same_question(row["question"])
            if key in where:
                raise ValueError(f"question {row['question']!r} is in {where[key]} and in {name}")
            where[key] = name


def path_of(out: Path, name: str) -> Path:
    return out / f"replicate_{name}.jsonl"


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--out", type=Path, default=REPO / "data")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the files in --out are what --seed makes")
    args = parser.parse_args(argv)
    sets = make(args.seed)
    if args.check:
        stale = [str(path_of(args.out, n)) for n, rows in sets.items() if not _holds(path_of(args.out, n), rows)]
        if stale:
            print(f"not what --seed {args.seed} makes: {', '.join(stale)}", file=sys.stderr)
            return 1
        loaded = {n: [json.loads(line) for line in path_of(args.out, n).open()] for n in sets}
        check_disjoint(loaded)
        print(f"ok: {', '.join(f'{n} {len(rows)}' for n, rows in loaded.items())}, no question in two sets")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in sets.items():
        path_of(args.out, name).write_text(render(rows))
        print(f"{path_of(args.out, name)}: {len(rows)} questions")
    return 0


def _holds(path: Path, rows: list[dict]) -> bool:
    return path.is_file() and path.read_text() == render(rows)


if __name__ == "__main__":
    sys.exit(main())
