import json

from selfguide_lite.config import Config
from selfguide_lite.loop import should_promote, training_data


def test_promotion_tolerates_one_point_by_default():
    assert should_promote(60.0, 60.5, 1.0)
    assert should_promote(59.0, 60.0, 1.0)
    assert not should_promote(58.9, 60.0, 1.0)
    assert should_promote(70.0, 60.0, 1.0)


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_training_data_latest_or_accumulated_without_duplicates(tmp_path):
    a, b, c = ({"prompt": p, "completion": "x"} for p in "abc")
    r1 = _write(tmp_path / "round-1" / "synth" / "train.jsonl", [a, b])
    r2 = _write(tmp_path / "round-2" / "synth" / "train.jsonl", [b, c])
    latest = Config.model_validate({"loop": {"data": "latest"}})
    assert training_data(latest, tmp_path, 2, r2) == r2
    acc = Config.model_validate({"loop": {"data": "accumulate"}})
    out = training_data(acc, tmp_path, 2, r2)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows == [a, b, c] and out != r1
