"""Write llmtune/datasets/mlm/{train,eval}.jsonl: made-up gazetteer paragraphs for masked-LM continued pretraining.

    python scripts/make_mlm_dataset.py

Each row is one paragraph (`text`) about an invented town: where it lies, what it makes, its weather, its market,
its history. The sentences follow a small set of patterns filled with invented names and seeded random facts, so
a masked word is often predictable from the rest of its paragraph (the river named twice, the trade and its
goods, the season and its weather): a model adapting to this "domain" shows a clear fall in masked-token loss.
Eval paragraphs are about towns that train never names.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "llmtune" / "datasets" / "mlm"

SYLLABLES = ["val", "mor", "ost", "ran", "kel", "by", "dun", "hol", "lis", "pen", "ald", "er", "brack", "cor",
             "van", "fen", "nick", "gal", "har", "low", "isen", "ford", "kars", "mire", "field", "oak", "pel",
             "red", "marsh", "tor", "wick", "ash", "bel", "cray", "dor", "elm", "fair", "glen", "hay", "ives"]
RIVERS = ["Sella", "Orve", "Tamsin", "Brill", "Canna", "Dovey", "Essel", "Farrow", "Glyn", "Hesk", "Ithon", "Kell",
          "Lune", "Meon", "Nadder", "Otter", "Penk", "Rye", "Soar", "Teme", "Usk", "Wey", "Yare", "Alun"]
TRADES = [("weaving", "cloth", "looms", "wool"), ("milling", "flour", "mills", "wheat"),
          ("brewing", "ale", "breweries", "barley"), ("pottery", "pots", "kilns", "clay"),
          ("fishing", "herring", "boats", "nets"), ("mining", "tin", "pits", "ore"),
          ("tanning", "leather", "tanneries", "hides"), ("glassmaking", "glass", "furnaces", "sand"),
          ("shipbuilding", "ships", "yards", "timber"), ("cheesemaking", "cheese", "dairies", "milk")]
SEASONS = [("winter", "snow", "cold"), ("spring", "rain", "mild"), ("summer", "sun", "warm"),
           ("autumn", "fog", "damp")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
DIRECTIONS = ["north", "south", "east", "west"]
FOUNDERS = ["monks", "farmers", "fishermen", "miners", "merchants", "soldiers"]
BUILDINGS = ["church", "bridge", "market hall", "castle", "library", "town hall", "harbour wall", "watermill"]
FEASTS = ["lantern", "harvest", "river", "fire", "apple", "boat"]


def town_name(rng: random.Random) -> str:
    return "".join(rng.sample(SYLLABLES, rng.choice([2, 2, 3]))).capitalize()


def paragraph(rng: random.Random, town: str, other: str) -> str:
    river = rng.choice(RIVERS)
    trade, goods, works, raw = rng.choice(TRADES)
    season, weather, feel = rng.choice(SEASONS)
    day = rng.choice(DAYS)
    direction = rng.choice(DIRECTIONS)
    people = rng.randrange(2, 60) * 100
    year = rng.randrange(900, 1800)
    building = rng.choice(BUILDINGS)
    founders = rng.choice(FOUNDERS)
    feast = rng.choice(FEASTS)
    miles = rng.randrange(3, 40)
    pool = [
        f"{town} is a small town on the river {river}, about {miles} miles {direction} of {other}.",
        f"It has some {people} people, most of whom live close to the {river}.",
        f"The town grew rich from {trade}, and its {works} still stand along the river {river}.",
        f"Every {day} the market of {town} sells {goods}, and traders come from {other} to buy it.",
        f"The {raw} for the {works} is brought in from the hills to the {direction}.",
        f"In {season} the valley of the {river} is often {feel}, and {weather} can close the road to {other}.",
        f"The old {building} was built in {year} and is the pride of {town}.",
        f"{town} was founded by {founders} who settled beside the {river} before {year}.",
        f"Each {season} the people of {town} hold the {feast} feast, with music on the {building} steps.",
        f"Visitors say the {goods} of {town} is the best in the whole valley of the {river}.",
        f"A road runs {direction} from {town} to {other}, crossing the {river} by a stone bridge.",
        f"When {trade} declined, many families left {town} for {other}, but the {works} kept working.",
    ]
    first = pool[0]
    rest = rng.sample(pool[1:], rng.randrange(3, 7))
    return " ".join([first, *rest])


def build(rng: random.Random, towns: list[str], per_town: int) -> list[dict[str, str]]:
    rows = []
    for town in towns:
        for _ in range(per_town):
            other = rng.choice([t for t in towns if t != town])
            rows.append({"text": paragraph(rng, town, other)})
    rng.shuffle(rows)
    return rows


def main() -> None:
    rng = random.Random(20261201)
    names: list[str] = []
    while len(names) < 140:
        n = town_name(rng)
        if n not in names:
            names.append(n)
    train = build(rng, names[:120], 6)
    evals = build(rng, names[120:], 5)
    OUT.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("eval", evals)):
        with (OUT / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{split}: {len(rows)} paragraphs")


if __name__ == "__main__":
    main()
