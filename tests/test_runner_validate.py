"""Suite values are type-checked against the signature of what they are passed to, before any model work."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Optional, Union

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

from benchmark.errors import SuiteError
from benchmark.runner import parse_suite, plan_run
from benchmark.runner.validate import check_kwargs, describe, matches

import runner_fakes


@pytest.mark.parametrize(
    "value, tp, ok",
    [
        (3, float, True),
        (3.5, float, True),
        (True, float, False),
        ("3", float, False),
        (3, int, True),
        (3.0, int, False),
        (True, int, False),
        (True, bool, True),
        (1, bool, False),
        (None, Optional[int], True),
        ("16", Optional[int], False),
        (16, Optional[int], True),
        ("a", Union[str, int], True),
        (2, "str | int", True),
        (2.5, Union[str, int], False),
        ("a", Literal["a", "b"], True),
        ("c", Literal["a", "b"], False),
        (1, Literal["1"], False),
        ([1, 2], tuple[int, ...], True),
        ([1, "x"], tuple[int, ...], False),
        ([1, 2.5], tuple[int, float], True),
        ([1], tuple[int, float], False),
        (["a"], Sequence[str], True),
        ("a", Sequence[str], False),
        ([1, 2], list[float], True),
        ({"a": 1}, dict[str, int], True),
        ({"a": "x"}, dict[str, int], False),
        ("/x", Path, True),
        (3, Path, False),
        ({"lr": 1}, runner_fakes.TinyCNN, True),  # unknown class: not judged
    ],
)
def test_matches(value, tp, ok):
    assert matches(value, tp) is ok


def test_describe_names_the_expected_type_in_words():
    assert describe(Optional[int]) == "an integer"
    assert describe(Union[str, int]) == "a string or an integer"
    assert describe(Literal["a", "b"]) == "one of 'a', 'b'"
    assert describe(tuple[float, ...]) == "array (each a number)"


def test_check_kwargs_names_key_expected_type_and_value():
    def f(n: int | None = None, steps=4, name="x", **kw):
        pass

    with pytest.raises(SuiteError, match=r"data: `n` must be an integer, got 'sixteen' \(a string\)"):
        check_kwargs(f, {"n": "sixteen"}, "data")
    with pytest.raises(SuiteError, match=r"`steps` must be a number, got '4'"):  # no hint: the default's type
        check_kwargs(f, {"steps": "4"}, "p")
    check_kwargs(f, {"n": 3, "steps": 2.5, "name": 3, "other": "anything"}, "p")  # str defaults are not judged

    def g(n: int = 1):
        pass

    with pytest.raises(SuiteError, match="unknown key 'm'. Valid keys: n"):
        check_kwargs(g, {"m": 1}, "data")


def _suite(extra: str, data: str = "{ n = 4 }", dataset: str = "shapes", model: str = "shapes_cnn") -> str:
    return f"""
