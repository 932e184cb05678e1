"""docs/CONFIG.md: generated from the schema, complete, and committed up to date."""

from trainlab.config_doc import DOC, MEANINGS, render, rows


def test_every_key_of_the_schema_has_a_meaning_and_no_meaning_is_stale():
    keys = [key for key, _, _ in rows()]
    assert len(keys) == len(set(keys)) > 60
    assert [k for k in keys if not MEANINGS.get(k)] == []  # a new config key needs its line in MEANINGS
    assert sorted(set(MEANINGS) - set(keys)) == []  # a removed key takes its line along


def test_types_and_defaults_come_from_the_schema():
    text = render()
    assert "| `optimizer.lr` | float | `0.001` |" in text
    assert (
        '| `train.precision` | "auto" &#124; "bf16" &#124; "fp16" &#124; "fp32" &#124; "fp32-strict" '
        '| `"auto"` |'
    ) in text
    assert "| `optimizer.param_groups[].params` | str &#124; list[str] | required |" in text
    assert "| `train.early_stopping.patience` | int &#124; null | `null` |" in text


def test_the_committed_docs_config_md_is_up_to_date():
    assert DOC.read_text() == render(), "docs/CONFIG.md is out of date: run `python -m trainlab.config_doc`"
