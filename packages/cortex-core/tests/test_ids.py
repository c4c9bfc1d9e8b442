"""Model id parsing and formatting."""

from __future__ import annotations

import pytest

from cortex_core.ids import InvalidModelId, ModelId, parse_model_id, qualify


@pytest.mark.parametrize(
    ("text", "source", "concrete"),
    [
        ("Qwen/Qwen3-8B", None, "Qwen/Qwen3-8B"),
        ("helexa:Qwen/Qwen3-8B", "helexa", "Qwen/Qwen3-8B"),
        (":Qwen/Qwen3-8B", None, "Qwen/Qwen3-8B"),
        ("local:meta-llama/Llama-3.1-8B-Instruct", "local", "meta-llama/Llama-3.1-8B-Instruct"),
        ("hf_mirror-2:org_1/name.v2", "hf_mirror-2", "org_1/name.v2"),
        ("HuggingFace:A/B", "HuggingFace", "A/B"),
    ],
)
def test_parse_valid(text: str, source: str | None, concrete: str) -> None:
    """Concrete and qualified ids parse into source and concrete id."""
    parsed = parse_model_id(text)
    assert parsed.source == source
    assert parsed.concrete == concrete


def test_empty_source_is_no_source() -> None:
    """`:org/name` is the same model as `org/name`, with no source."""
    assert parse_model_id(":Qwen/Qwen3-8B") == parse_model_id("Qwen/Qwen3-8B")
    assert parse_model_id(":Qwen/Qwen3-8B").qualified == "Qwen/Qwen3-8B"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Qwen3-8B", "missing '/'"),
        ("helexa:Qwen3-8B", "missing '/'"),
        ("a:b:Qwen/Qwen3-8B", "more than one ':'"),
        ("helexa::Qwen/Qwen3", "more than one ':'"),
        ("Qwen/Qwen3/8B", "more than one '/'"),
        ("/Qwen3-8B", "empty organisation"),
        ("Qwen/", "empty name"),
        ("he lexa:Qwen/Qwen3", "source 'he lexa'"),
        ("-x:Qwen/Qwen3", "source '-x'"),
        ("Qwen/..", "name '..'"),
        ("Qwen/a..b", "name 'a..b'"),
        ("Qw..en/x", "organisation 'Qw..en'"),
        ("Qwen/Qwen 3", "name 'Qwen 3'"),
        (" Qwen/Qwen3", "whitespace"),
        ("Qwen/Qwen3-", "name 'Qwen3-'"),
        ("a/" + "b" * 300, "longer than"),
    ],
)
def test_parse_invalid(text: str, reason: str) -> None:
    """Malformed ids raise InvalidModelId saying what is wrong."""
    with pytest.raises(InvalidModelId) as info:
        parse_model_id(text)
    assert reason in info.value.reason
    assert repr(text) in str(info.value)


def test_format_round_trip() -> None:
    """Formatting a parsed id gives the text back."""
    for text in ("helexa:Qwen/Qwen3-8B", "Qwen/Qwen3-8B"):
        assert str(parse_model_id(text)) == text
        assert parse_model_id(text).qualified == text


def test_with_source_and_qualify() -> None:
    """A concrete id is qualified with a source; an empty source leaves it concrete."""
    model = ModelId(org="Qwen", name="Qwen3-8B")
    assert model.with_source("helexa").qualified == "helexa:Qwen/Qwen3-8B"
    assert model.with_source("").qualified == "Qwen/Qwen3-8B"
    assert qualify("Qwen/Qwen3-8B", "helexa") == "helexa:Qwen/Qwen3-8B"
    assert qualify("Qwen/Qwen3-8B", None) == "Qwen/Qwen3-8B"
    assert qualify("Qwen/Qwen3-8B", "") == "Qwen/Qwen3-8B"
    with pytest.raises(InvalidModelId):
        qualify("no-slash", "helexa")
