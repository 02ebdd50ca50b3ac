"""The task families of ``builtin:instructions`` (all but ``refusal``, which lives in ``safety``).

Each family is ``fn(rng, count) -> list of SFT examples`` with distinct ids. An id spells out
what the example is made of (``arithmetic:add:17:25:t3`` = 17 + 25 in phrasing 3), so two
examples with one id would be the same conversation: a family draws until it has ``count``
distinct ids, and the held-out split, which hashes ids, can never put one conversation on both
sides. Everything is sized for a tiny model: one short question, a short answer.

This module only builds examples; ``builtin`` mixes the families and splits them.
"""
from __future__ import annotations

import hashlib
import random
from typing import Callable

from shared.data.documents import DataError
from shared.data.instructions.docs import module_summaries
from shared.data.instructions.facts import TABLES
from shared.data.instructions.schema import sft_example, tool_call_json

Draw = Callable[[random.Random], dict]
MAX_DRAWS_PER_EXAMPLE = 20
SEARCH_RESULT_CHARS = 72  # tool results repeat in the final answer: keep both short

WORDS = tuple("""
    apple table river house green music water light stone cloud bread chair plant happy dream
    tiger piano ocean paper clock smile train bird fish tree book door window garden summer winter
    spring autumn orange yellow purple silver golden rabbit monkey zebra lemon mango cherry grape
    melon pepper salt sugar honey coffee butter cheese pizza pasta rice soup salad cookie candy
    python code data list string number value method class object module import return print loop
    error test file folder path token model layer query search answer simple little quick brown
    jump lazy sleep dance sing write read speak listen think learn teach build paint cook drive
    swim climb run walk fly star moon sun planet comet rocket earth fire wind snow rain storm
    """.split())
NAMES = ("Ada", "Alan", "Grace", "Linus", "Guido", "Maria", "Omar", "Priya", "Chen", "Sofia", "Tom",
         "Lena", "Ravi", "Yuki", "Noah", "Emma", "Ivan", "Zara", "Kofi", "Mia")
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "black", "white", "brown", "gray")
ACKS = ("Noted.", "Got it.", "OK.", "Okay, I will remember that.")


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def call(name: str, **arguments: str) -> dict:
    return {"role": "assistant", "content": "", "tool_call": {"name": name, "arguments": arguments}}


def tool(text: str) -> dict:
    return {"role": "tool", "content": text}


def qa(example_id: str, task: str, question: str, answer: str, kind: str = "exact") -> dict:
    """A one-question example whose target is ``answer``."""
    return sft_example(example_id, task, [user(question), assistant(answer)], kind, answer)


def phrase(rng: random.Random, templates: tuple[str, ...], **slots: object) -> tuple[int, str]:
    """A random template's index and its text with ``slots`` filled, first letter capitalized."""
    k = rng.randrange(len(templates))
    text = templates[k].format(**slots)
    return k, text[:1].upper() + text[1:]


def draw_unique(task: str, count: int, draw: Draw, rng: random.Random) -> list[dict]:
    """``count`` examples with distinct ids from ``draw``; an error if the family runs dry."""
    examples: dict[str, dict] = {}
    for _ in range(count * MAX_DRAWS_PER_EXAMPLE):
        if len(examples) >= count:
            break
        example = draw(rng)
        examples.setdefault(example["id"], example)
    if len(examples) < count:
        raise DataError(f"task {task!r} found only {len(examples)} distinct examples of the {count} asked for; "
                        "lower n (the number of generated examples)")
    return list(examples.values())


def mixture(*parts: tuple[float, Draw]) -> Draw:
    """A draw that picks one of ``parts`` (weight, draw) at random, by weight."""
    weights = [w for w, _ in parts]
    draws = [d for _, d in parts]
    return lambda rng: rng.choices(draws, weights)[0](rng)


# ---------------------------------------------------------------- arithmetic

