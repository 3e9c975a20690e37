"""Write llmtune/datasets/preference/{train,eval}.jsonl: made-up preference pairs a small model can learn to tell
apart (prompt, chosen, rejected), from templates with a fixed seed.

Three kinds of pair, each with an answer that does what the prompt asks and one that does not:
  - on topic vs off topic: "Name three fruits." -> three fruits vs three tools
  - format: "Answer with one word: what is the opposite of hot?" -> "Cold." vs a long sentence
  - instruction: "Repeat in capital letters: good morning" -> "GOOD MORNING" vs the phrase unchanged
Eval format and capitals prompts use words and phrases train never has; eval topic answers each name an item
train never uses (the eight categories, and so the topic prompts, are shared).

    python scripts/make_preference_dataset.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "llmtune" / "datasets" / "preference"

CATEGORIES = {
    "fruits": ["apples", "bananas", "cherries", "grapes", "lemons", "mangoes", "oranges", "pears", "plums", "peaches"],
    "colors": ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black", "white"],
    "animals": ["dogs", "cats", "horses", "lions", "tigers", "rabbits", "wolves", "bears", "foxes", "deer"],
    "countries": ["France", "Japan", "Brazil", "Canada", "Egypt", "India", "Italy", "Kenya", "Mexico", "Spain"],
    "vehicles": ["cars", "buses", "trains", "bicycles", "trucks", "boats", "planes", "scooters", "vans", "tractors"],
    "instruments": ["guitars", "pianos", "violins", "drums", "flutes", "trumpets", "cellos", "harps", "clarinets",
                    "banjos"],
    "sports": ["football", "tennis", "golf", "rugby", "cricket", "hockey", "baseball", "volleyball", "boxing",
               "swimming"],
    "tools": ["hammers", "saws", "drills", "wrenches", "pliers", "screwdrivers", "chisels", "shovels", "rakes",
              "axes"],
}
OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("happy", "sad"),
             ("light", "dark"), ("open", "closed"), ("early", "late"), ("full", "empty"), ("hard", "soft"),
             ("old", "new"), ("rich", "poor"), ("wet", "dry"), ("long", "short"), ("high", "low"),
             ("strong", "weak"), ("loud", "quiet"), ("thick", "thin"), ("first", "last"), ("near", "far"),
             ("clean", "dirty"), ("true", "false"), ("win", "lose"), ("inside", "outside")]
PHRASES = ["good morning", "see you soon", "thank you very much", "the sky is blue", "time for lunch",
           "close the door", "happy birthday", "the train is late", "read the book", "call me later",
           "water the plants", "it is raining", "turn off the light", "welcome home", "well done",
           "the shop is open", "bring an umbrella", "the cat is asleep", "lunch is ready", "drive safely",
           "keep it simple", "the meeting starts now", "enjoy your meal", "the door is locked",
           "pack your bags", "the tea is hot", "save the file", "the park is quiet"]


def topic_pairs(rng: random.Random, held_out: bool, n: int) -> list[dict[str, str]]:
    rows = []
    names = list(CATEGORIES)
    for _ in range(n):
        cat, other = rng.sample(names, 2)
        # train draws from the first 7 items of each category, eval from the whole list with one held-out item
        pool = CATEGORIES[cat] if held_out else CATEGORIES[cat][:7]
        items = rng.sample(pool, 3)
        if held_out and not set(items) & set(CATEGORIES[cat][7:]):
            items[0] = rng.choice(CATEGORIES[cat][7:])
        wrong = rng.sample(CATEGORIES[other], 3)
        ask = rng.choice(["Name three {c}.", "List three {c}.", "Give me three {c}.", "Can you name three {c}?"])
        rows.append({"prompt": ask.format(c=cat), "chosen": f"{items[0]}, {items[1]} and {items[2]}.",
                     "rejected": f"{wrong[0]}, {wrong[1]} and {wrong[2]}."})
    return rows


def format_pairs(rng: random.Random, words: list[tuple[str, str]], n: int) -> list[dict[str, str]]:
    rows = []
    for _ in range(n):
        w, opp = rng.choice(words)
        if rng.random() < 0.5:
            w, opp = opp, w
        ask = rng.choice(["Answer with one word: what is the opposite of {w}?",
                          "In a single word, what is the opposite of {w}?"])
        long = rng.choice(["Well, the opposite of {w} is usually said to be {o}, although it depends on context.",
                           "That is a great question! Most people would say that the opposite of {w} is {o}."])
        rows.append({"prompt": ask.format(w=w), "chosen": f"{opp.capitalize()}.",
                     "rejected": long.format(w=w, o=opp)})
    return rows


def caps_pairs(rng: random.Random, phrases: list[str], n: int) -> list[dict[str, str]]:
    rows = []
    for _ in range(n):
        phrase = rng.choice(phrases)
        ask = rng.choice(["Repeat in capital letters: {p}", "Write this in upper case: {p}"])
        rows.append({"prompt": ask.format(p=phrase), "chosen": phrase.upper(), "rejected": phrase})
    return rows


def main() -> None:
    rng = random.Random(1234)
    words, phrases = OPPOSITES[:], PHRASES[:]
    rng.shuffle(words)
    rng.shuffle(phrases)
    eval_words, train_words = words[:6], words[6:]
    eval_phrases, train_phrases = phrases[:7], phrases[7:]
    train = topic_pairs(rng, False, 160) + format_pairs(rng, train_words, 120) + caps_pairs(rng, train_phrases, 120)
    evals = topic_pairs(rng, True, 40) + format_pairs(rng, eval_words, 30) + caps_pairs(rng, eval_phrases, 30)
    rng.shuffle(train)
    rng.shuffle(evals)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", evals)):
        with (OUT / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"{OUT / name}.jsonl: {len(rows)} pairs")


if __name__ == "__main__":
    main()
