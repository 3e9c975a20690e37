"""Write llmtune/datasets/ner/{train,eval}.jsonl: made-up news-style sentences tagged PER/ORG/LOC/MISC (IOB2).

Sentences come from hand-written templates filled with hand-written made-up names (people, companies, places,
and MISC: nationalities, events, awards, products). A quarter of each name list and a fifth of the templates
are held out of train, so eval asks for entities in contexts and names the model has not seen.
Run: python scripts/make_ner_dataset.py (deterministic: seed 13).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "llmtune" / "datasets" / "ner"

PER = ["Mara Velk", "Tobin Achter", "Ilse Marwick", "Dario Fenn", "Oona Castelli", "Brannock Hale", "Yusra Tal",
       "Pieter Oslund", "Celia Dunmore", "Hamid Rostan", "Greta Luun", "Aurel Visken", "Nell Parrish",
       "Kwame Adjoro", "Sigrun Holt", "Emeric Vashti", "Lina Corvo", "Jasper Wendt", "Rosalind Kaye",
       "Teodor Blum", "Anika Sorell", "Felix Marrow", "Priya Annand", "Osric Tamber", "Juno Halvard",
       "Matthias Krell", "Esme Darrow", "Ravi Kothen", "Solveig Aune", "Leopold Strand", "Ines Barrosa",
       "Cormac Deane", "Halima Oyelu", "Viktor Seland", "Maud Ferrier", "Tomas Ebbe", "Dilys Quarrie",
       "Amadou Kessel", "Wren Lockley", "Bastien Corre", "Ottilie Marsh", "Kenji Arunde", "Fenna Drost",
       "Ludo Pasquin", "Marisol Ette", "Edwin Thorne", "Zara Melquist", "Anselm Roke", "Hedda Vinter",
       "Caspian Moor", "Velma Ostrow", "Rafi Belton", "Signe Kallas", "Dorian Faye", "Agathe Lunel",
       "Moss", "Renard", "Calloway", "Ingrid", "Okafor"]
ORG = ["Velantis Group", "Harrowgate Mills", "Nordvik Energy", "the Corvane Institute", "Brightwater Bank",
       "Tesselate Labs", "Ostrander Freight", "Mirelle Foods", "the Kestrel Foundation", "Quillon Motors",
       "Arbor & Finch", "Calder Rail", "Lumen Pharma", "the Ferrow Times", "Sablecrest Insurance", "Pelham United",
       "Vireo Systems", "the Halden Orchestra", "Gantry Steel", "Marlowe College", "Orinoco Air", "Duskfield Wines",
       "the Tarrant Council", "Bellhaven Press", "Strand & Co", "Ironvale Mining", "Cobalt Harbor FC", "Nimbus Cloud",
       "the Varnholt Museum", "Rookwood Hospital", "Aldergrove Dairy", "Pennant Telecom", "the Greyling Trust",
       "Solace Health", "Fairmont Ridge Capital", "Kilnworth Ceramics", "Opaline Studios", "Westerby Logistics",
       "Thistle Bank", "the Morrow Party"]
LOC = ["Varnholt", "Lake Orsina", "Port Callum", "Estrava", "the Brennic Hills", "Koldby", "Marisport", "Tallow Bay",
       "New Ardell", "the Selwyn Valley", "Drummore", "Ostrava Heights", "Quenby", "the Isle of Farrow", "Lindqvist",
       "Caldera Point", "Vessen", "Halvorsund", "the Rennet River", "Bruma", "Saint Oriel", "Kestwick", "Tamsin Falls",
       "Oldreach", "Mount Vigil", "Penhallow", "the Grey Coast", "Ambry", "Lowmarsh", "Castell Rhun", "Dunhaven",
       "Yarrowby", "Eastmere", "Solenne", "the Ketter Straits", "Harlow Cross", "Brightmoor", "Nantel", "Ruskby",
       "Fenwick Sound"]
# MISC in three kinds so each fits its slot: adjectives (nationalities, languages), events and awards, products
ADJ = ["Velorian", "Estravan", "Koldbyan", "Brennic", "Marisportan", "Selwynese", "Halvorsk", "Vessenic", "Ambrian",
       "Penhallese", "Drummish", "Quenbian"]
EVENT = ["the Harvest Cup", "the Tessaline Prize", "the Summer Lantern Festival", "the Orsina Marathon",
         "the Pellar Accord", "the Quill Awards", "the Ferrow Open", "the Drummore Regatta", "the Caldera Games",
         "the Winter Assembly", "the Gold Anchor Medal", "the Tallow Bay Jazz Week", "the Lowmarsh Fair",
         "the Copper Key Award", "the Grey Coast Rally", "the Rhun Charter"]
PROD = ["Aurora X2", "Nimbus Duo", "Orinoco 9", "Lumen Tab", "Velo Mini", "Harbor One", "Quill Pad", "Ferro S4"]
TAG = {"PER": "PER", "ORG": "ORG", "LOC": "LOC", "ADJ": "MISC", "EVENT": "MISC", "PROD": "MISC"}

# {PER} {ORG} {LOC}, and MISC as {ADJ} {EVENT} {PROD}; words and punctuation separated by spaces
TEMPLATES = [
    "{PER} joined {ORG} as chief executive in March .",
    "{ORG} will open a new office in {LOC} next year , {PER} said .",
    "Shares of {ORG} fell sharply on Tuesday .",
    "{PER} , a spokeswoman for {ORG} , declined to comment .",
    "The {ADJ} delegation arrived in {LOC} on Friday .",
    "{PER} won {EVENT} for the second time .",
    "Heavy rain closed the main road between {LOC} and {LOC} .",
    "{ORG} and {ORG} agreed to merge in a deal worth 2 billion .",
    "Police in {LOC} said no one was hurt .",
    "{PER} told reporters that the plan was sound .",
    "The mayor of {LOC} , {PER} , opened the bridge .",
    "{PER} scored twice as {ORG} beat {ORG} 3 - 1 .",
    "Tickets for {EVENT} sold out within an hour .",
    "According to {ORG} , prices rose by four percent .",
    "{PER} and {PER} will lead the talks in {LOC} .",
    "The factory near {LOC} employs 400 people .",
    "{ORG} recalled its {PROD} phones after complaints .",
    "Nobody expected the weather to turn so quickly .",
    "A {ADJ} engineer designed the new harbour in {LOC} .",
    "{PER} resigned from {ORG} on Monday .",
    "The talks collapsed late on Sunday night .",
    "{ORG} reported a loss for the third quarter .",
    "{PER} was born in {LOC} and studied at {ORG} .",
    "Visitors to {LOC} rose sharply during {EVENT} .",
    "Analysts at {ORG} expect rates to stay high .",
    "\" We are very pleased , \" said {PER} .",
    "The trains to {LOC} are running late again .",
    "{PER} signed {EVENT} on behalf of {LOC} .",
    "Fans of {ORG} gathered outside the stadium in {LOC} .",
    "{PER} 's new book describes a childhood in {LOC} .",
    "Officials said the river had burst its banks overnight .",
    "The {ADJ} government announced new taxes on Thursday .",
    "{ORG} hired {PER} to run its operations in {LOC} .",
    "The ferry from {LOC} was cancelled because of fog .",
    "{PER} thanked the staff of {ORG} for their work .",
    "Prices at the market were lower than last week .",
    "{PER} , who coaches {ORG} , praised the young players .",
    "Thousands watched {EVENT} in the centre of {LOC} .",
    "{ORG} said it would cut 200 jobs in {LOC} .",
    "Speaking in {LOC} , {PER} called for calm .",
    "The report by {ORG} was published on Wednesday .",
    "{PER} finished ahead of {PER} in {EVENT} .",
    "Most shops in {LOC} stayed closed for the holiday .",
    "{ORG} is based in {LOC} .",
    "{PER} plays the violin with {ORG} .",
    "A {ADJ} tourist was rescued off {LOC} .",
    "The new line links {LOC} with the airport .",
    "{PER} met {PER} at the headquarters of {ORG} .",
    "Construction of the dam near {LOC} began in 2019 .",
    "{ORG} shares rose after {PER} announced the results .",
]
# the last fifth of the templates (and a quarter of each name list) appear in eval only
HELD_OUT_TEMPLATES = 10


def fill(template: str, pools: dict[str, list[str]], rng: random.Random) -> tuple[list[str], list[str]]:
    tokens: list[str] = []
    tags: list[str] = []
    for part in template.split():
        if part.startswith("{") and part.endswith("}"):
            kind = part[1:-1]
            name = rng.choice(pools[kind]).split()
            if name[0] == "the" and len(name) > 1:  # the article stays outside the entity, as in CoNLL-2003
                tokens.append("the" if tokens else "The")
                tags.append("O")
                name = name[1:]
            tokens += name
            tags += [f"B-{TAG[kind]}"] + [f"I-{TAG[kind]}"] * (len(name) - 1)
        else:
            tokens.append(part)
            tags.append("O")
    for j in range(len(tokens) - 1):  # "A Ambrian engineer" -> "An Ambrian engineer"
        if tokens[j] in ("A", "a") and tokens[j + 1][0] in "AEIOU":
            tokens[j] += "n"
    return tokens, tags


def split_pool(names: list[str]) -> tuple[list[str], list[str]]:
    cut = len(names) - len(names) // 4
    return names[:cut], names[cut:]


def main() -> None:
    rng = random.Random(13)
    pools = {}
    for kind, names in (("PER", PER), ("ORG", ORG), ("LOC", LOC), ("ADJ", ADJ), ("EVENT", EVENT), ("PROD", PROD)):
        shuffled = names[:]
        rng.shuffle(shuffled)
        pools[kind] = split_pool(shuffled)
    train_pools = {k: v[0] for k, v in pools.items()}
    eval_pools = {k: v[0] + v[1] + v[1] for k, v in pools.items()}  # held-out names weighted up
    seen: set[tuple[str, ...]] = set()

    def make(templates: list[str], pools_: dict[str, list[str]], n: int) -> list[dict[str, list[str]]]:
        rows = []
        while len(rows) < n:
            tokens, tags = fill(rng.choice(templates), pools_, rng)
            if tuple(tokens) in seen:
                continue
            seen.add(tuple(tokens))
            rows.append({"tokens": tokens, "ner_tags": tags})
        return rows

    train = make(TEMPLATES[:-HELD_OUT_TEMPLATES], train_pools, 480)
    evals = make(TEMPLATES, eval_pools, 120)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", evals)):
        with (OUT / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        ents = sum(t.startswith("B-") for r in rows for t in r["ner_tags"])
        print(f"{name}: {len(rows)} sentences, {ents} entities")


if __name__ == "__main__":
    main()