ARITHMETIC = {
    "add": (lambda a, b: a + b, ("What is {a} + {b}?", "{a} + {b} = ?", "Compute {a} plus {b}.", "Add {a} and {b}.",
                                 "What is the sum of {a} and {b}?", "Calculate {a} + {b}.")),
    "sub": (lambda a, b: a - b, ("What is {a} - {b}?", "{a} - {b} = ?", "Compute {a} minus {b}.",
                                 "Subtract {b} from {a}.", "What is {a} take away {b}?", "Calculate {a} - {b}.")),
    "mul": (lambda a, b: a * b, ("What is {a} * {b}?", "{a} times {b}?", "Multiply {a} by {b}.",
                                 "What is the product of {a} and {b}?", "Compute {a} x {b}.", "Calculate {a} * {b}.")),
}


def _arithmetic(rng: random.Random) -> dict:
    op = rng.choice(sorted(ARITHMETIC))
    if op == "mul":
        a, b = rng.randint(2, 20), rng.randint(2, 12)
    else:
        a, b = sorted((rng.randint(0, 99), rng.randint(0, 99)), reverse=op == "sub")  # no negatives
    fn, templates = ARITHMETIC[op]
    k, question = phrase(rng, templates, a=a, b=b)
    return qa(f"arithmetic:{op}:{a}:{b}:t{k}", "arithmetic", question, str(fn(a, b)))


def arithmetic(rng: random.Random, count: int) -> list[dict]:
    return draw_unique("arithmetic", count, _arithmetic, rng)


# ---------------------------------------------------------------- string

STRING_OPS = {
    "reverse": (lambda w: w[::-1], "exact", ("Reverse the word '{w}'.", "What is '{w}' spelled backwards?",
                                             "Spell {w} backwards.", "Write {w} in reverse.")),
    "upper": (str.upper, "exact_case", ("Write '{w}' in uppercase.", "Uppercase the word {w}.",
                                        "What is {w} in capital letters?")),
    "length": (lambda w: str(len(w)), "exact", ("How many letters are in '{w}'?", "Count the letters in {w}.",
                                                "How long is the word {w}?")),
    "first": (lambda w: w[0], "exact", ("What is the first letter of '{w}'?", "First letter of {w}?",
                                        "Which letter does {w} start with?")),
    "last": (lambda w: w[-1], "exact", ("What is the last letter of '{w}'?", "Last letter of {w}?",
                                        "Which letter does {w} end with?")),
}
LOWER_TEMPLATES = ("Write '{w}' in lowercase.", "Lowercase the word {w}.", "What is {w} in small letters?")
COUNT_TEMPLATES = ("How many times does '{c}' appear in '{w}'?", "Count the letter {c} in {w}.",
                   "How many {c}'s are in the word {w}?")


def _string_op(rng: random.Random) -> dict:
    op = rng.choice(sorted(STRING_OPS))
    word = rng.choice(WORDS)
    fn, kind, templates = STRING_OPS[op]
    k, question = phrase(rng, templates, w=word)
    return qa(f"string:{op}:{word}:t{k}", "string", question, fn(word), kind)


def _string_lower(rng: random.Random) -> dict:
    word = rng.choice(WORDS)
    shown = rng.choice((word.upper(), word.capitalize()))
    k, question = phrase(rng, LOWER_TEMPLATES, w=shown)
    return qa(f"string:lower:{shown}:t{k}", "string", question, word, "exact_case")


def _string_count(rng: random.Random) -> dict:
    word = rng.choice(WORDS)
    letter = rng.choice(word) if rng.random() < 0.8 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    k, question = phrase(rng, COUNT_TEMPLATES, w=word, c=letter)
    return qa(f"string:count:{letter}:{word}:t{k}", "string", question, str(word.count(letter)))


def string(rng: random.Random, count: int) -> list[dict]:
    draw = mixture((5.0, _string_op), (1.0, _string_lower), (1.0, _string_count))
    return draw_unique("string", count, draw, rng)


# ---------------------------------------------------------------- facts


