"""The sweep's analytic bound per point, from step costs and the point's own cycles."""

import pytest

from specdec.tools.sweep import point_bound

TARGET = {(4, 1): 0.010, (4, 2): 0.011, (4, 3): 0.012, (4, 4): 0.014}  # t(rows, tokens), seconds
DRAFT = {(4, 1): 0.002}


def _point(cycles: int, drafted: int, draft_tokens: int, tokens_per_request: list[int], concurrency: int = 4) -> dict:
    return {"concurrency": concurrency, "cycles": cycles, "drafted_cycles": drafted, "draft_tokens": draft_tokens,
            "outputs": [[0, *range(n)] for n in tokens_per_request]}


def test_plain_decoding_is_rows_over_one_step():
    assert point_bound(_point(400, 0, 0, [100] * 4), TARGET, None) == pytest.approx(4 / 0.010)


def test_drafted_cycles_pay_k_draft_steps_and_a_verify():
    # 100 cycles, all drafting K = 2, 250 tokens: tau 2.5, a cycle 2 * 2 ms + t(4, 3) = 16 ms
    assert point_bound(_point(100, 100, 200, [250]), TARGET, DRAFT) == pytest.approx(4 * 2.5 / 0.016)
    # half the cycles plain, the others K = 1.5: the verify between t(4, 2) and t(4, 3)
    mixed = point_bound(_point(100, 50, 75, [160]), TARGET, DRAFT)
    assert mixed == pytest.approx(4 * 1.6 / (0.5 * 0.010 + 0.5 * (1.5 * 0.002 + 0.0115)))


def test_no_bound_without_cycles_or_without_the_drafts_costs():
    assert point_bound(_point(0, 0, 0, []), TARGET, DRAFT) is None  # hf-generate
    assert point_bound(_point(100, 10, 20, [120]), TARGET, None) is None  # a draft on its own device
    assert point_bound(_point(100, 0, 0, [100], concurrency=8), TARGET, DRAFT) is None  # not measured


def test_the_json_is_written_after_each_mode_and_the_exactness_check_then_complete(tmp_path):
    import json

    from specdec.tools.sweep import SweepSettings, save

    s = SweepSettings(json=str(tmp_path / "sweep.json"))
    save(s, [{"mode": "target-only", "concurrency": 1}])
    partial = json.loads((tmp_path / "sweep.json").read_text())
    assert not partial["complete"] and partial["points"] == [{"mode": "target-only", "concurrency": 1}]
    assert partial["greedy_mismatches"] is None  # not checked yet, which is not "none differ"
    save(s, partial["points"], None, [])
    checked = json.loads((tmp_path / "sweep.json").read_text())
    assert not checked["complete"] and checked["greedy_mismatches"] == []
    save(s, partial["points"], {1: 100.0}, [])
    done = json.loads((tmp_path / "sweep.json").read_text())
    assert done["complete"] and done["bounds"] == {"1": 100.0} and done["greedy_mismatches"] == []


def test_a_replayed_sweep_records_the_rate_its_draft_realises(tmp_path):
    """A replayed draft is right at a position by its request's seed and the position alone: the sweep records the
    rate its drafting points' requests realised (`replay_realised`), from each one's prompt and seed; points saved
    before requests had seeds of their own count with the sweep's one seed; none without a replay."""
    import json

    from specdec.proposers.replay import ReplayBook
    from specdec.tools.sweep import SweepSettings, replay_realised, save

    prompts, reference = [[1, 2, 3], [4, 5]], {0: list(range(100)), 1: list(range(50, 150))}
    book = ReplayBook([(prompts[i], ids) for i, ids in reference.items()])
    s = SweepSettings(json=str(tmp_path / "sweep.json"), replay_alpha=0.8, seed=3)
    assert s.request_seeds == 3 and SweepSettings().request_seeds is None  # a greedy sweep without a replay: none
    drafted = {"mode": "services-own-draft", "outputs": [[0, 9], [1, 9], [0, 9]], "seeds": [3, 4, 5]}
    plain = {"mode": "target-only", "outputs": [[1, 9]] * 4, "seeds": [3, 4, 5, 6]}  # drafts nothing: not counted
    realised = replay_realised(s, prompts, reference, [plain, drafted])
    assert realised == book.realised(0.8, [(prompts[0], 3), (prompts[1], 4), (prompts[0], 5)])
    old = {"mode": "engine-spec", "outputs": [[0, 9], [1, 9]]}  # saved before seeds: the sweep's one seed
    assert replay_realised(s, prompts, reference, [old]) == book.realised(0.8, [(prompts[0], 3), (prompts[1], 3)])
    save(s, [], None, [], realised)
    assert json.loads((tmp_path / "sweep.json").read_text())["replay_realised"] == realised
    assert replay_realised(SweepSettings(), prompts, reference, [drafted]) is None
    assert replay_realised(s, prompts, {0: [7], 1: [8]}, [drafted]) is None  # outputs of one token: no draft position


def test_load_clients_give_each_request_its_own_seed_where_asked():
    """`run_clients(seed=S)`: client i's j-th request carries S + i * requests + j, recorded beside its output;
    without it each request carries its client's sampling seed (None)."""
    import contextlib

    from specdec.tools.loadtest import Reply, run_clients

    sent = []

    @contextlib.contextmanager
    def connect():
        def call(prompt, max_new_tokens, seed=None):
            sent.append(seed)
            return Reply([seed or 0], 0.0)
        yield call

    result = run_clients(connect, 3, 2, ["a", "b"], 4, 60, seed=10)
    assert sorted(sent) == sorted(result.seeds) == list(range(10, 16))
    assert all(out[1] == seed for out, seed in zip(result.outputs, result.seeds))  # each beside its own output
    sent.clear()
    assert run_clients(connect, 2, 2, ["a"], 4, 60).seeds == [None] * 4 and sent == [None] * 4


def test_bounds_only_takes_only_a_sweep_s_own_results(tmp_path):
    import json

    from specdec.core.errors import InvalidArgument
    from specdec.tools.sweep import SweepSettings, measured_points, save

    path = tmp_path / "sweep.json"
    with pytest.raises(InvalidArgument, match="needs --json"):
        SweepSettings(json=str(path), bounds_only=True).validate()  # no such file
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(InvalidArgument, match="not a sweep's results"):
        measured_points(SweepSettings(json=str(path), bounds_only=True))
    measured = SweepSettings(json=str(path), levels=(1, 16))
    save(measured, [{"mode": "target-only", "concurrency": 1}])
    assert measured_points(SweepSettings(json=str(path), levels=(1, 16), bounds_only=True)) == [
        {"mode": "target-only", "concurrency": 1}]
    with pytest.raises(InvalidArgument, match=r"levels=\[1, 16\], not \(1, 64\)"):
        measured_points(SweepSettings(json=str(path), levels=(1, 64), bounds_only=True))
