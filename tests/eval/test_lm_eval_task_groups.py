"""The shipped task groups: the papers' settings (PAPERS.md (i)), loader errors, lm-eval task names."""
import pytest

from actsparse.eval.task_groups import TaskGroupsError, load_task_groups


def shots(groups, suite):
    selected, _ = groups.select([suite])
    return {g.name: [(t.task, t.num_fewshot) for t in g.tasks] for g in selected}


def test_prosparse_and_open_llm_settings():
    groups = load_task_groups()
    assert shots(groups, "prosparse") == {
        "commonsense": [("piqa", 0), ("social_iqa", 0), ("hellaswag", 0), ("winogrande", 0), ("copa", 0)],
        "reading": [("boolq", 0), ("lambada_openai", 0)],
        "gsm8k": [("gsm8k", 8)], "mmlu": [("mmlu", 5)], "bbh": [("bbh_cot_fewshot", 3)],
        "agieval": [("agieval_en", 0)]}
    assert shots(groups, "open_llm_leaderboard") == {
        "leaderboard_arc": [("arc_challenge", 25)], "leaderboard_hellaswag": [("hellaswag", 10)],
        "leaderboard_mmlu": [("mmlu", 5)], "leaderboard_truthfulqa": [("truthfulqa_mc2", 0)],
        "leaderboard_winogrande": [("winogrande", 5)], "leaderboard_gsm8k": [("gsm8k", 5)]}
    selected, suites = groups.select(["prosparse", "mmlu", "leaderboard_mmlu"])
    assert [g.name for g in selected].count("mmlu") == 1 and [s.name for s in suites] == ["prosparse"]


@pytest.mark.parametrize("text, field", [
    ("groups: {g: {tasks: [{task: t, metric: 'acc,none'}]}}", "groups.g.tasks[0].num_fewshot"),
    ("groups: {g: {tasks: [{task: t, num_fewshot: -1, metric: 'acc,none'}]}}", "groups.g.tasks[0].num_fewshot"),
    ("groups: {g: {tasks: []}}", "groups.g.tasks"),
    ("groups: {g: {tasks: [{task: t, num_fewshot: 0, metric: m}]}}\nsuites: {s: {groups: [h]}}", "suites.s.groups"),
    ("groups: {g: {tasks: [{task: t, num_fewshot: 0, metric: m, shots: 3}]}}", "groups.g.tasks[0]"),
])
def test_errors_name_file_and_field(tmp_path, text, field):
    path = tmp_path / "groups.yaml"
    path.write_text(text)
    with pytest.raises(TaskGroupsError) as info:
        load_task_groups(str(path))
    assert str(path) in str(info.value) and field in str(info.value)


def test_unknown_selection_lists_choices():
    with pytest.raises(TaskGroupsError, match="prosparse"):
        load_task_groups().select(["no_such_suite"])


@pytest.mark.slow
def test_every_shipped_task_is_an_lm_eval_task():
    """Indexing lm-eval's ~10k task YAMLs takes ~10 s: slow."""
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    groups = load_task_groups()
    names = {t.task for g in groups.groups.values() for t in g.tasks}
    assert names - known == set()
