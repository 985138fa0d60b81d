import numpy as np

from cca.classifier import ClassifierParams, EnsembleClassifier, threshold_for_precision


def test_threshold_for_precision_picks_widest_safe_cut():
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    assert threshold_for_precision(conf, correct, 1.0, min_support=1) == 0.8
    assert threshold_for_precision(conf, correct, 0.8, min_support=1) == 0.7
    assert threshold_for_precision(conf, ~correct, 0.9, min_support=1) == 1.0


def test_ensemble_learns_and_calibration_lowers_log_loss():
    rng = np.random.default_rng(0)
    words = {"a": "refund money back", "b": "password login access", "c": "parcel late delivery"}
    texts, y, emb = [], [], []
    centres = {k: rng.normal(size=8) for k in words}
    for _ in range(60):
        for label, w in words.items():
            toks = w.split()
            texts.append(" ".join(rng.choice(toks, size=3)) + " " + rng.choice(["pls", "hi", ""]))
            y.append(label)
            emb.append(centres[label] + rng.normal(scale=1.5, size=8))
    emb = np.asarray(emb, dtype=np.float32)
    clf = EnsembleClassifier(params=ClassifierParams(tfidf_c=1.0, embedding_c=1.0))
    clf.fit(texts[:120], emb[:120], y[:120])
    p_before = clf.predict_proba(texts[120:], emb[120:])
    t = clf.calibrate(texts[120:], emb[120:], y[120:])
    p_after = clf.predict_proba(texts[120:], emb[120:])
    idx = [clf.labels.index(label) for label in y[120:]]
    nll = lambda p: -np.mean(np.log(p[np.arange(len(idx)), idx]))  # noqa: E731
    assert t != 1.0
    assert nll(p_after) <= nll(p_before) + 1e-9
    assert (np.asarray(clf.labels)[p_after.argmax(1)] == np.asarray(y[120:])).mean() >= 0.85
    assert np.allclose(p_after.sum(axis=1), 1.0)
