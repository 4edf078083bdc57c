"""TIFU-KNN, candidate generators and the learned re-ranker: behaviour on hand-made logs, no leakage."""

from __future__ import annotations

import numpy as np
import torch

from purchasepred.eval.tifu import TifuKNN, TifuVectors

DAY = 86400
CUTOFF = 100 * DAY  # the window starts on day 100


def log(rows: list[tuple[int, int, int, int, int]]) -> dict[str, np.ndarray]:
    """(user, item, event type, day, session) rows -> the arrays the rankers read."""
    a = np.array(rows, dtype=np.int64)
    return {"user_idx": a[:, 0], "item_idx": a[:, 1], "event_type_id": a[:, 2], "ts": a[:, 3] * DAY,
            "session_no": a[:, 4], "price_bucket": np.full(len(a), 5), "category_idx": np.full(len(a), 2)}


def tifu(events: dict[str, np.ndarray], k: int, alpha: float, n_items: int = 20) -> TifuKNN:
    pop = torch.zeros(n_items)
    pop[12] = 1.0  # a popular item nobody similar touched
    return TifuKNN(TifuVectors(events, n_items, CUTOFF, 2, 0.9, 0.7), pop, k, alpha)


def top(scorer, user: int, n: int) -> list[int]:
    s = scorer(np.array([user]))[0]
    s[:2] = float("-inf")
    return torch.topk(s, n).indices.tolist()


BASE = [
    # user 2: item 5 in every session, item 7 once, item 6 once
    (2, 5, 1, 90, 1), (2, 5, 1, 90, 1), (2, 7, 1, 91, 2), (2, 5, 3, 92, 3), (2, 6, 1, 93, 4), (2, 5, 1, 94, 5),
    # user 3: the same items as user 2, and it bought item 9
    (3, 5, 1, 90, 1), (3, 7, 1, 91, 2), (3, 6, 1, 92, 3), (3, 5, 1, 93, 4), (3, 9, 3, 94, 5),
    # user 4: something else entirely, heavily
    (4, 10, 1, 90, 1), (4, 11, 3, 91, 2), (4, 12, 3, 92, 3), (4, 12, 3, 93, 4),
]


def test_tifu_alpha_one_ranks_own_frequent_items_first() -> None:
    scorer = tifu(log(BASE), k=1, alpha=1.0)
    # item 6's one session is more recent than item 7's: the decay orders them
    assert top(scorer, 2, 3) == [5, 6, 7]
    # with alpha = 1 nothing of user 3's purchase leaks in: item 9 is ranked by popularity only
    s = scorer(np.array([2]))[0]
    assert s[9] == 0.0 and s[12] > 0.0


def test_tifu_neighbour_term_recommends_what_a_near_identical_user_bought() -> None:
    scorer = tifu(log(BASE), k=1, alpha=0.5)
    nbr, sim = scorer.vectors.neighbours(np.array([2]), 1)
    assert nbr[0, 0] == 3 and sim[0, 0] > 0.5
    ranked = top(scorer, 2, 5)
    assert ranked.index(9) < 4, ranked  # among user 2's own three items
    assert ranked.index(9) < ranked.index(12)  # above the popular item user 3 never touched
    # without the neighbour term item 9 is not above the popular item
    alone = top(tifu(log(BASE), k=1, alpha=1.0), 2, 5)
    assert alone.index(12) < (alone.index(9) if 9 in alone else 99)


def test_tifu_ignores_events_at_or_after_the_cutoff() -> None:
    later = BASE + [(2, 12, 3, 100, 6), (2, 13, 3, 101, 7), (3, 14, 3, 120, 6)]
    a, b = tifu(log(BASE), k=2, alpha=0.6), tifu(log(later), k=2, alpha=0.6)
    users = np.array([2, 3, 4])
    assert torch.equal(a(users), b(users))


def test_tifu_cold_user_gets_popularity() -> None:
    scorer = tifu(log(BASE), k=2, alpha=0.6)
    assert top(scorer, 17, 1) == [12]  # beyond every known user


