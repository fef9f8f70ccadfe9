"""The embedded default task: generated multi-step arithmetic word problems.

Needs no download, and every answer is an exact integer, so the whole loop runs anywhere.
Problem number j is drawn from its own random generator seeded by (BASE_SEED, j), where
j = cfg.arithmetic.seed_offset + i. So problem j never depends on `count`, asking for more
problems keeps the earlier ones, and the same id always means the same problem. A held-out
set needs a `seed_offset` at least as large as the training set's count (e.g. 1_000_000),
or the two share problems.

`run.seed` is not used: a task sees only its own config section, and the problem set should
not change when only the sampling seed does.
"""

from __future__ import annotations

import random
from typing import Iterator

from selfimprove.pipeline.tasks import SourceRow, Task, TaskProblem, register, require

BASE_SEED = 1_000_003

NAMES = [
    ("Ava", "she"), ("Ben", "he"), ("Chloe", "she"), ("David", "he"), ("Emma", "she"),
    ("Finn", "he"), ("Grace", "she"), ("Hugo", "he"), ("Isla", "she"), ("Jack", "he"),
    ("Lily", "she"), ("Leo", "he"), ("Mia", "she"), ("Noah", "he"), ("Olivia", "she"),
    ("Omar", "he"), ("Priya", "she"), ("Sam", "he"), ("Sofia", "she"), ("Tom", "he"),
]
OBJECTS = [
    ("apple", "apples"), ("marble", "marbles"), ("sticker", "stickers"), ("pencil", "pencils"),
    ("cookie", "cookies"), ("stamp", "stamps"), ("shell", "shells"), ("coin", "coins"),
    ("card", "cards"), ("bead", "beads"), ("balloon", "balloons"), ("book", "books"),
    ("crayon", "crayons"), ("button", "buttons"), ("toy car", "toy cars"),
]
ADD = ["{P} buys {n} more {obj}.", "{P} finds {n} more {obj}.", "{P} gets {n} more {obj} from a friend."]
SUBTRACT = ["{P} gives {n} {obj} to a friend.", "{P} loses {n} {obj}.", "{P} sells {n} {obj}."]
MULTIPLY = "Now {p} has {n} times as many {objs} as before."
SHARE = "{P} splits the {objs} equally into {n} {boxes} and keeps one {box}."
BOXES = [("bag", "bags"), ("box", "boxes"), ("pile", "piles"), ("jar", "jars")]


def make_problem(j: int, min_steps: int, max_steps: int, max_digits: int) -> dict:
    """Problem number j: a start amount, then `steps` operations, then the question.

    Amounts in the text have at most `digits` digits (the start exactly that many);
    multipliers are 2-5 and divisors 2-9 and always divide exactly. The running total
    stays >= 1, so no answer is negative or zero.
    """
    rng = random.Random(BASE_SEED * 2**32 + j)
    steps = rng.randint(min_steps, max_steps)
    digits = rng.randint(1, max_digits)
    top = 10**digits - 1
    name, pronoun = rng.choice(NAMES)
    one, many = rng.choice(OBJECTS)

    def noun(n: int) -> str:
        return one if n == 1 else many

    total = rng.randint(max(2, 10 ** (digits - 1)), top)
    sentences = [f"{name} has {total} {noun(total)}."]
    for _ in range(steps):
        divisors = [k for k in range(2, 10) if total % k == 0]
        ops = ["add", "multiply"] + (["subtract"] if total >= 2 else []) + (["share"] if divisors else [])
        op = rng.choice(ops)
        if op == "add":
            n = rng.randint(1, top)
            total += n
            text = rng.choice(ADD).format(P=pronoun.capitalize(), n=n, obj=noun(n))
        elif op == "subtract":
            n = rng.randint(1, min(total - 1, top))
            total -= n
            text = rng.choice(SUBTRACT).format(P=pronoun.capitalize(), n=n, obj=noun(n))
        elif op == "multiply":
            n = rng.randint(2, 5)
            total *= n
            text = MULTIPLY.format(p=pronoun, n=n, objs=many)
        else:
            n = rng.choice(divisors)
            total //= n
            box, boxes = rng.choice(BOXES)
            text = SHARE.format(P=pronoun.capitalize(), n=n, objs=many, box=box, boxes=boxes)
        sentences.append(text)
    sentences.append(f"How many {many} does {name} have now?")
    return {"question": " ".join(sentences), "answer": str(total), "steps": steps, "digits": digits}


@register
class ArithmeticTask(Task):
    name = "arithmetic"
    default_verifier = "numeric"
    # Measured on SmolLM2-135M-Instruct: this short form gets ~13% of samples right on the
    # default mix; "where N is a number" phrasings made it write "The answer is N" literally.
    default_user_prompt = '{question}\nThink step by step. Finish with "The answer is <number>."'

    def rows(self) -> Iterator[SourceRow]:
        a = self.cfg.arithmetic
        count = min(a.count, self.cfg.limit or a.count)
        for i in range(count):
            j = a.seed_offset + i
            problem = make_problem(j, a.min_steps, a.max_steps, a.max_digits)
            yield SourceRow(i, {"id": f"arith-{j}", **problem})

    def to_problem(self, data: dict) -> TaskProblem:
        return TaskProblem(
            question=require(data, "question"),
            answer=require(data, "answer"),
            id=require(data, "id"),
            metadata={"steps": data.get("steps"), "digits": data.get("digits")},
        )
