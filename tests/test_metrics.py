"""Every metric against its reference package called directly: rouge_score, sacrebleu, scikit-learn."""

from __future__ import annotations

import random

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest

from llmtune import metrics as M

TOL = 1e-9

# Summaries: reference lists of different lengths, an empty prediction, punctuation, abbreviations, unicode.
SUMMARIES = [
    ("The model outperforms prior work on three benchmarks. It is also faster!",
     ["Our model beats previous methods on 3 benchmarks and runs faster.",
      "A new model that is faster and better than prior work.",
      "State-of-the-art results on three benchmarks; faster inference."]),
    ("", ["We propose a method for learning sparse networks."]),
    ("We study e.g. transformers and RNNs. Dr. Smith's results hold.",
     ["We compare transformers with RNNs.", "Transformers vs. RNNs: a study. Results by Dr. Smith hold."]),
    ("Übersetzung: Die Katze saß auf der Matte. 🐱",
     ["Die Katze sitzt auf der Matte.", "Eine Katze saß auf einer Matte 🐈"]),
    ("这是一个摘要。它很短！", ["这是一个简短的摘要。"]),
    ("Training LLMs, cheaply?! Yes -- with LoRA (low-rank adapters).",
     ["LoRA makes LLM training cheap.", "Low-rank adapters (LoRA) cut the cost of training LLMs.",
      "Cheap LLM fine-tuning with LoRA.", "Parameter-efficient fine-tuning via low-rank adapters."]),
    ("running runners ran quickly", ["the runner runs quick"]),
]

# Translation en->de with 1 or 2 references per segment, an empty hypothesis, punctuation and emoji.
DE_HYPS = [
    "Ein Mann fährt mit dem Fahrrad über die Straße.",
    "Zwei Hunde spielen im Schnee 🐕!",
    "",
    "Eine Frau, die ein Buch liest, sitzt auf einer Bank.",
    "Kinder spielen Fußball auf dem grünen Rasen.",
    "Ein Mädchen mit \"rotem\" Hut lächelt.",
]
DE_REFS = [
    ["Ein Mann fährt Fahrrad auf der Straße.", "Ein Mann radelt über die Straße."],
    ["Zwei Hunde spielen im Schnee."],
    ["Eine Gruppe von Menschen steht vor einem Gebäude.", "Menschen stehen vor einem Haus."],
    ["Eine Frau sitzt auf einer Bank und liest ein Buch."],
    ["Kinder spielen auf dem Rasen Fußball.", "Einige Kinder spielen Fußball im Park."],
    ["Ein Mädchen mit einem roten Hut lächelt 😊."],
]
ZH_HYPS = ["我们今天去公园散步。", "这只猫在睡觉，很可爱！", "他喜欢喝茶。"]
ZH_REFS = [["我们今天在公园里散步。", "今天我们去公园走走。"], ["这只猫正在睡觉。"], ["他很喜欢喝绿茶。"]]


def streams_with_none(refs: list[list[str]]) -> list[list[str | None]]:
    width = max(map(len, refs))
    return [[r[k] if k < len(r) else None for r in refs] for k in range(width)]


def synthetic_pairs(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    words = ("the model results show strong gains over baselines running trained networks learning sparse "
             "attention layers improves summarization translation quickly").split()

    def sentence(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k)).capitalize() + rng.choice([".", "!", "?"])

    preds = [sentence(rng.randint(0, 9)) + " " + sentence(rng.randint(3, 8)) for _ in range(n)]
    refs = [[sentence(rng.randint(4, 10)) for _ in range(rng.randint(1, 3))] for _ in range(n)]
    return preds, refs


# ------------------------------------------------------------------------------------------------------------
# sentence_split


@pytest.mark.parametrize(("text", "expected"), [
    ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
    ("Dr. Smith met J. R. Tolkien, e.g. in the U.S. office. Then left.",
     ["Dr. Smith met J. R. Tolkien, e.g. in the U.S. office.", "Then left."]),
    ("She said \"stop.\" Then (quietly.) he went", ["She said \"stop.\"", "Then (quietly.)", "he went"]),
    ("Wait... what?! Yes.", ["Wait...", "what?!", "Yes."]),
    ("第一句。第二句！第三句", ["第一句。", "第二句！", "第三句"]),
    ("line one\n\nline two  ", ["line one", "line two"]),
    ("Version 3.5 is out. Great", ["Version 3.5 is out.", "Great"]),
    ("", []),
])
def test_sentence_split(text: str, expected: list[str]) -> None:
    assert M.sentence_split(text) == "\n".join(expected)