def facts(rng: random.Random, count: int) -> list[dict]:
    """Every fact in turn, each round in a new phrasing, so each fact is asked 2-3 ways.

    Round-robin rather than random draws: a held-out question then almost always has a train
    twin asking the same fact in other words, which is what makes it learnable and fair.
    """
    items = [(table, subject, answer) for table in TABLES for subject, answer in table.rows]
    rng.shuffle(items)
    orders = [rng.sample(range(len(table.templates)), len(table.templates)) for table, _, _ in items]
    examples = []
    for round_ in range(max(len(t.templates) for t in TABLES)):
        for (table, subject, answer), order in zip(items, orders):
            if round_ >= len(order):
                continue
            k = order[round_]
            text = table.templates[k].format(s=subject)
            slug = subject.lower().replace(" ", "_")
            examples.append(qa(f"facts:{table.name}:{slug}:t{k}", "facts", text[:1].upper() + text[1:], answer))
            if len(examples) == count:
                return examples
    raise DataError(f"task 'facts' has only {len(examples)} distinct questions, fewer than the {count} asked for; "
                    "lower n or add rows to shared/data/instructions/facts.py")


# ---------------------------------------------------------------- docs

DOCS_TEMPLATES = ("What does the {m} module do?", "What is the {m} module for?", "Describe the {m} module.",
                  "Summarize the Python module {m}.", "What is {m} in the standard library?")


def _docs(rng: random.Random) -> dict:
    summaries = module_summaries()
    module = rng.choice(sorted(summaries))
    k, question = phrase(rng, DOCS_TEMPLATES, m=module)
    return qa(f"docs:{module}:t{k}", "docs", question, summaries[module], "none")


def docs(rng: random.Random, count: int) -> list[dict]:
    return draw_unique("docs", count, _docs, rng)


# ---------------------------------------------------------------- tool

CALC_TEMPLATES = ("Use the calculator: {e}", "Calculate {e} with the calculator.",
                  "Use the calculator tool to work out {e}.", "What is {e}? Use the calculator.")
SEARCH_TEMPLATES = ("Search the docs for {q}.", "Look up {q} in the Python docs.", "Use search_docs to find {q}.",
                    "Find the documentation of {q}.")


# The id's short tool name -> the tool the example calls, and the argument its question fills in.
TOOL_NAMES = {"calc": "calculator", "search": "search_docs"}
TOOL_ARGUMENTS = {"calc": "expression", "search": "query"}


def _expression(rng: random.Random) -> tuple[str, int]:
    a, b, op = rng.randint(10, 999), rng.randint(10, 999), rng.choice("+-*")
    return f"{a} {op} {b}", {"+": a + b, "-": a - b, "*": a * b}[op]


# A product beyond the times table (the arithmetic family's mul stops at 20 x 12), asked plainly, is
# also the calculator's job: the model learns to reach for the tool instead of guessing digits.
IMPLICIT_CALC_TEMPLATES = ("What is {e}?", "{e} = ?", "Calculate {e}.", "what is {e}")


