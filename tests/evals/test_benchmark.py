"""The benchmark runner: batching, resumable per-item cache, result JSON, predictors, registry."""

import json
from pathlib import Path

import numpy as np
import pytest

from evals import registry
from evals.benchmark import Benchmark, run
from evals.predictors import FolderPredictions, PredictionError, make_predictor


class Squares(Benchmark):
    """Toy benchmark: item i's answer is i*i; score = 1 if right."""

    name = "toy_squares"
    data_name = "toy"

    def __init__(self, n=10):
        self.n = n

    def items(self):
        return [{"id": f"item{i}", "x": i, "hash_fields": i} for i in range(self.n)]

    def predict(self, predictor, batch):
        return predictor(batch)

    def score(self, item, prediction):
        return {"correct": float(prediction == item["x"] ** 2)}

    def aggregate(self, scores):
        return {"accuracy": float(np.mean([s["correct"] for s in scores]))}


class Oracle:
    def __init__(self, name="oracle", fail_after=None, wrong=()):
        self.name, self.fail_after, self.wrong, self.seen = name, fail_after, set(wrong), []

    def describe(self):
        return {"name": self.name, "kind": "model", "hash": self.name}

    def __call__(self, batch):
        out = []
        for it in batch:
            if self.fail_after is not None and len(self.seen) >= self.fail_after:
                raise RuntimeError("killed")
            self.seen.append(it["id"])
            out.append(-1 if it["x"] in self.wrong else it["x"] ** 2)
        return out


def test_result_json_has_metrics_hashes_and_protocol(tmp_path):
    r = run(Squares(), Oracle(wrong={3}), tmp_path, batch_size=4)
    assert r["metrics"] == {"accuracy": 0.9} and r["n_items"] == 10
    assert r["model"] == {"name": "oracle", "kind": "model", "hash": "oracle"}
    assert r["protocol_version"] == "1" and len(r["data"]["hash"]) == 16
    assert json.loads((tmp_path / "result.json").read_text())["metrics"] == {"accuracy": 0.9}
    assert json.loads((tmp_path / "scores.json").read_text())["item3"] == {"correct": 0.0}


def test_killed_evaluation_resumes_without_redoing_items(tmp_path):
    with pytest.raises(RuntimeError):
        run(Squares(), Oracle(fail_after=6), tmp_path, batch_size=2)
    again = Oracle()
    r = run(Squares(), again, tmp_path, batch_size=2)
    assert again.seen == [f"item{i}" for i in range(6, 10)]
    assert r["metrics"]["accuracy"] == 1.0


def test_cache_is_not_reused_for_another_model(tmp_path):
    run(Squares(), Oracle("a", wrong={1, 2}), tmp_path)
    b = Oracle("b")
    r = run(Squares(), b, tmp_path)
    assert len(b.seen) == 10 and r["metrics"]["accuracy"] == 1.0


def test_a_full_run_drops_cached_rows_of_items_the_benchmark_no_longer_has(tmp_path):
    class Shifted(Squares):  # items 0-5 gone, 6-9 kept, their data changed for 8 and 9, 10-11 new
        def items(self):
            return [{"id": f"item{i}", "x": i, "hash_fields": i + 100 * (i >= 8)} for i in range(6, 12)]

    run(Squares(), Oracle("a"), tmp_path)
    run(Squares(), Oracle("b"), tmp_path)
    run(Shifted(), Oracle("a"), tmp_path, limit=3)  # items 6-8; a partial run drops nothing: it saw only some
    assert len((tmp_path / "items.jsonl").read_text().splitlines()) == 10 + 10 + 1
    again = Oracle("a")
    run(Shifted(), again, tmp_path)
    assert again.seen == ["item9", "item10", "item11"]  # 6 and 7 unchanged, 8 from the partial run
    rows = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    # model a: 6 and 7 of the first run, 8 of the partial one, 9-11; model b: 6 and 7 (still its valid cache)
    assert sorted((r["key"]["model"], r["id"]) for r in rows) == sorted(
        [("a", f"item{i}") for i in range(6, 12)] + [("b", "item6"), ("b", "item7")])


class Drawn(Squares):
    """Squares under a setting that, as in the real benchmarks, is part of each item's data; draws a sample grid."""

    def __init__(self, setting: str):
        super().__init__()
        self.setting = setting

    def items(self):
        return [dict(it, hash_fields=[it["hash_fields"], self.setting]) for it in super().items()]

    def sample_grid(self, items, predictions, path):
        path.write_bytes(f"png of {self.setting}".encode())
        return True


def set_aside(out_dir) -> dict[str, Path]:
    """The settings folders by the setting their result.json holds."""
    return {json.loads((d / "result.json").read_text())["setting"]: d for d in (out_dir / "settings").iterdir()}