# ------------------------------------------------------------------------------------------------------------
# ROUGE


@pytest.mark.parametrize("use_stemmer", [True, False])
def test_rouge_matches_rouge_score(use_stemmer: bool) -> None:
    preds = [p for p, _ in SUMMARIES]
    refs = [r for _, r in SUMMARIES]
    per = M.rouge_per_example(preds, refs, use_stemmer=use_stemmer, n_jobs=1)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    lsum = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=use_stemmer)
    expected: dict[str, list[float]] = {k: [] for k in M.ROUGE_KEYS}
    for pred, group in zip(preds, refs, strict=True):
        s = scorer.score_multi(group, pred)
        for k in ("rouge1", "rouge2", "rougeL"):
            expected[k].append(s[k].fmeasure)
        split = lsum.score_multi([M.sentence_split(r) for r in group], M.sentence_split(pred))
        expected["rougeLsum"].append(split["rougeLsum"].fmeasure)
    for k in M.ROUGE_KEYS:
        assert per[k] == pytest.approx(expected[k], abs=TOL)
    assert per["rouge1"][1] == 0.0  # empty prediction
    assert per["rouge1"][4] == 0.0  # rouge_score's tokenizer keeps only [a-z0-9]: Chinese text has no tokens
    means = M.rouge(preds, refs, use_stemmer=use_stemmer, n_jobs=1)
    for k in M.ROUGE_KEYS:
        assert means[k] == pytest.approx(100 * np.mean(expected[k]), abs=TOL)


def test_rouge_single_reference_strings_and_best_reference() -> None:
    single = M.rouge(["the cat sat"], ["the cat sat on the mat"], n_jobs=1)
    as_list = M.rouge(["the cat sat"], [["the cat sat on the mat"]], n_jobs=1)
    assert single == as_list
    best = M.rouge(["the cat sat"], [["a dog barked", "the cat sat"]], n_jobs=1)
    assert best["rouge1"] == pytest.approx(100.0)


def test_rouge_lsum_uses_sentence_split() -> None:
    pred = "The cat sat on the mat. The dog ran away."
    ref = "The dog ran away. The cat sat on the mat."
    per = M.rouge_per_example([pred], [[ref]], n_jobs=1)
    # Sentence-level LCS union sees both sentences; plain LCS over the whole text cannot.
    assert per["rougeLsum"][0] == pytest.approx(1.0)
    assert per["rougeL"][0] < 1.0


def test_rouge_parallel_identical_to_single_process() -> None:
    preds, refs = synthetic_pairs(2400)
    single = M.rouge_per_example(preds, refs, n_jobs=1)
    auto = M.rouge_per_example(preds, refs)  # >= PARALLEL_MIN_PAIRS: a pool over all CPUs
    assert auto == single
    forced = M.rouge_per_example(preds[:300], refs[:300], n_jobs=3)
    assert forced == {k: v[:300] for k, v in single.items()}


def test_rouge_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        M.rouge(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="example 0 has no reference"):
        M.rouge(["a"], [[]])
    with pytest.raises(ValueError, match="n_jobs"):
        M.rouge(["a"], ["a"], n_jobs=0)
    with pytest.raises(ValueError, match="no examples"):
        M.rouge([], [])


# ------------------------------------------------------------------------------------------------------------
# sacreBLEU metrics


@pytest.mark.parametrize(("hyps", "refs", "options"), [
    (DE_HYPS, DE_REFS, {}),
    (DE_HYPS, DE_REFS, {"lowercase": True}),
    (DE_HYPS, DE_REFS, {"tokenize": "intl"}),
    (ZH_HYPS, ZH_REFS, {"tokenize": "zh"}),
    ([p for p, _ in SUMMARIES], [r for _, r in SUMMARIES], {"smooth_method": "add-k"}),
])
def test_bleu_matches_sacrebleu(hyps: list[str], refs: list[list[str]], options: dict) -> None:
    expected = BLEU(**options).corpus_score(hyps, streams_with_none(refs))
    assert M.bleu(hyps, refs, **options)["bleu"] == pytest.approx(expected.score, abs=TOL)
    assert M.compute("bleu", hyps, refs, **options) == M.bleu(hyps, refs, **options)


