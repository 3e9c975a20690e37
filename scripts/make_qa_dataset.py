"""Write llmtune/datasets/qa/{train,eval}.jsonl: made-up passages with extractive questions (SQuAD's flat form).

    python scripts/make_qa_dataset.py

Every name, place and number is invented and drawn at random (seeded), so the facts cannot be known in advance:
the model has to read them. Each passage mixes several facts of the same kind (two years, two towns, two people)
and filler sentences, so a question is answered by the relation it asks about, not by the type of its answer.
Passages of several lengths, some longer than one 192-token window, put answers in later windows too.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "llmtune" / "datasets" / "qa"

FIRST = ["Ada", "Tomas", "Ilse", "Marek", "Noor", "Priya", "Kofi", "Elena", "Jonas", "Mirela", "Oskar", "Leila",
         "Dmitri", "Hana", "Rafael", "Sunita", "Emil", "Aiko", "Bruno", "Farah", "Greta", "Idris", "Juno", "Karim",
         "Lena", "Matteo", "Nadia", "Olek", "Paula", "Quentin", "Rosa", "Stefan", "Talia", "Umar", "Vera", "Wim",
         "Yara", "Zoltan", "Beatrix", "Cyrus"]
LAST = ["Varga", "Lindqvist", "Okafor", "Brandt", "Castell", "Moreau", "Haldane", "Petrova", "Ruiz", "Sato",
        "Novak", "Achebe", "Falk", "Grimaldi", "Holm", "Ivers", "Jansen", "Kowal", "Laurent", "Mendes", "Nakamura",
        "Olsen", "Pereira", "Quist", "Rasmussen", "Silva", "Toivonen", "Urquhart", "Vidal", "Weiss", "Yilmaz",
        "Zeller", "Abara", "Bergstrom", "Cole", "Duarte", "Eklund", "Ferreira", "Gallo", "Hartmann"]
TOWNS = ["Velmora", "Ostrand", "Kelby Falls", "Marrowgate", "Dunhollow", "Lisk", "Penrith Cove", "Aldermoor",
         "Brackwater", "Corvanne", "Eastmere", "Fennick", "Galloway Rise", "Harlow Bay", "Isenford", "Juniper Hill",
         "Karsby", "Lowden", "Mirefield", "Northam Cross", "Oakhaven", "Pellin", "Quarry Vale", "Redmarsh",
         "Saltcombe", "Thornbury", "Ulverston Reach", "Vantry", "Westerly", "Yarrowick", "Zennor Point", "Ashby Dell",
         "Blythmoor", "Caddon", "Drover's End", "Elmstead", "Fairloch", "Greywater", "Hollins", "Ivybridge Minor"]
RIVERS = ["Tamsel", "Orrin", "Velde", "Caskin", "Brennow", "Ilva", "Marle", "Sorrow Creek", "Atten", "Dunwe"]
MOUNTAINS = ["Mount Keral", "the Sable Peak", "Mount Orvo", "the Grey Tooth", "Mount Isolde", "the Hollow Crown",
             "Mount Vettar", "the Lantern Ridge"]
PREFIX = ["Bright", "North", "Quill", "Silver", "Iron", "Cedar", "Blue", "Harbor", "Summit", "Copper", "Lumen",
          "Stone", "Maple", "Falcon", "Ember"]
SUFFIX = ["well", "vane", "stack", "field", "gate", "works", "line", "crest", "forge", "path"]
KINDS = [("robotics", "warehouse robot"), ("food", "oat biscuit"), ("textile", "rain jacket"),
         ("software", "scheduling app"), ("bicycle", "folding bicycle"), ("toy", "wooden puzzle"),
         ("solar energy", "solar kettle"), ("medical device", "pocket thermometer"), ("furniture", "standing desk"),
         ("audio", "studio microphone"), ("shipping", "cargo drone"), ("coffee", "cold brew concentrate")]
PROFESSIONS = ["teacher", "nurse", "carpenter", "pilot", "chemist", "journalist", "baker", "engineer", "librarian",
               "architect", "farmer", "photographer"]
SUBJECTS = ["botany", "mathematics", "music", "economics", "geology", "medicine", "law", "history", "astronomy",
            "linguistics", "chemistry", "painting"]
WORKS = ["The Salt Road", "A Lantern in Winter", "Notes from the Harbor", "The Glass Orchard", "Seven Quiet Rivers",
         "The Cartographer's Daughter", "Iron and Feathers", "The Long Tide", "Songs for an Empty House",
         "The Winter Atlas"]
FESTIVALS = ["lantern festival", "cheese fair", "kite festival", "boat race", "harvest market", "folk music week",
             "chess tournament", "apple fair"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
MATERIALS = ["copper wire", "bamboo", "recycled glass", "cork", "aluminium", "hemp fibre", "clay", "walnut wood"]
DEVICES = ["a water pump", "a sewing machine", "a weather clock", "a seed drill", "a printing press", "a hand loom",
           "a lamp", "a music box"]
PURPOSES = ["to irrigate vineyards", "to sort letters", "to warn fishermen of storms", "to weigh grain",
            "to teach children to read", "to measure rainfall", "to light mine shafts", "to cool milk"]
FILLER = [
    "The surrounding area is mostly farmland, with small woods along the old roads.",
    "Local newspapers covered the story for several weeks.",
    "Visitors often remark on the quiet streets and the painted shutters of the older houses.",
    "Historians still disagree about some of the details.",
    "A small museum near the station keeps photographs from that period.",
    "The winters there are long, and the summers are short but bright.",
    "Several of the original buildings were later turned into flats.",
    "Records from the time are incomplete, because a fire destroyed part of the archive.",
    "The regional railway reached the area only decades later.",
    "Today the site is marked by a modest plaque.",
]


class Passage:
    """Sentences built from templates; remembers where each fact landed, so answer_start is exact."""

    def __init__(self) -> None:
        self.sentences: list[tuple[str, dict[str, tuple[int, str]]]] = []

    def add(self, template: str, **values: str) -> None:
        text, spans = "", {}
        for literal, field, _, _ in string.Formatter().parse(template):
            text += literal
            if field is not None:
                spans.setdefault(field, (len(text), values[field]))
                text += values[field]
        self.sentences.append((text, spans))

    def build(self, rng: random.Random, keep_first: int = 1) -> tuple[str, dict[str, tuple[int, str]]]:
        head, tail = self.sentences[:keep_first], self.sentences[keep_first:]
        rng.shuffle(tail)
        context, facts = "", {}
        for text, spans in head + tail:
            if context:
                context += " "
            for key, (start, value) in spans.items():
                facts.setdefault(key, (len(context) + start, value))
            context += text
        return context, facts


def person(rng: random.Random, used: set[str]) -> str:
    while True:
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        if name not in used:
            used.add(name)
            return name


def towns(rng: random.Random, k: int) -> list[str]:
    return rng.sample(TOWNS, k)


def years(rng: random.Random, k: int, lo: int = 1820, hi: int = 2015) -> list[str]:
    return [str(y) for y in rng.sample(range(lo, hi), k)]


def filler(rng: random.Random, p: Passage, n: int) -> None:
    for s in rng.sample(FILLER, n):
        p.add(s)


def company(rng: random.Random) -> tuple[str, list[tuple[str, str]], dict[str, tuple[int, str]]]:
    used: set[str] = set()
    name = rng.choice(PREFIX) + rng.choice(SUFFIX)
    rival = rng.choice([x for x in PREFIX if not name.startswith(x)]) + rng.choice(SUFFIX)
    industry, product = rng.choice(KINDS)
    founder, head, rival_founder = person(rng, used), person(rng, used), person(rng, used)
    hq, second, home, rival_town = towns(rng, 4)
    (y_found, y_second), y_rival = sorted(years(rng, 2, 1950, 2020)), years(rng, 1, 1950, 2020)[0]
    staff = str(rng.randrange(40, 5000, 10))
    prof = rng.choice(PROFESSIONS)
    p = Passage()
    p.add(rng.choice(["{c} is a {ind} company based in {hq}.", "The {ind} company {c} has its headquarters in {hq}."]),
          c=name, ind=industry, hq=hq)
    p.add(rng.choice(["It was founded in {y} by {f}, a former {prof} from {home}.",
                      "{f}, a former {prof} from {home}, founded it in {y}."]), y=y_found, f=founder, prof=prof, home=home)
    p.add(rng.choice(["The company employs about {n} people.", "About {n} people work for {c}."]), n=staff, c=name)
    p.add(rng.choice(["Its best-known product is the {prod}.", "{c} is best known for its {prod}."]), prod=product, c=name)
    p.add(rng.choice(["In {ys}, {c} opened a second office in {t}, led by {h}.",
                      "A second office opened in {t} in {ys}; {h} runs it."]), ys=y_second, c=name, t=second, h=head)
    p.add("Its main rival, {r}, was started in {yr} in {rt} by {rf}.", r=rival, yr=y_rival, rt=rival_town,
          rf=rival_founder)
    filler(rng, p, rng.choice([0, 1, 2, 4]))
    context, f = p.build(rng)
    qs = [
        (rng.choice([f"Where is {name} based?", f"In which town does {name} have its headquarters?"]), "hq"),
        (rng.choice([f"When was {name} founded?", f"In what year was {name} established?"]), "y"),
        (rng.choice([f"Who founded {name}?", f"Who started the company {name}?"]), "f"),
        (rng.choice([f"How many people work for {name}?", f"About how many employees does {name} have?"]), "n"),
        (rng.choice([f"What is {name}'s best-known product?", f"What product is {name} known for?"]), "prod"),
        (rng.choice([f"Where did {name} open its second office?", f"In which town is {name}'s second office?"]), "t"),
        (f"Who leads the second office of {name}?", "h"),
        (rng.choice([f"Where is the founder of {name} from?", f"Which town does {founder} come from?"]), "home"),
        (rng.choice([f"What did {founder} work as before founding {name}?", f"What was {founder}'s earlier job?"]),
         "prof"),
        (rng.choice([f"Who started {rival}?", f"Who founded the rival company {rival}?"]), "rf"),
    ]
    return context, qs, f


def biography(rng: random.Random) -> tuple[str, list[tuple[str, str]], dict[str, tuple[int, str]]]:
    used: set[str] = set()
    name, spouse, teacher = person(rng, used), person(rng, used), person(rng, used)
    born, uni, moved = towns(rng, 3)
    y_born = rng.randrange(1820, 1960)
    y_book = str(y_born + rng.randrange(25, 60))
    subject, prof = rng.choice(SUBJECTS), rng.choice(PROFESSIONS)
    work = rng.choice(WORKS)
    p = Passage()
    p.add(rng.choice(["{n} was born in {b} in {yb}.", "Born in {yb} in {b}, {n} grew up above a small shop."]),
          n=name, b=born, yb=str(y_born))
    p.add(rng.choice(["{last} studied {s} at the university in {u}, where {t} was one of the lecturers.",
                      "At the university in {u}, {last} studied {s} under {t}."]),
          last=name.split()[1], s=subject, u=uni, t=teacher)
    p.add(rng.choice(["After working for some years as a {prof}, {last} moved to {m}.",
                      "{last} later moved to {m} and worked as a {prof}."]), prof=prof, last=name.split()[1], m=moved)
    p.add(rng.choice(["{last} is best remembered for the book {w}, published in {yw}.",
                      "The book {w} ({yw}) made {last} famous."]), last=name.split()[1], w=work, yw=y_book)
    p.add("In {m}, {last} married {sp}.", m=moved, last=name.split()[1], sp=spouse)
    filler(rng, p, rng.choice([0, 1, 2, 5]))
    context, f = p.build(rng)
    last = name.split()[1]
    qs = [
        (rng.choice([f"Where was {name} born?", f"In which town was {last} born?"]), "b"),
        (rng.choice([f"When was {name} born?", f"In what year was {last} born?"]), "yb"),
        (rng.choice([f"What did {name} study?", f"Which subject did {last} study at university?"]), "s"),
        (rng.choice([f"Where did {name} go to university?", f"In which town did {last} study?"]), "u"),
        (f"Who taught {name} at university?", "t"),
        (rng.choice([f"Where did {name} move to?", f"Which town did {last} move to later?"]), "m"),
        (rng.choice([f"What book is {name} remembered for?", f"Which book made {last} famous?"]), "w"),
        (rng.choice([f"When was {work} published?", f"In what year did {work} come out?"]), "yw"),
        (rng.choice([f"Who did {name} marry?", f"Whom did {last} marry?"]), "sp"),
        (rng.choice([f"What did {name} work as?", f"What was {last}'s job before the book?"]), "prof"),
    ]
    return context, qs, f


def town(rng: random.Random) -> tuple[str, list[tuple[str, str]], dict[str, tuple[int, str]]]:
    used: set[str] = set()
    name, twin = towns(rng, 2)
    river = rng.choice(RIVERS)
    founder, mayor = person(rng, used), person(rng, used)
    y_found = str(rng.randrange(1100, 1800))
    pop = f"{rng.randrange(2, 90)},{rng.randrange(0, 999):03d}"
    festival, month = rng.choice(FESTIVALS), rng.choice(MONTHS)
    industry = rng.choice(KINDS)[0]
    p = Passage()
    p.add(rng.choice(["{t} is a town on the river {r}.", "The town of {t} lies on the banks of the {r}."]),
          t=name, r=river)
    p.add(rng.choice(["It has a population of about {pop}.", "Around {pop} people live there."]), pop=pop)
    p.add(rng.choice(["According to tradition, it was founded in {y} by a merchant named {f}.",
                      "A merchant called {f} is said to have founded the town in {y}."]), y=y_found, f=founder)
    p.add(rng.choice(["Every {mo}, the town holds a {fe} that draws visitors from the whole region.",
                      "Its {fe}, held each {mo}, is the best-known event of the year."]), mo=month, fe=festival)
    p.add("The current mayor is {m}.", m=mayor)
    p.add(rng.choice(["Since the 1990s, {t} has been twinned with {tw}.", "{t} is twinned with {tw}."]),
          t=name, tw=twin)
    p.add("Most jobs in the town are in the {ind} industry.", ind=industry)
    filler(rng, p, rng.choice([0, 1, 3, 6]))
    context, f = p.build(rng)
    qs = [
        (rng.choice([f"Which river is {name} on?", f"On what river does {name} lie?"]), "r"),
        (rng.choice([f"What is the population of {name}?", f"How many people live in {name}?"]), "pop"),
        (rng.choice([f"When was {name} founded?", f"In what year was {name} founded?"]), "y"),
        (rng.choice([f"Who founded {name}?", f"Which merchant founded {name}?"]), "f"),
        (rng.choice([f"What event does {name} hold every year?", f"What is {name}'s best-known event?"]), "fe"),
        (rng.choice([f"In which month is the {festival} of {name} held?", f"When is the {festival} in {name}?"]), "mo"),
        (rng.choice([f"Who is the mayor of {name}?", f"Who is {name}'s current mayor?"]), "m"),
        (rng.choice([f"Which town is {name} twinned with?", f"What is the twin town of {name}?"]), "tw"),
        (f"Which industry provides most jobs in {name}?", "ind"),
    ]
    return context, qs, f


def invention(rng: random.Random) -> tuple[str, list[tuple[str, str]], dict[str, tuple[int, str]]]:
    used: set[str] = set()
    inventor, partner, buyer = person(rng, used), person(rng, used), person(rng, used)
    workshop, sold = towns(rng, 2)
    device, material = rng.choice(DEVICES), rng.choice(MATERIALS)
    first, later = rng.sample(PURPOSES, 2)
    y_made, y_sold = sorted(years(rng, 2, 1820, 1990))
    p = Passage()
    p.add("In {y}, {i} built {d} in a workshop in {w}.", y=y_made, i=inventor, d=device, w=workshop)
    p.add(rng.choice(["Its frame was made of {mat}.", "The frame was made of {mat}, which kept it light."]),
          mat=material)
    p.add(rng.choice(["It was first used {p1}.", "At first it served {p1}."]), p1=first)
    p.add(rng.choice(["Later it was also used {p2}.", "Farmers and towns later used it {p2}."]), p2=later)
    p.add("{il} worked on the design with {pa}.", il=inventor.split()[1], pa=partner)
    p.add("In {ys}, the rights were sold to {b}, who opened a factory in {s}.", ys=y_sold, b=buyer, s=sold)
    filler(rng, p, rng.choice([0, 1, 2, 5]))
    context, f = p.build(rng)
    what = device[2:]
    qs = [
        (rng.choice([f"Who built the {what}?", f"Who invented the {what}?"]), "i"),
        (rng.choice([f"When was the {what} built?", f"In what year did {inventor} build the {what}?"]), "y"),
        (rng.choice([f"Where was the {what} built?", f"In which town was {inventor}'s workshop?"]), "w"),
        (f"What was the frame of the {what} made of?", "mat"),
        (rng.choice([f"What was the {what} first used for?", f"What did the {what} do at first?"]), "p1"),
        (f"What was the {what} later used for?", "p2"),
        (f"Who helped {inventor} design the {what}?", "pa"),
        (rng.choice([f"Who bought the rights to the {what}?", f"To whom were the rights to the {what} sold?"]), "b"),
        (f"Where did the factory for the {what} open?", "s"),
        (f"When were the rights to the {what} sold?", "ys"),
    ]
    return context, qs, f


def climb(rng: random.Random) -> tuple[str, list[tuple[str, str]], dict[str, tuple[int, str]]]:
    used: set[str] = set()
    leader, guide, doctor = person(rng, used), person(rng, used), person(rng, used)
    mountain = rng.choice(MOUNTAINS)
    start = rng.choice(TOWNS)
    year = str(rng.randrange(1850, 2000))
    month = rng.choice(MONTHS)
    days = str(rng.randrange(5, 60))
    members = str(rng.randrange(3, 14))
    p = Passage()
    p.add("In {mo} {y}, {l} led an expedition of {k} climbers to {mt}.", mo=month, y=year, l=leader, k=members,
          mt=mountain)
    p.add(rng.choice(["They set out from {st}.", "The group started from the village of {st}."]), st=start)
    p.add(rng.choice(["The local guide was {g}.", "{g} guided them through the lower valleys."]), g=guide)
    p.add(rng.choice(["The climb took {d} days.", "It took them {d} days to reach the top."]), d=days)
    p.add("{doc}, the expedition's doctor, kept a diary that was later published.", doc=doctor)
    filler(rng, p, rng.choice([0, 1, 3, 5]))
    context, f = p.build(rng)
    qs = [
        (rng.choice([f"Who led the {year} expedition to {mountain}?", f"Who was the leader of the climb of {mountain}?"]),
         "l"),
        (f"How many climbers went to {mountain} with {leader}?", "k"),
        (rng.choice([f"Where did the expedition to {mountain} start?", f"From which village did {leader} set out?"]),
         "st"),
        (rng.choice(["Who was the guide of the expedition?", f"Who guided {leader}'s group?"]), "g"),
        (rng.choice([f"How many days did the climb of {mountain} take?", "How long did the climb take?"]), "d"),
        (rng.choice(["Who was the expedition's doctor?", f"Whose diary of the {mountain} climb was published?"]),
         "doc"),
        (f"In which month did the expedition to {mountain} begin?", "mo"),
        (f"In what year did {leader} lead the expedition?", "y"),
    ]
    return context, qs, f


KINDS_OF_PASSAGE = [company, biography, town, invention, climb]


def make(rng: random.Random, n_passages: int, per_passage: tuple[int, int], split: str) -> list[dict]:
    rows = []
    for i in range(n_passages):
        context, qs, facts = KINDS_OF_PASSAGE[i % len(KINDS_OF_PASSAGE)](rng)
        for q, key in rng.sample(qs, rng.randint(*per_passage)):
            start, text = facts[key]
            assert context[start:start + len(text)] == text
            rows.append({"id": f"{split}-{len(rows):04d}", "context": context, "question": q,
                         "answers": {"text": [text], "answer_start": [start]}})
    return rows


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for split, seed, n, per in (("train", 1, 150, (3, 5)), ("eval", 2, 40, (3, 4))):
        rows = make(random.Random(seed), n, per, split)
        with (OUT / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(split, len(rows), "questions,", n, "passages")


if __name__ == "__main__":
    main()