def test_each_setting_run_in_a_folder_keeps_its_result(tmp_path):
    """A run of another setting sets the result on top (with its scores and samples) aside in settings/; running a
    setting again puts it back on top, its copy there gone: each setting once, the newest where DVC reads it."""
    one = run(Drawn("1-view"), Oracle(wrong={3}), tmp_path)
    two = run(Drawn("2-view (known poses)"), Oracle(), tmp_path)
    aside = set_aside(tmp_path)
    assert list(aside) == ["1-view"] and aside["1-view"].name.startswith("1-view-")
    kept = json.loads((aside["1-view"] / "result.json").read_text())
    assert kept["metrics"] == one["metrics"] == {"accuracy": 0.9}
    assert kept["samples"] == str(aside["1-view"] / "samples.png")
    assert (aside["1-view"] / "samples.png").read_bytes() == b"png of 1-view"
    assert json.loads((aside["1-view"] / "scores.json").read_text())["item3"] == {"correct": 0.0}
    top = json.loads((tmp_path / "result.json").read_text())
    assert top["setting"] == two["setting"] == "2-view (known poses)"
    assert (tmp_path / "samples.png").read_bytes() == b"png of 2-view (known poses)"
    run(Drawn("1-view"), Oracle(wrong={3}), tmp_path)
    top = json.loads((tmp_path / "result.json").read_text())
    assert top["setting"] == "1-view" and top["metrics"] == {"accuracy": 0.9}
    assert (tmp_path / "samples.png").read_bytes() == b"png of 1-view"
    aside = set_aside(tmp_path)
    assert list(aside) == ["2-view (known poses)"]  # 1-view's copy went: it is on top again
    assert json.loads((aside["2-view (known poses)"] / "result.json").read_text())["metrics"] == {"accuracy": 1.0}


@pytest.mark.parametrize("first, second", [("1 view", "1_view"), ("..", "."), ("all", "..")])
def test_settings_alike_as_names_keep_their_own_folders(tmp_path, first, second):
    """Settings that read alike as paths ("1 view" and "1_view"; dots, which would name folders above) never share or
    escape their folder: both results stay, and nothing outside settings/ goes."""
    (tmp_path / "keep.txt").write_text("unrelated")
    run(Drawn(first), Oracle(wrong={3}), tmp_path)
    run(Drawn(second), Oracle(), tmp_path)
    run(Drawn("other"), Oracle(), tmp_path)
    aside = set_aside(tmp_path)
    assert sorted(aside) == sorted([first, second]) and all(d.parent == tmp_path / "settings" for d in aside.values())
    assert (tmp_path / "keep.txt").read_text() == "unrelated" and (tmp_path / "items.jsonl").is_file()


def test_a_crash_while_setting_aside_loses_nothing(tmp_path, monkeypatch):
    """Killed between the copy and the removal of the top result: the rerun sets it aside again, whole."""
    import evals.benchmark as runner

    run(Drawn("1-view"), Oracle(wrong={3}), tmp_path)
    real_unlink = Path.unlink

    def killed(path, *args, **kwargs):
        if path.name == "result.json" and path.parent == tmp_path:
            raise KeyboardInterrupt
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(runner.Path, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        run(Drawn("2-view"), Oracle(), tmp_path)
    monkeypatch.undo()
    run(Drawn("2-view"), Oracle(), tmp_path)
    folder = set_aside(tmp_path)["1-view"]
    assert sorted(p.name for p in folder.iterdir()) == ["result.json", "samples.png", "scores.json"]
    assert json.loads((folder / "scores.json").read_text())["item3"] == {"correct": 0.0}


def test_a_partial_run_writes_beside_the_full_result_never_over_it(tmp_path):
    full = run(Squares(), Oracle(wrong={0}), tmp_path)
    partial = run(Squares(), Oracle("b"), tmp_path, limit=4)
    assert partial["n_items"] == 4 and partial["metrics"] == {"accuracy": 1.0}
    assert json.loads((tmp_path / "result.partial.json").read_text())["n_items"] == 4
    assert len(json.loads((tmp_path / "scores.partial.json").read_text())) == 4
    kept = json.loads((tmp_path / "result.json").read_text())
    assert kept["n_items"] == 10 and kept["metrics"] == full["metrics"] == {"accuracy": 0.9}
    assert len(json.loads((tmp_path / "scores.json").read_text())) == 10


def test_duplicate_ids_are_refused(tmp_path):
    class Dup(Squares):
        def items(self):
            return [{"id": "same", "x": 1}, {"id": "same", "x": 2}]

    with pytest.raises(ValueError, match="not unique"):
        run(Dup(), Oracle(), tmp_path)


def test_folder_predictions_name_the_missing_item(tmp_path):
    (tmp_path / "preds").mkdir()
    np.save(tmp_path / "preds" / "a.npy", np.ones((4, 5), np.float32))
    f = FolderPredictions(tmp_path / "preds")
    rgb = np.zeros((4, 5, 3), np.uint8)
    assert f.predict_depth([{"id": "a", "rgb": rgb}])[0].shape == (4, 5)
    with pytest.raises(PredictionError, match="b: prediction .*b.npy not found"):
        f.predict_depth([{"id": "b", "rgb": rgb}])
    with pytest.raises(PredictionError, match="shape"):
        f.predict_depth([{"id": "a", "rgb": np.zeros((3, 5, 3), np.uint8)}])
    assert f.describe()["kind"] == "predictions"


def test_predictor_specs_and_registry_errors():
    assert make_predictor("baseline:constant-depth").describe()["kind"] == "baseline"
    with pytest.raises(ValueError, match="unknown predictor"):
        make_predictor("magic")
    with pytest.raises(KeyError, match="unknown benchmark 'nope'; known: .*world_depth"):
        registry.get("nope")