def test_bleu_equal_reference_counts_match_plain_sacrebleu() -> None:
    hyps = DE_HYPS[:2] + DE_HYPS[4:]
    refs = [DE_REFS[0], DE_REFS[0][::-1], DE_REFS[4], DE_REFS[4][::-1]]
    streams = [[r[0] for r in refs], [r[1] for r in refs]]
    assert M.bleu(hyps, refs)["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score, abs=TOL)
    assert M.chrf(hyps, refs)["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score, abs=TOL)
    assert M.ter(hyps, refs)["ter"] == pytest.approx(sacrebleu.corpus_ter(hyps, streams).score, abs=TOL)


def test_missing_references_are_none_not_empty_strings() -> None:
    # sacreBLEU drops None per segment but keeps "" as a real (empty) reference: padding with "" would change
    # the closest reference length, chrF's best match, TER's average reference length and the signature.
    hyps, refs = DE_HYPS, DE_REFS
    padded_empty = [[r[k] if k < len(r) else "" for r in refs] for k in range(2)]
    ours = {"bleu": M.bleu(hyps, refs)["bleu"], "ter": M.ter(hyps, refs)["ter"]}
    assert ours["bleu"] == pytest.approx(BLEU().corpus_score(hyps, streams_with_none(refs)).score, abs=TOL)
    assert ours["ter"] != pytest.approx(TER().corpus_score(hyps, padded_empty).score, abs=1e-6)
    assert M.reference_streams(refs)[1][1] is None


@pytest.mark.parametrize(("hyps", "refs", "options"), [
    (DE_HYPS, DE_REFS, {}),
    (DE_HYPS, DE_REFS, {"word_order": 2}),
    (ZH_HYPS, ZH_REFS, {"lowercase": True, "whitespace": True}),
    ([p for p, _ in SUMMARIES], [r for _, r in SUMMARIES], {"eps_smoothing": True}),
])
def test_chrf_matches_sacrebleu(hyps: list[str], refs: list[list[str]], options: dict) -> None:
    expected = CHRF(**options).corpus_score(hyps, streams_with_none(refs)).score
    assert M.chrf(hyps, refs, **options)["chrf"] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize(("hyps", "refs", "options"), [
    (DE_HYPS, DE_REFS, {}),
    (DE_HYPS, DE_REFS, {"case_sensitive": True, "no_punct": True}),
    (ZH_HYPS, ZH_REFS, {"normalized": True, "asian_support": True}),
])
def test_ter_matches_sacrebleu(hyps: list[str], refs: list[list[str]], options: dict) -> None:
    expected = TER(**options).corpus_score(hyps, streams_with_none(refs)).score
    assert M.ter(hyps, refs, **options)["ter"] == pytest.approx(expected, abs=TOL)


def test_signatures_match_sacrebleu() -> None:
    for name, cls, options in [("bleu", BLEU, {"tokenize": "zh"}), ("chrf", CHRF, {"word_order": 2}),
                               ("ter", TER, {"case_sensitive": True})]:
        metric = cls(**options)
        metric.corpus_score(ZH_HYPS, streams_with_none(ZH_REFS))
        assert M.signature(name, ZH_REFS, **options) == metric.get_signature().format()
        assert "nrefs:var" in M.signature(name, ZH_REFS, **options)
    assert M.signature("bleu", [["a"], ["b"]]).startswith("nrefs:1|")
    assert M.signature("rouge", DE_REFS).startswith("rouge|nrefs:var|use_stemmer:True")


def test_sacrebleu_option_errors() -> None:
    with pytest.raises(ValueError, match="unknown BLEU tokenize 'nope'"):
        M.bleu(["a"], ["a"], tokenize="nope")
    with pytest.raises(ValueError, match="unknown option"):
        M.compute("chrf", ["a"], ["a"], tokenize="13a")


# ------------------------------------------------------------------------------------------------------------
# Classification and exact match


def test_classification_metrics_hand_computed() -> None:
    # Labels seen: cat, dog, fish (never predicted: precision 0), bird (predicted only: recall 0).
    y = ["cat", "cat", "dog", "dog", "fish", "cat"]
    p = ["cat", "dog", "dog", "dog", "bird", "cat"]
    m = M.classification_metrics(p, y)
    precision = {"bird": 0, "cat": 1, "dog": 2 / 3, "fish": 0}
    recall = {"bird": 0, "cat": 2 / 3, "dog": 1, "fish": 0}
    f1 = {k: (2 * precision[k] * recall[k] / (precision[k] + recall[k]) if precision[k] + recall[k] else 0)
          for k in precision}
    assert m["accuracy"] == pytest.approx(4 / 6, abs=TOL)
    assert m["f1_micro"] == pytest.approx(4 / 6, abs=TOL)
    assert m["precision"] == pytest.approx(np.mean(list(precision.values())), abs=TOL)
    assert m["recall"] == pytest.approx(np.mean(list(recall.values())), abs=TOL)
    assert m["f1"] == pytest.approx(np.mean(list(f1.values())), abs=TOL)
    assert M.classification_metrics([1, 0, 1], [1, 1, 1])["precision"] == pytest.approx(0.5)
    assert M.accuracy([1, 0, 1], [1, 1, 1]) == {"accuracy": pytest.approx(2 / 3)}
    assert M.compute("f1", p, y) == m


def test_classification_metrics_match_sklearn() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    rng = random.Random(3)
    for _ in range(50):
        labels = rng.choice([["neg", "pos"], [0, 1, 2, 3], ["a", "b", "c", "d", "e"]])
        y = [rng.choice(labels) for _ in range(rng.randint(1, 40))]
        p = [rng.choice(labels) for _ in y]
        m = M.classification_metrics(p, y)
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p), abs=TOL)
        for key, fn in [("f1", skm.f1_score), ("precision", skm.precision_score),
                        ("recall", skm.recall_score)]:
            assert m[key] == pytest.approx(fn(y, p, average="macro", zero_division=0), abs=TOL)
        assert m["f1_micro"] == pytest.approx(skm.f1_score(y, p, average="micro"), abs=TOL)


