"""Write llmtune/datasets/pairs/{train,eval}.jsonl: made-up (anchor, positive) pairs for sentence-embedding training.

    python scripts/make_embedding_dataset.py

Each anchor is a question about one fact of an invented town (its river, trade, market day, founders, feast...),
and its positive is the gazetteer sentence that answers it, worded differently. Towns share rivers, trades and days,
so a question is matched by the town and the relation together, not by one word. Eval towns never occur in train.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_mlm_dataset import DAYS, FEASTS, FOUNDERS, RIVERS, TRADES, town_name  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "llmtune" / "datasets" / "pairs"


def facts(rng: random.Random, town: str) -> list[tuple[str, str]]:
    river = rng.choice(RIVERS)
    trade, goods, works, raw = rng.choice(TRADES)
    day = rng.choice(DAYS)
    founders = rng.choice(FOUNDERS)
    feast = rng.choice(FEASTS)
    people = rng.randrange(2, 60) * 100
    year = rng.randrange(900, 1800)
    return [
        (rng.choice([f"Which river flows through {town}?", f"What river is {town} on?"]),
         f"{town} stands on the banks of the {river}."),
        (rng.choice([f"How did {town} become wealthy?", f"What trade made {town} rich?"]),
         f"The wealth of {town} came from {trade}, and its {works} still work today."),
        (rng.choice([f"When is market day in {town}?", f"On which day does {town} hold its market?"]),
         f"Traders gather in {town} every {day} to sell {goods}."),
        (rng.choice([f"Who founded {town}?", f"Who were the first settlers of {town}?"]),
         f"{town} was first settled by {founders} some time before {year}."),
        (rng.choice([f"What festival does {town} celebrate?", f"Which feast is held in {town}?"]),
         f"Once a year {town} celebrates its {feast} feast with music and dancing."),
        (rng.choice([f"How many people live in {town}?", f"What is the population of {town}?"]),
         f"Around {people} people make their home in {town}."),
        (rng.choice([f"What raw material do the {works} of {town} use?", f"Where does {town} get its {raw}?"]),
         f"The {works} of {town} are supplied with {raw} from the surrounding hills."),
    ]


def main() -> None:
    rng = random.Random(20261202)
    names: list[str] = []
    while len(names) < 130:
        n = town_name(rng)
        if n not in names:
            names.append(n)
    OUT.mkdir(parents=True, exist_ok=True)
    for split, towns in (("train", names[:100]), ("eval", names[100:])):
        rows = [{"anchor": q, "positive": a} for t in towns for q, a in facts(rng, t)]
        rng.shuffle(rows)
        with (OUT / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{split}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
