"""Ray Data as the engine: a local Ray instance (2 CPUs) started here; the records equal the single process's."""

from __future__ import annotations

import json

import pytest
from conftest import SAMPLES

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'cvtool[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is an optional extra: pip install 'cvtool[ray]'")

DIGITS = SAMPLES / "digits"
pytestmark = pytest.mark.slow  # a Ray instance and two actors take ~60 s on a 2-core machine


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _strip(records):
    return [{k: v for k, v in r.items() if k != "ms"} for r in records]


def test_ray_records_equal_the_single_process_run(local_ray, tmp_path):
    import cvtool
    from cvtool.scale import ray_run

    missing = str(tmp_path / "missing.png")
    single = [r.to_dict() for r in cvtool.Classifier("lenet5_digits", device="cpu", top_k=2).run([DIGITS, missing])]
    out = tmp_path / "records.jsonl"
    failed = ray_run("classify", [DIGITS, missing], out_jsonl=out, model="lenet5_digits", top_k=2, num_workers=2,
                     batch_size=3)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert failed == 1 and len(records) == 11
    assert _strip(records) == _strip(single)  # same records, same order, timings aside
    assert records[-1] == {"path": missing, "error": "no such file or directory"}


def test_unknown_task_is_one_usage_line(local_ray):
    from cvtool.errors import UsageError
    from cvtool.scale import ray_records

    with pytest.raises(UsageError, match="unknown task 'clasify'; one of classify, detect, segment, stylize, "
                                         "verify-face"):
        list(ray_records("clasify", [DIGITS]))