def test_exact_match_options() -> None:
    preds = ["Paris", "  the answer is 42 ", "Berlin!", "Madrid", "Straße", ""]
    refs = [["paris", "Paris"], ["42"], ["berlin"], ["Rome"], ["STRASSE", "Straße."], [""]]
    assert M.exact_match(preds, refs)["exact_match"] == pytest.approx(100 * 2 / 6)
    relaxed = M.exact_match(preds, refs, ignore_case=True, ignore_punctuation=True,
                            regexes_to_ignore=[r"the answer is"])
    assert relaxed["exact_match"] == pytest.approx(100 * 5 / 6)
    strict = M.exact_match(["a  b"], ["a b"], normalize_whitespace=False)
    assert strict["exact_match"] == 0.0
    assert M.normalize_answer("„Ja“, sagte er。", ignore_punctuation=True) == "Ja sagte er"


# ------------------------------------------------------------------------------------------------------------
# Registry


def test_registry_and_compute() -> None:
    assert set(M.METRICS) == {"rouge", "bleu", "chrf", "ter", "accuracy", "f1", "exact_match", "seqeval"}
    assert not M.METRICS["ter"].higher_is_better
    with pytest.raises(ValueError, match="unknown metric 'bluer'"):
        M.compute("bluer", ["a"], ["a"])
    with pytest.raises(ValueError, match="unknown option"):
        M.compute("rouge", ["a"], ["a"], stemmer=True)
    assert M.metric_options("rouge") == {"use_stemmer": True, "n_jobs": None}
    assert set(M.compute("rouge", ["a b"], ["a b"], n_jobs=1)) == set(M.ROUGE_KEYS)


# ------------------------------------------------------------------------------------------------------------
# Bootstrap intervals and the paired test


def make_systems(n: int = 300, seed: int = 0, noise_seed: int | None = None) -> tuple[list[str], ...]:
    """References, a weak system (half the words right) and a strong one (80% right)."""
    rng = random.Random(seed)
    words = "ein eine der die das mann frau hund katze läuft sitzt spielt auf im straße park schnee".split()
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))) + "." for _ in range(n)]

    if noise_seed is not None:
        rng = random.Random(noise_seed)

    def noisy(s: str, keep: float) -> str:
        return " ".join(w if rng.random() < keep else rng.choice(words) for w in s.split())

    return refs, [noisy(r, 0.5) for r in refs], [noisy(r, 0.8) for r in refs]