# ------------------------------------------------------------------------------------------ candidates
def generator(events: dict[str, np.ndarray], n_items: int = 20, model=None):
    from purchasepred.eval.candidates import CandidateConfig, CandidateGenerator, ItemGraph, trending_scores

    cfg = CandidateConfig(own=3, cooc=3, bought_after_viewed=3, trending=2, popularity=2, model=2)
    personal = tifu(events, k=1, alpha=1.0, n_items=n_items).vectors.dense  # any own-history score will do

    def share(users: np.ndarray) -> torch.Tensor:
        return torch.ones(len(users), n_items)

    pop = torch.zeros(n_items)
    pop[12], pop[10] = 2.0, 1.0
    return CandidateGenerator(ItemGraph(events, n_items, CUTOFF, cfg), personal, share,
                              trending_scores(events, n_items, CUTOFF, 3.0), pop, cfg, model)


def test_item_graph_links_items_of_one_session_and_items_bought_after_viewing() -> None:
    from purchasepred.eval.candidates import CandidateConfig, ItemGraph

    rows = [(5, 2, 1, 90, 1), (5, 3, 1, 90, 1), (5, 4, 1, 95, 2), (6, 2, 1, 90, 1), (6, 3, 1, 90, 1),
            (7, 8, 1, 96, 1), (7, 9, 3, 97, 1), (8, 8, 1, 90, 1), (8, 9, 3, 98, 2)]
    g = ItemGraph(log(rows), 12, CUTOFF, CandidateConfig())
    cooc = g.cooc.to_dense()
    assert cooc[2, 3] > 0 and cooc[3, 2] > 0 and cooc[2, 4] == 0  # item 4 was in another session
    bav = g.bav.to_dense()
    assert bav[8, 9] > 0 and bav[9, 8] == 0  # viewed 8, then bought 9 (user 8: eight days later: too late)
    seeds = torch.zeros(1, 12)
    seeds[0, 8] = 1.0
    assert g.spread(seeds, "bav")[0].argmax().item() == 9


def test_candidates_union_flags_and_recall() -> None:
    from purchasepred.eval.candidates import GENERATORS, recall

    gen = generator(log(BASE))
    c = gen(np.array([2, 17]))
    own = 1 << GENERATORS.index("own")
    user2 = c.items[(c.rows == 0) & (c.flags & own > 0)]
    assert set(user2.tolist()) == {5, 6, 7}
    assert set(c.items[c.rows == 1].tolist()) == {12, 10}  # a cold user: popularity (and trending) only
    assert np.all(np.diff(c.rows * 100 + c.items) > 0)  # sorted by row then item, no duplicate pair
    truth = np.array([[9, -1], [12, -5]])
    r = recall(gen, np.array([2, 17]), truth, np.array([1, 2]))
    assert r["own"]["recall"] == 0.0
    assert r["popularity"]["recall"] == 0.25  # user 17 has one of its two purchases (the other is unknown)
    assert r["union"]["recall"] >= max(r[g]["recall"] for g in gen.generators)


def test_candidates_ignore_events_at_or_after_the_cutoff() -> None:
    # after the cutoff: user 2 buys 14 in a session with its item 5 (a co-occurrence), user 3 too
    later = BASE + [(2, 5, 1, 100, 6), (2, 14, 3, 100, 6), (3, 5, 1, 101, 6), (3, 14, 3, 101, 6), (4, 15, 3, 100, 6)]
    a, b = generator(log(BASE))(np.array([2, 3, 4])), generator(log(later))(np.array([2, 3, 4]))
    assert np.array_equal(a.items, b.items) and np.array_equal(a.flags, b.flags)


# ------------------------------------------------------------------------------------------ re-ranker
def builder(events: dict[str, np.ndarray], n_items: int = 20):
    from purchasepred.eval.rerank import FeatureBuilder

    pop = torch.zeros(n_items)
    pop[12], pop[10] = 2.0, 1.0
    personal = tifu(events, k=1, alpha=1.0, n_items=n_items).vectors.dense
    from purchasepred.eval.propensity import Propensity

    return FeatureBuilder(events, n_items, CUTOFF, np.full(n_items, 2), pop, torch.zeros(n_items), personal, 7.0,
                          tifu=tifu(events, k=1, alpha=0.5, n_items=n_items),
                          propensity=Propensity(events, n_items, np.full(n_items, 2), CUTOFF))


