"""recap budget: the plan over sample.size, the summary of caption and generator figures,
and the report."""

import pytest

from recaption import budget, compare
from recaption.params import ParamsError, parse_params


def params_with(**section):
    return parse_params({"budget": section})


def test_plan_sets_the_annotated_images_and_the_generator_seed_over_the_overrides():
    params = params_with(sizes=[100, 300], seeds=2, overrides={"sample.size": 5,
                                                               "generator.steps": 50})  # fmt: skip
    exps = budget.plan(params)
    assert [e.name for e in exps] == ["budget-100-s0", "budget-100-s1", "budget-300-s0",
                                      "budget-300-s1"]  # fmt: skip
    assert exps[3].params == {"sample.size": 300, "generator.steps": 50, "generator.seed": 1}
    compare.check({}, exps)  # every experiment's params validate


def test_bad_sizes_are_refused():
    for sizes in ([], [100, 100], [1]):
        with pytest.raises(ParamsError, match="budget.sizes"):
            params_with(sizes=sizes)


def test_summary_reads_captions_and_facts_per_size_and_the_report_shows_them(tmp_path):
    params = params_with(sizes=[100, 1000], seeds=2)
    results, captions = [], {}
    for exp in budget.plan(params):
        size, seed = int(exp.variant), exp.seed
        precision = 0.4 if size == 100 else 0.6 + 0.02 * seed
        captions[exp.name] = {"kinds": {"descriptive": {"precision": precision, "recall": 0.5},
                                        "short": {"main_subject": 0.9}}}  # fmt: skip
        facts = {"overall": 0.3 if size == 100 else 0.4, "ci95": {"overall": [0.2, 0.5]}}
        metrics = {"fact_accuracy": {"short": facts, "descriptive": facts, "upsampled": facts}}
        results.append(budget.Result(exp, metrics))
    summary = budget.summarise(results, captions, params)
    big = summary["sizes"]["1000"]
    assert big["descriptive precision"]["mean"] == pytest.approx(0.61)
    assert big["descriptive precision"]["std"] == pytest.approx(0.02 / 2**0.5)
    assert big[compare.FACT_DESC]["mean"] == pytest.approx(0.4)
    assert summary["sizes"]["100"]["short: main subject"]["mean"] == pytest.approx(0.9)
    md = budget.markdown(summary)
    assert "| 1,000 | 0.610 ± 0.014 | 0.500 ± 0.000 |" in md
    assert "| 100 | 0.400 ± 0.000 |" in md
    # An experiment without captions.json leaves its caption cells empty, not zero.
    alone = budget.summarise(results[:1], {}, params_with(sizes=[100], seeds=1))
    assert alone["sizes"]["100"]["descriptive precision"] is None
    assert "| 100 | - | - | - | 0.300 |" in budget.markdown(alone)
    budget.figure(summary, tmp_path / "budget.png")
    assert (tmp_path / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
