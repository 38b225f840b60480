"""Intent detection: accuracy on unseen queries, calibration, routing, determinism, save/load."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from rewriters.commands import INTENTS
from rewriters.data import Example, split_by_query
from rewriters.errors import ConfigError, DataError, ModelError
from rewriters.intent import (
    CONFIG_FILE,
    FEATURE_SPEC,
    METRICS_FILE,
    WEIGHTS_FILE,
    IntentConfig,
    IntentDetector,
    featurize,
    load_intent_detector,
)
from rewriters.intent_train import (
    evaluate_intent,
    expected_calibration_error,
    fit_temperature,
    train_intent,
)

SUBJECTS = [
    "cat", "dog", "mountain", "sunset", "beach", "forest", "city skyline", "horse", "flower",
    "river", "lighthouse", "car", "bird", "ocean wave", "desert", "castle", "waterfall", "tiger",
    "rose", "snowy village", "coffee cup", "old bridge", "butterfly", "night sky",
    "autumn leaves", "sailboat", "owl", "lake", "cactus", "fox",
]
ADJECTIVES = ["", "cute", "beautiful", "vintage", "dark", "colorful", "minimal", "foggy", "golden"]
IMAGE_KINDS = ["photo", "painting", "wallpaper", "picture", "drawing", "photograph", "4k wallpaper"]
OCCASIONS = [
    "birthday", "wedding", "bake sale", "yard sale", "grand opening", "graduation", "baby shower",
    "halloween party", "christmas dinner", "charity run", "book club", "job fair", "concert",
    "restaurant", "coffee shop", "real estate", "gym", "school",
]
TEMPLATE_KINDS = [
    "flyer", "invitation", "banner", "menu", "poster template", "brochure", "newsletter",
    "social media post", "business card", "certificate",
]
# small model for speed; the test data has a few hundred distinct n-grams
CFG = IntentConfig(n_features=2**14, epochs=30, seed=0)


def synthetic_examples(n_per_intent: int = 150, seed: int = 0) -> list[Example]:
    """Distinct labelled queries: subject+picture word → image, occasion+document → template,
    a subject combined with an occasion document → both."""
    rng = random.Random(seed)
    c = rng.choice

    def both() -> str:
        if rng.random() < 0.5:
            link = ["themed", "with", "featuring"]  # "cat themed birthday flyer"
            return f"{c(SUBJECTS)} {c(link)} {c(OCCASIONS)} {c(TEMPLATE_KINDS)}"
        link = ["with", "featuring"]  # "gym flyer with fox photo"
        return f"{c(OCCASIONS)} {c(TEMPLATE_KINDS)} {c(link)} {c(SUBJECTS)} {c(IMAGE_KINDS)}"

    makers = {
        "image": lambda: f"{c(ADJECTIVES)} {c(SUBJECTS)} {c(IMAGE_KINDS)}",
        "template": lambda: f"{c(ADJECTIVES)} {c(OCCASIONS)} {c(TEMPLATE_KINDS)}",
        "both": both,
    }
    out, seen = [], set()
    for intent, make in makers.items():
        while sum(e.intent == intent for e in out) < n_per_intent:
            q = " ".join(make().split())
            if q not in seen:
                seen.add(q)
                out.append(Example.make(q, "image", "a prompt", "builtin", intent))
    rng.shuffle(out)
    return out


def handmade(bias_probs: tuple[float, float, float], threshold: float) -> IntentDetector:
    """A detector whose probabilities are exactly ``bias_probs`` for every query."""
    cfg = IntentConfig(n_features=16, threshold=threshold)
    return IntentDetector(cfg, np.zeros((16, 3), np.float32), np.log(np.array(bias_probs)))


@pytest.fixture(scope="module")
def split():
    return split_by_query(synthetic_examples(), held_out=0.3, seed=1)


@pytest.fixture(scope="module")
def trained(split):
    return train_intent(split[0], CFG, progress=False)


def test_accuracy_on_unseen_queries(split, trained):
    detector, _ = trained
    train, test = split
    assert not {e.query.lower() for e in train} & {e.query.lower() for e in test}
    report = evaluate_intent(detector, test)
    assert report["count"] == len(test) == 135
    assert report["accuracy"] >= 0.9  # measured 0.978 (132/135); chance is 1/3
    assert np.asarray(report["confusion"]).sum() == report["count"]
    assert np.trace(report["confusion"]) / report["count"] == pytest.approx(report["accuracy"])
    for intent in INTENTS:
        assert report["per_class"][intent]["recall"] >= 0.8
    assert 0.0 <= report["ece"] <= 0.1 and report["latency_us"] > 0


def test_probabilities_sum_to_one_and_paths_agree(trained):
    detector, _ = trained
    # "?!" has no features: mid-batch it must not shift the other queries' sums
    queries = ["vintage fox painting", "?!", "Wedding MENU", "owl themed birthday invitation"]
    batch = detector.predict_batch(queries)
    assert detector.predict_batch([]) == []
    for q, b in zip(queries, batch):
        one = detector.predict(q)
        assert math.fsum(one.probs.values()) == pytest.approx(1.0, abs=1e-9)
        assert list(one.probs) == list(INTENTS)
        assert one.intent == b.intent and one.routed == b.routed
        assert np.allclose(list(one.probs.values()), list(b.probs.values()), atol=1e-6)
    assert batch[0].intent == "image" and batch[0].routed == ("image",)
    assert batch[2].intent == "template" and batch[2].routed == ("template",)
    assert batch[3].routed == ("image", "template")


@pytest.mark.parametrize(
    "probs, threshold, intent, routed",
    [
        ((0.5, 0.3, 0.2), 0.45, "image", ("image",)),  # 0.5 >= 0.45: trust the top intent
        ((0.5, 0.3, 0.2), 0.6, "image", ("image", "template")),  # 0.5 < 0.6: unsure → both
        ((0.1, 0.7, 0.2), 0.6, "template", ("template",)),
        ((0.1, 0.1, 0.8), 0.6, "both", ("image", "template")),  # "both" always runs both
    ],
)
def test_routing_rule(probs, threshold, intent, routed):
    pred = handmade(probs, threshold).predict("anything")
    assert pred.intent == intent and pred.routed == routed
    assert [pred.probs[c] for c in INTENTS] == pytest.approx(probs)


def test_features_are_stable_across_processes():
    queries = ["Cute cat photo", "wedding invitation for Anna", "café menu – été 2024"]
    code = (
        "import json, sys\n"
        "from rewriters.intent import IntentConfig, featurize\n"
        "cfg = IntentConfig()\n"
        "qs = json.loads(sys.argv[1])\n"
        "print(json.dumps([[featurize(q, cfg)[0].tolist(), featurize(q, cfg)[1].tolist()] "
        "for q in qs]))\n"
    )
    for hash_seed in ("1", "2"):  # str hashes differ between these two processes
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(queries)],
            capture_output=True, text=True, check=True, env=env,
        )
        theirs = json.loads(out.stdout)
        for q, (idx, val) in zip(queries, theirs):
            mine_idx, mine_val = featurize(q, IntentConfig())
            assert idx == mine_idx.tolist()
            assert np.array_equal(np.asarray(val, np.float32), mine_val)


def test_featurize_shape_and_normalisation():
    cfg = IntentConfig(n_features=2**12)
    idx, val = featurize("Red  Rose PHOTO", cfg)
    assert idx.dtype == np.int64 and val.dtype == np.float32
    assert len(set(idx.tolist())) == len(idx) and ((0 <= idx) & (idx < 2**12)).all()
    assert float(np.linalg.norm(val)) == pytest.approx(1.0, abs=1e-6)
    same_idx, same_val = featurize("red rose photo", cfg)  # case and spacing are ignored
    assert np.array_equal(idx, same_idx) and np.array_equal(val, same_val)
    # "ab": word block {ab} and character block {<ab, ab>, <ab>}; each block gets norm 1/sqrt(2)
    idx, val = featurize("ab", IntentConfig())
    assert len(idx) == 4 and min(val.tolist()) == pytest.approx(1 / math.sqrt(2 * 3))
    idx, val = featurize("?!", cfg)
    assert len(idx) == 0 and len(val) == 0


def test_save_load_gives_identical_probabilities(trained, tmp_path):
    detector, metrics = trained
    detector.save(tmp_path / "intent", metrics=metrics)
    assert {p.name for p in (tmp_path / "intent").iterdir()} == {
        WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE
    }
    loaded = load_intent_detector(tmp_path / "intent")
    queries = ["fox wallpaper", "gym flyer", "cat with birthday banner", "zzz"]
    assert np.array_equal(loaded.predict_proba(queries), detector.predict_proba(queries))
    assert loaded.cfg == detector.cfg and loaded.temperature == detector.temperature
    saved = json.loads((tmp_path / "intent" / METRICS_FILE).read_text())
    assert saved["temperature"] == metrics["temperature"]


def test_load_errors_name_the_problem(trained, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_intent_detector(tmp_path / "nowhere")
    detector, _ = trained
    d = detector.save(tmp_path / "m")
    assert not (d / METRICS_FILE).exists()  # metrics only when given
    meta = json.loads((d / CONFIG_FILE).read_text())
    (d / CONFIG_FILE).write_text(json.dumps({**meta, "feature_spec": "old-v0"}))
    with pytest.raises(ModelError, match="feature spec 'old-v0'"):
        load_intent_detector(d)
    (d / CONFIG_FILE).write_text(json.dumps({**meta, "config": {**meta["config"], "bogus": 1}}))
    with pytest.raises(ModelError, match="invalid config"):
        load_intent_detector(d)
    (d / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelError, match=WEIGHTS_FILE):
        load_intent_detector(d)
    assert meta["feature_spec"] == FEATURE_SPEC and meta["classes"] == list(INTENTS)


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_blank_query_is_a_config_error(trained, query):
    detector, _ = trained
    with pytest.raises(ConfigError, match="blank"):
        detector.predict(query)
    with pytest.raises(ConfigError, match="blank"):
        detector.predict_batch(["cat photo", query])


def test_predict_batch_rejects_a_bare_string(trained):
    with pytest.raises(ConfigError, match="list of queries"):
        trained[0].predict_batch("cat photo")


def test_training_data_errors():
    one_class = [Example.make(f"cat photo {i}", "image", "p", "b", "image") for i in range(20)]
    with pytest.raises(DataError, match="need at least 2"):
        train_intent(one_class, CFG, progress=False)
    few = synthetic_examples(n_per_intent=3)  # 9 distinct queries
    with pytest.raises(DataError, match="9 distinct queries"):
        train_intent(few, CFG, progress=False)
    with pytest.raises(DataError, match="no examples"):
        evaluate_intent(handmade((0.4, 0.3, 0.3), 0.5), [])


def test_conflicting_labels_use_the_majority():
    ex = synthetic_examples(n_per_intent=10)
    mk = lambda q, intent: Example.make(q, "template", "p", "builtin", intent)
    ex += [mk("Dog Photo", "image"), mk("dog photo", "image"), mk("dog photo", "template")]
    ex += [mk("dog flyer", "image"), mk("dog flyer", "template")]  # a tie → "both"
    _, metrics = train_intent(ex, replace(CFG, epochs=2), progress=False)
    assert metrics["conflicts"] == 2 and metrics["queries"] == 32
    assert metrics["class_counts"] == {"image": 11, "template": 10, "both": 11}


def test_calibration_does_not_increase_nll(trained):
    _, m = trained
    assert m["calibration_queries"] == 63
    assert m["nll_after"] <= m["nll_before"]
    assert m["ece_after"] <= m["ece_before"]  # measured 0.051 → 0.017


def test_fit_temperature_recovers_the_true_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(20000, 3))
    p = np.exp(logits / 2.0)
    p /= p.sum(axis=1, keepdims=True)  # labels drawn at temperature 2: logits are overconfident
    labels = (rng.random(len(p))[:, None] > p.cumsum(axis=1)).sum(axis=1)
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.05)
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.9, 0.05, 0.05]] * 10)  # confidence 0.9 in bin [0.9, 1.0)
    assert expected_calibration_error(probs, np.array([0] * 9 + [1])) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.zeros(10, int)) == pytest.approx(0.1)
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, int)) == 0.0


def test_config_rejects_out_of_range_values():
    with pytest.raises(ConfigError, match="n_features=0"):
        IntentConfig(n_features=0)
    with pytest.raises(ConfigError, match="held_out=0.9"):
        IntentConfig(held_out=0.9)
    with pytest.raises(ConfigError, match="char_ngram_min=6 exceeds"):
        IntentConfig(char_ngram_min=6)


def test_training_is_deterministic(split, trained):
    again, _ = train_intent(split[0], CFG, progress=False)
    assert np.array_equal(again.weight, trained[0].weight)
    assert again.temperature == trained[0].temperature