def test_features_are_computed_from_events_before_the_cutoff_only() -> None:
    from purchasepred.eval.rerank import FEATURES

    later = BASE + [(2, 5, 1, 100, 6), (2, 14, 3, 100, 6), (3, 9, 3, 101, 6), (4, 6, 3, 100, 6)]
    users = np.array([2, 3, 4, 17])
    (ca, xa), (cb, xb) = builder(log(BASE))(users), builder(log(later))(users)
    assert np.array_equal(ca.items, cb.items) and np.array_equal(xa, xb)
    col = {f: i for i, f in enumerate(FEATURES)}
    own5 = xa[(ca.rows == 0) & (ca.items == 5)][0]
    assert own5[col["n_purchases"]] > 0 and own5[col["n_views"]] > 0 and own5[col["in_last_session"]] == 1
    assert abs(own5[col["days_since_touch"]] - 6.0) < 1e-3  # last touched on day 94, the window starts on day 100
    # the funnel ranker proposes candidates, and its score against the user's best is a feature (<= 0, 0 at the best)
    from purchasepred.eval.candidates import GENERATORS

    assert ((ca.flags >> GENERATORS.index("propensity")) & 1).any()
    p = xa[:, col["propensity"]]
    assert (p <= 0).all() and all(p[ca.rows == r].max() == 0 for r in range(len(users)))


def test_training_set_with_carts_grades_purchases_over_carts_and_adds_the_carters() -> None:
    from purchasepred.eval.rerank import training_set, training_set_with_carts

    fb = builder(log(BASE))
    buyers, bought = np.array([2]), np.array([[5, -1]])
    # user 2 carted item 7 and the item it bought; user 3 only carted item 6
    cart_users, cart_items = np.array([2, 2, 3]), np.array([7, 5, 6])
    ts = training_set_with_carts(fb, buyers, bought, cart_users, cart_items)
    assert ts.users.tolist() == [2, 3]
    label = {(int(ts.users[r]), int(i)): float(y) for r, i, y in zip(ts.rows, ts.items, ts.y, strict=True)}
    assert label[(2, 5)] == 2.0 and label[(2, 7)] == 1.0 and label[(3, 6)] == 1.0
    assert sorted(label.values()).count(2.0) == 1 and sorted(label.values()).count(1.0) == 2
    # the buyers' candidates and features are those of the purchase-only set
    plain = training_set(fb, buyers, bought)
    mine = ts.rows == 0
    assert np.array_equal(plain.items, ts.items[mine]) and np.array_equal(plain.x, ts.x[mine])
    assert np.array_equal(plain.y > 0, ts.y[mine] == 2.0)


def planted(seed: int = 0, users: int = 120, per_user: int = 15):
    """Candidates where the label follows 'own' and 'cooc' with noise."""
    from purchasepred.eval.rerank import FEATURES, TrainingSet

    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(users), per_user)
    x = rng.normal(size=(len(rows), len(FEATURES))).astype(np.float32)
    col = {f: i for i, f in enumerate(FEATURES)}
    logit = 2.0 * x[:, col["own"]] + 1.0 * x[:, col["cooc"]]
    y = np.zeros(len(rows), np.float32)
    for u in range(users):  # one purchase per user, drawn from the softmax of the logit
        sel = rows == u
        p = np.exp(logit[sel]) / np.exp(logit[sel]).sum()
        y[np.flatnonzero(sel)[rng.choice(per_user, p=p)]] = 1.0
    items = np.tile(np.arange(2, 2 + per_user), users)
    return TrainingSet(np.arange(100, 100 + users), rows, items, x, y)