def _implicit_product(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(13, 99), rng.randint(13, 99)
    return (f"{a} * {b}" if rng.random() < 0.5 else f"{a}*{b}"), a * b


def is_full_tool_example(question_key: str) -> bool:
    """Whether the tool question ``question_key`` (``tool:<tool>:<argument>:t<k>``) is a full example.

    About half of the questions are full (call, tool result, final answer), the rest call-only,
    and which is decided by a hash of the question alone, never drawn: each question is then one
    example under one id. Drawn at random, one question could become both a call-only and a full
    example, under two ids the held-out split hashes independently, and ``tool_use`` (which asks
    only the question) would then ask a question SFT trains on.
    """
    return hashlib.sha256(f"tool-variant\x00{question_key}".encode("utf-8")).digest()[0] < 128


def _tool_example(tool_name: str, argument: str, k: int, question: str, result: str) -> dict:
    """The question's one example: the call alone, or the call, its ``result`` and an answer repeating it."""
    full = is_full_tool_example(f"tool:{tool_name}:{argument}:t{k}")
    turns = [user(question), call(TOOL_NAMES[tool_name], **{TOOL_ARGUMENTS[tool_name]: argument})]
    example_id = f"tool:{tool_name}{'_full' if full else ''}:{argument}:t{k}"
    if not full:
        return sft_example(example_id, "tool", turns, "tool_call", tool_call_json(turns[-1]["tool_call"]))
    turns += [tool(result), assistant(result)]
    return sft_example(example_id, "tool", turns, "exact", result)


def _calc(rng: random.Random) -> dict:
    if rng.random() < 0.3:
        expression, value = _implicit_product(rng)
        k, question = phrase(rng, IMPLICIT_CALC_TEMPLATES, e=expression)
        k += len(CALC_TEMPLATES)
    else:
        expression, value = _expression(rng)
        k, question = phrase(rng, CALC_TEMPLATES, e=expression)
    return _tool_example("calc", expression, k, question, str(value))


def _search(rng: random.Random) -> dict:
    summaries = module_summaries(SEARCH_RESULT_CHARS)
    module = rng.choice(sorted(summaries))
    k, question = phrase(rng, SEARCH_TEMPLATES, q=module)
    return _tool_example("search", module, k, question, summaries[module])


def tools(rng: random.Random, count: int) -> list[dict]:
    """Calculator (60%) and search_docs (40%) questions, each one example (see ``is_full_tool_example``)."""
    return draw_unique("tool", count, mixture((6.0, _calc), (4.0, _search)), rng)


# ---------------------------------------------------------------- multiturn

NUMBER_QUESTIONS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
RECALL = {  # kind: (statement, reply, question, values)
    "name": ("My name is {v}.", "Nice to meet you, {v}.", "What is my name?", NAMES),
    "color": ("My favorite color is {v}.", "{v} is a nice color.", "What is my favorite color?", COLORS),
    "word": ("Remember the word {v}.", "OK, I will remember {v}.", "Which word did I ask you to remember?", WORDS),
}


def _number_question(rng: random.Random) -> dict:
    op = rng.choice(sorted(NUMBER_QUESTIONS))
    a, b = rng.randint(1, 50), rng.randint(1, 9 if op == "times" else 50)
    if op == "minus":
        a, b = max(a, b), min(a, b)
    ack = rng.randrange(len(ACKS))
    turns = [user(f"My number is {a}."), assistant(ACKS[ack]), user(f"What is my number {op} {b}?")]
    answer = str(NUMBER_QUESTIONS[op](a, b))
    return sft_example(f"multiturn:number:{a}:{op}:{b}:a{ack}", "multiturn", [*turns, assistant(answer)],
                       "exact", answer)


def _running_total(rng: random.Random) -> dict:
    a, b, c = rng.randint(1, 30), rng.randint(1, 30), rng.randint(1, 30)
    turns = [user(f"My number is {a}."), assistant(rng.choice(ACKS)), user(f"Add {b} to it."),
             assistant(str(a + b)), user(f"Now add {c}."), assistant(str(a + b + c))]
    return sft_example(f"multiturn:total:{a}:{b}:{c}", "multiturn", turns, "exact", str(a + b + c))


def _recall(rng: random.Random) -> dict:
    kind = rng.choice(sorted(RECALL))
    statement, reply, question, values = RECALL[kind]
    value = rng.choice(values)
    reverse = kind == "word" and rng.random() < 0.5  # the answer needs the word *and* an operation
    question, answer = ("Spell that word backwards.", value[::-1]) if reverse else (question, value)
    text = reply.format(v=value)
    turns = [user(statement.format(v=value)), assistant(text[:1].upper() + text[1:]), user(question)]
    return sft_example(f"multiturn:{kind}:{value}:{'rev' if reverse else 'same'}", "multiturn",
                       [*turns, assistant(answer)], "exact", answer)


def multiturn(rng: random.Random, count: int) -> list[dict]:
    draw = mixture((2.0, _number_question), (1.0, _running_total), (1.0, _recall))
    return draw_unique("multiturn", count, draw, rng)