name = "v"
device = "cpu"
methods = ["gradcam"]
metrics = ["deletion_auc"]
{extra}
[[experiments]]
model = "{model}"
dataset = "{dataset}"
data = {data}
"""


@pytest.mark.parametrize(
    "extra, data, needle",
    [
        ("", '{ n = "sixteen" }', "`data` (arguments of dataset 'shapes'): `n` must be an integer, got 'sixteen'"),
        (
            '[metric_params.deletion_auc]\nn_steps = "16"\n',
            "{ n = 4 }",
            "[metric_params.deletion_auc]: `n_steps` must be an integer, got '16' (a string)",
        ),
        (
            '[method_params.smoothgradcampp]\nstd = "0.3"\n',
            "{ n = 4 }",
            "[method_params.smoothgradcampp]: `std` must be a number",
        ),
    ],
)
def test_plan_refuses_wrong_typed_suite_values(extra, data, needle):
    suite = parse_suite(_suite(extra, data))
    with pytest.raises(SuiteError) as exc:
        plan_run(suite)
    assert needle in str(exc.value)


def test_folder_dataset_arguments_are_checked(tmp_path):
    suite = parse_suite(_suite("", f'{{ root = "{tmp_path}", target = 1.5 }}', "folder", "shapes_cnn"))
    with pytest.raises(SuiteError, match="`target` must be a string or an integer, got 1.5"):
        plan_run(suite)
    suite = parse_suite(_suite("", f'{{ root = "{tmp_path}", rot = 1 }}', "folder", "shapes_cnn"))
    with pytest.raises(SuiteError, match="unknown key 'rot'. Valid keys: root, n, seed, target, verify"):
        plan_run(suite)


def test_every_registered_default_passes_its_own_check():
    from benchmark.runner import load_registries

    load_registries()
    from benchmark.methods import METHODS
    from benchmark.metrics import METRICS

    for reg in (METHODS, METRICS):
        for e in reg.entries():
            d = e.meta.get("defaults", {})
            check_kwargs(e.obj, d, e.name, defaults=d, unknown_ok=True)


@pytest.mark.parametrize(
    "text, needle",
    [
        (
            'name = "x"\ndescription = 3\n[[experiments]]\nmodel = "m"\ndataset = "d"\n',
            "`description` must be a string",
        ),
        ('name = "x"\n[[experiments]]\nmodel = "m"\ndataset = "d"\nlabel = 5\n', "`label` must be a non-empty string"),
        ('name = "x"\nseed = "0"\n[[experiments]]\nmodel = "m"\ndataset = "d"\n', "`seed` must be a non-negative"),
    ],
)
def test_suite_schema_types(text, needle):
    with pytest.raises(SuiteError, match=needle):
        parse_suite(text)


def test_a_value_the_dataset_rejects_is_a_suite_error_naming_data():
    suite = parse_suite(_suite("", "{ n = 4, max_distractors = 9 }"))
    with pytest.raises(SuiteError, match=r"Dataset 'shapes' rejected the suite's `data` arguments .*max_distractors"):
        plan_run(suite)
    # the dataset is its class: its __init__ hints check the values before it is built
    suite = parse_suite(_suite("", '{ n = 4, split = "nope" }'))
    with pytest.raises(SuiteError, match=r"`split` must be one of 'train', 'test', got 'nope'"):
        plan_run(suite)


def test_an_unresolvable_hint_leaves_the_other_hints_checked():
    ns: dict = {}
    exec(
        "from __future__ import annotations\ndef f(a: NotDefinedAnywhere = 1, n: int = 2):\n    pass\n",
        ns,
    )
    check_kwargs(ns["f"], {"a": "anything"}, "p")  # unknown annotation: passes
    with pytest.raises(SuiteError, match="`n` must be an integer"):
        check_kwargs(ns["f"], {"n": "2"}, "p")


def test_an_unknown_metric_or_method_key_names_the_valid_ones():
    """Parameters declared only by the signature: an unknown suite key is refused with the valid keys."""
    suite = parse_suite(_suite("[metric_params.deletion_auc]\nn_step = 4\n"))
    with pytest.raises(
        SuiteError,
        match=r"\[metric_params.deletion_auc\]: Metric 'deletion_auc' has no parameter "
        r"'n_step'. Its parameters: blur_klen, blur_sigma, n_steps, rise_ties, "
        r"score, step, substrate.",
    ):
        plan_run(suite)
    suite = parse_suite(_suite("[method_params.gradcampp]\nalpha = true\n"))
    with pytest.raises(
        SuiteError,
        match=r"\[method_params.gradcampp\]: Method 'gradcampp' has no parameter 'alpha'. Its parameters: alpha_norm.",
    ):
        plan_run(suite)
    suite = parse_suite(_suite('[metric_params.road_morf]\npercentages = [0.1, "x"]\n'))
    with pytest.raises(SuiteError, match=r"`percentages` must be array \(each a number\)"):
        plan_run(suite)