def test_both_learners_learn_a_planted_signal_out_of_fold_and_round_trip() -> None:
    from purchasepred.eval.rerank import FEATURES, available_learners, fit_learner, load_learner, out_of_fold

    ts = planted()
    col = {f: i for i, f in enumerate(FEATURES)}
    kinds = available_learners()
    assert "torch" in kinds
    for kind in kinds:  # (lightgbm_carts fits graded labels; here they are 0/1, its lists the same)
        pred = out_of_fold(ts, kind)
        # the bought item's rank among its user's candidates, out of fold: far better than chance (8)
        ranks = [1 + (pred[ts.rows == u] > pred[(ts.rows == u) & (ts.y > 0)][0]).sum() for u in range(len(ts.users))]
        assert np.mean(ranks) < 4.5, (kind, np.mean(ranks))
        learner = fit_learner(ts, kind)
        again = load_learner(learner.to_dict())
        assert np.allclose(learner.predict(ts.x[:50]), again.predict(ts.x[:50]), atol=1e-5)
        # the learner follows the planted direction
        x = np.zeros((2, len(FEATURES)), np.float32)
        x[1, col["own"]] = 2.0
        p = learner.predict(x)
        assert p[1] > p[0], kind


def test_a_valid_window_without_a_positive_candidate_still_gives_every_learner() -> None:
    from purchasepred.eval.rerank import LEARNERS, available_learners, fit_learner, load_learner, out_of_fold

    ts = planted(users=6)
    ts.y[:] = 0.0  # no buyer's purchase among its candidates
    for kind in available_learners():
        # scored out of fold as the learner that is kept: unfitted (the funnel learner: the propensity feature)
        assert np.allclose(out_of_fold(ts, kind), LEARNERS[kind]().predict(ts.x)), kind
        learner = load_learner(fit_learner(ts, kind).to_dict())
        pred = learner.predict(ts.x)
        assert pred.shape == (len(ts.rows),) and np.isfinite(pred).all(), kind


def test_the_funnel_learner_starts_from_the_propensity_score() -> None:
    import pytest

    from purchasepred.eval.rerank import FEATURES, LambdaRankGBM, LambdaRankOnFunnel, fit_learner, out_of_fold

    if not LambdaRankGBM.available():
        pytest.skip("lightgbm is not installed")
    ts = planted(users=12)
    col = FEATURES.index("propensity")
    # the label follows the propensity score alone, and there are too few lists for trees to find it
    rng = np.random.default_rng(1)
    ts.y[:] = 0.0
    for u in range(len(ts.users)):
        sel = np.flatnonzero(ts.rows == u)
        p = np.exp(3.0 * ts.x[sel, col]) / np.exp(3.0 * ts.x[sel, col]).sum()
        ts.y[sel[rng.choice(len(sel), p=p)]] = 1.0

    def mean_rank(pred: np.ndarray) -> float:
        return float(np.mean([1 + (pred[ts.rows == u] > pred[(ts.rows == u) & (ts.y > 0)][0]).sum()
                              for u in range(len(ts.users))]))

    assert mean_rank(out_of_fold(ts, "lightgbm_funnel")) < mean_rank(out_of_fold(ts, "lightgbm_carts"))
    learner = fit_learner(ts, "lightgbm_funnel")
    assert isinstance(learner, LambdaRankOnFunnel)
    # its score is the trees' correction plus the propensity feature
    raw = learner.booster.predict(ts.x[:20])
    assert np.allclose(learner.predict(ts.x[:20]), raw + ts.x[:20, col], atol=1e-5)


def test_two_stage_puts_every_candidate_above_every_other_item() -> None:
    from purchasepred.eval.rerank import ListwiseMLP, TwoStage

    fb = builder(log(BASE))
    users = np.array([2, 3, 4])
    c, _ = fb(users)
    scores = TwoStage(fb, ListwiseMLP())(users)
    for r in range(len(users)):
        cand = np.zeros(20, dtype=bool)
        cand[c.items[c.rows == r]] = True
        assert scores[r, torch.as_tensor(cand)].min() > scores[r, torch.as_tensor(~cand)].max()