@pytest.mark.parametrize("name", ["bleu", "chrf", "ter", "rouge", "exact_match"])
def test_bootstrap_ci_contains_estimate_and_is_reproducible(name: str) -> None:
    refs, weak, _ = make_systems(200)
    preds = [r if i % 4 == 0 else w for i, (r, w) in enumerate(zip(refs, weak, strict=True))]
    options = {"n_jobs": 1} if name == "rouge" else {}
    point = M.compute(name, preds, refs, **options)
    ci = M.bootstrap_ci(name, preds, refs, n=300, seed=7, **options)
    assert set(ci) == set(point)
    for key, (low, high) in ci.items():
        assert low < point[key] < high
    assert M.bootstrap_ci(name, preds, refs, n=300, seed=7, **options) == ci
    assert M.bootstrap_ci(name, preds, refs, n=300, seed=8, **options) != ci


def test_bootstrap_ci_label_metrics_and_functions() -> None:
    rng = random.Random(0)
    y = [rng.choice(["pos", "neg", "neu"]) for _ in range(300)]
    p = [t if rng.random() < 0.7 else rng.choice(["pos", "neg", "neu"]) for t in y]
    point = M.classification_metrics(p, y)
    ci = M.bootstrap_ci("f1", p, y, n=200, seed=1)
    for key, (low, high) in ci.items():
        assert low < point[key] < high
    # A registered function resamples like its name; any other function is re-run on each resample.
    assert M.bootstrap_ci(M.accuracy, p, y, n=200, seed=1) == M.bootstrap_ci("accuracy", p, y, n=200, seed=1)
    generic = M.bootstrap_ci(lambda a, b: {"acc": M.accuracy(a, b)["accuracy"]}, p, y, n=200, seed=1)
    assert generic["acc"] == pytest.approx(ci["accuracy"], abs=TOL)


def test_bootstrap_ci_large_corpus_is_chunked() -> None:
    # 20k examples x 1000 resamples exceeds the one-shot draw: indices come in blocks, results stay seeded.
    rows = np.random.default_rng(0).random((20000, 1)) * 100
    stats = M.MetricStats("x", {"x": float(rows.mean())}, 20000, M._mean_resampler(rows, ["x"]))
    ci = M.confidence_interval(stats, n=1000, seed=0)
    assert ci == M.confidence_interval(stats, n=1000, seed=0)
    low, high = ci["x"]
    assert low < stats.values["x"] < high and high - low < 1.0


@pytest.mark.parametrize(("name", "cls", "key"), [("bleu", BLEU, "BLEU"), ("chrf", CHRF, "chrF2"),
                                                  ("ter", TER, "TER")])
def test_paired_bootstrap_matches_sacrebleu(name: str, cls: type, key: str) -> None:
    refs, a, b = make_systems(120, seed=1)
    b = [bb if i % 3 else aa for i, (aa, bb) in enumerate(zip(a, b, strict=True))]  # a closer contest
    _, scores = PairedTest([("a", a), ("b", b)], {key: cls()}, [refs], test_type="bs", n_samples=500)()
    ours = M.paired_bootstrap(name, a, b, refs, n=500, seed=12345)[name]
    assert ours["a"] == pytest.approx(scores[key][0].score, abs=TOL)
    assert ours["b"] == pytest.approx(scores[key][1].score, abs=TOL)
    assert ours["p_value"] == scores[key][1].p_value
    assert ours["diff"] == pytest.approx(ours["b"] - ours["a"], abs=TOL)


@pytest.mark.parametrize("name", ["bleu", "rouge", "chrf", "exact_match"])
def test_paired_bootstrap_detects_better_and_identical_systems(name: str) -> None:
    refs, weak, strong = make_systems(200)
    options = {"n_jobs": 1} if name == "rouge" else {}
    if name == "exact_match":
        strong = [r if i % 2 else s for i, (r, s) in enumerate(zip(refs, strong, strict=True))]
    better = M.paired_bootstrap(name, weak, strong, refs, n=500, seed=0, **options)
    for row in better.values():
        assert row["diff"] > 0
        assert row["p_value"] <= 0.01
        assert row["diff_ci_low"] > 0
    same = M.paired_bootstrap(name, weak, list(weak), refs, n=500, seed=0, **options)
    for row in same.values():
        assert row["diff"] == 0 and row["p_value"] == 1.0


def test_paired_bootstrap_similar_systems_not_significant() -> None:
    refs, weak, _ = make_systems(200, seed=2)
    _, other, _ = make_systems(200, seed=2, noise_seed=99)  # same references, other noise, same level
    result = M.paired_bootstrap("bleu", weak, other, refs, n=500, seed=0)["bleu"]
    assert result["p_value"] > 0.05