def test_top_n_mask_breaks_ties_by_item_id() -> None:
    from purchasepred.eval.candidates import top_n_mask

    s = torch.tensor([[float("-inf"), float("-inf"), 1.0, 3.0, 1.0, 1.0, 2.0, float("-inf")]])
    assert top_n_mask(s, 3)[0].nonzero().flatten().tolist() == [2, 3, 6]
    assert top_n_mask(s, 4)[0].nonzero().flatten().tolist() == [2, 3, 4, 6]
    assert top_n_mask(s, 7)[0].nonzero().flatten().tolist() == [2, 3, 4, 5, 6]  # never an -inf item


def test_top_n_is_the_set_of_the_tie_breaking_rule_on_random_ties() -> None:
    from purchasepred.eval.candidates import top_n, top_n_mask

    g = torch.Generator().manual_seed(0)
    for n in (1, 3, 8):
        s = torch.randint(0, 4, (50, 12), generator=g).float()  # many ties across the boundary
        s[s == 0] = float("-inf")  # rows with fewer than n finite scores too
        s[0] = float("-inf")
        # the rule written out: every score above the n-th, then the tied ones by item id; finite only
        order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :n]
        expected = torch.zeros_like(s, dtype=torch.bool).scatter_(1, order, True) & torch.isfinite(s)
        assert torch.equal(top_n_mask(s, n), expected)
        rows, items = top_n(s, n)
        assert len(rows) == int(expected.sum())


def test_the_view_head_from_the_shared_encoding_equals_its_own_scoring() -> None:
    from datetime import datetime

    from purchasepred.config import ModelConfig
    from purchasepred.data.tensors import SEQ_COLUMNS, SplitData
    from purchasepred.eval.rankers import ModelScorer, Popularity
    from purchasepred.eval.rerank import ViewScorer
    from purchasepred.features import Vocab
    from purchasepred.models.batching import trim_padding
    from purchasepred.models.transformer import TransformerRecommender

    torch.manual_seed(0)
    model = TransformerRecommender(ModelConfig(d_model=16, n_layers=1), Vocab(20, 5, 5), 6).eval()
    rng = np.random.default_rng(0)
    n_events = np.array([6, 2, 4, 1])
    feats = {c: np.zeros((4, 6), dtype=np.int64) for c in SEQ_COLUMNS}
    for r, n in enumerate(n_events):  # left-padded
        for c in SEQ_COLUMNS:
            high = {"item_idx": 20, "brand_idx": 5, "category_idx": 5, "event_type_id": 4}.get(c, 5)
            feats[c][r, 6 - n:] = rng.integers(1, high, n) if c != "ts" else np.sort(rng.integers(1, 10**6, n))
    split = SplitData(split="test", window_start=datetime(2019, 10, 1), window_end=datetime(2019, 10, 2),
                      start_ts=1569888000, user_idx=np.array([2, 3, 5, 8]), n_events=n_events, features=feats,
                      truth_users=np.array([2]), truth_items=np.array([[4]]), n_relevant=np.array([1]))
    events = log([(2, 4, 1, 90, 1), (3, 5, 1, 91, 1), (5, 6, 3, 92, 2)])
    pop = Popularity(events, 20, CUTOFF, 7.0)
    users = np.array([8, 2, 9, 5, 3])  # user 9 has no input: popularity
    both = ModelScorer(model, split, pop, torch.device("cpu"), view=True)
    buy = both(users)
    assert torch.equal(buy, ModelScorer(model, split, pop, torch.device("cpu"))(users))
    view = ViewScorer(both)(users)
    rows = split.rows_of(users)
    with torch.no_grad():
        for i, r in enumerate(rows):
            if r < 0:
                assert torch.equal(view[i], torch.log(pop.normalized + 1e-12))
                continue
            batch = trim_padding({c: torch.as_tensor(feats[c][r:r + 1]) for c in SEQ_COLUMNS})
            h = model.encode(batch)[:, -1]
            ref = torch.log_softmax(torch.addmm(model.view_bias, h, model.item.weight.t()).float(), -1)[0]
            torch.testing.assert_close(view[i], ref, rtol=0, atol=1e-5)
    assert ViewScorer(both)(users[:2]).shape == (2, 20)  # another batch: scored afresh
